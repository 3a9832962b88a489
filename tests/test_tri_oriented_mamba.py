"""TriOrientedMamba (SegMamba's tri-orientated Mamba): equal to an independent restatement of the official
forked mamba_ssm ``Mamba(bimamba_type="v3")`` forward (three permuted copies of xz, three selective scans)
in the forward and the backward, every backend against the reference ops, float64 gradcheck,
torch.compile, the official state_dict names/shapes and initialisation, the MambaLayer wrapper, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kit import backends, close, close_as_pytorch, close_ulp

from medkernels.nn import TriOrientedMamba, TriOrientedMambaLayer, slice_order
from medkernels.ops import selective_scan_ref

# ---------------------------------------------------------------------------------------------
# The official forward: github.com/ge-xing/SegMamba at cff3597, mamba/mamba_ssm/modules/mamba_simple.py
# (Mamba.forward, the bimamba_type == "v3" branch of the fast path) with mamba_inner_fn_no_out_proj
# (mamba/mamba_ssm/ops/selective_scan_interface.py): per direction, x and z = xz.chunk(2, dim=1), the
# causal conv1d with silu, x_dbl = x_proj(conv out), delta = dt_proj.weight @ x_dbl[:, :dt_rank], the
# selective scan with D, the gate z, dt_proj.bias and softplus; the reverse direction on xz.flip(-1), the
# inter-slice one on torch.stack(xz.chunk(nslices, -1), -1).flatten(-2); the outputs flipped /
# reshaped-permuted back, summed and projected by out_proj. Restated here in plain PyTorch.


def official_forward(sd: dict, h: torch.Tensor, nslices: int) -> torch.Tensor:
    batch, L, _ = h.shape
    E = sd["in_proj.weight"].shape[0] // 2
    N = sd["A_log"].shape[1]
    R = sd["dt_proj.weight"].shape[1]
    W = sd["conv1d.weight"].shape[-1]
    xz = (h @ sd["in_proj.weight"].t()).transpose(1, 2)  # (B, 2E, L)

    def inner(xz: torch.Tensor, s: str) -> torch.Tensor:
        x, z = xz.chunk(2, dim=1)
        u = F.conv1d(x, sd[f"conv1d{s}.weight"], sd[f"conv1d{s}.bias"], padding=W - 1, groups=E)[..., :L]
        u = F.silu(u)
        x_dbl = u.transpose(1, 2) @ sd[f"x_proj{s}.weight"].t()  # (B, L, R + 2N)
        delta = (x_dbl[..., :R] @ sd[f"dt_proj{s}.weight"].t()).transpose(1, 2)
        Bm, Cm = x_dbl[..., R : R + N].transpose(1, 2), x_dbl[..., R + N :].transpose(1, 2)
        A = -torch.exp(sd[f"A{s}_log"])
        return selective_scan_ref(u, delta, A, Bm, Cm, sd[f"D{s}"], z, sd[f"dt_proj{s}.bias"], True)

    out = inner(xz, "")
    out_b = inner(xz.flip([-1]), "_b")
    xz_s = torch.stack(xz.chunk(nslices, dim=-1), dim=-1).flatten(-2)
    out_s = inner(xz_s, "_s").reshape(batch, E, L // nslices, nslices).permute(0, 1, 3, 2).flatten(-2)
    return (out + out_b.flip([-1]) + out_s).transpose(1, 2) @ sd["out_proj.weight"].t()


def official_state_dict_shapes(C: int, d_state: int = 16, d_conv: int = 4, expand: int = 2) -> dict:
    """The parameters the fork's Mamba.__init__ registers for bimamba_type="v3" (bias=False, conv_bias=True)."""
    E, R, N = expand * C, -(-C // 16), d_state
    shapes = {"in_proj.weight": (2 * E, C), "out_proj.weight": (C, E)}
    for s in ("", "_b", "_s"):
        shapes.update(
            {
                f"A{s}_log": (E, N),
                f"D{s}": (E,),
                f"conv1d{s}.weight": (E, 1, d_conv),
                f"conv1d{s}.bias": (E,),
                f"x_proj{s}.weight": (R + 2 * N, E),
                f"dt_proj{s}.weight": (E, R),
                f"dt_proj{s}.bias": (E,),
            }
        )
    return shapes


def _module(C=16, d_state=8, nslices=4, seed=0, **kw) -> TriOrientedMamba:
    """A module with every parameter moved off its initial value (D = 1, A_log = log n are too special)."""
    torch.manual_seed(seed)
    m = TriOrientedMamba(C, d_state=d_state, nslices=nslices, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


def _grads(m: TriOrientedMamba, h: torch.Tensor):
    h = h.clone().requires_grad_(True)
    m.zero_grad()
    out = m(h)
    out.square().sum().backward()
    return out.detach(), [h.grad] + [p.grad.clone() for p in m.parameters()]


def test_equals_the_official_forward_and_backward():
    """Forward and every gradient against the official forward in float64, as accurate as the official
    forward in float32 (flash-attention's rule)."""
    m = _module(backend="cpu")
    h = torch.randn(2, 24, 16)
    out, grads = _grads(m, h)
    names = ["h"] + [n for n, _ in m.named_parameters()]

    def run(dtype):
        sd = {k: v.detach().to(dtype).requires_grad_(True) for k, v in m.state_dict().items()}
        hh = h.to(dtype).requires_grad_(True)
        y = official_forward(sd, hh, 4)
        return y.detach(), torch.autograd.grad(y.square().sum(), [hh] + [sd[n] for n in names[1:]])

    truth, want = run(torch.float64)
    official32, got32 = run(torch.float32)
    # Measured over 20 seeds: out within 1.3x the float32 official's error (beyond 2 ulp of max|truth|).
    # Gradients: up to 11.2 ulp of max|truth| (dt_proj(_b).weight, h), where the float32 official is at
    # 0.5-2.3 ulp; the same module on the reference ops reaches 6.5 ulp: the sums over the tokens cancel
    # (max|truth| is far below their terms) and ours rounds differently (one gate on the sum, the reverse
    # conv with reversed taps). Bound: 4x the official's error plus 16 ulp of max|truth|.
    close_as_pytorch(out, truth, official32, "out", factor=3)
    for name, a, t, p in zip(names, grads, want, got32):
        close_as_pytorch(a, t, p, f"d{name}", factor=4, floor_ulps=16)


@pytest.mark.parametrize("backend", backends("cpu", "reference", "triton"))
def test_backends_against_the_reference_ops(backend):
    m = _module(C=8, d_state=4, nslices=3)
    h = torch.randn(2, 12, 8)
    m.backend = "reference"
    want, want_g = _grads(m, h)
    m.backend = backend
    got, got_g = _grads(m, h)
    # in ulp of the largest entry, measured at most 3.7 (out) and 15.5 (gradients) over 20 seeds (5 for triton)
    close_ulp(got, want, "out", ulps=8, scale=want.abs().max().item())
    for name, a, b in zip(["h"] + [n for n, _ in m.named_parameters()], got_g, want_g):
        close_ulp(a, b, f"d{name}", ulps=48, scale=b.abs().max().item())


def test_float64_gradcheck():
    m = _module(C=4, d_state=2, nslices=2, d_conv=3).double()
    m.backend = "cpu"
    names = [n for n, _ in m.named_parameters()]
    h = torch.randn(1, 6, 4, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]

    def f(h, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (h,))

    assert torch.autograd.gradcheck(f, (h, *params), atol=1e-6, rtol=1e-5)


def test_torch_compile_fullgraph():
    m = _module(C=8, d_state=4, nslices=3, backend="cpu")
    h = torch.randn(2, 12, 8)
    want, want_g = _grads(m, h)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    got, got_g = _grads(compiled, h)
    close(got, want, 1e-6, 1e-6 * want.abs().max().item(), "compiled out")
    for a, b in zip(got_g, want_g):
        close(a, b, 1e-6, 1e-6 * b.abs().max().item(), "compiled gradients")


def test_state_dict_and_initialisation_are_the_forks():
    torch.manual_seed(0)
    m = TriOrientedMamba(40, nslices=8)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == official_state_dict_shapes(40)
    m.load_state_dict({k: torch.randn(s) for k, s in shapes.items()}, strict=True)
    fresh = TriOrientedMamba(40, nslices=8)
    for s in ("", "_b", "_s"):
        assert torch.equal(getattr(fresh, f"A{s}_log"), torch.log(torch.arange(1.0, 17.0)).expand(80, 16))
        assert torch.equal(getattr(fresh, f"D{s}"), torch.ones(80))
        assert getattr(fresh, f"A{s}_log")._no_weight_decay
    # only dt_proj gets mamba_ssm's dt initialisation (softplus(bias) in [dt_min, dt_max]); the fork leaves
    # dt_proj_b and dt_proj_s at nn.Linear's default (bias uniform in +-1/sqrt(dt_rank), dt_rank 3)
    dt = F.softplus(fresh.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert fresh.dt_proj.weight.abs().max() <= 3**-0.5
    assert fresh.dt_proj_b.bias.min() < 0 and fresh.dt_proj_s.bias.abs().max() <= 3**-0.5
    assert "nslices=8" in repr(fresh)


def test_slice_order_is_the_forks_regrouping():
    for L, n in ((24, 4), (64, 64), (12, 1)):
        tokens = torch.arange(L)
        fork = torch.stack(tokens.chunk(n, dim=-1), dim=-1).flatten(-2)
        assert torch.equal(slice_order(L, n), fork)


def test_layer_is_the_official_mamba_layer():
    """SegMamba's MambaLayer: tokens of [B, C, D, H, W] (row-major), LayerNorm, the Mamba, back, + input."""
    torch.manual_seed(0)
    layer = TriOrientedMambaLayer(8, d_state=4, num_slices=4, backend="cpu")
    with torch.no_grad():
        layer.norm.weight.add_(torch.randn(8) * 0.3)
    x = torch.randn(2, 8, 4, 2, 3)
    sd = layer.state_dict()
    tokens = x.reshape(2, 8, -1).transpose(1, 2)
    normed = F.layer_norm(tokens, (8,), sd["norm.weight"], sd["norm.bias"])
    mamba = {k[len("mamba.") :]: v for k, v in sd.items() if k.startswith("mamba.")}
    want = official_forward(mamba, normed, 4).transpose(1, 2).reshape(x.shape) + x
    close(layer(x), want, 1e-5, 1e-5 * want.abs().max().item(), "layer")
    assert set(sd) == {"norm.weight", "norm.bias"} | {f"mamba.{k}" for k in official_state_dict_shapes(8, 4)}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"bimamba_type": "v2"}, r"bimamba_type must be 'v3'"),
        ({"nslices": 0}, r"nslices must be a positive int"),
        ({"d_state": 0}, r"d_state must be a positive int"),
        ({"dt_init": "x"}, r"dt_init must be"),
        ({"dt_min": 0.5}, r"need 0 < dt_min <= dt_max"),
        ({"dt_rank": 0}, r"dt_rank must be 'auto' or a positive int"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TriOrientedMamba(8, **kwargs)


def test_bad_input():
    m = TriOrientedMamba(8, d_state=4, nslices=4)
    with pytest.raises(ValueError, match=r"must be a multiple of nslices=4"):
        m(torch.randn(1, 10, 8))
    with pytest.raises(ValueError, match=r"hidden_states must be \(batch, seqlen, d_model=8\)"):
        m(torch.randn(1, 8, 4))
    with pytest.raises(ValueError, match=r"x must be \(B, 8, \*spatial\)"):
        TriOrientedMambaLayer(8, num_slices=4)(torch.randn(1, 4, 2, 2, 2))
    with pytest.raises(ValueError, match=r"seqlen=10 must be a multiple of nslices=4"):
        slice_order(10, 4)


def test_testing_tri_oriented_mamba_official_is_the_official_computation():
    """medkernels.testing.tri_oriented_mamba_official (the benchmark's peer: the fork's copies around our conv and
    scan) equals the official forward restated here, in float64."""
    from medkernels.testing import tri_oriented_mamba_official

    m = _module().double()
    h = torch.randn(2, 24, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    want = official_forward({k: v for k, v in m.state_dict().items()}, h, m.nslices)
    got = tri_oriented_mamba_official(m, h, "cpu")
    close(got, want, rtol=1e-12, atol=1e-12 * want.abs().max().item(), what="peer")
