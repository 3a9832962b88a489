"""Non-finite input: every backend gives the reference's result (NaN where it has NaN, +-inf where it has
+-inf), and no output slot is ever left unset. Each case here failed before its fix (issue 11)."""

from __future__ import annotations

import itertools

import pytest
import torch
from kit import backends, requires_triton

from medkernels import ops

NAN, INF = float("nan"), float("inf")
CPU_BACKENDS = backends("cpu", "triton")


def same(a: torch.Tensor, b: torch.Tensor, rtol: float = 0.0, atol: float = 0.0) -> bool:
    """Equal non-finite pattern (NaN, +inf, -inf at the same places) and close finite values."""
    a, b = a.double(), b.double()
    if not (
        torch.equal(a.isnan(), b.isnan()) and torch.equal(a == INF, b == INF) and torch.equal(a == -INF, b == -INF)
    ):
        return False
    fin = a.isfinite()
    return torch.allclose(a[fin], b[fin], rtol=rtol, atol=atol)


# ---- kNN: +inf after every finite distance, NaN after +inf, ties by index; every slot a real point ----


def knn_cases():
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(2, 4, 3, generator=g), torch.randn(2, 40, 3, generator=g)
    nan_query = q.clone()
    nan_query[0, 2, 1] = NAN  # every distance NaN: the first k points, in index order
    inf_query = q.clone()
    inf_query[1, 3] = INF
    nan_points = p.clone()
    nan_points[0, [3, 17, 30]] = NAN  # fewer finite points than k for no query, NaN last
    nan_points[1, 5:35] = NAN  # 10 finite points < k = 12: the NaN ones fill the slots by index
    inf_points = p.clone()
    inf_points[0, 7, 0] = INF
    inf_points[1, :, 2] = -INF
    huge = p * 1e20  # squares overflow float32: all +inf, ties by index
    huge[:, 4] = 0.0
    return {
        "nan_query": (nan_query, p),
        "inf_query": (inf_query, p),
        "nan_points": (q, nan_points),
        "inf_points": (q, inf_points),
        "overflow": (q, huge),
    }


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", sorted(knn_cases()))
@pytest.mark.parametrize("lengths", [None, (40, 33)])
def test_knn_nonfinite_equals_reference(case, backend, lengths):
    q, p = knn_cases()[case]
    kw = {} if lengths is None else {"lengths": torch.tensor(lengths)}
    want_d, want_i = ops.knn(q, p, 12, backend="reference", **kw)
    got_d, got_i = ops.knn(q, p, 12, backend=backend, **kw)
    assert torch.equal(got_i, want_i)
    assert same(got_d, want_d)
    bound = torch.tensor(lengths or (40, 40))[:, None, None]
    assert bool(((got_i >= 0) & (got_i < bound)).all()), "every slot must hold a real point of its cloud"


