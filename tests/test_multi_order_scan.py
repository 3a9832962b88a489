"""Multi-order selective scan: the CPU kernel against multi_order_selective_scan_ref (K reference
scans on permuted copies), gradients, gradcheck, torch.compile, opcheck, determinism, bad inputs."""

from __future__ import annotations

import pytest
import torch
from conftest import close, requires_triton

from medkernels.ops import multi_order_scan as mos
from medkernels.ops import multi_order_selective_scan, multi_order_selective_scan_ref

# As the selective scan's tests (mamba_ssm's tolerances), per input dtype.
TOL = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}
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
    """out and the gradients of <out, grad_out> for every floating input."""
    leaves = {k: inputs[k].detach().clone().requires_grad_(True) for k in NAMES if inputs[k] is not None}
    args = {k: leaves.get(k, inputs[k]) for k in inputs}
    out = fn(**args, delta_softplus=softplus, **kw)
    grads = dict(zip(leaves, torch.autograd.grad((out.float() * grad_out.float()).sum(), list(leaves.values()))))
    return out, grads


def check_against_reference(inputs, softplus=True, backend="cpu"):
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


@pytest.fixture
def chunk(request, monkeypatch):
    """The CPU kernel's checkpoint interval (small values exercise chunk boundaries)."""
    monkeypatch.setattr(mos, "_CPU_CHUNK", request.param)
    return request.param


@pytest.mark.parametrize("chunk", [5], indirect=True)
@pytest.mark.parametrize("dtype", list(TOL), ids=lambda d: str(d).replace("torch.", ""))
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
    batch, dim, dstate, seqlen, K = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in
                                     ((1, 3), (1, 40), (1, 20), (1, 70), (1, 9)))
    check_against_reference(make_inputs(batch, dim, dstate, seqlen, K, seed=seed))


@requires_triton
def test_triton_matches_reference():
    """On CPU through the Triton interpreter: tiny shapes, several chunks of 4 tokens (slow:
    one case; tests/test_gpu.py covers bf16 on a GPU)."""
    check_against_reference(make_inputs(1, 3, 5, 11, 2, seed=5), backend="triton")


def test_many_channel_blocks_and_eight_orderings():
    # 40 channels: two backward blocks; K = 8 as PointMamba2.
    check_against_reference(make_inputs(1, 40, 4, 33, 8, seed=3))


def test_identity_orders_equal_k_plain_scans():
    from medkernels.ops import selective_scan_fn

    x = make_inputs(2, 3, 4, 9, 2)
    x["orders"] = torch.arange(9).expand(2, 2, 9).contiguous()
    out = multi_order_selective_scan(**x)
    want = sum(selective_scan_fn(x["u"], x["delta"][:, k], x["A"][k], x["B"][:, k], x["C"][:, k], x["D"][k], None,
                                 x["delta_bias"][k], True) for k in range(2))
    close(out, want, 1e-5, 1e-5, "out")


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
    close(loss_c, loss_e, 1e-6, 1e-6, "loss")
    for name, gc, ge in zip(leaves, grads_c, grads_e):
        close(gc, ge, 1e-6, 1e-6, f"d{name}")


def opcheck_samples():
    """Sample arguments for torch.library.opcheck, per registered op."""
    def sample(shape, opt):
        x = make_inputs(*shape, has_D=opt, has_bias=opt)
        args = [x[k] for k in NAMES] + [x["orders"]]
        fwd = [a.clone().requires_grad_(a.is_floating_point()) if a is not None else None for a in args] + [True, 4]
        out, ckpt = torch.ops.medkernels.multi_order_selective_scan_fwd(*args, True, 4)
        return fwd, [torch.randn_like(out), *args, ckpt, True, 4]

    cpu = [sample((2, 3, 4, 9, 2), opt) for opt in (True, False)]
    samples = {"multi_order_selective_scan_fwd": [f for f, _ in cpu],
               "multi_order_selective_scan_bwd": [b for _, b in cpu]}
    if hasattr(torch.ops.medkernels, "multi_order_selective_scan_fwd_triton"):
        fwd, bwd = sample((1, 2, 2, 5, 2), True)  # tiny: the Triton interpreter is slow
        samples["multi_order_selective_scan_fwd_triton"] = [fwd]
        samples["multi_order_selective_scan_bwd_triton"] = [bwd]
    return samples


@pytest.mark.parametrize("op,index", [(op, i) for op, s in opcheck_samples().items() for i in range(len(s))])
def test_opcheck(op, index):
    args = opcheck_samples()[op][index]
    torch.library.opcheck(getattr(torch.ops.medkernels, op).default, args)


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
    ("orders seqlen", _with(orders=lambda a: a["orders"][..., :4]), ValueError,
     r"orders must have shape \(batch, K, seqlen\) = \(2, K, 5\), got \(2, 2, 4\)"),
    ("u rank", _with(u=lambda a: a["u"][0]), ValueError, r"u must have shape \(batch, dim, seqlen\)"),
    ("u int", _with(u=lambda a: a["u"].long()), ValueError, r"u must be float32, float16 or bfloat16"),
    ("delta shape", _with(delta=lambda a: a["delta"][:, :1]), ValueError,
     r"delta must have shape \(batch, K, dim, seqlen\) = \(2, 2, 4, 5\), got \(2, 1, 4, 5\)"),
    ("delta dtype", _with(delta=lambda a: a["delta"].half()), ValueError, r"delta must have the dtype of u"),
    ("B shape", _with(B=lambda a: a["B"][0]), ValueError, r"B must have shape \(batch, K, dstate, seqlen\)"),
    ("C dtype", _with(C=lambda a: a["C"].double()), ValueError, r"C must have the dtype of u"),
    ("A shape", _with(A=torch.randn(2, 3)), ValueError, r"A must have shape \(K, dim, dstate\) = \(2, 4, dstate"),
    ("A dtype", _with(A=lambda a: a["A"].half()), ValueError, r"A must be torch.float32 for torch.float32 inputs"),
    ("D shape", _with(D=torch.randn(4)), ValueError, r"D must have shape \(K, dim\) = \(2, 4\)"),
    ("delta_bias dtype", _with(delta_bias=lambda a: a["delta_bias"].double()), ValueError,
     r"delta_bias must be torch.float32"),
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
    with pytest.raises(ValueError, match=r"^multi_order_selective_scan_fwd: orders\[1, 1\] is not a permutation"):
        torch.ops.medkernels.multi_order_selective_scan_fwd(*args, True, 4)
    x = _with()
    args = [x[k] for k in NAMES] + [x["orders"]]
    with pytest.raises(RuntimeError, match=r"^multi_order_selective_scan_fwd: chunk_size must be >= 1"):
        torch.ops.medkernels.multi_order_selective_scan_fwd(*args, True, 0)
    out, ckpt = torch.ops.medkernels.multi_order_selective_scan_fwd(*args, True, 4)
    with pytest.raises(RuntimeError, match=r"^multi_order_selective_scan_bwd: checkpoints must have shape"):
        torch.ops.medkernels.multi_order_selective_scan_bwd(torch.ones_like(out), *args, ckpt[:, :1], True, 4)


def test_grid_is_not_trivially_satisfied():
    """The comparison would catch a wrong kernel: another ordering changes the output beyond tolerance."""
    x = make_inputs(2, 4, 3, 13, 2)
    wrong = dict(x, orders=x["orders"].flip(1))
    with pytest.raises(AssertionError):
        close(multi_order_selective_scan(**wrong), multi_order_selective_scan_ref(**x), *TOL[torch.float32], "out")
