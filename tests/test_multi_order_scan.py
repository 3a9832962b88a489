"""Multi-order selective scan: the CPU kernel against multi_order_selective_scan_ref (K reference
scans on permuted copies), gradients, gradcheck, torch.compile, opcheck, determinism, bad inputs."""

from __future__ import annotations

import pytest
import torch
from kit import EPS, close, close_ulp, gpu_test, on_gpu, requires_triton, scan_terms

from medkernels.ops import multi_order_scan as mos
from medkernels.ops import multi_order_selective_scan, multi_order_selective_scan_ref

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# As the selective scan's GPU tests (mamba_ssm's tolerances), per input dtype: GPU runs only.
TOL = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}
# float32 error bound per result, in ulp of sum|terms| (mos_terms: what the result sums over the K
# scans, their recurrences and the batch * seqlen reductions). Measured over the seeded grid and six
# other seeds (chunk sizes 4..256, both ISAs, the Triton interpreter): out 1.6, du 1.9, ddelta 3.1,
# dA 2.0, dB 2.4, dC 2.4, dD 1.3, ddelta_bias 0.44; set about 3x above.
ULPS = {"out": 5, "u": 6, "delta": 10, "A": 6, "B": 8, "C": 8, "D": 4, "delta_bias": 1.5}
NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def make_inputs(batch, dim, dstate, seqlen, K, dtype=torch.float32, *, has_D=True, has_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    return dict(
        u=randn(batch, dim, seqlen).to(dtype),
        delta=(0.5 * torch.rand(batch, K, dim, seqlen, generator=g)).to(dtype),
        A=(-0.5 * torch.rand(K, dim, dstate, generator=g) - 0.1).to(pdtype),
        B=randn(batch, K, dstate, seqlen).to(dtype),
        C=randn(batch, K, dstate, seqlen).to(dtype),
        D=randn(K, dim).to(pdtype) if has_D else None,
        delta_bias=(0.5 * torch.rand(K, dim, generator=g)).to(pdtype) if has_bias else None,
        orders=torch.argsort(torch.rand(batch, K, seqlen, generator=g), dim=-1),
    )


def run(fn, inputs, grad_out, softplus=True, **kw):
    """out and the gradients of <out, grad_out> for every floating input (taken in float32, float64
    for float64 inputs)."""
    leaves = {k: inputs[k].detach().clone().requires_grad_(True) for k in NAMES if inputs[k] is not None}
    args = {k: leaves.get(k, inputs[k]) for k in inputs}
    out = fn(**args, delta_softplus=softplus, **kw)
    acc = torch.float64 if out.dtype == torch.float64 else torch.float32
    grads = dict(zip(leaves, torch.autograd.grad((out.to(acc) * grad_out.to(acc)).sum(), list(leaves.values()))))
    return out, grads


def mos_terms(inputs, softplus, grad_out=None):
    """sum|terms| of the output and every gradient: scan_terms of each ordering's scan on its permuted
    copy, put back in place; out and du sum over the orderings."""
    x = {k: (v.double() if v is not None and v.is_floating_point() else v) for k, v in inputs.items()}
    orders = x["orders"]
    batch, dim, L = x["u"].shape
    res = {
        "out": torch.zeros(batch, dim, L, dtype=torch.float64),
        "u": torch.zeros(batch, dim, L, dtype=torch.float64),
        "delta": torch.zeros_like(x["delta"]),
        "B": torch.zeros_like(x["B"]),
        "C": torch.zeros_like(x["C"]),
        "A": torch.zeros_like(x["A"]),
    }
    if x["D"] is not None:
        res["D"] = torch.zeros_like(x["D"])
    if x["delta_bias"] is not None:
        res["delta_bias"] = torch.zeros_like(x["delta_bias"])
    for k in range(orders.shape[1]):
        o = orders[:, k, None, :]
        ou, on = o.expand(batch, dim, L), o.expand(batch, x["B"].shape[2], L)
        t = scan_terms(
            x["u"].gather(2, ou),
            x["delta"][:, k].gather(2, ou),
            x["A"][k],
            x["B"][:, k].gather(2, on),
            x["C"][:, k].gather(2, on),
            None if x["D"] is None else x["D"][k],
            None,
            None if x["delta_bias"] is None else x["delta_bias"][k],
            softplus,
            grad_out=None if grad_out is None else grad_out.double().gather(2, ou),
        )
        res["out"] += torch.zeros_like(res["out"]).scatter(2, ou, t["out"])
        if grad_out is None:
            continue
        res["u"] += torch.zeros_like(res["u"]).scatter(2, ou, t["u"])
        res["delta"][:, k] = torch.zeros_like(res["u"]).scatter(2, ou, t["delta"])
        res["B"][:, k] = torch.zeros_like(res["B"][:, k]).scatter(2, on, t["B"])
        res["C"][:, k] = torch.zeros_like(res["C"][:, k]).scatter(2, on, t["C"])
        for name in ("A", "D", "delta_bias"):
            if name in res:
                res[name][k] = t[name]
    return res


def _check_on_gpu(inputs, softplus, backend):
    """GPU backends with the tolerances they were validated with: kept (see kit.on_gpu)."""
    dtype = inputs["u"].dtype
    rtol, atol = TOL[dtype]
    grad_out = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out, grads = run(multi_order_selective_scan, inputs, grad_out, softplus, backend=backend)
    up = {k: (v.float() if v is not None and v.is_floating_point() else v) for k, v in inputs.items()}
    out_r, grads_r = run(multi_order_selective_scan_ref, up, grad_out, softplus)
    assert out.dtype == dtype and out.shape == inputs["u"].shape
    close(out, out_r, rtol, atol, "out")
    for k in grads_r:
        assert grads[k].dtype == inputs[k].dtype and grads[k].shape == inputs[k].shape, k
        scale = grads_r[k].abs().max().item() + 1.0
        close(grads[k], grads_r[k], max(rtol, 1e-3), max(atol, 1e-3) * scale, f"d{k}")


def check_against_reference(inputs, softplus=True, backend="cpu"):
    """The backend vs multi_order_selective_scan_ref on the same values in float64: float32 results
    within ULPS of sum|terms|, float16/bfloat16 ones within one ulp of their dtype (their rounding)
    plus the float32 allowance. GPU kernels keep the tolerances they were validated with."""
    if on_gpu(backend, inputs["u"].device):
        return _check_on_gpu(inputs, softplus, backend)
    dtype = inputs["u"].dtype
    grad_out = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out, grads = run(multi_order_selective_scan, inputs, grad_out, softplus, backend=backend)
    out, grads = out.cpu(), {k: v.cpu() for k, v in grads.items()}
    inputs = {k: (None if v is None else v.cpu()) for k, v in inputs.items()}
    up = {k: (v.double() if v is not None and v.is_floating_point() else v) for k, v in inputs.items()}
    out_r, grads_r = run(multi_order_selective_scan_ref, up, grad_out.cpu(), softplus)
    terms = mos_terms(inputs, softplus, grad_out.cpu())
    assert out.dtype == dtype and out.shape == inputs["u"].shape

    def check(name, what, a, r):
        ulps = ULPS[name]
        if a.dtype in (torch.float16, torch.bfloat16):
            allowance = ulps * EPS[torch.float32] / EPS[a.dtype]
            close_ulp(a, r, what, ulps=1, dtype=a.dtype, scale=allowance * terms[name])
        else:
            close_ulp(a, r, what, ulps=ulps, scale=terms[name])

    check("out", "out", out, out_r)
    for k in grads_r:
        assert grads[k].dtype == inputs[k].dtype and grads[k].shape == inputs[k].shape, k
        check(k, f"d{k}", grads[k], grads_r[k])


@pytest.fixture
def chunk(request, monkeypatch):
    """The CPU kernel's checkpoint interval (small values exercise chunk boundaries)."""
    monkeypatch.setattr(mos, "_CPU_CHUNK", request.param)
    return request.param


@pytest.mark.parametrize("chunk", [5], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_matches_reference_dtypes(cpu_isa, chunk, dtype):
    check_against_reference(make_inputs(2, 5, 6, 23, 3, dtype))


@pytest.mark.parametrize("chunk", [4, 256], indirect=True)
@pytest.mark.parametrize("softplus,has_D,has_bias", [(True, False, False), (False, True, False), (False, False, True)])
def test_matches_reference_optional_inputs(chunk, softplus, has_D, has_bias):
    check_against_reference(make_inputs(2, 4, 3, 13, 2, has_D=has_D, has_bias=has_bias), softplus)


@pytest.mark.parametrize("dstate", [1, 8, 16, 33, 64])
def test_matches_reference_state_sizes(cpu_isa, dstate):
    # dstate 1..64: every register-resident state width and the scratch one.
    check_against_reference(make_inputs(1, 3, dstate, 17, 2, seed=dstate))


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_random_sweep(seed):
    g = torch.Generator().manual_seed(100 + seed)
    batch, dim, dstate, seqlen, K = (
        int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 3), (1, 40), (1, 20), (1, 70), (1, 9))
    )
    check_against_reference(make_inputs(batch, dim, dstate, seqlen, K, seed=seed))


