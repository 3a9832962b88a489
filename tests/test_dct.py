"""The 2D DCT-II and its inverse against scipy, truncation and zero-fill, every backend, gradients,
opcheck, torch.compile, bad input; the DCT attention module."""

from __future__ import annotations

import math

import pytest
import torch
from kit import TEST_DEVICE, close, close_ulp, gpu_test, on_gpu, requires_triton

from medkernels import nn as mknn
from medkernels import ops

sfft = pytest.importorskip("scipy.fft")

SHAPES = [(7, 5), (3, 1, 9), (2, 3, 56, 56), (1, 1), (4, 13, 31), (2, 64, 3)]
NORMS = ["ortho", "backward", "forward", None]


def scipy_dct(x, norm, inverse=False, s=None):
    fn = sfft.idctn if inverse else sfft.dctn
    return torch.from_numpy(fn(x.detach().double().numpy(), type=2, norm=norm, axes=(-2, -1), s=s))


def matrices(shape, norm="ortho", inverse=False, keep=None, s=None):
    """The float64 (mh, mw) of dct2d(keep=) or idct2d(s=) on a (..., H, W) input: out = mh @ x @ mw.T."""
    H, W = shape[-2:]
    if inverse:
        Ho, Wo = s or (H, W)
        return ops.dct_matrix(Ho, norm, inverse=True)[:, :H], ops.dct_matrix(Wo, norm, inverse=True)[:, :W]
    kh, kw = keep or (H, W)
    return ops.dct_matrix(H, norm)[:kh], ops.dct_matrix(W, norm)[:kw]


def dct_terms(x, norm="ortho", inverse=False, keep=None, s=None):
    """sum|terms| of each output of the separable transform: |mh| @ |x| @ |mw|.T, in float64."""
    mh, mw = matrices(x.shape, norm, inverse, keep, s)
    return mh.abs() @ x.detach().cpu().double().abs() @ mw.abs().T


# Error bound in ulp (of the dtype compared) of sum|terms|. float32 against scipy: measured at most
# 0.8 (both ISAs, the Triton interpreter, three seeds), set 2. float16/bfloat16: one ulp of their dtype
# (measured 0.08: the output's rounding). float64 against scipy: measured at most 2.55 (long sweep) since
# dct_matrix reduces its cos argument k (2i + 1) mod 4n in integers (it was 21-43 with the unreduced
# argument), so 8; the round trip (measured 0.54) 2, truncation and zero fill (measured 1.03) 4.
ULPS = {torch.float64: 8, torch.float32: 2}
ROUND_TRIP_ULPS64, KEEP_ULPS64 = 2, 4
LOWP_ULPS = 1


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_scipy_float64(shape, norm, backend):
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(len(shape)))
    y = ops.dct2d(x, norm, backend=backend)
    u = ULPS[torch.float64]
    terms = dct_terms(x, norm)
    close_ulp(y, scipy_dct(x, norm), "dct2d", ulps=u, dtype=torch.float64, scale=terms)
    # the round trip: the inverse's sum|terms| over the forward's (which bounds the forward's error)
    close_ulp(
        ops.idct2d(y, norm, backend=backend),
        x,
        "idct2d(dct2d(x))",
        ulps=ROUND_TRIP_ULPS64,
        dtype=torch.float64,
        scale=dct_terms(terms, norm, inverse=True),
    )
    close_ulp(
        ops.idct2d(x, norm, backend=backend),
        scipy_dct(x, norm, inverse=True),
        "idct2d",
        ulps=u,
        dtype=torch.float64,
        scale=dct_terms(x, norm, inverse=True),
    )


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_float32_and_half_inputs(cpu_isa, backend):
    x = torch.randn(3, 4, 19, 23, generator=torch.Generator().manual_seed(0))
    want = scipy_dct(x, "ortho")
    close_ulp(ops.dct2d(x, backend=backend), want, "float32", ulps=ULPS[torch.float32], scale=dct_terms(x))
    for dtype in (torch.float16, torch.bfloat16):
        y = ops.dct2d(x.to(dtype), backend=backend)
        assert y.dtype == dtype
        close_ulp(
            y, scipy_dct(x.to(dtype), "ortho"), str(dtype), ulps=LOWP_ULPS, dtype=dtype, scale=dct_terms(x.to(dtype))
        )


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_keep_and_s_are_truncation_and_zero_fill(backend):
    x = torch.randn(2, 3, 17, 12, dtype=torch.float64)
    full = scipy_dct(x, "ortho")
    low = ops.dct2d(x, keep=(6, 5), backend=backend)
    u = KEEP_ULPS64
    close_ulp(low, full[..., :6, :5], "keep", ulps=u, dtype=torch.float64, scale=dct_terms(x, keep=(6, 5)))
    close_ulp(
        ops.dct2d(x, keep=4, backend=backend),
        full[..., :4, :4],
        "int keep",
        ulps=u,
        dtype=torch.float64,
        scale=dct_terms(x, keep=(4, 4)),
    )
    # scipy's s zero-pads the coefficients: the low-pass reconstruction
    want = scipy_dct(low, "ortho", inverse=True, s=(17, 12))
    terms = dct_terms(low, inverse=True, s=(17, 12))
    close_ulp(ops.idct2d(low, s=(17, 12), backend=backend), want, "s", ulps=u, dtype=torch.float64, scale=terms)
    padded = torch.zeros_like(full)
    padded[..., :6, :5] = full[..., :6, :5]
    close_ulp(want, scipy_dct(padded, "ortho", inverse=True), "zero fill", ulps=u, dtype=torch.float64, scale=terms)


