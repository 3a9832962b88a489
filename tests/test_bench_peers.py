"""The benchmark's peers compute what our ops compute (so that a "vs peer" ratio compares equal work), the
fastest comparable peer is the one targets divide by, and numpy peers' memory is measured as process memory."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention

from medkernels import ops
from medkernels.bench import cli, peers
from medkernels.bench.cases import Case, Peer, Target, cases_for
from medkernels.bench.memory import peak_rss_bytes
from medkernels.bench.runner import Result, memory_ratio

needs_fpsample = pytest.mark.skipif(importlib.util.find_spec("fpsample") is None, reason="fpsample not installed")
needs_scipy = pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="scipy not installed")


@pytest.mark.parametrize(
    "spatial,kernel,dilation",
    [((23,), 5, 2), ((11, 9), 3, 1), ((10, 13), 5, 2), ((6, 7, 5), 3, 1), ((9, 6, 8), 3, 2)],
)
def test_flex_peer_mask_is_natten_neighbourhood(monkeypatch, spatial, kernel, dilation):
    """The mask_mod restates natten's window (clamped at the edges, per residue class under dilation): flex
    (eager here, compiled in the benchmark) gives our op's result."""
    monkeypatch.setattr(peers, "_FLEX", {"fn": flex_attention})
    g = torch.Generator().manual_seed(len(spatial) * 10 + kernel + dilation)
    q, k, v = (torch.randn(2, *spatial, 2, 8, generator=g) for _ in range(3))
    want = getattr(ops, f"na{len(spatial)}d")(q, k, v, kernel, dilation=dilation, backend="reference")
    got = peers.flex_neighborhood_attention(q, k, v, kernel, dilation)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)