@requires_triton
def test_triton_matches_reference():
    """On CPU through the Triton interpreter: tiny shapes, several chunks of 4 tokens (slow:
    one case; test_multi_order_scan_triton_on_gpu_matches_cpu covers bf16 on a GPU)."""
    check_against_reference(make_inputs(1, 3, 5, 11, 2, seed=5), backend="triton")


def test_many_channel_blocks_and_eight_orderings():
    # 40 channels: two backward blocks; K = 8 as PointMamba2.
    check_against_reference(make_inputs(1, 40, 4, 33, 8, seed=3))


def test_identity_orders_equal_k_plain_scans():
    from medkernels.ops import selective_scan_fn

    x = make_inputs(2, 3, 4, 9, 2)
    x["orders"] = torch.arange(9).expand(2, 2, 9).contiguous()
    out = multi_order_selective_scan(**x)
    want = sum(
        selective_scan_fn(
            x["u"], x["delta"][:, k], x["A"][k], x["B"][:, k], x["C"][:, k], x["D"][k], None, x["delta_bias"][k], True
        )
        for k in range(2)
    )
    close_ulp(out, want, "out", ulps=2 * ULPS["out"], scale=mos_terms(x, True)["out"])  # both carry a kernel's error


def test_empty_sequence_and_channels():
    for batch, dim, seqlen in ((2, 3, 0), (2, 0, 5), (0, 3, 5)):
        x = make_inputs(batch, dim, 2, seqlen, 2)
        out, grads = run(multi_order_selective_scan, x, torch.zeros(batch, dim, seqlen))
        assert out.shape == (batch, dim, seqlen)
        assert all(torch.all(g == 0) for g in grads.values())


