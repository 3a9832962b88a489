"""Selective scan: the CPU kernel against selective_scan_ref, gradients, gradcheck, torch.compile,
determinism, strides, memory and every bad input."""

from __future__ import annotations

import pytest
import torch
from kit import EPS, LONG, TEST_DEVICE, backends, close, close_ulp, gpu_test, on_gpu, requires_triton, scan_terms

from medkernels.bench.memory import peak_allocated_bytes
from medkernels.ops import selective_scan as ss
from medkernels.ops import selective_scan_fn, selective_scan_ref

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# mamba_ssm's test tolerances (rtol, atol) per input dtype (../shared/reference/mamba.md): GPU runs only.
TOL = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}
KINDS = ("fixed", "variable", "grouped")


def make_inputs(
    batch,
    dim,
    dstate,
    seqlen,
    dtype=torch.float32,
    B_kind="variable",
    C_kind="variable",
    *,
    groups=2,
    has_D=True,
    has_z=True,
    has_bias=True,
    has_init=False,
    seed=0,
):
    """Inputs as mamba_ssm's tests draw them, rounded to `dtype` (parameters stay float32/64)."""
    g = torch.Generator().manual_seed(seed)
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    def bc(kind):
        if kind == "fixed":
            return randn(dim, dstate).to(pdtype)
        if kind == "variable":
            return randn(batch, dstate, seqlen).to(dtype)
        return randn(batch, groups, dstate, seqlen).to(dtype)

    return dict(
        u=randn(batch, dim, seqlen).to(dtype),
        delta=(0.5 * torch.rand(batch, dim, seqlen, generator=g)).to(dtype),
        A=(-0.5 * torch.rand(dim, dstate, generator=g) - 0.1 * torch.arange(dstate) / dstate).to(pdtype),
        B=bc(B_kind),
        C=bc(C_kind),
        D=randn(dim).to(pdtype) if has_D else None,
        z=randn(batch, dim, seqlen).to(dtype) if has_z else None,
        delta_bias=(0.5 * torch.rand(dim, generator=g)).to(pdtype) if has_bias else None,
        initial_state=randn(batch, dim, dstate).to(pdtype) if has_init else None,
    )


