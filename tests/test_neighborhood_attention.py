"""Neighborhood attention: every backend against a dense masked-attention reference built from the
per-axis rules; the unfused pair; gradcheck; opcheck; torch.compile; modules; bad input."""

from __future__ import annotations

import math

import pytest
import torch
from kit import LONG, TEST_DEVICE, attention_terms, close, close_ulp, gpu_test, on_gpu, requires_triton
from na_reference import axis_rules, dense_na, dense_problem

from medkernels import nn as mknn
from medkernels import ops
from medkernels.ops import neighborhood_attention as na_mod

FUSED = {1: ops.na1d, 2: ops.na2d, 3: ops.na3d}
QK = {1: ops.na1d_qk, 2: ops.na2d_qk, 3: ops.na3d_qk}
AV = {1: ops.na1d_av, 2: ops.na2d_av, 3: ops.na3d_av}
# Error bound per result, in ulp (of the result's dtype; float32 for the LSE of half inputs) of
# sum|terms| (kit.attention_terms: the softmax-weighted size of what the result sums). float32,
# measured over the seeded grid, MEDKERNELS_LONG_TESTS=1 and three other seeds (both ISAs, the
# Triton interpreter): out 1.05, lse 0.83, dquery 1.4, dkey 1.9, dvalue 3.7 (2.2 on the default
# seeds), drpb 0.8, dadditional_keys 0.5, dadditional_values 0.9; float64 at most 2.2 of its own ulp.
# Set 2-3x above. float16/bfloat16: within one ulp of their dtype of sum|terms| (measured at most 0.28:
# the kernels round P and the saved output to the dtype, as a same-dtype reference would).
# GPU runs keep NATTEN's dtype floors (fp32 vs the float64 reference; see kit.on_gpu).
TOL = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
    torch.float64: (1e-9, 1e-9),
}
ULPS = {
    "out": 3,
    "lse": 2.5,
    "query": 4,
    "key": 5,
    "value": 8,
    "rpb": 2.5,
    "additional_keys": 1.5,
    "additional_values": 2.5,
}


def random_case(seed: int, na_dim: int | None = None, max_size: int = 9):
    """A seeded problem: sizes not divisible by dilation, even kernels, strides, per-axis causal,
    GQA, value dim != head dim, awkward head dims."""
    g = torch.Generator().manual_seed(seed)

    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    na_dim = na_dim or pick(1, 3)
    kernel, stride, dilation, causal, spatial = [], [], [], [], []
    for _ in range(na_dim):
        K = pick(2, 4)
        d = pick(1, 3)
        L = pick(K * d, max(K * d, max_size if na_dim > 1 else 3 * max_size))
        kernel.append(K)
        dilation.append(d)
        stride.append(pick(1, K))
        causal.append(bool(pick(0, 1)))
        spatial.append(L)
    kv_heads = pick(1, 2)
    return dict(
        spatial=tuple(spatial),
        kernel=tuple(kernel),
        stride=tuple(stride),
        dilation=tuple(dilation),
        causal=tuple(causal),
        batch=pick(1, 2),
        heads=kv_heads * pick(1, 2),
        kv_heads=kv_heads,
        dim=pick(1, 12),
        vdim=pick(1, 12),
        n_add=pick(0, 3),
        rpb=bool(pick(0, 1)),
        seed=seed,
    )