@pytest.mark.parametrize("chunk", [2], indirect=True)
def test_gradcheck_float64(cpu_isa, chunk):
    x = make_inputs(1, 2, 2, 5, 2, torch.float64)
    leaves = [x[k].clone().requires_grad_(True) for k in NAMES]

    def fn(*xs):
        return multi_order_selective_scan(*xs, x["orders"], delta_softplus=True, backend="cpu")

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_deterministic_across_runs_and_thread_counts():
    x = make_inputs(2, 40, 8, 50, 3)
    g = torch.randn(2, 40, 50)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            out, grads = run(multi_order_selective_scan, x, g)
            results.append([out, *grads.values()])
    finally:
        torch.set_num_threads(before)
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], r))


def test_non_contiguous_inputs():
    x = make_inputs(2, 4, 3, 11, 2)
    y = dict(x)
    y["u"] = x["u"].transpose(1, 2).contiguous().transpose(1, 2)  # seqlen not unit-stride
    y["delta"] = x["delta"].transpose(1, 2).contiguous().transpose(1, 2)
    y["B"] = x["B"].transpose(2, 3).contiguous().transpose(2, 3)
    y["orders"] = x["orders"].transpose(0, 1).contiguous().transpose(0, 1)
    assert torch.equal(multi_order_selective_scan(**x), multi_order_selective_scan(**y))