def run(fn, inputs, delta_softplus, grad_out, grad_last, **kw):
    """out, last_state and the gradients of <out, grad_out> + <last_state, grad_last> (taken in the
    state's precision: float32, float64 for float64 inputs)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    args = {k: leaves.get(k) for k in inputs}
    initial_state = args.pop("initial_state")
    out, last = fn(**args, delta_softplus=delta_softplus, return_last_state=True, initial_state=initial_state, **kw)
    acc = last.dtype
    loss = (out.to(acc) * grad_out.to(acc)).sum() + (last * grad_last.to(acc)).sum()
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    return out, last, grads


# float32 error bound per result, in ulp of sum|terms| (scan_terms: the size of what the result sums
# through the recurrence, the state and the batch * seqlen reductions). Measured over the seeded grid
# (MEDKERNELS_LONG_TESTS=1 included, chunk sizes 2..64, both ISAs, the Triton interpreter): out,
# last_state 1.9, du 2.4, ddelta 4.2, dz 1.8, dB 3.9, dC 3.2, dA 4.2, dD 1.0, ddelta_bias 1.0,
# dinitial_state 5.2; over six other seeds of that grid (and 24 of the no-decay A = 0 case, where an
# error carries over the whole sequence) at most out 3.0, last_state 3.0, du 3.4, ddelta 6.0, dz 3.3,
# dB 3.8, dC 3.7, dA 6.8, dD 1.3, ddelta_bias 1.3, dinitial_state 6.4. Set 3-4x above the first and
# 2x or more above the second. Independent of seqlen (1..4097): the decays bound how far an error carries.
ULPS = {
    "out": 6,
    "last_state": 6,
    "u": 8,
    "delta": 12,
    "z": 8,
    "B": 12,
    "C": 12,
    "A": 16,
    "D": 3,
    "delta_bias": 3,
    "initial_state": 16,
}


def _check_on_gpu(inputs, delta_softplus, backend):
    """GPU backends vs selective_scan_ref on the same values in float32, with mamba_ssm's tolerances
    (gradients as loose as upstream's), as validated on a GPU: kept (see kit.on_gpu)."""
    dtype = inputs["u"].dtype
    rtol, atol = TOL[dtype]
    rtolw, atolw = (max(1e-3, rtol), max(1e-3, atol)) if inputs["z"] is not None else (1e-3, 1e-3)
    g = torch.Generator().manual_seed(1)
    u = inputs["u"]
    dstate = inputs["A"].shape[1]
    grad_out = torch.randn(u.shape, generator=g).to(dtype)
    grad_last = torch.randn(u.shape[0], u.shape[1], dstate, generator=g)
    device = inputs["u"].device
    out, last, grads = run(
        selective_scan_fn, inputs, delta_softplus, grad_out.to(device), grad_last.to(device), backend=backend
    )
    out, last, grads = out.cpu(), last.cpu(), {k: v.cpu() for k, v in grads.items()}
    inputs = {k: (None if v is None else v.cpu()) for k, v in inputs.items()}
    up = {k: (None if v is None else v.float()) for k, v in inputs.items()}
    out_r, last_r, grads_r = run(selective_scan_ref, up, delta_softplus, grad_out.float(), grad_last)

    assert out.dtype == dtype and last.dtype == torch.float32
    close(out, out_r, rtol, atol, "out")
    close(last, last_r, rtol, atol, "last_state")
    variable = {k: inputs[k].dim() > 2 for k in ("B", "C")}
    tol = {
        "u": (2 * rtol, 2 * atol),
        "delta": (5 * rtol, 10 * atol),
        "A": (rtolw, 5 * atolw),
        "B": (rtol, atol) if variable["B"] else (rtolw, atolw),
        "C": (rtol, atol) if variable["C"] else (rtolw, atolw),
        "D": (rtolw, atolw),
        "delta_bias": (rtolw, atolw),
        "z": (rtol, atol),
        "initial_state": (rtol, atol),
    }
    for name, grad in grads.items():
        assert grad.dtype == inputs[name].dtype, f"d{name} dtype"
        assert grad.shape == inputs[name].shape, f"d{name} shape"
        close(grad, grads_r[name], *tol[name], f"d{name}")


def check_against_reference(inputs, delta_softplus=True, backend="cpu"):
    """The backend on `inputs` vs selective_scan_ref on the same values in float64. float32 results
    within a few float32 ulp (ULPS); float16/bfloat16 results within one ulp of their dtype (their
    rounding: the kernel computes in float32, as the reference does) plus the float32 allowance.
    GPU kernels keep the tolerances they were validated with (_check_on_gpu)."""
    if on_gpu(backend, inputs["u"].device):
        return _check_on_gpu(inputs, delta_softplus, backend)
    dtype = inputs["u"].dtype
    g = torch.Generator().manual_seed(1)
    u = inputs["u"]
    dstate = inputs["A"].shape[1]
    grad_out = torch.randn(u.shape, generator=g).to(dtype)
    grad_last = torch.randn(u.shape[0], u.shape[1], dstate, generator=g)
    device = inputs["u"].device
    out, last, grads = run(
        selective_scan_fn, inputs, delta_softplus, grad_out.to(device), grad_last.to(device), backend=backend
    )
    out, last, grads = out.cpu(), last.cpu(), {k: v.cpu() for k, v in grads.items()}
    inputs = {k: (None if v is None else v.cpu()) for k, v in inputs.items()}
    up = {k: (None if v is None else v.double()) for k, v in inputs.items()}
    out_r, last_r, grads_r = run(selective_scan_ref, up, delta_softplus, grad_out.double(), grad_last.double())

    assert out.dtype == dtype and last.dtype == torch.float32
    terms = scan_terms(**up, delta_softplus=delta_softplus, grad_out=grad_out, grad_last=grad_last)

    def check(name, what, a, r):
        ulps = ULPS[name]
        if a.dtype in (torch.float16, torch.bfloat16):  # rounding to the dtype plus the float32 allowance
            close_ulp(a, r, what, ulps=1, dtype=a.dtype, scale=ulps * EPS[torch.float32] / EPS[a.dtype] * terms[name])
        else:
            close_ulp(a, r, what, ulps=ulps, scale=terms[name])

    check("out", "out", out, out_r)
    check("last_state", "last_state", last, last_r)
    for name, grad in grads.items():
        assert grad.dtype == inputs[name].dtype, f"d{name} dtype"
        assert grad.shape == inputs[name].shape, f"d{name} shape"
        check(name, f"d{name}", grad, grads_r[name])


@pytest.fixture
def chunk(request, monkeypatch):
    """Sets the CPU kernel's checkpoint interval (small values exercise chunk boundaries)."""
    monkeypatch.setattr(ss, "_CPU_CHUNK", request.param)
    return request.param


# --- agreement with the reference ---------------------------------------------------------------

CORE = [(dt, bk, ck) for dt in DTYPES for bk in KINDS for ck in KINDS]


@pytest.mark.parametrize("chunk", [5], indirect=True)
@pytest.mark.parametrize("dtype,B_kind,C_kind", CORE, ids=lambda x: str(x).replace("torch.", ""))
def test_matches_reference_dtypes_and_layouts(cpu_isa, chunk, dtype, B_kind, C_kind):
    inputs = make_inputs(2, 6, 5, 23, dtype, B_kind, C_kind, has_init=True, seed=len(B_kind) * 7 + len(C_kind))
    check_against_reference(inputs)


FEATURES = ["none", "D", "z", "delta_bias", "initial_state", "all"]


@pytest.mark.parametrize("chunk", [4, 64], indirect=True)
@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("feature", FEATURES)
def test_matches_reference_optional_inputs(cpu_isa, chunk, softplus, feature):
    on = {f: feature in (f, "all") for f in ("D", "z", "delta_bias", "initial_state")}
    inputs = make_inputs(
        2,
        7,
        16,
        19,
        torch.float32,
        "variable",
        "grouped",
        groups=7,
        has_D=on["D"],
        has_z=on["z"],
        has_bias=on["delta_bias"],
        has_init=on["initial_state"],
    )
    check_against_reference(inputs, delta_softplus=softplus)


SEQLENS = [
    (1, torch.float32),
    (7, torch.float32),
    (64, torch.float32),
    (1000, torch.float32),
    (1000, torch.bfloat16),
    (2100, torch.float32),
]


@pytest.mark.parametrize("seqlen,dtype", SEQLENS, ids=lambda x: str(x).replace("torch.", ""))
def test_matches_reference_sequence_lengths(seqlen, dtype):
    inputs = make_inputs(2, 5, 16, seqlen, dtype, "variable", "grouped", groups=5, has_init=True, seed=seqlen)
    check_against_reference(inputs)


@pytest.mark.parametrize("dstate", [1, 3, 8, 16, 17, 32, 40, 64])
def test_matches_reference_state_sizes(cpu_isa, dstate):
    """Covers the register-resident state widths and the generic path of each instruction set."""
    inputs = make_inputs(1, 9, dstate, 33, torch.float32, "grouped", "variable", groups=3, has_init=True, seed=dstate)
    check_against_reference(inputs)


@pytest.mark.parametrize("seed", range(40 if LONG else 6))  # MEDKERNELS_LONG_TESTS=1: the long sweep
def test_matches_reference_random_sweep(seed):
    g = torch.Generator().manual_seed(seed)

    def pick(xs):
        return xs[int(torch.randint(len(xs), (1,), generator=g))]

    dim = pick([1, 4, 12, 37])
    groups = pick([d for d in (1, 2, 3, 4) if dim % d == 0])
    inputs = make_inputs(
        pick([1, 2, 3]),
        dim,
        pick([1, 4, 16, 24, 70]),
        pick([1, 63, 64, 65, 513, 4097]),
        pick(list(DTYPES)),
        pick(KINDS),
        pick(KINDS),
        groups=groups,
        has_D=pick([True, False]),
        has_z=pick([True, False]),
        has_bias=pick([True, False]),
        has_init=pick([True, False]),
        seed=seed,
    )
    check_against_reference(inputs, delta_softplus=pick([True, False]))


@requires_triton
@pytest.mark.parametrize(
    "B_kind,C_kind,dtype",
    [
        ("variable", "grouped", torch.float32),
        ("fixed", "fixed", torch.float32),
        ("grouped", "variable", torch.bfloat16),
    ],
)
def test_triton_matches_reference(B_kind, C_kind, dtype):
    """On CPU through the Triton interpreter: tiny shapes, several chunks."""
    inputs = make_inputs(1, 4, 5, 37, dtype, B_kind, C_kind, groups=2, has_init=True, seed=11)
    check_against_reference(
        {k: (v.to(TEST_DEVICE) if v is not None else None) for k, v in inputs.items()}, backend="triton"
    )


def test_softplus_threshold_and_large_decays():
    """delta + bias above 20 bypasses the softplus (as torch's threshold); dt*A below -125 in log2
    units and exactly 0 must not break the state."""
    inputs = make_inputs(1, 4, 8, 40, has_init=True)
    inputs["delta"] = torch.linspace(-30, 30, 160).reshape(1, 4, 40)
    inputs["A"][0, 0] = 0.0
    inputs["A"][1, :] = -40.0
    check_against_reference(inputs)


def test_chunked_initial_state_continues_the_scan():
    """Scanning [x1, x2] equals scanning x2 from the last state of x1 (the state-passing contract)."""
    full = make_inputs(2, 6, 16, 150, torch.float32, "variable", "grouped", groups=3, seed=3)

    def part(sl):
        return {
            k: (v[..., sl] if v is not None and v.dim() >= 3 and k != "initial_state" else v) for k, v in full.items()
        }

    out, last = selective_scan_fn(
        **{k: v for k, v in full.items() if k != "initial_state"}, delta_softplus=True, return_last_state=True
    )
    p1, p2 = part(slice(0, 97)), part(slice(97, None))
    out1, last1 = selective_scan_fn(
        **{k: v for k, v in p1.items() if k != "initial_state"}, delta_softplus=True, return_last_state=True
    )
    out2, last2 = selective_scan_fn(
        **{k: v for k, v in p2.items() if k != "initial_state"},
        delta_softplus=True,
        return_last_state=True,
        initial_state=last1,
    )
    # both sides carry the kernel's error: twice its allowance
    terms = scan_terms(**{k: v for k, v in full.items() if k != "initial_state"}, delta_softplus=True)
    close_ulp(torch.cat([out1, out2], -1), out, "out", ulps=2 * ULPS["out"], scale=terms["out"])
    close_ulp(last2, last, "last_state", ulps=2 * ULPS["last_state"], scale=terms["last_state"])


def test_empty_sequence():
    inputs = make_inputs(2, 3, 4, 0, torch.float32, "fixed", "fixed", has_init=True)
    out, last = selective_scan_fn(
        **{k: v for k, v in inputs.items() if k != "initial_state"},
        return_last_state=True,
        initial_state=inputs["initial_state"],
    )
    assert out.shape == (2, 3, 0)
    torch.testing.assert_close(last, inputs["initial_state"], rtol=0, atol=0)


def test_return_conventions():
    inputs = make_inputs(2, 3, 4, 9)
    args = {k: v for k, v in inputs.items() if k != "initial_state"}
    out = selective_scan_fn(**args)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 9)
    out2, last = selective_scan_fn(**args, return_last_state=True)
    assert last.shape == (2, 3, 4) and last.dtype == torch.float32
    torch.testing.assert_close(out, out2, rtol=0, atol=0)
    ref_out = selective_scan_ref(**args)
    assert isinstance(ref_out, torch.Tensor)


