"""The fused FasterKAN layer (rswaf_kan) against its reference on every backend: forward and gradients
(x, weight, grid, inv_denominator), float64 gradcheck, opcheck, torch.compile, bad input; the FasterKAN
modules against an independent re-implementation of the unfused layer and upstream state dicts."""

from __future__ import annotations

import random

import pytest
import torch
from kit import LONG, TEST_DEVICE, close, gpu_test, requires_triton

from medkernels import nn as mknn
from medkernels import ops

# dtype -> (rtol, atol as a fraction of the largest reference value). float32: the kernel and the float32
# reference sum up to ~4000 products in different orders; measured at most 1.7e-6 (out, 520 channels x 8),
# 1.4e-6 (inv), 1.2e-6 (grid), 7e-7 (x, w) over SHAPES and 40 sweep seeds.
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-6, 4e-6),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


def make(lead, in_dim, out_dim, G, dtype=torch.float32, seed=0, device="cpu", scale=1.0):
    """x (*lead, in), grid (G,) in [-2, 2], inv_denominator 0-dim, weight (out, in * G)."""
    g = torch.Generator().manual_seed(seed)
    x = (1.5 * scale * torch.randn(*lead, in_dim, generator=g)).to(device, dtype)
    grid = torch.linspace(-2, 2, G, dtype=torch.float64 if dtype == torch.float64 else torch.float32).to(device)
    inv = torch.tensor(1 / 0.33, dtype=grid.dtype).to(device)
    w = (torch.randn(out_dim, in_dim * G, generator=g) / (in_dim * G) ** 0.5).to(device, dtype)
    return x, grid, inv, w