def test_dct_matrix_is_orthonormal_and_inverts():
    # ulp of sum|terms| of the product, |a| @ |b|: measured 5 (35 at n = 56 before the cos argument was
    # reduced, see ULPS)
    eye, u = torch.eye, 12
    for n in (1, 2, 7, 56):
        c = ops.dct_matrix(n)
        close_ulp(c @ c.T, eye(n, dtype=torch.float64), "ortho", ulps=u, dtype=torch.float64, scale=c.abs() @ c.abs().T)
        for norm in NORMS:
            a, b = ops.dct_matrix(n, norm, inverse=True), ops.dct_matrix(n, norm)
            close_ulp(
                a @ b,
                eye(n, dtype=torch.float64),
                f"inverse {norm}",
                ulps=u,
                dtype=torch.float64,
                scale=a.abs() @ b.abs(),
            )


@requires_triton
def test_triton_matches_scipy():
    """On CPU through the Triton interpreter (TRITON_INTERPRET=1): small shapes only."""
    x = torch.randn(2, 3, 13, 9, generator=torch.Generator().manual_seed(1)).to(TEST_DEVICE)
    if on_gpu("triton", TEST_DEVICE):  # the tolerances validated on a GPU (see kit.on_gpu)
        close(ops.dct2d(x, backend="triton").cpu(), scipy_dct(x.cpu(), "ortho"), 1e-5, 1e-5, "dct2d")
        low = ops.dct2d(x, keep=(5, 4), backend="triton")
        close(
            ops.idct2d(low, s=(13, 9), backend="triton").cpu(),
            scipy_dct(low.cpu(), "ortho", inverse=True, s=(13, 9)),
            1e-5,
            1e-5,
            "idct2d s",
        )
        xr = x.clone().requires_grad_(True)
        g = torch.autograd.grad(ops.dct2d(xr, keep=(5, 4), backend="triton").square().sum(), xr)[0]
        xr2 = x.clone().requires_grad_(True)
        close(g, torch.autograd.grad(ops.dct2d_ref(xr2, keep=(5, 4)).square().sum(), xr2)[0], 1e-5, 1e-5, "grad")
        return
    u = ULPS[torch.float32]
    close_ulp(ops.dct2d(x, backend="triton").cpu(), scipy_dct(x.cpu(), "ortho"), "dct2d", ulps=u, scale=dct_terms(x))
    low = ops.dct2d(x, keep=(5, 4), backend="triton")
    want = scipy_dct(low.cpu(), "ortho", inverse=True, s=(13, 9))
    close_ulp(
        ops.idct2d(low, s=(13, 9), backend="triton").cpu(),
        want,
        "idct2d s",
        ulps=u,
        scale=dct_terms(low, inverse=True, s=(13, 9)),
    )
    xr = x.clone().requires_grad_(True)
    g = torch.autograd.grad(ops.dct2d(xr, keep=(5, 4), backend="triton").square().sum(), xr)[0]
    xr2 = x.detach().cpu().double().requires_grad_(True)
    # d/dx sum(y^2) = mh.T (2 y) mw: sum|terms| with y's own bound in place of |y|
    mh, mw = matrices(x.shape, keep=(5, 4))
    terms = mh.abs().T @ (2 * dct_terms(x, keep=(5, 4))) @ mw.abs()
    close_ulp(
        g, torch.autograd.grad(ops.dct2d_ref(xr2, keep=(5, 4)).square().sum(), xr2)[0], "grad", ulps=u, scale=terms
    )