def make_tensors(c, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(c["seed"] + 1000)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    B, sp = c["batch"], c["spatial"]
    t = dict(
        query=randn(B, *sp, c["heads"], c["dim"]),
        key=randn(B, *sp, c["kv_heads"], c["dim"]),
        value=randn(B, *sp, c["kv_heads"], c["vdim"]),
    )
    if c["n_add"]:
        t["additional_keys"] = randn(B, c["n_add"], c["kv_heads"], c["dim"])
        t["additional_values"] = randn(B, c["n_add"], c["kv_heads"], c["vdim"])
    if c["rpb"]:
        t["rpb"] = randn(c["heads"], *(2 * k - 1 for k in c["kernel"]))
    return t


def check_case(c, backend, dtype=torch.float32, device="cpu"):
    """Forward, LSE and every gradient (including through the LSE) against the dense reference: within
    ULPS of sum|terms| (GPU kernels: the dtype floors TOL they were validated with)."""
    na = FUSED[len(c["spatial"])]
    tensors = make_tensors(c, dtype, device)
    leaves = {k: v.clone().requires_grad_(True) for k, v in tensors.items()}
    out, lse = na(
        leaves["query"],
        leaves["key"],
        leaves["value"],
        c["kernel"],
        c["stride"],
        c["dilation"],
        c["causal"],
        None,
        leaves.get("additional_keys"),
        leaves.get("additional_values"),
        rpb=leaves.get("rpb"),
        return_lse=True,
        backend=backend,
    )
    assert out.dtype == dtype and out.shape == (*tensors["query"].shape[:-1], c["vdim"])
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    g = torch.Generator().manual_seed(c["seed"] + 7)
    grad_out = torch.randn(out.shape, generator=g).to(device=device, dtype=dtype)
    grad_lse = torch.randn(lse.shape, generator=g).to(device=device, dtype=lse.dtype)
    grads = torch.autograd.grad([out, lse], list(leaves.values()), [grad_out, grad_lse])

    ref_leaves = {k: v.detach().double().cpu().requires_grad_(True) for k, v in tensors.items()}
    out_r, lse_r = dense_na(
        ref_leaves["query"],
        ref_leaves["key"],
        ref_leaves["value"],
        c["kernel"],
        c["stride"],
        c["dilation"],
        c["causal"],
        rpb=ref_leaves.get("rpb"),
        add_k=ref_leaves.get("additional_keys"),
        add_v=ref_leaves.get("additional_values"),
    )
    grads_r = torch.autograd.grad(
        [out_r, lse_r], list(ref_leaves.values()), [grad_out.double().cpu(), grad_lse.double().cpu()]
    )
    if on_gpu(backend, device):
        rtol, atol = TOL[dtype]
        close(out.cpu(), out_r, rtol, atol, "out")
        close(lse.cpu(), lse_r, rtol, atol, "lse")
        for name, a, b in zip(leaves, grads, grads_r):
            assert a.dtype == tensors[name].dtype and a.shape == tensors[name].shape, name
            close(a.cpu(), b, 4 * rtol, 4 * atol * max(1.0, b.abs().max().item() / 10), f"d{name}")
        return
    terms = attention_terms(
        dense_problem(c["kernel"], c["stride"], c["dilation"], c["causal"]), tensors, grad_out, grad_lse
    )

    def check(name, what, a, r):
        if a.dtype in (torch.float16, torch.bfloat16):  # one ulp of the dtype of sum|terms| (rounded intermediates)
            close_ulp(a, r, what, ulps=1, dtype=a.dtype, scale=terms[name])
        else:
            close_ulp(a, r, what, ulps=ULPS[name], dtype=a.dtype, scale=terms[name])

    check("out", "out", out.cpu(), out_r)
    check("lse", "lse", lse.cpu(), lse_r)
    for name, a, b in zip(leaves, grads, grads_r):
        assert a.dtype == tensors[name].dtype and a.shape == tensors[name].shape, name
        check(name, f"d{name}", a.cpu(), b)


# --- the per-axis rules ----------------------------------------------------------------------------


def test_window_rules_match_natten_examples():
    """The examples in ../shared/reference/natten.md, checked against both the kernels' tables and the
    dense reference's rules."""

    def keys(L, K, s, d, causal, x):
        start, count, _ = na_mod._axis_windows(L, K, s, d, causal)
        ref = axis_rules(L, K, s, d, causal)[0][x].nonzero().flatten().tolist()
        got = [int(start[x]) + m * d for m in range(int(count[x]))]
        assert got == ref
        return got

    assert [keys(8, 3, 1, 1, False, x) for x in (0, 1, 2, 7)] == [[0, 1, 2], [0, 1, 2], [1, 2, 3], [5, 6, 7]]
    assert keys(8, 4, 2, 1, False, 2) == [1, 2, 3, 4] and keys(8, 4, 2, 1, False, 4) == [3, 4, 5, 6]
    assert [keys(8, 3, 2, 1, True, x) for x in (0, 2, 3)] == [[0], [1, 2], [1, 2, 3]]
    assert keys(10, 3, 1, 3, False, 9) == [3, 6, 9]


@pytest.mark.parametrize("L,K,d", [(9, 3, 1), (12, 5, 1), (7, 7, 1), (13, 3, 2), (17, 5, 3), (10, 3, 3)])
def test_bias_index_is_natten_017s(L, K, d):
    """natten 0.17's legacy RPB start index pb(i) (odd kernels), as given in natten.md."""
    ns = K // 2

    def pb(i):
        if d == 1:
            return ns + (i < ns) * (ns - i) + (i + ns >= L) * (L - i - 1 - ns)
        if i - ns * d < 0:
            return K - 1 - i // d
        if i + ns * d >= L:
            return (L - i - 1) // d
        return ns

    _, _, base = na_mod._axis_windows(L, K, 1, d, False)
    assert base.tolist() == [pb(i) for i in range(L)]


# --- agreement with the dense reference ----------------------------------------------------------

SWEEP = list(range(60 if LONG else 24))


@pytest.mark.parametrize("seed", SWEEP)
def test_cpu_matches_dense_reference(cpu_isa, seed):
    check_case(random_case(seed), "cpu")


@pytest.mark.parametrize("seed", SWEEP[:8])
def test_reference_backend_matches_dense_reference(seed):
    check_case(random_case(seed), "reference")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("na_dim", [1, 2, 3])
def test_cpu_dtypes(dtype, na_dim):
    check_case(random_case(100 + na_dim, na_dim, max_size=7), "cpu", dtype)


@requires_triton
@pytest.mark.parametrize("seed,na_dim", [(200, 1), (201, 1), (202, 2), (203, 3)])
def test_triton_matches_dense_reference(seed, na_dim):
    """On CPU through the Triton interpreter (TRITON_INTERPRET=1): tiny shapes only."""
    c = random_case(seed, na_dim, max_size=6)
    c.update(batch=1, dim=min(c["dim"], 4), vdim=min(c["vdim"], 4))
    check_case(c, "triton", device=TEST_DEVICE)


def test_large_head_dim_and_window():
    c = dict(
        spatial=(12, 11),
        kernel=(5, 4),
        stride=(1, 2),
        dilation=(2, 1),
        causal=(False, True),
        batch=1,
        heads=2,
        kv_heads=1,
        dim=70,
        vdim=33,
        n_add=2,
        rpb=True,
        seed=5,
    )
    check_case(c, "cpu")


def test_full_window_equals_plain_attention():
    q, k, v = (torch.randn(1, 6, 5, 2, 8) for _ in range(3))
    out = ops.na2d(q, k, v, (6, 5))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    ref = sdpa(*(t.double().flatten(1, 2).transpose(1, 2) for t in (q, k, v)))
    terms = attention_terms(dense_problem((6, 5), (1, 1), (1, 1), (False, False)), dict(query=q, key=k, value=v))
    close_ulp(out, ref.transpose(1, 2).reshape(out.shape), "out", ulps=ULPS["out"], scale=terms["out"])


# --- the unfused pair ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_qk_av_pair_matches_fused(seed, backend):
    c = random_case(300 + seed)
    n = len(c["spatial"])
    c.update(stride=(1,) * n, n_add=0)
    t = make_tensors(c)
    leaves = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    scale = c["dim"] ** -0.5
    hf = [0, n + 1, *range(1, n + 1), n + 2]  # heads-last -> heads-first
    q, k, v = (leaves[x].permute(*hf) for x in ("query", "key", "value"))
    attn = QK[n](q * scale, k, c["kernel"], c["dilation"], c["causal"], rpb=leaves.get("rpb"), backend=backend)
    assert attn.shape == (*q.shape[:-1], math.prod(c["kernel"]))
    out = AV[n](attn.softmax(-1), v, c["kernel"], c["dilation"], c["causal"], backend=backend)
    out = out.permute(0, *range(2, n + 2), 1, n + 2)
    fused = FUSED[n](
        leaves["query"],
        leaves["key"],
        leaves["value"],
        c["kernel"],
        1,
        c["dilation"],
        c["causal"],
        rpb=leaves.get("rpb"),
        backend="cpu",
    )
    # both sides carry an attention's rounding, yet differ by at most 3 ulp of sum|terms| (measured): the
    # fused kernel's allowance
    terms = attention_terms(dense_problem(c["kernel"], (1,) * n, c["dilation"], c["causal"]), t, torch.ones(out.shape))
    close_ulp(out, fused, "out", ulps=ULPS["out"], scale=terms["out"])
    g1 = torch.autograd.grad(out.sum(), list(leaves.values()))
    g2 = torch.autograd.grad(fused.sum(), list(leaves.values()))
    for name, a, b in zip(leaves, g1, g2):
        close_ulp(a, b, f"d{name}", ulps=ULPS[name], scale=terms[name])


def test_qk_marks_short_causal_windows_with_minus_inf():
    q = torch.randn(1, 1, 6, 4)
    attn = ops.na1d_qk(q, q, 3, is_causal=True)
    assert torch.isinf(attn[0, 0, 0, 1:]).all() and torch.isfinite(attn[0, 0, 0, 0])
    assert torch.isfinite(attn[0, 0, 2:]).all()


QK_AV_ULPS = 6  # measured at most 2.0 (seeded and two other seeds)


@pytest.mark.parametrize("seed", range(4))
def test_qk_av_cpu_match_their_references(seed):
    c = random_case(400 + seed)
    n = len(c["spatial"])
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(c["batch"], c["heads"], *c["spatial"], c["dim"], generator=g)
    k = torch.randn(c["batch"], c["kv_heads"], *c["spatial"], c["dim"], generator=g)
    v = torch.randn(c["batch"], c["kv_heads"], *c["spatial"], c["vdim"], generator=g)
    rpb = torch.randn(c["heads"], *(2 * x - 1 for x in c["kernel"]), generator=g) if c["rpb"] else None
    a_cpu = QK[n](q, k, c["kernel"], c["dilation"], c["causal"], rpb, backend="cpu")
    a_ref = QK[n](q, k, c["kernel"], c["dilation"], c["causal"], rpb, backend="reference")
    # one dot product (plus the bias) each, summed in different orders: ulp of sum|terms|, which the
    # reference gives on |inputs|
    absr = None if rpb is None else rpb.abs()
    terms = QK[n](q.abs(), k.abs(), c["kernel"], c["dilation"], c["causal"], absr, backend="reference")
    close_ulp(a_cpu, a_ref, "attn", ulps=QK_AV_ULPS, scale=terms)
    w = a_ref.softmax(-1)
    terms = AV[n](w, v.abs(), c["kernel"], c["dilation"], c["causal"], backend="reference")
    close_ulp(
        AV[n](w, v, c["kernel"], c["dilation"], c["causal"], backend="cpu"),
        AV[n](w, v, c["kernel"], c["dilation"], c["causal"], backend="reference"),
        "out",
        ulps=QK_AV_ULPS,
        scale=terms,
    )


# --- gradcheck, determinism, compile, opcheck ------------------------------------------------------


def test_gradcheck_float64_fused():
    c = dict(
        spatial=(5, 4),
        kernel=(3, 2),
        stride=(2, 1),
        dilation=(1, 2),
        causal=(False, True),
        batch=1,
        heads=2,
        kv_heads=1,
        dim=3,
        vdim=2,
        n_add=2,
        rpb=True,
        seed=9,
    )
    t = {k: v.requires_grad_(True) for k, v in make_tensors(c, torch.float64).items()}

    def fn(q, k, v, ak, av, rpb):
        return ops.na2d(
            q,
            k,
            v,
            c["kernel"],
            c["stride"],
            c["dilation"],
            c["causal"],
            None,
            ak,
            av,
            rpb=rpb,
            return_lse=True,
            backend="cpu",
        )

    assert torch.autograd.gradcheck(
        fn,
        [t[x] for x in ("query", "key", "value", "additional_keys", "additional_values", "rpb")],
        eps=1e-6,
        atol=1e-7,
    )


def test_gradcheck_float64_unfused():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(1, 1, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(1, 1, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    rpb = torch.randn(2, 5, dtype=torch.float64, generator=g, requires_grad=True)

    def qk(q, k, r):  # the -inf slots of short causal windows are constants: zero them for finite differences
        attn = ops.na1d_qk(q, k, 3, 1, True, rpb=r, backend="cpu")
        return attn.masked_fill(attn.isinf(), 0.0)

    assert torch.autograd.gradcheck(qk, [q, k, rpb])
    w = torch.rand(1, 2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, v: ops.na1d_av(w, v, 3, 1, True, backend="cpu"), [w, v])


def test_deterministic_across_runs_and_thread_counts():
    c = dict(
        spatial=(20, 18),
        kernel=(5, 4),
        stride=(1, 1),
        dilation=(2, 1),
        causal=(False, False),
        batch=2,
        heads=4,
        kv_heads=2,
        dim=16,
        vdim=16,
        n_add=2,
        rpb=True,
        seed=4,
    )
    t = make_tensors(c)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (threads, threads, 1):
            torch.set_num_threads(n)
            leaves = {k: v.clone().requires_grad_(True) for k, v in t.items()}
            out = ops.na2d(
                leaves["query"],
                leaves["key"],
                leaves["value"],
                c["kernel"],
                1,
                c["dilation"],
                additional_keys=leaves["additional_keys"],
                additional_values=leaves["additional_values"],
                rpb=leaves["rpb"],
            )
            results.append([out, *torch.autograd.grad(out.square().sum(), list(leaves.values()))])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    c = dict(
        spatial=(6, 7),
        kernel=(3, 3),
        stride=(1, 2),
        dilation=(2, 1),
        causal=(False, True),
        batch=1,
        heads=2,
        kv_heads=1,
        dim=8,
        vdim=8,
        n_add=1,
        rpb=True,
        seed=6,
    )
    t = {k: v.requires_grad_(True) for k, v in make_tensors(c).items()}

    def parts(query, key, value, additional_keys, additional_values, rpb):
        out, lse = ops.na2d(
            query,
            key,
            value,
            (3, 3),
            (1, 2),
            (2, 1),
            (False, True),
            None,
            additional_keys,
            additional_values,
            rpb=rpb,
            return_lse=True,
        )
        attn = ops.na2d_qk(query.transpose(1, 3).transpose(2, 3), key.transpose(1, 3).transpose(2, 3), 3)
        return out.square(), lse, attn.logsumexp(-1)

    def f(**t):
        return sum(p.sum() for p in parts(**t))

    loss_c = torch.compile(f, fullgraph=True, dynamic=dynamic)(**t)
    loss_e = f(**t)
    # the same kernels; Inductor may reorder the loss's sums (ulp of sum|terms|) and fuses its own
    # logsumexp, whose softmax then feeds na_qk's backward: ulp of both attentions' sum|terms|
    with torch.no_grad():
        out = parts(**t)[0].sqrt()
        close_ulp(loss_c, loss_e, "loss", ulps=4, scale=sum(p.abs().sum() for p in parts(**t)).item())
    terms = attention_terms(
        dense_problem((3, 3), (1, 2), (2, 1), (False, True)), t, 2 * out, torch.ones(out.shape[:-1])
    )
    hf = {k: t[k] for k in ("query", "key", "value")}  # na2d_qk: kernel 3, unit scale; its logsumexp's sum|terms|
    qk_terms = attention_terms(
        dense_problem((3, 3), (1, 1), (1, 1), (False, False), scale=1.0),
        hf,
        torch.zeros(out.shape),
        torch.ones(out.shape[:-1]),
    )
    grads_c, grads_e = torch.autograd.grad(loss_c, list(t.values())), torch.autograd.grad(loss_e, list(t.values()))
    for name, a, b in zip(t, grads_c, grads_e):
        close_ulp(a, b, f"d{name}", ulps=1.5, scale=terms[name] + qk_terms.get(name, 0))  # measured 0.5


def opcheck_samples():
    c = dict(
        spatial=(5, 4),
        kernel=(3, 2),
        stride=(2, 1),
        dilation=(1, 2),
        causal=(False, True),
        batch=1,
        heads=2,
        kv_heads=1,
        dim=3,
        vdim=5,
        n_add=2,
        rpb=True,
        seed=11,
    )
    t = make_tensors(c)
    lists = [list(c["kernel"]), list(c["stride"]), list(c["dilation"]), list(c["causal"])]
    fused = [t["query"], t["key"], t["value"], *lists, 0.5, t["rpb"], t["additional_keys"], t["additional_values"]]
    plain = [t["query"], t["key"], t["value"], *lists, 0.5, None, None, None]
    out, lse = torch.ops.medkernels.na_fwd(*fused)
    grad_out = torch.randn_like(out)
    bwd = [
        grad_out,
        torch.randn_like(lse),
        t["query"],
        t["key"],
        t["value"],
        out,
        lse,
        *lists,
        0.5,
        t["rpb"],
        t["additional_keys"],
        t["additional_values"],
    ]
    hf = [t[x].permute(0, 3, 1, 2, 4).contiguous() for x in ("query", "key", "value")]
    unf = [[2, 2], [1, 2], [False, True]]
    attn = torch.ops.medkernels.na_qk(hf[0], hf[1], *unf, None)
    grad = lambda xs: [x.clone().requires_grad_(True) if isinstance(x, torch.Tensor) else x for x in xs]  # noqa: E731
    samples = {
        "na_fwd": [grad(fused), plain],
        "na_bwd": [bwd],
        "na_qk": [grad([hf[0], hf[1], *unf, t["rpb"][:, :3, :3].contiguous()])],
        "na_qk_bwd": [[torch.randn_like(attn), hf[0], hf[1], *unf, None]],
        "na_av": [grad([attn.softmax(-1), hf[2], *unf])],
        "na_av_bwd": [[torch.randn(*attn.shape[:-1], 5), attn.softmax(-1), hf[2], *unf]],
    }
    if hasattr(torch.ops.medkernels, "na_fwd_triton"):
        samples["na_fwd_triton"] = [grad(fused)]
        samples["na_bwd_triton"] = [bwd]
    return samples


# --- modules --------------------------------------------------------------------------------------


MODULE_ULPS = 1  # measured at most 0.34 (seeded and two other seeds)


@pytest.mark.parametrize(
    "cls,spatial",
    [
        (mknn.NeighborhoodAttention1D, (11,)),
        (mknn.NeighborhoodAttention2D, (7, 6)),
        (mknn.NeighborhoodAttention3D, (4, 5, 4)),
    ],
)
def test_module_matches_dense_reference_and_round_trips(cls, spatial):
    torch.manual_seed(0)
    n = len(spatial)
    m = cls(32, 4, 3, stride=1, dilation=1, rel_pos_bias=True).eval()
    x = torch.randn(2, *spatial, 32)
    qkv = m.qkv(x).reshape(2, *spatial, 3, 4, 8)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    out_r, _ = dense_na(q, k, v, (3,) * n, (1,) * n, (1,) * n, (False,) * n, rpb=m.rpb)
    W, b = m.proj.weight.double(), m.proj.bias.double()
    expected = torch.nn.functional.linear(out_r.reshape(2, *spatial, 32), W, b)
    # the attention's sum|terms| carried through the projection (whose own rounding it also bounds)
    terms = attention_terms(
        dense_problem((3,) * n, (1,) * n, (1,) * n, (False,) * n), dict(query=q, key=k, value=v, rpb=m.rpb)
    )["out"]
    scale = torch.nn.functional.linear(terms.reshape(2, *spatial, 32), W.abs(), b.abs())
    close_ulp(m(x), expected, "module", ulps=MODULE_ULPS, scale=scale)
    fresh = cls(32, 4, 3, rel_pos_bias=True).eval()
    fresh.load_state_dict(m.state_dict(), strict=True)
    torch.testing.assert_close(fresh(x), m(x), rtol=0, atol=0)


def test_module_loads_natten_017_and_021_state_dicts():
    natten_017 = {
        "qkv.weight": torch.randn(96, 32),
        "qkv.bias": torch.randn(96),
        "rpb": torch.randn(2, 13, 13),
        "proj.weight": torch.randn(32, 32),
        "proj.bias": torch.randn(32),
    }
    m = mknn.NeighborhoodAttention2D(dim=32, num_heads=2, kernel_size=7, rel_pos_bias=True)
    m.load_state_dict(natten_017, strict=True)
    natten_021 = {k: v for k, v in natten_017.items() if k != "rpb"}
    mknn.NeighborhoodAttention2D(32, 2, 7).load_state_dict(natten_021, strict=True)
    assert [n for n, _ in mknn.NeighborhoodAttention2D(32, 2, 7).named_parameters()] == list(natten_021)


def test_module_attention_dropout_uses_the_unfused_path():
    torch.manual_seed(0)
    m = mknn.NeighborhoodAttention2D(16, 2, 3, rel_pos_bias=True, attn_drop=0.5)
    x = torch.randn(1, 6, 6, 16)
    m.train()
    y1, y2 = m(x), m(x)
    assert not torch.equal(y1, y2), "dropout applies to the attention weights in training"
    m.eval()
    torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
    y1.sum().backward()
    assert m.rpb.grad is not None and m.rpb.grad.abs().sum() > 0


def test_module_config_errors_and_repr():
    with pytest.raises(ValueError, match="must evenly divide embedding dimension"):
        mknn.NeighborhoodAttention2D(30, 4, 3)
    with pytest.raises(ValueError, match="not both"):
        mknn.NeighborhoodAttention2D(32, 2, 3, dim=32)
    with pytest.raises(ValueError, match="Stride cannot be larger"):
        mknn.NeighborhoodAttention1D(32, 2, 3, stride=4)
    with pytest.raises(ValueError, match="Invalid value for `kernel_size`"):
        mknn.NeighborhoodAttention3D(32, 2, (3, 3))
    m = mknn.NeighborhoodAttention2D(32, 2, 3, dilation=(1, 2), device="cpu", dtype=torch.float64)
    assert m.qkv.weight.dtype == torch.float64
    assert "dilation=(1, 2)" in repr(m)
    with pytest.raises(ValueError, match="expected a tensor with rank 4"):
        m(torch.randn(2, 5, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected embedding dimension 32, got 16"):
        m(torch.randn(1, 6, 6, 16, dtype=torch.float64))


# --- bad input ------------------------------------------------------------------------------------


def _qkv(*shape, heads=2, kv_heads=2, dim=4):
    return (
        torch.randn(1, *shape, heads, dim),
        torch.randn(1, *shape, kv_heads, dim),
        torch.randn(1, *shape, kv_heads, dim),
    )


BAD = [
    ("kernel 1", lambda: ops.na1d(*_qkv(8), 1), ValueError, r"Invalid value for `kernel_size`.*all >= 2"),
    ("kernel tuple length", lambda: ops.na2d(*_qkv(8, 8), (3,)), ValueError, r"Invalid value for `kernel_size`"),
    ("stride 0", lambda: ops.na1d(*_qkv(8), 3, stride=0), ValueError, r"Invalid value for `stride`"),
    ("dilation 0", lambda: ops.na1d(*_qkv(8), 3, dilation=0), ValueError, r"Invalid value for `dilation`"),
    ("causal type", lambda: ops.na1d(*_qkv(8), 3, is_causal=1), ValueError, r"Invalid value for `is_causal`"),
    (
        "window too big",
        lambda: ops.na1d(*_qkv(8), 3, dilation=3),
        ValueError,
        r"product of kernel size and dilation cannot be larger than input size",
    ),
    (
        "stride > kernel",
        lambda: ops.na1d(*_qkv(8), 3, stride=4),
        ValueError,
        r"Stride cannot be larger than kernel size",
    ),
    ("rank", lambda: ops.na2d(*_qkv(8), 3), ValueError, r"query must be a 5-D tensor"),
    ("integer", lambda: ops.na1d(*(t.long() for t in _qkv(8)), 3), ValueError, r"query must be float32.*torch.int64"),
    (
        "dtype mismatch",
        lambda: ops.na1d(_qkv(8)[0], _qkv(8)[1].double(), _qkv(8)[2], 3),
        ValueError,
        r"must assume the same data type",
    ),
    (
        "device mismatch",
        lambda: ops.na1d(_qkv(8)[0], _qkv(8)[1].to("meta"), _qkv(8)[2], 3),
        ValueError,
        r"must be on the same device",
    ),
    ("gqa", lambda: ops.na1d(*_qkv(8, heads=3, kv_heads=2), 3), ValueError, r"Key/value heads must evenly divide"),
    (
        "head dims",
        lambda: ops.na1d(_qkv(8)[0], _qkv(8, dim=5)[1], _qkv(8)[2], 3),
        ValueError,
        r"Q and K head dims must match",
    ),
    (
        "spatial",
        lambda: ops.na1d(_qkv(8)[0], _qkv(9)[1], _qkv(9)[2], 3),
        ValueError,
        r"must match in their spatial dims",
    ),
    (
        "additional alone",
        lambda: ops.na1d(*_qkv(8), 3, additional_keys=torch.randn(1, 2, 2, 4)),
        ValueError,
        r"must be either both Tensors or None",
    ),
    (
        "additional shape",
        lambda: ops.na1d(
            *_qkv(8), 3, additional_keys=torch.randn(1, 2, 3, 4), additional_values=torch.randn(1, 2, 3, 4)
        ),
        ValueError,
        r"additional_keys must be \[batch, tokens, kv_heads, head_dim\]",
    ),
    (
        "rpb shape",
        lambda: ops.na2d(*_qkv(8, 8), 3, rpb=torch.randn(2, 3, 3)),
        ValueError,
        r"rpb must have shape \(heads, 2\*kernel_size-1 per axis\) = \(2, 5, 5\)",
    ),
    ("not a tensor", lambda: ops.na1d([[1.0]], *_qkv(8)[1:], 3), TypeError, r"query must be a torch.Tensor"),
    (
        "av slots",
        lambda: ops.na1d_av(torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4), 3),
        ValueError,
        r"attn's last dim must be prod\(kernel_size\) = 3",
    ),
    (
        "qk heads",
        lambda: ops.na1d_qk(torch.randn(1, 3, 8, 4), torch.randn(1, 2, 8, 4), 3),
        ValueError,
        r"key heads must evenly divide query heads",
    ),
    (
        "forced triton",
        lambda: ops.na1d(*_qkv(8), 3, backend="cuda"),
        ops.BackendUnavailableError,
        r"na1d: backend='cuda' cannot run these inputs: inputs are on cpu",
    ),
]


@pytest.mark.parametrize("case,call,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(case, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_cpp_checks_guard_direct_op_calls():
    q, k, v = _qkv(8)
    with pytest.raises(RuntimeError, match=r"^na_fwd: kernel_size \* dilation must not exceed"):
        torch.ops.medkernels.na_fwd(q, k, v, [5], [1], [2], [False], 0.5, None, None, None)
    with pytest.raises(RuntimeError, match=r"^na_fwd: stride must be in \[1, kernel_size\]"):
        torch.ops.medkernels.na_fwd(q, k, v, [3], [4], [1], [False], 0.5, None, None, None)


# --- on a GPU (marked gpu: `pytest -m gpu`, scripts/gpu_check.sh; skipped without CUDA) ----------


@gpu_test
@pytest.mark.parametrize("seed,na_dim", [(500, 1), (501, 2), (502, 3), (503, 2)])
def test_neighborhood_attention_triton_on_gpu(seed, na_dim):
    check_case(random_case(seed, na_dim, max_size=12), "triton", device="cuda")