# --- gradients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [2], indirect=True)
@pytest.mark.parametrize("B_kind,C_kind", [("fixed", "fixed"), ("variable", "grouped"), ("grouped", "variable")])
def test_gradcheck_float64(cpu_isa, chunk, B_kind, C_kind):
    inputs = make_inputs(2, 4, 3, 7, torch.float64, B_kind, C_kind, has_init=True)
    names = [k for k, v in inputs.items() if v is not None]
    leaves = [inputs[k].clone().requires_grad_(True) for k in names]

    def fn(*xs):
        kw = dict(zip(names, xs))
        init = kw.pop("initial_state")
        return selective_scan_fn(**kw, delta_softplus=True, return_last_state=True, initial_state=init, backend="cpu")

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradient_flows_only_through_last_state():
    inputs = make_inputs(1, 3, 4, 10, has_init=True)
    u = inputs["u"].requires_grad_(True)
    init = inputs["initial_state"].requires_grad_(True)
    args = {k: v for k, v in inputs.items() if k != "initial_state"}
    _, last = selective_scan_fn(**args, return_last_state=True, initial_state=init)
    gu, gi = torch.autograd.grad(last.sum(), [u, init])
    args64 = {k: (v.detach().double().requires_grad_(k == "u") if v is not None else None) for k, v in args.items()}
    init64 = init.detach().double().requires_grad_(True)
    _, last_r = selective_scan_ref(**args64, return_last_state=True, initial_state=init64)
    gu_r, gi_r = torch.autograd.grad(last_r.sum(), [args64["u"], init64])
    terms = scan_terms(**args64, initial_state=init64, grad_out=torch.zeros_like(u), grad_last=torch.ones_like(last))
    close_ulp(gu, gu_r, "du", ulps=ULPS["u"], scale=terms["u"])
    close_ulp(gi, gi_r, "dinitial_state", ulps=ULPS["initial_state"], scale=terms["initial_state"])


