"""The test kit: what every test file imports (``from kit import ...``: pytest puts tests/ on sys.path;
conftest.py keeps only fixtures and setup).

- Devices and backends: ``TEST_DEVICE`` (cuda when present, else cpu), ``LONG`` (MEDKERNELS_LONG_TESTS=1),
  the skip decorators ``requires_cuda`` / ``requires_triton``, ``gpu_test`` (a test that runs on a GPU:
  marked ``gpu``, so that ``pytest -m gpu`` selects it, and skipped without CUDA; ``GPU``: those marks, for
  ``pytest.param``), and ``backends(...)``, the pytest params of a ``backend`` argument, each marked to skip
  where it cannot run.
- Tolerances: ``EPS`` per dtype, ``close`` (rtol/atol with a message), ``close_ulp`` (ulps of the dtype's
  eps times max(|expected|, scale)), ``close_as_pytorch`` (flash-attention's rule: the kernel's error at
  most ``factor`` times PyTorch's own same-dtype error), ``rms``, and the sizes of what the ops' results
  sum for ``close_ulp``'s scale: ``scan_terms`` (selective scans), ``attention_terms`` (masked softmax
  attention); ``on_gpu`` says whether a check runs a GPU kernel (GPU runs keep the tolerances they were
  validated with).

Adding an op's tests: one tests/test_<op>.py with its grid against ``<op>_ref`` using these tolerances, a
module-level ``opcheck_samples()`` ({op name: [argument lists]}; tests/test_opcheck.py finds it), and its GPU
cases in the same file, parametrized with ``backends(..., device="cuda")`` or decorated with ``gpu_test``.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from medkernels.ops import _library

# Long sweeps run when MEDKERNELS_LONG_TESTS=1 (the default suite stays fast).
LONG = os.environ.get("MEDKERNELS_LONG_TESTS", "") not in ("", "0")

# --- devices, backends and skips ------------------------------------------------------------------

# Every test that needs a GPU skips through this one decorator (GPU tests take it with the gpu mark:
# gpu_test, GPU, backends(device="cuda")); Triton tests through the other.
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
requires_triton = pytest.mark.skipif(not _library.HAS_TRITON, reason="needs triton (pip install triton)")
TEST_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# The marks of a test that runs on a GPU: `pytest -m gpu` (scripts/gpu_check.sh) selects it; no GPU, it skips.
GPU = (pytest.mark.gpu, requires_cuda)


def gpu_test(test):
    """Decorates a test that runs on a CUDA GPU: marked ``gpu`` and skipped without CUDA."""
    for mark in GPU:
        test = mark(test)
    return test


def backends(*names: str, device: str = "cpu") -> list:
    """pytest params for a test's ``backend`` argument (the value is the backend's name, the id too).

    device="cpu" (the tests run on TEST_DEVICE): "cpu" and "reference" always run; "triton" skips without
    triton, and runs in Triton's interpreter without a GPU (on the GPU where CUDA is present).
    device="cuda" (the test puts its tensors on the GPU): every param is a GPU test (marked ``gpu``,
    skipped without CUDA). "cuda" is a GPU test on either; "triton" always also skips without triton."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
    params = []
    for name in names:
        marks = list(GPU) if device == "cuda" or name == "cuda" else []
        if name == "triton":
            marks.append(requires_triton)
        params.append(pytest.param(name, marks=marks, id=name))
    return params


# The ulp allowances of the tests are measured on the CPU kernels and Triton's interpreter. Runs on a
# GPU (the `gpu` tests, Triton tests where CUDA is present) keep the tolerances they were validated
# with: a GPU's exp and log are hardware approximations, and none was at hand to measure them.
def on_gpu(backend=None, device=None) -> bool:
    """Whether a check runs a GPU kernel: tensors on CUDA, or a GPU backend where CUDA is present."""
    if device is not None and torch.device(device).type == "cuda":
        return True
    return backend in ("cuda", "triton") and torch.cuda.is_available()


# --- comparisons ----------------------------------------------------------------------------------


def _common(actual: torch.Tensor, expected: torch.Tensor):
    """Both in float64 when either is float64 (rounding a float64 result to float32 first would hide
    every difference below float32's ulp), else both in float32."""
    wide = torch.float64 if torch.float64 in (actual.dtype, expected.dtype) else torch.float32
    return actual.detach().cpu().to(wide), expected.detach().cpu().to(wide)


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, what: str) -> None:
    """assert_close (in float64 if either side is float64, else float32) with a message naming the
    compared quantity."""
    actual, expected = _common(actual, expected)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# --- tolerances from the arithmetic ---------------------------------------------------------------

EPS = {dt: torch.finfo(dt).eps for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}


def rms(t: torch.Tensor) -> float:
    """Root mean square of a tensor's finite entries (0 for an empty tensor)."""
    t = t.detach().double()
    t = t[torch.isfinite(t)]
    return t.square().mean().sqrt().item() if t.numel() else 0.0