def run(backend, x, grid, inv, w, grads=("x", "grid", "inv", "w"), seed=1):
    """Output and gradients of a random linear loss; the reference runs in float32 on the same rounded
    inputs (float64 for float64)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    leaves = {"x": x, "grid": grid, "inv": inv, "w": w}
    if backend == "reference":
        leaves = {k: (v.to(acc) if k in ("x", "w") else v) for k, v in leaves.items()}
    leaves = {k: v.detach().clone().requires_grad_(k in grads) for k, v in leaves.items()}
    fn = ops.rswaf_kan_ref if backend == "reference" else lambda *a: ops.rswaf_kan(*a, backend=backend)
    out = fn(leaves["x"], leaves["grid"], leaves["inv"], leaves["w"])
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
    got = torch.autograd.grad(out, [leaves[k] for k in grads], g) if grads else []
    return [out, *got]


def check(backend, x, grid, inv, w, grads=("x", "grid", "inv", "w"), what=""):
    rtol, atol = TOL[x.dtype]
    mine = run(backend, x, grid, inv, w, grads)
    want = run("reference", x, grid, inv, w, grads)
    assert mine[0].dtype == x.dtype and mine[0].shape == (*x.shape[:-1], w.shape[0])
    for name, a, b in zip(("out", *grads), mine, want):
        close(a.cpu(), b.cpu(), rtol, atol * max(1.0, b.abs().max().item()), f"{what} {backend} {name}")


SHAPES = [  # (leading dims, in, out, G)
    ((7,), 5, 3, 8),
    ((2, 3), 13, 9, 3),
    ((1,), 1, 1, 1),
    ((33,), 17, 40, 7),
    ((300,), 520, 6, 8),  # two token blocks (about 2^20 basis elements each)
    ((2, 1, 5), 4, 17, 16),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cpu_matches_reference(cpu_isa, shape):
    lead, i, o, G = shape
    check("cpu", *make(lead, i, o, G), what=str(shape))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_cpu_dtypes(cpu_isa, dtype):
    check("cpu", *make((3, 11), 21, 13, 8, dtype=dtype, seed=2), what=str(dtype))


@pytest.mark.parametrize("grads", [("x",), ("w",), ("grid", "inv"), ("x", "w"), ()], ids=str)
def test_cpu_partial_gradients(grads):
    check("cpu", *make((9,), 6, 5, 4, seed=3), grads=grads, what=str(grads))


def test_seeded_sweep():
    for seed in range(40 if LONG else 6):
        r = random.Random(seed)
        lead = tuple(r.randint(1, 9) for _ in range(r.randint(1, 3)))
        shape = (lead, r.randint(1, 70), r.randint(1, 50), r.randint(1, 12))
        check("cpu", *make(*shape, seed=seed, scale=r.choice([0.1, 1.0, 5.0])), what=f"seed {seed} {shape}")


def test_saturated_and_empty_inputs():
    x, grid, inv, w = make((5,), 3, 4, 8)
    far = torch.tensor([[-1e4, 1e4, 1e30]] * 5)
    out = ops.rswaf_kan(far, grid, inv, w, backend="cpu")
    assert torch.isfinite(out).all() and out.abs().max() < 1e-20
    for lead in ((0,), (2, 0)):
        xe = torch.randn(*lead, 3, requires_grad=True)
        we = w.clone().requires_grad_(True)
        oe = ops.rswaf_kan(xe, grid, inv, we, backend="cpu")
        assert oe.shape == (*lead, 4)
        dx, dw = torch.autograd.grad(oe.sum(), [xe, we])
        assert dx.shape == xe.shape and torch.equal(dw, torch.zeros_like(w))


def test_float_inv_denominator_and_deterministic_bits():
    x, grid, inv, w = make((50,), 24, 33, 8, seed=4)
    a = ops.rswaf_kan(x, grid, 1 / 0.33, w, backend="cpu")
    close(a, ops.rswaf_kan(x, grid, inv, w, backend="cpu"), 0, 0, "float vs tensor")
    r1, r2 = run("cpu", x, grid, inv, w), run("cpu", x, grid, inv, w)
    assert all(torch.equal(p, q) for p, q in zip(r1, r2))


@requires_triton
@pytest.mark.parametrize(
    "shape,dtype",
    [(((5,), 3, 7, 8), torch.float32), (((2, 9), 6, 20, 3), torch.float32), (((4,), 5, 9, 8), torch.bfloat16)],
    ids=str,
)
def test_triton_matches_reference(shape, dtype):
    """On CPU through the Triton interpreter (TRITON_INTERPRET=1): tiny shapes only."""
    lead, i, o, G = shape
    check("triton", *make(lead, i, o, G, dtype=dtype, device=TEST_DEVICE, seed=5), what=str(shape))


# --- gradcheck, compile, opcheck ------------------------------------------------------------------------


def test_gradcheck_float64():
    x, grid, inv, w = make((2, 2), 3, 2, 3, dtype=torch.float64, seed=6)
    leaves = [t.clone().requires_grad_(True) for t in (x, grid, inv, w)]
    assert torch.autograd.gradcheck(lambda *a: ops.rswaf_kan(*a, backend="cpu"), leaves)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    x, grid, inv, w = make((3, 5), 6, 4, 8, seed=8)
    leaves = [t.clone().requires_grad_(True) for t in (x, grid, inv, w)]

    def f(x, grid, inv, w):
        return ops.rswaf_kan(x, grid, inv, w).square().sum() + ops.rswaf_kan(x, grid, 2.5, w).sum()

    loss_c = torch.compile(f, fullgraph=True, dynamic=dynamic)(*leaves)
    loss_e = f(*leaves)
    close(loss_c, loss_e, 1e-5, 1e-5, "loss")
    for a, b in zip(torch.autograd.grad(loss_c, leaves), torch.autograd.grad(loss_e, leaves)):
        close(a, b, 1e-4, 1e-4, "grad")


def test_fasterkan_module_compiles_fullgraph():
    torch.manual_seed(0)
    m = mknn.FasterKAN([6, 10, 4], train_grid=True)
    x = torch.randn(3, 5, 6, requires_grad=True)
    loss_c = torch.compile(m, fullgraph=True, backend="aot_eager")(x).square().sum()
    loss_e = m(x).square().sum()
    close(loss_c, loss_e, 1e-5, 1e-5, "loss")
    params = [x, *m.parameters()]
    for a, b in zip(torch.autograd.grad(loss_c, params), torch.autograd.grad(loss_e, params)):
        close(a, b, 1e-4, 1e-4, "grad")


def opcheck_samples():
    x, grid, inv, w = make((2, 3), 5, 4, 3, seed=7)
    grad = lambda ts: [t.clone().requires_grad_(True) for t in ts]  # noqa: E731
    g = torch.randn(2, 3, 4)
    samples = {
        "rswaf_kan_fwd": [
            grad([x, grid, inv, w]),
            [x, grid, inv, w],
            [t.double() for t in (x, grid, inv, w)],
            [x.bfloat16(), grid, inv, w.bfloat16()],
            [x[0, 0], grid, inv, w],
        ],
        "rswaf_kan_bwd": [
            [g, x, grid, inv, w, [True, True, True, True]],
            [g, x, grid, inv, w, [False, True, False, True]],
            [g.double(), *(t.double() for t in (x, grid, inv, w)), [True, False, True, False]],
        ],
    }
    if hasattr(torch.ops.medkernels, "rswaf_kan_fwd_triton"):
        samples["rswaf_kan_fwd_triton"] = [grad([x, grid, inv, w])]
        samples["rswaf_kan_bwd_triton"] = [[g, x, grid, inv, w, [True, False, True, True]]]
    return samples


# --- bad input -------------------------------------------------------------------------------------------

_X, _G, _I, _W = make((4,), 3, 5, 8)
BAD = [
    ("x not a tensor", lambda: ops.rswaf_kan([1.0], _G, _I, _W), TypeError, "x must be a torch.Tensor"),
    ("x 0-dim", lambda: ops.rswaf_kan(torch.tensor(1.0), _G, _I, _W), ValueError, r"x must be \(\.\.\., in\)"),
    ("x integer", lambda: ops.rswaf_kan(_X.long(), _G, _I, _W), ValueError, "x must be float32"),
    ("grid 2-D", lambda: ops.rswaf_kan(_X, _G[None], _I, _W), ValueError, r"grid must be \(G,\)"),
    ("grid empty", lambda: ops.rswaf_kan(_X, _G[:0], _I, _W), ValueError, r"grid must be \(G,\) with G >= 1"),
    ("grid integer", lambda: ops.rswaf_kan(_X, _G.long(), _I, _W), ValueError, "grid must be floating point"),
    ("weight 1-D", lambda: ops.rswaf_kan(_X, _G, _I, _W[0]), ValueError, r"weight must be \(out, in \* G\) \(2-D\)"),
    ("weight width", lambda: ops.rswaf_kan(_X, _G, _I, _W[:, :-1]), ValueError, r"\(out, 3 \* 8 = 24\)"),
    ("weight dtype", lambda: ops.rswaf_kan(_X, _G, _I, _W.double()), ValueError, "weight has dtype torch.float64"),
    ("inv shape", lambda: ops.rswaf_kan(_X, _G, _I[None], _W), ValueError, "inv_denominator must be a float or a 0-d"),
    ("inv type", lambda: ops.rswaf_kan(_X, _G, "3", _W), TypeError, "inv_denominator must be a float"),
    ("inv bool", lambda: ops.rswaf_kan(_X, _G, True, _W), TypeError, "inv_denominator must be a float"),
    ("inv integer tensor", lambda: ops.rswaf_kan(_X, _G, torch.tensor(3), _W), ValueError, "floating point"),
    ("grid device", lambda: ops.rswaf_kan(_X, _G.to("meta"), _I, _W), ValueError, "grid is on meta"),
    ("backend", lambda: ops.rswaf_kan(_X, _G, _I, _W, backend="fpga"), ValueError, "is not a backend"),
    (
        "float64 on triton",
        lambda: ops.rswaf_kan(_X.double(), _G, _I, _W.double(), backend="triton"),
        ops.BackendUnavailableError,
        "float32|triton is not installed",
    ),
]


@pytest.mark.parametrize("case,call,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(case, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_cpp_checks_guard_direct_op_calls():
    op = torch.ops.medkernels.rswaf_kan_fwd
    with pytest.raises(RuntimeError, match=r"rswaf_kan_fwd: weight must be \(out, in \* G\)"):
        op(_X, _G, _I, _W[:, :5])
    with pytest.raises(RuntimeError, match="rswaf_kan_fwd: grid must be"):
        op(_X, _G.double(), _I, _W)
    with pytest.raises(RuntimeError, match="rswaf_kan_fwd: inv_denominator must be a 0-dim"):
        op(_X, _G, _I[None], _W)
    with pytest.raises(RuntimeError, match="rswaf_kan_fwd: x must be float32"):
        op(_X.long(), _G, _I, _W)
    with pytest.raises(RuntimeError, match="rswaf_kan_bwd: grad_out must be"):
        torch.ops.medkernels.rswaf_kan_bwd(torch.randn(4, 6), _X, _G, _I, _W, [True] * 4)


# --- FasterKAN modules -----------------------------------------------------------------------------------


def unfused_layer(x, sd, prefix, denominator=0.33):
    """FasterKAN's layer written out independently: LayerNorm, one tanh bump per grid point, flatten
    channel-major, bias-free linear."""
    u = torch.nn.functional.layer_norm(x, x.shape[-1:], sd[prefix + "layernorm.weight"], sd[prefix + "layernorm.bias"])
    bumps = [1 - torch.tanh((u - g) / denominator) ** 2 for g in sd[prefix + "rbf.grid"]]
    return torch.stack(bumps, -1).reshape(*x.shape[:-1], -1) @ sd[prefix + "spline_linear.weight"].T


def upstream_state_dict(widths, G=8, seed=0, dtype=torch.float64):
    """A state dict with the names and shapes of MedViTV2's fasterkan.FasterKAN(widths)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for n, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
        sd[f"layers.{n}.layernorm.weight"] = 1 + 0.1 * torch.randn(i, generator=g, dtype=dtype)
        sd[f"layers.{n}.layernorm.bias"] = 0.1 * torch.randn(i, generator=g, dtype=dtype)
        sd[f"layers.{n}.rbf.grid"] = torch.linspace(-2, 2, G, dtype=dtype)
        sd[f"layers.{n}.spline_linear.weight"] = torch.randn(o, i * G, generator=g, dtype=dtype) / (i * G) ** 0.5
    return sd