# --- layouts, determinism, memory ----------------------------------------------------------------


def test_non_contiguous_inputs_give_identical_results():
    base = make_inputs(2, 6, 8, 40, torch.float32, "variable", "grouped", groups=3, has_init=True)
    args = {k: v for k, v in base.items() if k != "initial_state"}
    expected = selective_scan_fn(**args, delta_softplus=True, initial_state=base["initial_state"])
    strided = dict(args)
    for name in ("u", "delta", "z"):  # channel-strided views (unit stride along seqlen): no copy
        wide = torch.zeros(2, 12, 40)
        wide[:, ::2] = args[name]
        strided[name] = wide[:, ::2]
        assert not strided[name].is_contiguous() and strided[name].stride(-1) == 1
    strided["B"] = args["B"].transpose(-1, -2).contiguous().transpose(-1, -2)  # seqlen-strided
    strided["C"] = args["C"].permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    strided["delta"] = args["delta"].transpose(1, 2).contiguous().transpose(1, 2)  # copied by the wrapper
    got = selective_scan_fn(**strided, delta_softplus=True, initial_state=base["initial_state"])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_deterministic_across_runs_and_thread_counts():
    inputs = make_inputs(2, 40, 16, 300, torch.float32, "variable", "grouped", groups=4, has_init=True)
    g = torch.Generator().manual_seed(5)
    grad_out = torch.randn(2, 40, 300, generator=g)
    grad_last = torch.randn(2, 40, 16, generator=g)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (threads, threads, 1):
            torch.set_num_threads(n)
            out, last, grads = run(selective_scan_fn, inputs, True, grad_out, grad_last)
            results.append([out, last, *grads.values()])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_backward_never_materialises_the_full_state():
    """Peak memory of forward+backward stays far below one (batch, dim, seqlen, dstate) tensor."""
    batch, dim, dstate, seqlen = 1, 128, 16, 2048
    inputs = make_inputs(batch, dim, dstate, seqlen)
    leaves = {k: v.requires_grad_(True) for k, v in inputs.items() if v is not None}

    def step():
        out = selective_scan_fn(**leaves, delta_softplus=True)
        out.backward(torch.ones_like(out))

    full_state = batch * dim * seqlen * dstate * 4
    seq_tensor = batch * dim * seqlen * 4
    peak = peak_allocated_bytes(step)
    # out, du, ddelta, dz (+ the grad_out above) are sequence-sized by necessity; the rest is small.
    assert 0 < peak < 5 * seq_tensor + full_state // 4, (peak, full_state)


