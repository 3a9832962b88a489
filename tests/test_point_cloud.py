"""Furthest point sampling and kNN: exact indices against the textbook loop and brute force (with
duplicates and ties), every backend, lengths, gradients, opcheck, torch.compile, bad input."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from kit import LONG, TEST_DEVICE, close, close_ulp, gpu_test, on_gpu, requires_triton

from medkernels import ops

SWEEP = list(range(30 if LONG else 10))


def textbook_fps(xyz: torch.Tensor, npoint: int, start: int = 0) -> list[int]:
    """The loop everyone writes, one cloud, written independently of medkernels (Python floats would
    round differently, so it works on float32 tensors in the kernels' channel order)."""
    pts = xyz.float() if xyz.dtype != torch.float64 else xyz
    dist = torch.full((pts.shape[0],), float("inf"), dtype=pts.dtype)
    out = [start]
    for _ in range(1, npoint):
        diff = pts - pts[out[-1]]
        d = diff[:, 0] * diff[:, 0]
        for c in range(1, pts.shape[1]):
            d = d + diff[:, c] * diff[:, c]
        dist = torch.minimum(dist, d)
        out.append(int(torch.argmax(dist)))
    return out


def random_cloud(seed: int):
    """Awkward sizes, any C, integer grids (duplicates and exact ties) or Gaussian clouds, lengths."""
    g = torch.Generator().manual_seed(seed)

    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    B, N, C = pick(1, 3), pick(1, 200), (3, 3, 1, 2, 5, 7)[pick(0, 5)]
    ties = pick(0, 1) == 1
    xyz = torch.randint(0, 3, (B, N, C), generator=g).float() if ties else torch.randn(B, N, C, generator=g)
    lengths = torch.randint(1, N + 1, (B,), generator=g) if pick(0, 1) else None
    low = N if lengths is None else int(lengths.min())
    npoint = pick(1, low)
    start = pick(0, low - 1)
    return xyz, npoint, start, lengths


def expected_fps(xyz, npoint, start, lengths):
    return torch.tensor(
        [
            textbook_fps(xyz[b, : (xyz.shape[1] if lengths is None else int(lengths[b]))], npoint, start)
            for b in range(xyz.shape[0])
        ],
        dtype=torch.int64,
    )


# --- furthest point sampling ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SWEEP)
def test_fps_cpu_and_reference_equal_the_textbook_loop(cpu_isa, seed):
    xyz, npoint, start, lengths = random_cloud(seed)
    want = expected_fps(xyz, npoint, start, lengths)
    for backend in ("cpu", "reference"):
        got = ops.furthest_point_sample(xyz, npoint, lengths=lengths, start_idx=start, backend=backend)
        assert got.dtype == torch.int64 and torch.equal(got, want), backend


def test_fps_all_duplicates_and_dtypes():
    same = torch.zeros(2, 9, 3)  # every distance 0: the first index each time
    assert ops.furthest_point_sample(same, 4, start_idx=3, backend="cpu").tolist() == [[3, 0, 0, 0]] * 2
    xyz = torch.randn(2, 70, 3, dtype=torch.float64)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        x = xyz.to(dtype)
        assert torch.equal(ops.furthest_point_sample(x, 30, backend="cpu"), expected_fps(x, 30, 0, None)), dtype


def bucket_cloud(seed: int):
    """Clouds large enough for the bucketed CPU sampler (>= 8 buckets of 64 points, C <= 3): integer grids
    (exact ties everywhere), anisotropic and flat Gaussians, tight clusters far apart, float64, lengths that
    put some clouds below the bucket threshold."""
    g = torch.Generator().manual_seed(1000 + seed)

    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    B, N, C = pick(1, 3), pick(512, 2500), (3, 3, 2, 1)[seed % 4]
    kind = seed % 5
    if kind == 0:
        xyz = torch.randint(0, 9, (B, N, C), generator=g).float()
    elif kind == 1:
        xyz = torch.randn(B, N, C, generator=g) * torch.tensor([1e3, 1.0, 1e-3][:C])
    elif kind == 2:
        xyz = torch.randn(B, N, C, generator=g)
        xyz[..., -1] = 0.5  # a flat axis: every box has zero extent there
    elif kind == 3:
        centres = torch.randn(B, 6, C, generator=g) * 100
        xyz = centres[:, torch.randint(0, 6, (N,), generator=g)] + 1e-3 * torch.randn(B, N, C, generator=g)
    else:
        xyz = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    lengths = torch.randint(300, N + 1, (B,), generator=g) if pick(0, 1) else None
    low = N if lengths is None else int(lengths.min())
    return xyz, pick(1, min(low, 160)), pick(0, low - 1), lengths


@pytest.mark.parametrize("seed", range(15))
def test_fps_bucketed_sampler_equals_the_textbook_loop(seed):
    """The CPU sampler skips the buckets a centre cannot reach; its bound rounds as the distances do, so the
    indices are still exactly the textbook loop's, ties included."""
    xyz, npoint, start, lengths = bucket_cloud(seed)
    got = ops.furthest_point_sample(xyz, npoint, lengths=lengths, start_idx=start, backend="cpu")
    assert torch.equal(got, expected_fps(xyz, npoint, start, lengths))


def test_fps_bucketed_sampler_all_points_and_non_finite_clouds():
    """Sampling every point of a cloud (the last steps reach distance 0 everywhere), and a cloud with an
    infinite or NaN coordinate beside a finite one (those take the full sweep: torch's NaN rules)."""
    g = torch.Generator().manual_seed(7)
    xyz = torch.randint(0, 4, (1, 600, 3), generator=g).float()
    assert torch.equal(ops.furthest_point_sample(xyz, 600, backend="cpu"), expected_fps(xyz, 600, 0, None))
    bad = torch.randn(3, 700, 3, generator=g)
    bad[0, 100, 1] = float("inf")
    bad[1, 650, 2] = float("nan")
    assert torch.equal(ops.furthest_point_sample(bad, 50, backend="cpu"), expected_fps(bad, 50, 0, None))


def test_fps_one_cloud_over_threads_equals_one_thread():
    """A large cloud that the buckets do not take (5 channels) is split over the threads (a spin barrier per
    step); the indices do not change."""
    xyz = torch.randint(0, 60, (1, 140000, 5), generator=torch.Generator().manual_seed(0)).float()
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(ops.furthest_point_sample(xyz, 64, start_idx=7, backend="cpu"))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(runs[0], torch.tensor([textbook_fps(xyz[0], 64, 7)]))
    assert all(torch.equal(r, runs[0]) for r in runs[1:])


@pytest.mark.skipif(importlib.util.find_spec("fpsample") is None, reason="fpsample is a benchmark peer (make venv)")
def test_fps_equals_fpsample_exact():
    import fpsample

    xyz = torch.randn(1, 3000, 3, generator=torch.Generator().manual_seed(1))
    want = fpsample.fps_sampling(xyz[0].numpy(), 300, start_idx=0)
    assert ops.furthest_point_sample(xyz, 300, backend="cpu")[0].tolist() == [int(i) for i in want]


@requires_triton
@pytest.mark.parametrize("seed", SWEEP[:3])
def test_fps_triton(seed):
    xyz, npoint, start, lengths = random_cloud(seed)
    npoint = min(npoint, 12)  # the interpreter runs one step at a time
    got = ops.furthest_point_sample(
        xyz.to(TEST_DEVICE),
        npoint,
        start_idx=start,
        backend="triton",
        lengths=None if lengths is None else lengths.to(TEST_DEVICE),
    )
    assert torch.equal(got.cpu(), expected_fps(xyz, npoint, start, lengths))


# --- k nearest neighbours ---------------------------------------------------------------------------


def brute_force_knn(query, points, k, query_lengths=None, lengths=None):
    """cdist-style brute force (exact on integer grids) and a stable sort: ties to the lower index."""
    d = ((query.double()[:, :, None, :] - points.double()[:, None, :, :]) ** 2).sum(-1)
    if lengths is not None:
        d = d.masked_fill(torch.arange(points.shape[1])[None, None, :] >= lengths[:, None, None], float("inf"))
    dist, idx = torch.sort(d, dim=-1, stable=True)
    dist, idx = dist[..., :k], idx[..., :k]
    if query_lengths is not None:
        pad = torch.arange(query.shape[1])[None, :, None] >= query_lengths[:, None, None]
        dist, idx = dist.masked_fill(pad, 0), idx.masked_fill(pad, -1)
    return dist, idx


def knn_terms(query, points, idx, grad=None):
    """sum|terms| of each kNN distance sum_c (q_c - p_c)^2, however the kernel expands it:
    sum_c (|q_c| + |p_c|)^2 over the neighbours ``idx`` (-1: padding, 0); with ``grad`` (the distances'
    upstream gradient) also of dquery and dpoints, by autograd of that sum weighted by |grad|."""
    qa = query.detach().double().abs().requires_grad_(True)
    pa = points.detach().double().abs().requires_grad_(True)
    i = idx.clamp(min=0)
    sel = pa.gather(1, i.reshape(i.shape[0], -1, 1).expand(-1, -1, pa.shape[2])).reshape(*i.shape, pa.shape[2])
    terms = ((qa[:, :, None, :] + sel) ** 2).sum(-1) * (idx >= 0)
    if grad is None:
        return terms.detach()
    return terms.detach(), *torch.autograd.grad((terms * grad.double().abs()).sum(), [qa, pa])


# ulp of sum|terms|: distances measured at most 2.4 (C = 67; 1.5 at C = 1: the kernels expand
# |q|^2 + |p|^2 - 2 q.p) over 200 seeds, gradients 0.6.
KNN_ULPS, KNN_GRAD_ULPS = 6, 2


def random_knn(seed: int):
    g = torch.Generator().manual_seed(seed + 100)

    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    B, M, N, C = pick(1, 3), pick(1, 40), pick(1, 150), (3, 3, 1, 2, 16, 67)[pick(0, 5)]
    ties = pick(0, 1) == 1
    make = (
        (lambda *s: torch.randint(0, 3, s, generator=g).float()) if ties else (lambda *s: torch.randn(*s, generator=g))
    )
    lengths = torch.randint(1, N + 1, (B,), generator=g) if pick(0, 1) else None
    k = pick(1, N if lengths is None else int(lengths.min()))
    qlen = torch.randint(0, M + 1, (B,), generator=g) if pick(0, 1) else None
    return make(B, M, C), make(B, N, C), k, qlen, lengths, ties


@pytest.mark.parametrize("seed", SWEEP)
def test_knn_cpu_and_reference_match_brute_force(cpu_isa, seed):
    q, p, k, qlen, lengths, ties = random_knn(seed)
    want_d, want_i = brute_force_knn(q, p, k, qlen, lengths)
    for backend in ("cpu", "reference"):
        d, i = ops.knn(q, p, k, query_lengths=qlen, lengths=lengths, backend=backend)
        assert d.shape == i.shape == (q.shape[0], q.shape[1], k) and d.dtype == q.dtype and i.dtype == torch.int64
        if ties:  # integer grids: every distance exact, so the indices must agree exactly
            assert torch.equal(i, want_i), backend
        else:  # Gaussian: the kernel equals the reference bit for bit; brute force in float64 up to rounding
            assert torch.equal(i, ops.knn_ref(q, p, k, query_lengths=qlen, lengths=lengths)[1]), backend
        close_ulp(d, want_d, f"{backend} distances", ulps=KNN_ULPS, scale=knn_terms(q, p, want_i))


@pytest.mark.parametrize("c,ties,k", [(3, True, 16), (3, False, 32), (2, True, 700), (1, False, 5), (3, True, 1300)])
def test_knn_spatial_blocks_equal_brute_force(c, ties, k):
    """Low-C clouds with enough queries take the Morton-sorted block search (points out of index order,
    blocks skipped by their boxes): the result must still equal brute force exactly."""
    g = torch.Generator().manual_seed(c * 100 + k)
    make = (
        (lambda *s: torch.randint(0, 4, s, generator=g).float()) if ties else (lambda *s: torch.randn(*s, generator=g))
    )
    q, p = make(2, 520, c), make(2, 2100, c)
    lengths, qlen = torch.tensor([2100, max(k, 1333)]), torch.tensor([520, 301])
    d, i = ops.knn(q, p, k, lengths=lengths, query_lengths=qlen, backend="cpu")
    rd, ri = ops.knn_ref(q, p, k, lengths=lengths, query_lengths=qlen)
    assert torch.equal(i, ri) and torch.equal(d, rd)
    if ties:
        assert torch.equal(i, brute_force_knn(q, p, k, qlen, lengths)[1])


@pytest.mark.parametrize("kind", ["float64", "clusters", "flat", "non-finite"])
def test_knn_spatial_blocks_other_clouds(kind):
    """The block search on float64 (no integer keys), clusters far apart (most boxes skipped), a flat axis,
    and clouds with an infinite or NaN coordinate (those keep the threshold-free search): brute force's
    result exactly."""
    g = torch.Generator().manual_seed(11)
    dtype = torch.float64 if kind == "float64" else torch.float32
    q, p = torch.randn(2, 600, 3, generator=g, dtype=dtype), torch.randn(2, 1900, 3, generator=g, dtype=dtype)
    if kind == "clusters":
        centres = torch.randn(4, 3, generator=g) * 1e3
        p = centres[torch.randint(0, 4, (2, 1900), generator=g)] + torch.randn(2, 1900, 3, generator=g)
        q = centres[torch.randint(0, 4, (2, 600), generator=g)] + torch.randn(2, 600, 3, generator=g)
    elif kind == "flat":
        p[..., 1], q[..., 1] = 2.0, 2.0
    elif kind == "non-finite":
        p[0, 5, 0], p[1, 77, 2], q[0, 3, 1] = float("inf"), float("nan"), float("nan")
    d, i = ops.knn(q, p, 24, backend="cpu")
    rd, ri = ops.knn_ref(q, p, 24)
    assert torch.equal(i, ri)
    torch.testing.assert_close(d, rd, rtol=0, atol=0, equal_nan=True)


def test_knn_dtypes_and_large_k():
    q, p = torch.randn(2, 33, 3, dtype=torch.float64), torch.randn(2, 500, 3, dtype=torch.float64)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        d, i = ops.knn(q.to(dtype), p.to(dtype), 9, backend="cpu")
        rd, ri = ops.knn_ref(q.to(dtype), p.to(dtype), 9)
        assert torch.equal(i, ri) and d.dtype == dtype, dtype
    d, i = ops.knn(q, p, 500, backend="cpu")  # k = N: a full stable sort
    assert torch.equal(i, brute_force_knn(q, p, 500)[1])


def test_knn_gradients_match_the_reference():
    q = torch.randn(2, 17, 5, requires_grad=True)
    p = torch.randn(2, 60, 5, requires_grad=True)
    lengths, qlen = torch.tensor([60, 41]), torch.tensor([17, 9])
    g = torch.randn(2, 17, 6)
    got = torch.autograd.grad(
        (ops.knn(q, p, 6, lengths=lengths, query_lengths=qlen, backend="cpu")[0] * g).sum(), [q, p]
    )
    d, idx = ops.knn_ref(q, p, 6, lengths=lengths, query_lengths=qlen)
    want = torch.autograd.grad((d * g).sum(), [q, p])
    _, *terms = knn_terms(q, p, idx, g)
    for a, b, name, t in zip(got, want, ("dquery", "dpoints"), terms):
        close_ulp(a, b, name, ulps=KNN_GRAD_ULPS, scale=t)


def test_knn_gradcheck_float64():
    q = torch.randn(1, 4, 3, dtype=torch.float64, requires_grad=True)
    p = torch.randn(1, 9, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, p: ops.knn(q, p, 3, backend="cpu")[0], [q, p])


@requires_triton
@pytest.mark.parametrize("seed", SWEEP[:2])
def test_knn_triton(seed):
    q, p, k, qlen, lengths, ties = random_knn(seed)
    q, p, k = q[:2, :3], p[:2], min(k, 10)  # the interpreter sorts slowly: a few queries
    lengths = None if lengths is None else lengths[:2]
    qlen = None if qlen is None else qlen[:2]
    qlen = None if qlen is None else qlen.clamp(max=q.shape[1])
    dev = lambda t: None if t is None else t.to(TEST_DEVICE)  # noqa: E731
    qd, pd = dev(q).requires_grad_(True), dev(p).requires_grad_(True)
    d, i = ops.knn(qd, pd, k, query_lengths=dev(qlen), lengths=dev(lengths), backend="triton")
    rd, ri = ops.knn_ref(q, p, k, query_lengths=qlen, lengths=lengths)
    assert torch.equal(i.cpu(), ri)
    gq = torch.autograd.grad(d.sum(), qd)[0]
    want = torch.autograd.grad(
        ops.knn_ref(q.requires_grad_(True), p, k, query_lengths=qlen, lengths=lengths)[0].sum(), q
    )[0]
    if on_gpu("triton", TEST_DEVICE):  # the tolerances validated on a GPU (see kit.on_gpu)
        close(d.cpu(), rd, 1e-6, 1e-6, "distances")
        close(gq.cpu(), want, 1e-5, 1e-5, "dquery")
        return
    terms, dq_terms, _ = knn_terms(q, p, ri, torch.ones(rd.shape))
    close_ulp(d.cpu(), rd, "distances", ulps=KNN_ULPS, scale=terms)
    close_ulp(gq.cpu(), want, "dquery", ulps=KNN_GRAD_ULPS, scale=dq_terms)


# --- compile, opcheck --------------------------------------------------------------------------------


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    xyz = torch.randn(2, 50, 3)
    feats = torch.randn(2, 50, 8, requires_grad=True)

    def f(xyz, feats):
        idx = ops.furthest_point_sample(xyz, 10)
        centers = feats.gather(1, idx[..., None].expand(-1, -1, feats.shape[2]))
        d, nn_idx = ops.knn(centers, feats, 4)
        return d.sum() + nn_idx.sum() * 0

    loss_c = torch.compile(f, fullgraph=True, dynamic=dynamic)(xyz, feats)
    loss_e = f(xyz, feats)
    # the same kernels: the loss's sum of distances may be reordered (ulp of its sum|terms|, the loss)
    close_ulp(loss_c, loss_e, "loss", ulps=4, scale=loss_e.item())
    close_ulp(torch.autograd.grad(loss_c, feats)[0], torch.autograd.grad(loss_e, feats)[0], "grad", ulps=1)


def opcheck_samples():
    xyz = torch.randn(2, 20, 3)
    q = torch.randn(2, 5, 4, requires_grad=True)
    p = torch.randn(2, 12, 4, requires_grad=True)
    samples = {
        "furthest_point_sample": [[xyz, 5, None, 0], [xyz, 7, torch.tensor([20, 9]), 2]],
        "knn": [[q, p, 3, None, None], [q, p, 4, torch.tensor([5, 2]), torch.tensor([12, 6])]],
    }
    if hasattr(torch.ops.medkernels, "knn_triton"):  # interpreted: small problems
        samples["furthest_point_sample_triton"] = [[xyz, 3, None, 1]]
        samples["knn_triton"] = [[q[:1, :2], p[:1], 2, torch.tensor([1]), None]]
    return samples


# --- bad input ---------------------------------------------------------------------------------------


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


BAD = [
    ("fps rank", lambda: ops.furthest_point_sample(_t(5, 3), 2), ValueError, r"xyz must be \(B, N, C\)"),
    (
        "fps dtype",
        lambda: ops.furthest_point_sample(torch.ones(1, 5, 3, dtype=torch.int32), 2),
        ValueError,
        "xyz must be float32",
    ),
    ("fps npoint > N", lambda: ops.furthest_point_sample(_t(1, 5, 3), 6), ValueError, r"npoint must be in \[1, 5\]"),
    ("fps npoint type", lambda: ops.furthest_point_sample(_t(1, 5, 3), 2.0), TypeError, "npoint must be an int"),
    ("fps start", lambda: ops.furthest_point_sample(_t(1, 5, 3), 2, start_idx=5), ValueError, "start_idx must be in"),
    (
        "fps lengths short",
        lambda: ops.furthest_point_sample(_t(2, 5, 3), 3, lengths=torch.tensor([5, 2])),
        ValueError,
        r"lengths must be in \[3, 5\]",
    ),
    (
        "fps lengths shape",
        lambda: ops.furthest_point_sample(_t(2, 5, 3), 3, lengths=torch.tensor([5])),
        ValueError,
        r"lengths must have shape \(2,\)",
    ),
    (
        "fps lengths float",
        lambda: ops.furthest_point_sample(_t(2, 5, 3), 3, lengths=torch.tensor([5.0, 5.0])),
        ValueError,
        "lengths must be an integer tensor",
    ),
    ("fps not a tensor", lambda: ops.furthest_point_sample([[1.0]], 1), TypeError, "xyz must be a torch.Tensor"),
    ("knn k > N", lambda: ops.knn(_t(1, 4, 3), _t(1, 5, 3), 6), ValueError, r"k must be in \[1, 5\]"),
    ("knn C mismatch", lambda: ops.knn(_t(1, 4, 3), _t(1, 5, 2), 2), ValueError, "points must be"),
    (
        "knn dtype mismatch",
        lambda: ops.knn(_t(1, 4, 3), _t(1, 5, 3, dtype=torch.float64), 2),
        ValueError,
        "points must have query's dtype",
    ),
    ("knn device", lambda: ops.knn(_t(1, 4, 3), _t(1, 5, 3).to("meta"), 2), ValueError, "device"),
    (
        "knn lengths < k",
        lambda: ops.knn(_t(2, 4, 3), _t(2, 5, 3), 3, lengths=torch.tensor([5, 2])),
        ValueError,
        "each cloud needs at least k points",
    ),
    (
        "knn query_lengths > M",
        lambda: ops.knn(_t(1, 4, 3), _t(1, 5, 3), 3, query_lengths=torch.tensor([5])),
        ValueError,
        r"query_lengths must be in \[0, 4\]",
    ),
]


@pytest.mark.parametrize("case,call,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(case, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_cpp_checks_guard_direct_op_calls():
    with pytest.raises(RuntimeError, match=r"furthest_point_sample: npoint must be in \[1, N = 5\]"):
        torch.ops.medkernels.furthest_point_sample(_t(1, 5, 3), 6, None, 0)
    with pytest.raises(RuntimeError, match=r"furthest_point_sample: lengths\[1\] = 1 must be in"):
        torch.ops.medkernels.furthest_point_sample(_t(2, 5, 3), 2, torch.tensor([5, 1]), 0)
    with pytest.raises(RuntimeError, match=r"knn: k must be in \[1, N = 5\]"):
        torch.ops.medkernels.knn(_t(1, 4, 3), _t(1, 5, 3), 6, None, None)
    with pytest.raises(RuntimeError, match="knn: query must be"):
        torch.ops.medkernels.knn(_t(4, 3), _t(1, 5, 3), 2, None, None)


# --- on a GPU (marked gpu: `pytest -m gpu`, scripts/gpu_check.sh; skipped without CUDA) ----------


@gpu_test
@pytest.mark.parametrize("n,npoint,c", [(16384, 2048, 3), (5000, 700, 64)])
def test_fps_triton_on_gpu_equals_cpu(n, npoint, c):
    xyz = torch.randn(3, n, c, generator=torch.Generator().manual_seed(8))
    lengths = torch.tensor([n, n - 17, npoint + 5])
    want = ops.furthest_point_sample(xyz, npoint, lengths=lengths, start_idx=3, backend="cpu")
    got = ops.furthest_point_sample(xyz.cuda(), npoint, lengths=lengths.cuda(), start_idx=3, backend="triton")
    assert torch.equal(got.cpu(), want)


@gpu_test
@pytest.mark.parametrize("m,n,k,c", [(2048, 16384, 32, 3), (1000, 3000, 16, 64), (100, 257, 3, 1)])
def test_knn_triton_on_gpu_equals_cpu(m, n, k, c):
    g = torch.Generator().manual_seed(9)
    q, p = torch.randn(2, m, c, generator=g), torch.randn(2, n, c, generator=g)
    lengths, qlen = torch.tensor([n, n - 5]), torch.tensor([m, m // 2])
    want_d, want_i = ops.knn(q, p, k, lengths=lengths, query_lengths=qlen, backend="cpu")
    qg, pg = q.cuda().requires_grad_(True), p.cuda().requires_grad_(True)
    d, i = ops.knn(qg, pg, k, lengths=lengths.cuda(), query_lengths=qlen.cuda(), backend="triton")
    assert torch.equal(i.cpu(), want_i)
    close(d.cpu(), want_d, 1e-6, 1e-6, "knn distances")
    gq, gp = torch.autograd.grad(d.square().sum(), [qg, pg])
    qc, pc = q.requires_grad_(True), p.requires_grad_(True)
    wq, wp = torch.autograd.grad(
        ops.knn(qc, pc, k, lengths=lengths, query_lengths=qlen, backend="cpu")[0].square().sum(), [qc, pc]
    )
    close(gq.cpu(), wq, 1e-4, 1e-4, "dquery")
    close(gp.cpu(), wp, 1e-4, 1e-4, "dpoints")