def test_fasterkan_loads_upstream_state_dict_and_matches_the_unfused_layer():
    widths = [12, 24, 12]
    sd = upstream_state_dict(widths)
    m = mknn.FasterKAN(widths, dtype=torch.float64)
    assert set(m.state_dict()) == set(sd)
    m.load_state_dict(sd, strict=True)
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    want = unfused_layer(unfused_layer(x, sd, "layers.0."), sd, "layers.1.")
    close(m(x), want, 1e-10, 1e-10, "FasterKAN vs unfused")
    m.layers[0].backend = m.layers[1].backend = "reference"
    close(m(x), want, 1e-10, 1e-10, "reference backend")
    layer = mknn.FasterKANLayer(12, 24, dtype=torch.float64)
    layer.load_state_dict({k[len("layers.0.") :]: v for k, v in sd.items() if k.startswith("layers.0.")}, strict=True)
    close(layer(x), unfused_layer(x, sd, "layers.0."), 1e-10, 1e-10, "FasterKANLayer")
    close(layer.rbf(x[0]).flatten(-2), ops.rswaf_basis(x[0], layer.rbf.grid, 1 / 0.33), 0, 0, "rbf module")


def test_fasterkan_trains_grid_and_inv_denominator():
    m = mknn.FasterKANLayer(
        5, 3, num_grids=4, denominator=0.5, train_grid=True, train_inv_denominator=True, dtype=torch.float64
    )
    assert set(m.state_dict()) == {
        "layernorm.weight",
        "layernorm.bias",
        "rbf.grid",
        "rbf.inv_denominator",
        "spline_linear.weight",
    }
    assert m.rbf.inv_denominator.item() == 2.0
    x = torch.randn(6, 5, dtype=torch.float64)
    grads = torch.autograd.grad(m(x).square().sum(), list(m.parameters()))
    m.backend = "reference"
    want = torch.autograd.grad(m(x).square().sum(), list(m.parameters()))
    for a, b in zip(grads, want):
        close(a, b, 1e-10, 1e-10, "parameter grads")
    frozen = mknn.FasterKANLayer(5, 3)
    assert not frozen.rbf.grid.requires_grad and isinstance(frozen.rbf.inv_denominator, float)
    assert "input_dim=5, output_dim=3, num_grids=8" in repr(frozen) and "linspace(-2.0, 2.0, 8)" in repr(frozen)