# --- torch.compile and opcheck ------------------------------------------------------------------


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    x = make_inputs(2, 4, 5, 21, 3)
    leaves = {k: x[k].requires_grad_(True) for k in NAMES}

    def f(u, delta, A, B, C, D, delta_bias, orders):
        return multi_order_selective_scan(u, delta, A, B, C, D, delta_bias, orders).square().sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic)
    loss_c = compiled(**leaves, orders=x["orders"])
    grads_c = torch.autograd.grad(loss_c, list(leaves.values()))
    loss_e = f(**leaves, orders=x["orders"])
    grads_e = torch.autograd.grad(loss_e, list(leaves.values()))
    # the same kernels: gradients to the ulp; the loss's sum may be reordered (a few ulp of sum|terms|)
    close_ulp(loss_c, loss_e, "loss", ulps=4, scale=loss_e.item())
    for name, gc, ge in zip(leaves, grads_c, grads_e):
        close_ulp(gc, ge, f"d{name}", ulps=1, scale=0.0)


def opcheck_samples():
    """Sample arguments for torch.library.opcheck, per registered op."""

    def sample(shape, opt):
        x = make_inputs(*shape, has_D=opt, has_bias=opt)
        args = [x[k] for k in NAMES] + [x["orders"]]
        fwd = [a.clone().requires_grad_(a.is_floating_point()) if a is not None else None for a in args] + [True, 4]
        out, ckpt = torch.ops.medkernels.multi_order_selective_scan_fwd(*args, True, 4)
        return fwd, [torch.randn_like(out), *args, ckpt, True, 4]

    cpu = [sample((2, 3, 4, 9, 2), opt) for opt in (True, False)]
    samples = {
        "multi_order_selective_scan_fwd": [f for f, _ in cpu],
        "multi_order_selective_scan_bwd": [b for _, b in cpu],
    }
    if hasattr(torch.ops.medkernels, "multi_order_selective_scan_fwd_triton"):
        fwd, bwd = sample((1, 2, 2, 5, 2), True)  # tiny: the Triton interpreter is slow
        samples["multi_order_selective_scan_fwd_triton"] = [fwd]
        samples["multi_order_selective_scan_bwd_triton"] = [bwd]
    return samples


# --- bad input -------------------------------------------------------------------------------------


def _with(**changes):
    args = make_inputs(2, 4, 3, 5, 2)
    for k, v in changes.items():
        args[k] = v(args) if callable(v) else v
    return args


def _swap_first_two(a):
    o = a["orders"].clone()
    o[1, 1, 0] = o[1, 1, 1]
    return o


BAD = [
    ("orders repeat", _with(orders=_swap_first_two), ValueError, r"orders\[1, 1\] is not a permutation of 0..4"),
    ("orders range", _with(orders=lambda a: a["orders"] + 1), ValueError, r"orders\[0, 0\] is not a permutation"),
    ("orders dtype", _with(orders=lambda a: a["orders"].int()), ValueError, r"orders must be int64, got torch.int32"),
    ("orders rank", _with(orders=lambda a: a["orders"][0]), ValueError, r"orders must have shape \(batch, K, seqlen\)"),
    (
        "orders seqlen",
        _with(orders=lambda a: a["orders"][..., :4]),
        ValueError,
        r"orders must have shape \(batch, K, seqlen\) = \(2, K, 5\), got \(2, 2, 4\)",
    ),
    ("u rank", _with(u=lambda a: a["u"][0]), ValueError, r"u must have shape \(batch, dim, seqlen\)"),
    ("u int", _with(u=lambda a: a["u"].long()), ValueError, r"u must be float32, float16 or bfloat16"),
    (
        "delta shape",
        _with(delta=lambda a: a["delta"][:, :1]),
        ValueError,
        r"delta must have shape \(batch, K, dim, seqlen\) = \(2, 2, 4, 5\), got \(2, 1, 4, 5\)",
    ),
    ("delta dtype", _with(delta=lambda a: a["delta"].half()), ValueError, r"delta must have the dtype of u"),
    ("B shape", _with(B=lambda a: a["B"][0]), ValueError, r"B must have shape \(batch, K, dstate, seqlen\)"),
    ("C dtype", _with(C=lambda a: a["C"].double()), ValueError, r"C must have the dtype of u"),
    ("A shape", _with(A=torch.randn(2, 3)), ValueError, r"A must have shape \(K, dim, dstate\) = \(2, 4, dstate"),
    ("A dtype", _with(A=lambda a: a["A"].half()), ValueError, r"A must be torch.float32 for torch.float32 inputs"),
    ("D shape", _with(D=torch.randn(4)), ValueError, r"D must have shape \(K, dim\) = \(2, 4\)"),
    (
        "delta_bias dtype",
        _with(delta_bias=lambda a: a["delta_bias"].double()),
        ValueError,
        r"delta_bias must be torch.float32",
    ),
    ("mixed devices", _with(A=lambda a: a["A"].to("meta")), ValueError, r"A is on meta but u is on cpu"),
    ("not a tensor", _with(B=[[0.0]]), TypeError, r"B must be a torch.Tensor, got list"),
    ("missing orders", _with(orders=None), TypeError, r"orders is required"),
]