def close_ulp(
    actual: torch.Tensor,
    expected: torch.Tensor,
    what: str,
    *,
    ulps: float,
    dtype: torch.dtype = torch.float32,
    scale=None,
) -> None:
    """Elementwise |actual - expected| <= ulps * eps(dtype) * max(|expected|, scale).

    ``scale`` is the size of what the element sums, which bounds its rounding error whatever cancels:
    a float or a tensor broadcastable to ``expected``, e.g. sum|terms| of the reduction or recurrence
    that computes it (>= |expected|); default the rms of ``expected``, the absolute floor for elements
    small through cancellation. ``ulps`` is derived from the op and measured: tests set it a small
    margin above the largest error over their seeded grid. Non-finite entries must match exactly."""
    a, e = _common(actual, expected)
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(expected.shape)}"
    if scale is None:
        scale = rms(e)
    if isinstance(scale, torch.Tensor):
        scale = scale.detach().cpu().to(e.dtype)
    finite = torch.isfinite(e)
    assert torch.equal(finite, torch.isfinite(a)) and torch.allclose(a[~finite], e[~finite], equal_nan=True), (
        f"{what}: non-finite entries differ"
    )
    # the scale never below the dtype's smallest normal: float16 gradients reach subnormals
    size = torch.maximum(e.abs(), torch.as_tensor(scale, dtype=e.dtype)).clamp_min(torch.finfo(dtype).tiny)
    bound = ulps * EPS[dtype] * size
    err = torch.where(finite, (a - e).abs(), torch.zeros_like(e))
    bad = ~(err <= bound)
    if bad.any():
        need = torch.where(finite, err / (EPS[dtype] * size), torch.zeros_like(e))
        i = int(need.flatten().argmax())
        idx = tuple(int(x) for x in torch.unravel_index(torch.tensor(i), e.shape))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {e.numel()} elements exceed {ulps:g} ulp ({dtype}) of max(|expected|, "
            f"{'scale' if isinstance(scale, torch.Tensor) else f'{scale:.3g}'}); worst at {idx}: "
            f"actual {a.flatten()[i].item()!r}, expected {e.flatten()[i].item()!r}, needs {need.max().item():.3g} ulp"
        )