# --- torch.compile and opcheck ------------------------------------------------------------------


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    inputs = make_inputs(2, 6, 8, 33, torch.float32, "variable", "grouped", groups=3, has_init=True)
    leaves = {k: v.requires_grad_(True) for k, v in inputs.items() if v is not None}

    def f(u, delta, A, B, C, D, z, delta_bias, initial_state):
        out, last = selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, True, True, initial_state=initial_state)
        return out.sum() + (last * last).sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic)
    loss_c = compiled(**leaves)
    grads_c = torch.autograd.grad(loss_c, list(leaves.values()))
    loss_e = f(**leaves)
    grads_e = torch.autograd.grad(loss_e, list(leaves.values()))
    # the same kernels: gradients to the ulp; the loss's sums may be reordered (a few ulp of sum|terms|)
    out, last = selective_scan_fn(
        **{k: v.detach() for k, v in leaves.items()}, delta_softplus=True, return_last_state=True
    )
    close_ulp(loss_c, loss_e, "loss", ulps=4, scale=(out.abs().sum() + last.square().sum()).item())
    for name, gc, ge in zip(leaves, grads_c, grads_e):
        close_ulp(gc, ge, f"d{name}", ulps=1, scale=0.0)


def opcheck_samples():
    """Sample arguments for torch.library.opcheck, per registered op."""
    fwd, bwd = [], []
    for B_kind, C_kind, opt in [
        ("fixed", "fixed", True),
        ("variable", "grouped", True),
        ("grouped", "variable", False),
    ]:
        inp = make_inputs(2, 4, 3, 9, torch.float32, B_kind, C_kind, has_D=opt, has_z=opt, has_bias=opt, has_init=opt)
        args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")]
        fwd.append([a.clone().requires_grad_(True) if a is not None else None for a in args] + [True, 4])
        out, last, ckpt = torch.ops.medkernels.selective_scan_fwd(*args, True, 4)
        bwd.append([torch.randn_like(out), torch.randn_like(last) if opt else None, *args, ckpt, True, 4])
    samples = {"selective_scan_fwd": fwd, "selective_scan_bwd": bwd}
    if hasattr(torch.ops.medkernels, "selective_scan_fwd_triton"):
        samples["selective_scan_fwd_triton"] = fwd[1:2]
        samples["selective_scan_bwd_triton"] = bwd[1:2]
    return samples