# --- gradients, compile, opcheck -----------------------------------------------------------------------


def test_gradcheck_float64():
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.dct2d(x, "backward", keep=(3, 2), backend="cpu"), [x])
    c = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: ops.idct2d(c, s=(5, 4), backend="cpu"), [c])
    mh = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    mw = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(torch.ops.medkernels.separable2d, [x, mh, mw])


COMPILE_ULPS = 1  # measured 0


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    x = torch.randn(2, 3, 10, 12, requires_grad=True)

    def f(x):
        low = ops.dct2d(x, keep=(5, 6))
        return ops.idct2d(low.relu(), s=(10, 12)).square().sum()

    loss_c = torch.compile(f, fullgraph=True, dynamic=dynamic)(x)
    loss_e = f(x)
    # the same kernels: the loss's sum may be reordered (ulp of its sum|terms|, the loss itself; measured 0.65)
    close_ulp(loss_c, loss_e, "loss", ulps=2, scale=loss_e.item())
    close_ulp(torch.autograd.grad(loss_c, x)[0], torch.autograd.grad(loss_e, x)[0], "grad", ulps=COMPILE_ULPS)


def opcheck_samples():
    x = torch.randn(2, 3, 5, 4)
    mh = ops.dct_matrix(5)[:3].float()
    mw = ops.dct_matrix(4, inverse=True).float()
    grad = lambda xs: [t.clone().requires_grad_(True) for t in xs]  # noqa: E731
    samples = {"separable2d": [grad([x, mh, mw]), [x.double(), mh.double(), mw.double()], [x[0, 0], mh, mw]]}
    if hasattr(torch.ops.medkernels, "separable2d_triton"):
        samples["separable2d_triton"] = [grad([x, mh, mw])]
    return samples


# --- bad input -------------------------------------------------------------------------------------------

BAD = [
    ("1-D", lambda: ops.dct2d(torch.randn(5)), ValueError, r"x must be \(\.\.\., H, W\)"),
    ("integer", lambda: ops.dct2d(torch.ones(3, 3, dtype=torch.int64)), ValueError, "floating point"),
    ("not a tensor", lambda: ops.dct2d([[1.0]]), TypeError, "x must be a torch.Tensor"),
    ("norm", lambda: ops.dct2d(torch.randn(3, 3), norm="unitary"), ValueError, "norm must be"),
    (
        "keep too large",
        lambda: ops.dct2d(torch.randn(4, 6), keep=(5, 2)),
        ValueError,
        r"keep must be at most the input's last two sizes \(4, 6\)",
    ),
    ("keep zero", lambda: ops.dct2d(torch.randn(4, 6), keep=(0, 2)), ValueError, "keep must be an int or a pair"),
    ("s too small", lambda: ops.idct2d(torch.randn(4, 6), s=(3, 6)), ValueError, "s must be at least"),
]


