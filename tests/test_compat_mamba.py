"""medkernels.compat: mamba_ssm and causal_conv1d served as packages, and their compiled extensions.

Clients written against mamba_ssm 2.x / causal-conv1d 1.7 (U-Mamba's ``from mamba_ssm import Mamba``) run
unchanged on CPU; the extension modules follow upstream's argument lists and return tuples.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from compat_kit import compat_fixture  # noqa: F401  (the `compat` fixture)
from kit import gpu_test
from torch import nn

from medkernels import ops

pytestmark = pytest.mark.usefixtures("compat")


def _grads(fn, tensors, grad):
    out = fn(*tensors)
    return out, torch.autograd.grad(out, tensors, grad)


class UMambaBottleneck(nn.Module):
    """U-Mamba-style (Ma et al., arXiv 2401.04722) network: a conv encoder, a Mamba layer on the flattened
    voxels (LayerNorm then Mamba, as its MambaLayer), a conv decoder; written against mamba_ssm."""

    def __init__(self, channels: int = 8, d_state: int = 4) -> None:
        super().__init__()
        from mamba_ssm import Mamba  # noqa: PLC0415  (the client's import, served by medkernels)

        self.enc = nn.Sequential(nn.Conv3d(1, channels, 3, padding=1), nn.InstanceNorm3d(channels), nn.LeakyReLU())
        self.norm = nn.LayerNorm(channels)
        self.mamba = Mamba(d_model=channels, d_state=d_state, d_conv=4, expand=2)
        self.dec = nn.Conv3d(channels, 2, 1)

    def forward(self, x):
        h = self.enc(x)
        b, c, *spatial = h.shape
        tokens = h.flatten(2).transpose(1, 2)  # (B, L, C)
        tokens = tokens + self.mamba(self.norm(tokens))
        h = tokens.transpose(1, 2).reshape(b, c, *spatial)
        return self.dec(h)


def test_umamba_style_network_trains_on_cpu(compat):
    compat.install("mamba", prefer="medkernels")
    torch.manual_seed(0)
    net = UMambaBottleneck()
    from mamba_ssm import Mamba

    import medkernels.nn

    assert Mamba is medkernels.nn.Mamba
    assert importlib.metadata.version("mamba_ssm") == "2.3.2.post1"
    x = torch.randn(2, 1, 4, 4, 4)
    target = torch.randint(0, 2, (2, 4, 4, 4))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), target)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        assert net.mamba.A_log.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05


def test_selective_scan_and_mamba_inner_match_references(compat):
    compat.install("mamba_ssm", prefer="medkernels")
    from mamba_ssm import Mamba, mamba_inner_fn
    from mamba_ssm.ops.selective_scan_interface import mamba_inner_ref, selective_scan_fn, selective_scan_ref

    torch.manual_seed(1)
    b, d, L, n = 2, 6, 9, 4
    u, delta, z = torch.randn(b, d, L), torch.rand(b, d, L), torch.randn(b, d, L)
    A, B, C = -torch.rand(d, n) - 0.5, torch.randn(b, n, L), torch.randn(b, n, L)
    D, bias = torch.randn(d), torch.randn(d)
    out, last = selective_scan_fn(u, delta, A, B, C, D, z, bias, True, True)
    ref, ref_last = selective_scan_ref(u, delta, A, B, C, D, z, bias, True, True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, ref_last, rtol=1e-5, atol=1e-5)

    m = Mamba(8, d_state=4, dt_rank=3, bias=True)
    h = torch.randn(2, 7, 8)
    xz = (h @ m.in_proj.weight.t() + m.in_proj.bias).transpose(1, 2)
    args = (m.conv1d.weight, m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight, m.out_proj.weight, m.out_proj.bias)
    A = -torch.exp(m.A_log.float())
    kw = {"D": m.D.float(), "delta_bias": m.dt_proj.bias.float(), "delta_softplus": True}
    fast = mamba_inner_fn(xz, *args, A, **kw)
    slow = mamba_inner_ref(xz, *args, A, **kw)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, m(h), rtol=1e-5, atol=1e-5)
    g = torch.randn_like(fast)
    params = list(args[:5]) + [m.A_log, m.D, m.dt_proj.bias]

    def run(fn):
        A_ = -torch.exp(m.A_log.float())
        y = fn(xz, *args, A_, D=m.D.float(), delta_bias=m.dt_proj.bias.float(), delta_softplus=True)
        return torch.autograd.grad(y, params, g)

    for a, r in zip(run(mamba_inner_fn), run(mamba_inner_ref)):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)
    # RMSNorm on B, C and dt (mamba_ssm 2.3's b/c/dt_rms_weight), and the argument checks
    w_bc, w_dt = torch.rand(4) + 0.5, torch.rand(16) + 0.5
    normed = mamba_inner_fn(xz, *args, A, **kw, b_rms_weight=w_bc, c_rms_weight=w_bc, dt_rms_weight=w_dt)
    assert normed.shape == fast.shape and not torch.allclose(normed, fast)
    with pytest.raises(ValueError, match="checkpoint_lvl"):
        mamba_inner_fn(xz, *args, A, checkpoint_lvl=2)
    with pytest.raises(ValueError, match="xz"):
        mamba_inner_fn(xz[:, :-1], *args, A)


@pytest.mark.parametrize("heads", [False, True])
def test_selective_state_update_is_one_scan_step(compat, heads):
    compat.install("mamba_ssm", prefer="medkernels")
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    torch.manual_seed(2)
    b, d, n = 3, 5, 4
    state0 = torch.randn(b, d, n)
    x, dt, z = torch.randn(b, d), torch.randn(b, d), torch.randn(b, d)
    A, B, C, D, dt_bias = -torch.rand(d, n), torch.randn(b, n), torch.randn(b, n), torch.randn(d), torch.randn(d)
    ref, ref_state = ops.selective_scan_ref(
        x[..., None],
        dt[..., None],
        A,
        B[..., None],
        C[..., None],
        D,
        z[..., None],
        dt_bias,
        True,
        True,
        initial_state=state0,
    )
    state = state0.clone()
    if heads:  # (batch, nheads=1, dim, ...) layouts, as Mamba2 calls it
        st = state[:, None]
        out = selective_state_update(
            st, x[:, None], dt[:, None], A[None], B[:, None], C[:, None], D[None], z[:, None], dt_bias[None], True
        )[:, 0]
        state = st[:, 0]
    else:
        out = selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus=True)
    torch.testing.assert_close(out, ref[..., 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, ref_state, rtol=1e-5, atol=1e-6)
    cache = torch.zeros(6, d, n)
    cache[[4, 1, 2]] = state0
    out2 = selective_state_update(
        cache, x, dt, A, B, C, D, z, dt_bias, True, state_batch_indices=torch.tensor([4, 1, 2])
    )
    torch.testing.assert_close(out2, out)
    torch.testing.assert_close(cache[[4, 1, 2]], ref_state, rtol=1e-5, atol=1e-6)
    assert cache[[0, 3, 5]].abs().sum() == 0
    with pytest.raises(ValueError, match="A must be"):
        selective_state_update(state0.clone(), x, dt, A[:, :3], B, C)


def test_causal_conv1d_package(compat):
    compat.install("causal_conv1d", prefer="medkernels")
    import causal_conv1d
    from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
    from causal_conv1d.causal_conv1d_interface import causal_conv1d_ref

    assert causal_conv1d.__version__ == importlib.metadata.version("causal-conv1d") == "1.7.0"
    torch.manual_seed(3)
    x, w, bias, init = torch.randn(2, 4, 10), torch.randn(4, 3), torch.randn(4), torch.randn(2, 4, 2)
    out, final = causal_conv1d_fn(x, w, bias, None, init, True, activation="silu")
    expect = F.silu(F.conv1d(torch.cat([init, x], -1), w[:, None], bias, groups=4))
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)
    ref, ref_final = causal_conv1d_ref(x, w, bias, init, True, activation="silu")  # upstream order: no seq_idx
    torch.testing.assert_close(ref, expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(final, x[..., -2:])
    torch.testing.assert_close(ref_final, final)
    state = torch.cat([init, x], -1)[..., -2:].clone()
    nxt = torch.randn(2, 4)
    step = causal_conv1d_update(nxt, state, w, bias, "silu")
    torch.testing.assert_close(
        step, F.silu(F.conv1d(torch.cat([x, nxt[..., None]], -1), w[:, None], bias, groups=4))[..., -1]
    )
    torch.testing.assert_close(state, torch.cat([x[..., -1:], nxt[..., None]], -1))


def test_selective_scan_cuda_extension_matches_upstream_contract(compat):
    compat.install("mamba_ssm", prefer="medkernels")
    import selective_scan_cuda

    torch.manual_seed(4)
    b, d, L, n = 2, 4, 11, 3
    u, delta, z = (torch.randn(b, d, L) for _ in range(3))
    A, B, C = -torch.rand(d, n) - 0.2, torch.randn(b, 1, n, L), torch.randn(b, 1, n, L)
    D, bias = torch.randn(d), torch.randn(d)
    out, x, out_z = selective_scan_cuda.fwd(u, delta, A, B, C, D, z, bias, True)
    ref, last = ops.selective_scan_ref(u, delta, A, B, C, D, None, bias, True, True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x[:, :, -1, 1::2], last, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_z, ref * F.silu(z), rtol=1e-5, atol=1e-5)
    assert len(selective_scan_cuda.fwd(u, delta, A, B, C, None, None, None, False)) == 2

    leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
    y = ops.selective_scan_ref(*leaves, True)
    dout = torch.randn_like(y)
    expected = torch.autograd.grad(y, leaves, dout)
    dz = torch.empty_like(z)
    res = selective_scan_cuda.bwd(u, delta, A, B, C, D, z, bias, dout, x, out, dz, True, True)
    du, ddelta, dA, dB, dC, dD, dbias, dz_ret, out_z2 = res
    assert dz_ret is dz  # the preallocated buffer is written (mamba_inner_fn passes a slice of dxz)
    for got, want in zip((du, ddelta, dA, dB, dC, dD, dz, dbias), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_z2, out_z)
    res = selective_scan_cuda.bwd(u, delta, A, B[:, 0], C[:, 0], None, None, None, dout, x, None, None, False, False)
    assert len(res) == 7 and res[5] is None and res[6] is None
    with pytest.raises(ValueError, match="dout"):
        selective_scan_cuda.bwd(u, delta, A, B, C, D, z, bias, dout[..., :-1], x, out, None, True, False)

    @torch.library.custom_op("compat_test::scan_bwd", mutates_args=())
    def wrapped(u: torch.Tensor, delta: torch.Tensor, dout: torch.Tensor) -> torch.Tensor:
        # a caller that wraps the extension in a custom op (no autograd recorded inside)
        return selective_scan_cuda.bwd(u, delta, A, B, C, D, z, bias, dout, x, out, None, True, False)[0].clone()

    torch.testing.assert_close(wrapped(u, delta, dout), expected[0], rtol=1e-4, atol=1e-5)


def test_causal_conv1d_cuda_extension_both_signatures(compat):
    compat.install("causal_conv1d", prefer="medkernels")
    import causal_conv1d_cuda
    from causal_conv1d.cpp_functions import causal_conv1d_bwd_function, causal_conv1d_fwd_function

    torch.manual_seed(5)
    x, w, bias, init = torch.randn(2, 4, 9), torch.randn(4, 4), torch.randn(4), torch.randn(2, 4, 3)
    expect, expect_final = ops.causal_conv1d_ref(x, w, bias, None, init, True, activation="silu")
    final = torch.empty(2, 4, 3)
    out = causal_conv1d_cuda.causal_conv1d_fwd(x, w, bias, None, init, final, True)  # 1.4-1.5.0
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(final, expect_final)
    out_buf = torch.empty_like(x)
    assert causal_conv1d_cuda.causal_conv1d_fwd(x, w, bias, None, None, out_buf, None, False) is None  # 1.5.2+
    torch.testing.assert_close(out_buf, ops.causal_conv1d_ref(x, w, bias), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(causal_conv1d_fwd_function(x, w, bias, None, None, None, False), out_buf)

    leaves = [t.clone().requires_grad_() for t in (x, w, bias, init)]
    y, fin = ops.causal_conv1d_ref(leaves[0], leaves[1], leaves[2], None, leaves[3], True, activation="silu")
    dout, dfinal = torch.randn_like(y), torch.randn_like(fin)
    want = torch.autograd.grad((y, fin), leaves, (dout, dfinal))
    dx, dw, db, dinit = causal_conv1d_cuda.causal_conv1d_bwd(x, w, bias, dout, None, init, dfinal, None, True, True)
    for got, exp in zip((dx, dw, db, dinit), want):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)
    bufs = [torch.empty_like(x), torch.zeros_like(w), torch.zeros_like(bias), torch.empty_like(init)]
    assert causal_conv1d_cuda.causal_conv1d_bwd(x, w, bias, dout, None, init, dfinal, *bufs, True) is None
    for got, exp in zip(bufs, want):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)
    got = causal_conv1d_bwd_function(x, w, bias, dout, None, init, dfinal, None, True, True)
    for g, exp in zip(got, want):
        torch.testing.assert_close(g, exp, rtol=1e-5, atol=1e-5)
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2], [0, 1, 1, 1, 1, 1, 1, 1, 1]], dtype=torch.int32)
    leaves = [t.clone().double().requires_grad_() for t in (x, w, bias)]
    y = ops.causal_conv1d_ref(*leaves, seq_idx, activation="silu")
    want = torch.autograd.grad(y, leaves, dout.double())
    got = causal_conv1d_cuda.causal_conv1d_bwd(
        *(t.double() for t in (x, w, bias)), dout.double(), seq_idx, None, None, None, False, True
    )
    for g, exp in zip(got, want):
        torch.testing.assert_close(g, exp, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="initial_states"):
        causal_conv1d_cuda.causal_conv1d_bwd(x, w, bias, dout, None, init[..., :2], None, None, True, True)
    state, nxt = x[..., -3:].clone(), torch.randn(2, 4)
    a = causal_conv1d_cuda.causal_conv1d_update(nxt, state.clone(), w, bias, True)  # 1.4-1.5.0
    out1 = torch.empty(2, 4)
    assert causal_conv1d_cuda.causal_conv1d_update(nxt, state, w, bias, out1, True, None, None) is None
    torch.testing.assert_close(a, out1)
    torch.testing.assert_close(
        a, ops.causal_conv1d_ref(torch.cat([x, nxt[..., None]], -1), w, bias, activation="silu")[..., -1]
    )
    with pytest.raises(TypeError, match="arguments"):
        causal_conv1d_cuda.causal_conv1d_fwd(x, w, bias, None, None)


def _real_installed(name: str) -> bool:
    from importlib.machinery import PathFinder

    return PathFinder.find_spec(name) is not None


@pytest.mark.skipif(not _real_installed("mamba_ssm"), reason="the real mamba_ssm package is not installed")
def test_real_mamba_ssm_runs_its_fast_path_on_our_extensions(tmp_path):
    """mamba_ssm 2.x installed with MAMBA_SKIP_CUDA_BUILD=TRUE: its selective_scan_fn and Mamba fast path
    call ``selective_scan_cuda`` (and causal-conv1d's functions), which medkernels serves."""
    script = tmp_path / "client.py"
    script.write_text(
        "import warnings, torch\n"
        "warnings.simplefilter('ignore')\n"
        "import medkernels.compat as c\n"
        "c.install('mamba')\n"
        "import mamba_ssm, selective_scan_cuda\n"
        "from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, selective_scan_ref\n"
        "assert not getattr(mamba_ssm, '__medkernels_compat__', False), 'the real package must win'\n"
        "assert getattr(selective_scan_cuda, '__medkernels_compat__', False)\n"
        "torch.manual_seed(0)\n"
        "u, dt, z = torch.randn(2, 4, 9, requires_grad=True), torch.rand(2, 4, 9), torch.randn(2, 4, 9)\n"
        "A, B, C = -torch.rand(4, 3), torch.randn(2, 3, 9), torch.randn(2, 3, 9)\n"
        "y = selective_scan_fn(u, dt, A, B, C, None, z, None, True)\n"
        "r = selective_scan_ref(u, dt, A, B, C, None, z, None, True)\n"
        "torch.testing.assert_close(y, r, rtol=1e-4, atol=1e-5)\n"
        "g1, = torch.autograd.grad(y.sum(), u); g2, = torch.autograd.grad(r.sum(), u)\n"
        "torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)\n"
        "from mamba_ssm import Mamba\n"
        "import mamba_ssm.modules.mamba_simple as ms\n"
        "assert ms.causal_conv1d_fn is not None  # the fast path (mamba_inner_fn) is taken\n"
        "import medkernels.nn\n"
        "m = Mamba(8, d_state=4)\n"
        "ours = medkernels.nn.Mamba(8, d_state=4)\n"
        "ours.load_state_dict(m.state_dict(), strict=True)\n"
        "h = torch.randn(2, 6, 8)\n"
        "y1, y2 = m(h), ours(h)\n"
        "torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-6)\n"
        "g = torch.randn_like(y1)\n"
        "g1 = torch.autograd.grad(y1, list(m.parameters()), g)\n"
        "g2 = torch.autograd.grad(y2, list(ours.parameters()), g)\n"
        "for a, b in zip(g1, g2): torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)\n"
        "print('OK', mamba_ssm.__version__)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "OK" in run.stdout, (run.stdout, time.perf_counter() - t0)


@gpu_test
def test_served_packages_and_extensions_on_gpu(compat):
    """The shims pass CUDA tensors to medkernels.ops, which runs its GPU kernels (CUDA or Triton)."""
    compat.install("mamba", prefer="medkernels")
    import selective_scan_cuda
    from mamba_ssm import Mamba

    torch.manual_seed(6)
    m = Mamba(16, d_state=8)
    h = torch.randn(2, 33, 16)
    ref = m(h)
    out = m.cuda()(h.cuda())
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-4)
    out.sum().backward()
    assert m.A_log.grad is not None and torch.isfinite(m.A_log.grad).all()
    u, delta = torch.randn(2, 4, 40, device="cuda"), torch.rand(2, 4, 40, device="cuda")
    A, B, C = (
        -torch.rand(4, 3, device="cuda"),
        torch.randn(2, 1, 3, 40, device="cuda"),
        torch.randn(2, 1, 3, 40, device="cuda"),
    )
    got, x = selective_scan_cuda.fwd(u, delta, A, B, C, None, None, None, True)
    want, last = ops.selective_scan_ref(u, delta, A, B, C, None, None, None, True, True)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(x[:, :, -1, 1::2], last, rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not _real_installed("causal_conv1d"), reason="the real causal_conv1d package is not installed")
def test_real_causal_conv1d_runs_on_our_extension(tmp_path):
    """causal-conv1d 1.6+ installed with CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE: its custom ops call
    ``causal_conv1d_cuda``, which medkernels serves (the backward runs inside a torch.library.custom_op)."""
    script = tmp_path / "client.py"
    script.write_text(
        "import warnings, torch\n"
        "warnings.simplefilter('ignore')\n"
        "import medkernels.compat as c\n"
        "c.install('causal_conv1d')\n"
        "import causal_conv1d, causal_conv1d_cuda\n"
        "assert not getattr(causal_conv1d, '__medkernels_compat__', False), 'the real package must win'\n"
        "from causal_conv1d import causal_conv1d_fn\n"
        "from causal_conv1d.causal_conv1d_interface import causal_conv1d_ref\n"
        "torch.manual_seed(0)\n"
        "x, w, b = torch.randn(2, 8, 20, requires_grad=True), torch.randn(8, 4, requires_grad=True), torch.randn(8)\n"
        "b.requires_grad_()\n"
        "y, r = causal_conv1d_fn(x, w, b, activation='silu'), causal_conv1d_ref(x, w, b, activation='silu')\n"
        "torch.testing.assert_close(y, r, rtol=1e-5, atol=1e-6)\n"
        "g = torch.randn_like(y)\n"
        "for p, q in zip(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(r, (x, w, b), g)):\n"
        "    torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)\n"
        "print('OK', causal_conv1d.__version__)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "OK" in run.stdout