# --- bad input -------------------------------------------------------------------------------------


def _good():
    return {k: v for k, v in make_inputs(2, 4, 3, 5, has_init=True).items()}


def _with(**changes):
    args = _good()
    for k, v in changes.items():
        args[k] = v(args) if callable(v) else v
    return args


BAD = [
    ("u rank", _with(u=lambda a: a["u"][0]), ValueError, r"u must have shape \(batch, dim, seqlen\), got \(4, 5\)"),
    ("u int", _with(u=lambda a: a["u"].long()), ValueError, r"u must be float32, float16 or bfloat16.*torch.int64"),
    ("delta shape", _with(delta=lambda a: a["delta"][..., :4]), ValueError, r"delta must have the shape of u"),
    ("delta dtype", _with(delta=lambda a: a["delta"].half()), ValueError, r"delta must have the dtype of u"),
    ("z shape", _with(z=lambda a: a["z"][:1]), ValueError, r"z must have the shape of u"),
    (
        "B seqlen",
        _with(B=lambda a: a["B"][..., :4]),
        ValueError,
        r"variable B must have shape \(batch, dstate, seqlen\) = \(2, 3, 5\), got \(2, 3, 4\)",
    ),
    ("C groups", _with(C=torch.randn(2, 3, 3, 5)), ValueError, r"C has 3 groups .* which must divide dim=4"),
    ("B rank", _with(B=torch.randn(3)), ValueError, r"B must be \(dim, dstate\), \(batch, dstate, seqlen\)"),
    ("B fixed dtype", _with(B=torch.randn(4, 3).half()), ValueError, r"fixed B must have dtype torch.float32"),
    ("C variable dtype", _with(C=torch.randn(2, 3, 5).double()), ValueError, r"variable C must have the dtype of u"),
    ("A shape", _with(A=torch.randn(5, 3)), ValueError, r"A must have shape \(dim, dstate\) with dim=4"),
    ("A dtype", _with(A=lambda a: a["A"].half()), ValueError, r"A must be torch.float32 for torch.float32 inputs"),
    ("D dtype", _with(D=lambda a: a["D"].half()), ValueError, r"D must be torch.float32 \(like A\), got torch.float16"),
    ("D shape", _with(D=torch.randn(3)), ValueError, r"D must have shape \(dim,\) = \(4,\)"),
    (
        "delta_bias dtype",
        _with(delta_bias=lambda a: a["delta_bias"].double()),
        ValueError,
        r"delta_bias must be torch.float32 \(like A\), got torch.float64",
    ),
    (
        "initial_state shape",
        _with(initial_state=torch.randn(2, 4, 4)),
        ValueError,
        r"initial_state must have shape \(batch, dim, dstate\) = \(2, 4, 3\)",
    ),
    (
        "initial_state dtype",
        _with(initial_state=lambda a: a["initial_state"].bfloat16()),
        ValueError,
        r"initial_state must be torch.float32",
    ),
    ("mixed devices", _with(A=lambda a: a["A"].to("meta")), ValueError, r"A is on meta but u is on cpu"),
    ("not a tensor", _with(A=[[0.0]]), TypeError, r"A must be a torch.Tensor, got list"),
    ("missing", _with(delta=None), TypeError, r"delta is required"),
    ("complex A", _with(A=lambda a: a["A"].to(torch.complex64)), NotImplementedError, r"complex A"),
]