@pytest.mark.parametrize("case,call,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(case, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_cpp_checks_guard_direct_op_calls():
    with pytest.raises(RuntimeError, match=r"separable2d: mh must be \(out_h, 5\)"):
        torch.ops.medkernels.separable2d(torch.randn(5, 4), torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="separable2d: x must be float32 or float64"):
        torch.ops.medkernels.separable2d(torch.randn(5, 4).half(), torch.randn(3, 5).half(), torch.randn(2, 4).half())


# --- DCT attention ---------------------------------------------------------------------------------------


def test_dct_attention_equals_attention_over_kept_coefficients():
    torch.manual_seed(0)
    m = mknn.DCTAttention(16, 2, (4, 3)).eval()
    x = torch.randn(2, 16, 9, 7, dtype=torch.float64)
    m = m.double().requires_grad_(False)
    # independent: scipy's DCT, attention over kept coefficients, zero-filled scipy inverse, spatial projection
    low = scipy_dct(x, "ortho")[..., :4, :3]
    tokens = low.reshape(2, 16, 12).transpose(1, 2)
    q, k, v = m.qkv(tokens).reshape(2, 12, 3, 2, 8).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-1, -2) * 8**-0.5, -1) @ v
    back = scipy_dct(
        a.transpose(1, 2).reshape(2, 12, 16).transpose(1, 2).reshape(2, 16, 4, 3), "ortho", inverse=True, s=(9, 7)
    )
    want = m.proj(back.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    # float64 throughout: measured 5-12 ulp of max(|out|, rms(out)) over sixteen seeds
    close_ulp(m(x), want, "module", ulps=32, dtype=torch.float64)
    assert set(m.state_dict()) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}


def test_dct_attention_keep_ratio_and_full_keep():
    m = mknn.DCTAttention(8, 2)
    assert m.kept(56, 56) == (28, 28) and m.kept(5, 9) == (2, 4)
    assert mknn.DCTAttention(8, 2, keep_ratio=1.0).kept(6, 5) == (6, 5)
    # a ratio resolves to the same block as the explicit keep
    torch.manual_seed(1)
    by_ratio = mknn.DCTAttention(8, 2, 0.25).eval()
    by_size = mknn.DCTAttention(8, 2, (3, 4)).eval()
    by_size.load_state_dict(by_ratio.state_dict())
    x = torch.randn(1, 8, 6, 8)
    close(by_ratio(x), by_size(x), 0, 0, "ratio vs size")


def test_dct_attention_trains_and_rejects_bad_config():
    m = mknn.DCTAttention(8, 2, 0.5, attn_drop=0.1)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    m(x).square().sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())
    with pytest.raises(ValueError, match="larger than the 4x4 map"):
        mknn.DCTAttention(8, 2, (5, 2))(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="must divide"):
        mknn.DCTAttention(9, 2)
    with pytest.raises(ValueError, match="fractional keep"):
        mknn.DCTAttention(8, 2, 1.5)
    with pytest.raises(ValueError, match="not both"):
        mknn.DCTAttention(8, 2, (2, 2), keep_ratio=0.5)
    with pytest.raises(ValueError, match=r"expected \[B, 8, H, W\]"):
        mknn.DCTAttention(8, 2)(torch.randn(1, 4, 4, 4))
    assert math.isclose(mknn.DCTAttention(8, 2).keep, 0.25)


# --- on a GPU (marked gpu: `pytest -m gpu`, scripts/gpu_check.sh; skipped without CUDA) ----------


@gpu_test
@pytest.mark.parametrize("norm", ["ortho", "backward"])
def test_dct_triton_on_gpu(norm):
    x = torch.randn(4, 64, 56, 56, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    outs = []
    for device, backend, dtype in (("cpu", "cpu", torch.float64), ("cuda", "triton", torch.float32)):
        xr = x.to(device=device, dtype=dtype).requires_grad_(True)
        low = ops.dct2d(xr, norm, keep=(28, 28), backend=backend)
        back = ops.idct2d(low, norm, s=(56, 56), backend=backend)
        outs.append([low, back, *torch.autograd.grad(back.square().sum() + low.sum(), xr)])
    for a, r in zip(outs[1], outs[0]):
        close(a.cpu().double(), r, 1e-4, 1e-4, f"dct {norm}")


@gpu_test
def test_dct_attention_module_on_gpu_matches_cpu():
    torch.manual_seed(0)
    m = mknn.DCTAttention(64, 2, keep_ratio=0.25)
    x = torch.randn(2, 64, 56, 56)
    mg = mknn.DCTAttention(64, 2, keep_ratio=0.25).cuda()
    mg.load_state_dict(m.state_dict())
    close(mg(x.cuda()).cpu(), m(x), 1e-3, 1e-3, "dct attention")