@pytest.mark.parametrize("fn", [multi_order_selective_scan, multi_order_selective_scan_ref], ids=["fn", "ref"])
@pytest.mark.parametrize("case,args,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(fn, case, args, exc, match):
    with pytest.raises(exc, match=match):
        fn(**args)


def test_cpp_checks_guard_direct_op_calls():
    x = _with(orders=_swap_first_two)
    args = [x[k] for k in NAMES] + [x["orders"]]
    # C++ errors reach Python as RuntimeError through the stable ABI; the public op raises ValueError first.
    with pytest.raises(RuntimeError, match=r"^multi_order_selective_scan_fwd: orders\[1, 1\] is not a permutation"):
        torch.ops.medkernels.multi_order_selective_scan_fwd(*args, True, 4)
    x = _with()
    args = [x[k] for k in NAMES] + [x["orders"]]
    with pytest.raises(RuntimeError, match=r"^multi_order_selective_scan_fwd: chunk_size must be >= 1"):
        torch.ops.medkernels.multi_order_selective_scan_fwd(*args, True, 0)
    out, ckpt = torch.ops.medkernels.multi_order_selective_scan_fwd(*args, True, 4)
    with pytest.raises(RuntimeError, match=r"^multi_order_selective_scan_bwd: checkpoints must have shape"):
        torch.ops.medkernels.multi_order_selective_scan_bwd(torch.ones_like(out), *args, ckpt[:, :1], True, 4)


def test_grid_is_not_trivially_satisfied():
    """The comparison would catch a wrong kernel: another ordering changes the output beyond tolerance,
    and so does an error in the last bits (every output 3 ulp-of-tolerance off)."""
    x = make_inputs(2, 4, 3, 13, 2)
    wrong = dict(x, orders=x["orders"].flip(1))
    ref = multi_order_selective_scan_ref(**{k: (v.double() if v.is_floating_point() else v) for k, v in x.items()})
    terms = mos_terms(x, True)["out"]
    with pytest.raises(AssertionError):
        close_ulp(multi_order_selective_scan(**wrong), ref, "out", ulps=ULPS["out"], scale=terms)
    good = multi_order_selective_scan(**x)
    close_ulp(good, ref, "out", ulps=ULPS["out"], scale=terms)
    with pytest.raises(AssertionError):
        close_ulp(good * (1 + 3 * ULPS["out"] * EPS[torch.float32]), ref, "out", ulps=ULPS["out"], scale=terms)


# --- on a GPU (marked gpu: `pytest -m gpu`, scripts/gpu_check.sh; skipped without CUDA) ----------


@gpu_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_multi_order_scan_triton_on_gpu_matches_cpu(dtype):
    x = make_inputs(2, 40, 64, 700, 8, dtype, seed=9)
    g = torch.randn(2, 40, 700).to(dtype)
    results = []
    for device, backend in (("cpu", "cpu"), ("cuda", "triton")):
        leaves = {k: x[k].to(device).requires_grad_(True) for k in NAMES}
        out = multi_order_selective_scan(**leaves, orders=x["orders"].to(device), backend=backend)
        grads = torch.autograd.grad((out.float() * g.to(device).float()).sum(), list(leaves.values()))
        results.append([out.cpu()] + [t.cpu() for t in grads])
    rtol, atol = TOL[dtype]
    for name, a, b in zip(["out", *NAMES], *results):
        close(b, a, max(rtol, 1e-3), max(atol, 1e-3) * (a.float().abs().max().item() + 1), name)