def test_fasterkan_rejects_bad_config():
    with pytest.raises(ValueError, match="input_dim must be an int >= 1"):
        mknn.FasterKANLayer(0, 3)
    with pytest.raises(ValueError, match="num_grids must be an int >= 1"):
        mknn.FasterKANLayer(4, 3, num_grids=0)
    with pytest.raises(ValueError, match="denominator must be a finite nonzero"):
        mknn.FasterKANLayer(4, 3, denominator=0.0)
    with pytest.raises(ValueError, match="only exponent=2"):
        mknn.FasterKANLayer(4, 3, exponent=3)
    with pytest.raises(ValueError, match="at least 2 widths"):
        mknn.FasterKAN([4])
    with pytest.raises(ValueError, match=r"expected input \(\.\.\., 4\)"):
        mknn.FasterKANLayer(4, 3)(torch.randn(2, 5))


# --- on a GPU (marked gpu: `pytest -m gpu`, scripts/gpu_check.sh; skipped without CUDA) ----------


@gpu_test
@pytest.mark.parametrize("dtype,G", [(torch.float32, 8), (torch.bfloat16, 8), (torch.float32, 5)], ids=str)
def test_rswaf_kan_triton_on_gpu_matches_cpu(dtype, G):
    x, grid, inv, w = make((3, 700), 96, 200, G, dtype=dtype, seed=11)
    cpu = run("cpu", x, grid, inv, w)
    gpu = run("triton", *(t.cuda() for t in (x, grid, inv, w)))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for name, a, b in zip(("out", "x", "grid", "inv", "w"), gpu, cpu):
        close(a.cpu(), b, tol, tol * max(1.0, b.abs().max().item()), f"rswaf_kan triton {name}")


@gpu_test
def test_fasterkan_module_on_gpu():
    torch.manual_seed(0)
    m = mknn.FasterKAN([64, 128, 64])
    x = torch.randn(4, 49, 64)
    mg = mknn.FasterKAN([64, 128, 64]).cuda()
    mg.load_state_dict(m.state_dict())
    close(mg(x.cuda()).cpu(), m(x), 1e-4, 1e-4, "FasterKAN gpu")