@pytest.mark.parametrize("fn", [selective_scan_fn, selective_scan_ref], ids=["fn", "ref"])
@pytest.mark.parametrize("case,args,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(fn, case, args, exc, match):
    args = dict(args)
    init = args.pop("initial_state")
    with pytest.raises(exc, match=match):
        fn(**args, initial_state=init)


def test_cpp_checks_guard_direct_op_calls():
    a = _good()
    args = [a[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")]
    with pytest.raises(RuntimeError, match=r"^selective_scan_fwd: chunk_size must be >= 1"):
        torch.ops.medkernels.selective_scan_fwd(*args, True, 0)
    args[2] = args[2].double()
    with pytest.raises(RuntimeError, match=r"^selective_scan_fwd: A must have dtype Float"):
        torch.ops.medkernels.selective_scan_fwd(*args, True, 4)
    out, last, ckpt = torch.ops.medkernels.selective_scan_fwd(
        *[a[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")], True, 4
    )
    with pytest.raises(RuntimeError, match=r"^selective_scan_bwd: checkpoints must have shape"):
        torch.ops.medkernels.selective_scan_bwd(
            torch.ones_like(out),
            None,
            *[a[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")],
            ckpt[:, :, :1],
            True,
            4,
        )


def test_grid_is_not_trivially_satisfied():
    """The comparison would catch a wrong kernel: a perturbed D changes the output beyond tolerance,
    and so does an error in the last bits (every output 3 ulp-of-tolerance off)."""
    inputs = make_inputs(2, 6, 5, 23)
    args = {k: v for k, v in inputs.items() if k != "initial_state"}
    wrong = dict(args, D=args["D"] + 0.01)
    out = selective_scan_fn(**wrong, delta_softplus=True)
    ref = selective_scan_ref(**{k: (None if v is None else v.double()) for k, v in args.items()}, delta_softplus=True)
    terms = scan_terms(**args, delta_softplus=True)["out"]
    with pytest.raises(AssertionError):
        close_ulp(out, ref, "out", ulps=ULPS["out"], scale=terms)
    good = selective_scan_fn(**args, delta_softplus=True)
    close_ulp(good, ref, "out", ulps=ULPS["out"], scale=terms)
    with pytest.raises(AssertionError):
        close_ulp(good * (1 + 3 * ULPS["out"] * EPS[torch.float32]), ref, "out", ulps=ULPS["out"], scale=terms)


# --- on a GPU (marked gpu: `pytest -m gpu`, scripts/gpu_check.sh; skipped without CUDA) ----------


GPU_BACKENDS = backends("cuda", "triton", device="cuda")


def _to(inputs, device):
    return {k: (None if v is None else v.to(device)) for k, v in inputs.items()}


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("B_kind,C_kind", [("variable", "variable"), ("grouped", "fixed"), ("fixed", "grouped")])
def test_scan_matches_reference(backend, dtype, B_kind, C_kind):
    inputs = make_inputs(2, 8, 16, 2500, dtype, B_kind, C_kind, groups=2, has_init=True, seed=3)
    check_against_reference(_to(inputs, "cuda"), backend=backend)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("seqlen,dstate", [(16384, 16), (4097, 64), (3000, 1)])
def test_scan_long_sequences_match_the_cpu_kernel(backend, seqlen, dstate):
    inputs = make_inputs(2, 24, dstate, seqlen, torch.float32, "variable", "grouped", groups=3, has_init=True, seed=4)
    leaves_cpu = {k: v.clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    leaves_gpu = {k: v.cuda().requires_grad_(True) for k, v in inputs.items() if v is not None}
    results = []
    for leaves, be in ((leaves_cpu, "cpu"), (leaves_gpu, backend)):
        args = {k: leaves.get(k) for k in inputs}
        init = args.pop("initial_state")
        out, last = selective_scan_fn(
            **args, delta_softplus=True, return_last_state=True, initial_state=init, backend=be
        )
        g = torch.autograd.grad(out.square().sum() + last.sum(), list(leaves.values()))
        results.append([out, last, *g])
    for a, b in zip(results[1], results[0]):
        close(a.cpu(), b, 1e-3, 1e-3, f"{backend} vs cpu")


@gpu_test
@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_backward_determinism(deterministic):
    """Everything is bit-reproducible; variable dB/dC too under torch.use_deterministic_algorithms."""
    inputs = make_inputs(2, 32, 16, 3000, torch.bfloat16, "variable", "grouped", groups=2, has_init=True, seed=5)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic, warn_only=True)  # warn_only: the reference uses cuBLAS
    try:
        runs = _two_backward_runs(inputs)
        if deterministic:  # the per-block partial sums must also be right
            check_against_reference(_to(inputs, "cuda"), backend="cuda")
    finally:
        torch.use_deterministic_algorithms(before)
    for name in runs[0]:
        if name in ("B", "C") and not deterministic:
            close(runs[0][name], runs[1][name], *TOL[torch.bfloat16], name)
        else:
            assert torch.equal(runs[0][name], runs[1][name]), name


def _two_backward_runs(inputs):
    runs = []
    for _ in range(2):
        leaves = {k: v.cuda().requires_grad_(True) for k, v in inputs.items() if v is not None}
        args = {k: leaves.get(k) for k in inputs}
        init = args.pop("initial_state")
        out = selective_scan_fn(**args, delta_softplus=True, initial_state=init, backend="cuda")
        runs.append(dict(zip(leaves, torch.autograd.grad(out.float().square().sum(), list(leaves.values())))))
    return runs