def test_knn_all_nan_query_takes_lowest_indices():
    p = torch.randn(1, 8, 3)
    d, i = ops.knn(torch.tensor([[[NAN, 0.0, 0.0]]]), p, 3, backend="cpu")
    assert i.tolist() == [[[0, 1, 2]]] and bool(d.isnan().all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_knn_nonfinite_spatial_blocks(dtype):
    """The CPU spatial-block search (large clouds) with NaN/inf points and queries, and padded clouds."""
    g = torch.Generator().manual_seed(1)
    q, p = torch.randn(2, 128, 3, generator=g), torch.randn(2, 8192, 3, generator=g)
    q[0, 5] = NAN
    q[1, 6, 0] = INF
    p[0, 7] = INF
    p[0, 9, 1] = NAN
    p[1, 100:8000] = NAN  # 292 finite points < k: NaN points fill the rest
    q, p = q.to(dtype), p.to(dtype)
    for k, lengths in ((40, torch.tensor([5000, 8192])), (400, None)):
        want = ops.knn(q, p, k, lengths=lengths, backend="reference")
        for _ in range(2):  # repeated: stale memory would differ between runs
            got = ops.knn(q, p, k, lengths=lengths, backend="cpu")
            assert torch.equal(got[1], want[1])
            assert same(got[0], want[0])


# ---- FPS: torch's NaN rules (minimum propagates NaN, argmax takes the first NaN) ----


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fps_nan_follows_the_textbook_loop(backend):
    x = torch.randn(3, 50, 3, generator=torch.Generator().manual_seed(2))
    x[0, 3, 1] = NAN  # taken second, then every distance is NaN: index 0 repeats
    x[1, 10] = INF  # an infinite point: its distance to itself is inf - inf = NaN
    x[2, 40:, 0] = NAN
    got = ops.furthest_point_sample(x, 6, backend=backend)
    want = ops.furthest_point_sample(x, 6, backend="reference")
    assert torch.equal(got, want)
    assert got[0].tolist() == [0, 3, 0, 0, 0, 0]


def test_fps_nan_split_over_threads():
    """One large cloud split over threads (each part posts its best): the same first-NaN rule."""
    x = torch.randn(1, 300_000, 3, generator=torch.Generator().manual_seed(3))
    x[0, 200_000, 0] = NAN
    x[0, 250_000, 2] = NAN
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = ops.furthest_point_sample(x, 4, backend="cpu")
    finally:
        torch.set_num_threads(before)
    assert got.tolist() == ops.furthest_point_sample(x, 4, backend="reference").tolist() == [[0, 200_000, 0, 0]]


def test_fps_padding_never_taken_after_nan_centre():
    """Vector padding past the last point must stay out even when the centre is NaN."""
    x = torch.randn(1, 13, 3)
    x[0, 5] = NAN
    got = ops.furthest_point_sample(x, 5, backend="cpu")
    assert bool((got < 13).all()) and torch.equal(got, ops.furthest_point_sample(x, 5, backend="reference"))


# ---- selective scan and multi-order scan: an Inf in u / delta / delta_bias ----


# (dstate, variable B/C, gate z): padding lanes or not, both B/C layouts, with and without the gate
SCAN_CASES = [
    (*shape, *c)
    for shape in ((3, True, True), (16, False, False), (5, False, True))
    for c in itertools.product(["u", "delta", "delta_bias"], [INF, -INF], [True, False])
]


def scan_inputs(dstate, var, z, where, val, softplus, seqlen=11):
    g = torch.Generator().manual_seed(dstate + 7 * var + 3 * z)
    b, d = 2, 5
    args = dict(
        u=torch.randn(b, d, seqlen, generator=g),
        delta=torch.rand(b, d, seqlen, generator=g),
        A=-torch.rand(d, dstate, generator=g),
        B=torch.randn(b, dstate, seqlen, generator=g) if var else torch.randn(d, dstate, generator=g),
        C=torch.randn(b, dstate, seqlen, generator=g) if var else torch.randn(d, dstate, generator=g),
        D=torch.randn(d, generator=g),
        z=torch.randn(b, d, seqlen, generator=g) if z else None,
        delta_bias=torch.rand(d, generator=g),
        delta_softplus=softplus,
    )
    t = args[where].clone()
    if t.dim() == 3:
        t[1, 2, seqlen // 2] = val
    else:
        t[2] = val
    args[where] = t
    return args


def scan_params():
    # A timestep of -inf without softplus (decay exp(+inf)) is outside the Triton backend's promise: its
    # parallel scan combines the infinite factors in another order than the reference's steps.
    for c in SCAN_CASES:
        yield pytest.param("cpu", *c)
        yield pytest.param("cpu_base", *c)
        if not (c[3] != "u" and c[4] < 0 and not c[5]):
            yield pytest.param("triton", *c, marks=requires_triton)


@pytest.mark.parametrize("backend,dstate,var,z,where,val,softplus", list(scan_params()))
def test_selective_scan_inf_propagates_as_reference(backend, dstate, var, z, where, val, softplus):
    """dstate 3 leaves padding lanes in the CPU state vectors (B = C = 0 there): 0 * inf must not reach y.
    A constant infinite timestep (delta_bias = inf) makes every decay exactly 0 in the reference."""
    args = scan_inputs(dstate, var, z, where, val, softplus)
    want, want_last = ops.selective_scan_fn(**args, return_last_state=True, backend="reference")
    isa = ops.cpu_isa()
    if backend == "cpu_base":
        ops.set_cpu_isa("base")
    try:
        got, got_last = ops.selective_scan_fn(
            **args, return_last_state=True, backend="cpu" if backend == "cpu_base" else backend
        )
    finally:
        ops.set_cpu_isa(isa)
    if where == "u" or val > 0 or not softplus:  # softplus(-inf) = 0: a finite case
        assert bool((~want.isfinite()).any()), "the case must produce non-finite outputs"
    assert same(got, want, 1e-5, 1e-5) and same(got_last, want_last, 1e-5, 1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("where,val", list(itertools.product(["u", "delta"], [INF, -INF])))
def test_multi_order_scan_inf_propagates_as_reference(backend, where, val):
    g = torch.Generator().manual_seed(4)
    B_, D_, N_, L_, K_ = 2, 4, 3, 9, 3
    orders = torch.stack([torch.stack([torch.randperm(L_, generator=g) for _ in range(K_)]) for _ in range(B_)])
    u, delta = torch.randn(B_, D_, L_, generator=g), torch.rand(B_, K_, D_, L_, generator=g)
    rest = (
        -torch.rand(K_, D_, N_, generator=g),
        torch.randn(B_, K_, N_, L_, generator=g),
        torch.randn(B_, K_, N_, L_, generator=g),
        torch.randn(K_, D_, generator=g),
        torch.rand(K_, D_, generator=g),
    )
    (u if where == "u" else delta).view(-1)[7] = val
    want = ops.multi_order_selective_scan(u, delta, *rest, orders, backend="reference")
    got = ops.multi_order_selective_scan(u, delta, *rest, orders, backend=backend)
    if where == "u" or val > 0:  # softplus(-inf) = 0: a finite case
        assert bool((~want.isfinite()).any())
    assert same(got, want, 1e-5, 1e-5)


# ---- attention: the logsumexp of a row with a +inf logit is +inf (torch.logsumexp), not NaN ----


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_na_lse_of_infinite_logit(backend):
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 5, 5, 2, 4, generator=g) for _ in range(3))
    q[0, 1, 1, 0, 0] = INF  # +inf logits (and some -inf) in that row
    out, lse = ops.na2d(q, k, v, 3, return_lse=True, backend=backend)
    ref_out, ref_lse = ops.na2d(q, k, v, 3, return_lse=True, backend="reference")
    assert lse[0, 1, 1, 0].item() == INF
    assert same(lse, ref_lse, 1e-5, 1e-5) and same(out, ref_out, 1e-5, 1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("scope", ["local", "global"])
def test_dilated_attention_lse_of_infinite_logit(backend, scope):
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 4, 4, 4, 2, 8, generator=g) for _ in range(3))
    q[0, 1, 2, 3, 1, 0] = INF
    k[0, 0, 0, 0, 1, 0] = 1.0  # a positive logit with every member: +inf for the whole group row
    out, lse = ops.dilated_attention3d(q, k, v, (2, 2, 2), scope, return_lse=True, backend=backend)
    ref_out, ref_lse = ops.dilated_attention3d_ref(q, k, v, (2, 2, 2), scope, return_lse=True)
    assert (lse == INF).any()
    assert same(lse, ref_lse, 1e-5, 1e-5) and same(out, ref_out, 1e-5, 1e-5)