def scan_terms(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    grad_out=None,
    grad_last=None,
) -> dict:
    """The size of what every selective-scan result sums, in float64: each result computed in exact
    arithmetic with every product replaced by its absolute value (|u|, |B|, |C|, |D|, |silu(z)|,
    |grad_out|, ... and the decays exp(dt A) > 0), i.e. sum|terms| over the recurrence, the state
    and the batch * seqlen reductions. Rounding error is at most a few ulp of this per rounding
    step, whatever cancels. Keys: out, last_state and (with grad_out) the input names, as the
    gradients they bound; B and C in their own layout (fixed, variable or grouped)."""
    f = lambda t: None if t is None else t.detach().cpu().double()  # noqa: E731
    u, delta, A, B, C, D, z, bias, h0 = map(f, (u, delta, A, B, C, D, z, delta_bias, initial_state))
    batch, dim, L = u.shape
    n = A.shape[1]
    x = delta if bias is None else delta + bias[:, None]
    dt = (F.softplus(x) if delta_softplus else x).abs()
    dsp = torch.sigmoid(x) if delta_softplus else torch.ones_like(x)

    def per_channel(M):  # (batch, dim, n, L) from fixed (dim, n), variable (batch, n, L), grouped (batch, g, n, L)
        if M.dim() == 2:
            return M.abs()[None, :, :, None].expand(batch, dim, n, L)
        if M.dim() == 3:
            return M.abs()[:, None].expand(batch, dim, n, L)
        return M.abs().repeat_interleave(dim // M.shape[1], 1)

    def like(M, t):  # t (batch, dim, n, L) summed into M's layout
        if M.dim() == 2:
            return t.sum((0, 3))
        if M.dim() == 3:
            return t.sum(1)
        return t.reshape(batch, M.shape[1], dim // M.shape[1], n, L).sum(2)

    Bx, Cx, ua = per_channel(B), per_channel(C), u.abs()
    a = torch.exp(dt[:, :, None, :] * A[None, :, :, None])
    drive = dt[:, :, None, :] * Bx * ua[:, :, None, :]
    H = torch.empty(batch, dim, n, L, dtype=torch.float64)
    h = h0.abs() if h0 is not None else torch.zeros(batch, dim, n, dtype=torch.float64)
    start = h
    for t in range(L):
        h = a[..., t] * h + drive[..., t]
        H[..., t] = h
    gate = F.silu(z).abs() if z is not None else torch.ones_like(ua)
    y = (Cx * H).sum(2) + (0 if D is None else D.abs()[:, None] * ua)
    res = {"out": y * gate, "last_state": h}
    if grad_out is None:
        return res
    gy = grad_out.detach().cpu().double().abs() * gate
    G = torch.empty_like(H)
    g = grad_last.detach().cpu().double().abs() if grad_last is not None else torch.zeros_like(start)
    for t in reversed(range(L)):
        g = g + Cx[..., t] * gy[:, :, None, t]
        G[..., t] = g
        g = a[..., t] * g
    H_prev = torch.cat([start[..., None], H[..., :-1]], -1)
    dt4 = dt[:, :, None, :]
    res["u"] = (G * dt4 * Bx).sum(2) + (0 if D is None else D.abs()[:, None] * gy)
    res["delta"] = (G * (A.abs()[None, :, :, None] * a * H_prev + Bx * ua[:, :, None, :])).sum(2) * dsp
    res["A"] = (G * dt4 * a * H_prev).sum((0, 3))
    res["B"] = like(B, G * dt4 * ua[:, :, None, :])
    res["C"] = like(C, gy[:, :, None, :] * H)
    if D is not None:
        res["D"] = (gy * ua).sum((0, 2))
    if z is not None:
        s = torch.sigmoid(z)
        res["z"] = grad_out.detach().cpu().double().abs() * y * s * (1 + z.abs() * (1 - s))  # silu' = s (1 + z (1 - s))
    if bias is not None:
        res["delta_bias"] = res["delta"].sum((0, 2))
    if h0 is not None:
        res["initial_state"] = g
    return res


def attention_terms(build, inputs: dict, grad_out=None, grad_lse=None) -> dict:
    """sum|terms| of masked softmax attention's output, LSE and gradients, in float64.

    ``build(**tensors)`` returns (logits [B, H, N, M] before masking, scale and bias included;
    allowed, broadcastable to the logits; values [B, H, M, Dv]; layout, which takes a [B, H, N, X]
    tensor to the op's output layout); ``inputs`` are the op's tensors by name. The logits' own
    size S = build(|inputs|) bounds their rounding, so P = softmax carries a relative error of a few
    ulp of E = 1 + S; then out sums P E (|v| + |out|), lse |lse| + sum P E, dS = P (dO.v - dO.out + dlse)
    sums P E (|dO|.|v| + |dO|.|out| + |dlse|), and dq, dk, dv, the biases follow dS and P E through
    build by autograd on |inputs| (so GQA, extra tokens and bias tables sum as the op does).
    Keys: out, lse and (with grad_out) the input names."""
    x = {k: v.detach().cpu().double() for k, v in inputs.items() if v is not None}
    with torch.no_grad():
        logits, allowed, values, layout = build(**x)
        logits = logits.masked_fill(~allowed, float("-inf"))
        lse = torch.logsumexp(logits, -1, keepdim=True)
        P = torch.exp(logits - lse).nan_to_num(0.0)  # rows with no key at all (padding) are 0
        lse = lse.nan_to_num(0.0, neginf=0.0)
        out = P @ values
    absx = {k: v.abs().requires_grad_(True) for k, v in x.items()}
    S, _, Va, _ = build(**absx)
    S = S.masked_fill(~allowed, 0.0)
    PE = P * (1 + S.detach())
    res = {
        "out": layout(PE @ values.abs() + PE.sum(-1, keepdim=True) * out.abs()),
        "lse": layout(lse.abs() + PE.sum(-1, keepdim=True))[..., 0],
    }
    if grad_out is None:
        return res
    # the layouts are permutations and reshapes: back to [B, H, N, X] through autograd of layout
    probe = torch.zeros_like(out, requires_grad=True)
    (dO,) = torch.autograd.grad(layout(probe), probe, grad_out.detach().cpu().double().abs())
    glse = torch.zeros_like(lse)
    if grad_lse is not None:
        probe = torch.zeros_like(lse, requires_grad=True)
        (glse,) = torch.autograd.grad(layout(probe)[..., 0], probe, grad_lse.detach().cpu().double().abs())
    dS = PE * (dO @ values.abs().transpose(-1, -2) + (dO * out.abs()).sum(-1, keepdim=True) + glse)
    loss = (dS * S).sum() + ((PE @ Va) * dO).sum()
    names = list(absx)
    for name, g in zip(names, torch.autograd.grad(loss, [absx[k] for k in names], allow_unused=True)):
        res[name] = torch.zeros_like(x[name]) if g is None else g
    return res


def close_as_pytorch(
    actual: torch.Tensor,
    truth: torch.Tensor,
    pytorch: torch.Tensor,
    what: str,
    *,
    factor: float,
    floor_ulps: float = 2.0,
    dtype: torch.dtype | None = None,
) -> None:
    """flash-attention's rule for composite computations: max|actual - truth| <= factor * max|pytorch -
    truth| + floor_ulps * eps * max|truth|, where ``pytorch`` is the same computation in plain PyTorch at
    actual's precision and ``truth`` a float64 (or higher-precision) one: the kernels' error at most
    ``factor`` times PyTorch's own (the floor keeps a lucky exact PyTorch result from making it zero)."""
    dtype = dtype or actual.dtype
    p, t = _common(pytorch, truth)
    err_pt = (p - t).abs().max().item() if t.numel() else 0.0
    tmax = t.abs().max().item() if t.numel() else 0.0
    close_ulp(actual, truth, what, ulps=1, dtype=dtype, scale=factor * err_pt / EPS[dtype] + floor_ulps * tmax)