def test_flex_peer_compiled_once_per_shape(monkeypatch):
    monkeypatch.setattr(peers, "_FLEX", {})
    q, k, v = (torch.randn(1, 20, 2, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    want = ops.na1d(q, k, v, 5, dilation=2, backend="reference")
    torch.testing.assert_close(peers.flex_neighborhood_attention(q, k, v, 5, 2), want, rtol=2e-6, atol=2e-6)
    assert len(peers._FLEX) == 2  # the compiled function and this shape's block mask, reused by later calls
    peers.flex_neighborhood_attention(q, k, v, 5, 2)
    assert len(peers._FLEX) == 2


@needs_fpsample
def test_kdline_peer_is_exact_fps():
    """fpsample's kd-line FPS picks its own start (it reads start_idx=0 as "pick one"); from that start it returns
    the textbook loop's indices, ours with the cloud rotated so that its start comes first."""
    xyz = torch.randn(1, 3000, 3, generator=torch.Generator().manual_seed(3))
    theirs = peers.fpsample_kdline_fps(xyz, 300, 5)[0]
    s = int(theirs[0])
    order = torch.cat([torch.arange(s, 3000), torch.arange(s)])
    ours = order[ops.furthest_point_sample(xyz[:, order], 300)[0]]
    assert torch.equal(ours, theirs)


@needs_scipy
def test_ckdtree_peer_equals_knn():
    g = torch.Generator().manual_seed(4)
    q, p = torch.randn(2, 50, 3, generator=g), torch.randn(2, 400, 3, generator=g)
    d, i = peers.ckdtree_knn(q, p, 8)
    want_d, want_i = ops.knn(q, p, 8)
    assert torch.equal(i, want_i)
    # scipy squares a float64 distance, we sum float32 squares: a couple of float32 ulps apart (measured 1.5e-7)
    torch.testing.assert_close(d, want_d, rtol=3e-7, atol=0)
    d2, i2 = peers.ckdtree_knn(q, p, 8, trees=peers.ckdtree_build(p))
    assert torch.equal(i2, i) and torch.equal(d2, d)


def test_process_memory_sees_numpy_buffers():
    np = pytest.importorskip("numpy")
    rss = peak_rss_bytes(lambda: np.ones(4 << 20).sum())  # 32 MiB that torch's allocator never sees
    if rss is None:
        pytest.skip("no resettable resident-set peak here (not Linux/glibc)")
    assert 30 << 20 <= rss < 40 << 20
    assert peak_rss_bytes(lambda: None) < 4 << 20


def _row(backend, ms, peak, rss=None, torch_memory=True):
    return Result(
        "x", "x", "float32", backend, "fwd", ms, [ms], 1, 1.0, peak, peak_rss_bytes=rss, torch_memory=torch_memory
    )


def test_memory_ratio_uses_process_memory_for_numpy_peers():
    ours, numpy_peer = _row("cpu", 1.0, 100, rss=300), _row("peer:np", 1.0, 0, rss=600, torch_memory=False)
    assert memory_ratio(ours, numpy_peer) == 0.5  # not 100 / 0 bytes from torch's allocator
    assert memory_ratio(ours, _row("reference", 1.0, 400, rss=None)) == 0.25
    assert memory_ratio(ours, _row("peer:np", 1.0, 0, rss=None, torch_memory=False)) is None


def test_peer_targets_divide_by_the_fastest_comparable_peer():
    case = Case(
        op="x",
        label="x",
        params={},
        profiles=("quick",),
        make_inputs=lambda d, t: {},
        call=lambda b, x: None,
        differentiable=(),
        peers={
            "slow": Peer(lambda x: None),
            "fast": Peer(lambda x: None),
            "partial": Peer(lambda x: None, comparable=False),
        },
        targets=(Target("x", "cpu", "fwd", "speedup", 2.0, against="peer"),),
    )
    rows = [_row("cpu", 10.0, 1), _row("peer:slow", 40.0, 1), _row("peer:fast", 15.0, 1), _row("peer:partial", 1.0, 1)]
    (checked,) = cli.check_targets(case, rows)
    assert checked["value"] == 1.5 and not checked["met"]


def test_point_cloud_and_na_cases_use_the_strongest_peers():
    default = cases_for("default")
    fps = next(c for c in default if c.op == "furthest_point_sample")
    assert {"fpsample_kdline_h5", "fpsample_kdline_h7"} <= set(fps.peers)
    knn = next(c for c in default if c.op == "knn")
    assert "ckdtree" in knn.peers and "faiss_flat" not in knn.peers and not knn.peers["ckdtree_query_only"].comparable
    for c in default:
        if c.op in ("na2d", "na3d"):
            assert "flex_compiled" in c.peers and not c.peers["sdpa"].comparable
    why = next(c for c in default if c.op == "na2d").peers["natten"].unavailable(torch.device("cpu"))
    if importlib.util.find_spec("natten") is None:
        assert "pip install natten" in why
    else:
        assert why is None  # installed (the test venv has natten 0.21): measured


@pytest.mark.parametrize("bc", ["fixed", "variable", "grouped"])
def test_mamba_form_reference_equals_ours(bc):
    """mamba_ssm's selective_scan_ref form (the full-profile peer) computes our scan, every B/C layout, float64."""
    from medkernels.testing import selective_scan_mamba_form

    g = torch.Generator().manual_seed(5)
    b, d, n, seq = 2, 4, 3, 9
    u, delta, z = (torch.randn(b, d, seq, generator=g, dtype=torch.float64) for _ in range(3))
    A = -torch.rand(d, n, generator=g, dtype=torch.float64) - 0.5
    shape = {"fixed": (d, n), "variable": (b, n, seq), "grouped": (b, 2, n, seq)}[bc]
    B, C = (torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(2))
    Dv, bias = torch.randn(d, generator=g, dtype=torch.float64), torch.rand(d, generator=g, dtype=torch.float64)
    args = (u, delta, A, B, C, Dv, z, bias, True)
    # the form computes in float32 inside (as mamba_ssm's does), so float64 inputs agree to float32 rounding
    got, state = selective_scan_mamba_form(*args, return_last_state=True)
    want, want_state = ops.selective_scan_ref(*args, return_last_state=True)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(state.double(), want_state, rtol=2e-6, atol=2e-6)


def test_restated_scan_targets_and_official_multi_order_path_are_in_the_full_profile():
    full = cases_for("full")
    scan = [c for c in full if c.op == "selective_scan" and "mamba_ssm_ref_form" in c.peers]
    assert scan and scan[0].params["seqlen"] == 256
    assert {t.bound for t in scan[0].targets} == {150.0, 40.0}
    multi = [c for c in full if c.op == "multi_order_selective_scan" and "official_copies" in c.peers]
    assert multi and {t.bound for t in multi[0].targets} == {1.3, 0.5}


def test_dct_peers_compute_the_dct():
    """The DCT case's peers (torch.fft, scipy) compute our orthonormal DCT-II and its keep corner."""
    x = torch.randn(2, 3, 7, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    want = ops.dct2d(x, keep=(4, 5))
    torch.testing.assert_close(peers.dct2d_fft(x, (4, 5)), want, rtol=1e-12, atol=1e-12)
    if importlib.util.find_spec("scipy") is not None:
        torch.testing.assert_close(peers.scipy_dctn(x, (4, 5)), want, rtol=1e-12, atol=1e-12)
    dct = next(c for c in cases_for("default") if c.op == "dct2d")
    assert {"torch_fft", "scipy_dctn"} <= set(dct.peers) and not dct.peers["scipy_dctn"].torch_memory


@pytest.mark.parametrize("scope,interval,spatial", [("local", 1, (4, 16, 16)), ("global", 4, (4, 12, 20))])
def test_official_block_equals_our_block(scope, interval, spatial):
    """The block-level peer (model.py's DFormerBlock3D, input grouped once) computes nn.DFormerBlock with the same
    weights, at sizes without padding and with height/width padding (where the official code is right)."""
    from medkernels.nn import DFormerBlock
    from medkernels.testing import dformer_block_official

    torch.manual_seed(2)
    block = DFormerBlock(24, 3, (2, 4, 4), scope, interval=interval if scope == "global" else None).double()
    x = torch.randn(2, *spatial, 24, dtype=torch.float64)
    want = block(x)
    got = dformer_block_official(dict(block.named_parameters()), x, 3, (2, 4, 4), scope, interval)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