# ---- FasterKAN: an infinite weight meets the same zeros of the basis on every backend ----


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rswaf_kan_infinite_weight(backend):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 3, generator=g) * 20  # basis entries from 1 down to exactly 0 (|a| > 40)
    grid = torch.linspace(-2, 2, 8)
    w = torch.randn(5, 24, generator=g)
    w[1, 3] = INF
    w[2] = 0.0
    w[2, 5] = -INF
    w[3, 9] = NAN
    want = ops.rswaf_kan(x, grid, 1 / 0.33, w, backend="reference")
    got = ops.rswaf_kan(x, grid, 1 / 0.33, w, backend=backend)
    assert bool(want.isnan().any()) and bool(want.isinf().any()), "the case needs both 0 * inf and inf * phi"
    assert same(got, want, 1e-5, 1e-6)


def test_rswaf_basis_is_fasterkans_function_without_cancellation():
    """The basis equals FasterKAN's 1 - tanh(a)^2 to float32 rounding, keeps the tail that formula cancels
    to 0 (9 < |a| <= 40), and is exactly 0 beyond |a| = 40 on every backend."""
    a = torch.linspace(-60, 60, 24001, dtype=torch.float64)
    got = ops.rswaf_basis(a.float()[:, None], torch.zeros(1), 1.0).double()[:, 0]
    exact = 1 / torch.cosh(a) ** 2
    fasterkan = 1 - torch.tanh(a.float()) ** 2
    assert float((got - exact).abs().max()) < 2e-7
    assert float((fasterkan.double() - exact).abs().max()) < 2e-7
    tail = (a.abs() > 10) & (a.abs() <= 40)
    assert bool((got[tail] > 0).all()) and bool((fasterkan[tail] == 0).all())
    assert bool((got[a.abs() > 40] == 0).all())
