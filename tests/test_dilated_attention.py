"""D-Former 3D dilated attention: every backend against the gather oracle and against the independent
pad-reshape-permute implementations (the official code's way, and SDPA on permuted tokens); group
geometry; gradcheck; opcheck; torch.compile; modules; bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from kit import LONG, TEST_DEVICE, attention_terms, close, close_ulp, gpu_test, on_gpu, requires_triton

from medkernels import nn as mknn
from medkernels import ops
from medkernels.testing import dformer_attention_official, dformer_attention_sdpa

# Error bound per result, in ulp (of the result's dtype; float32 for the LSE of half inputs) of
# sum|terms| (kit.attention_terms over the groups: dilated_problem). float32, measured over the
# seeded grid with MEDKERNELS_LONG_TESTS=1 (both ISAs, the Triton interpreter) and five other seeds:
# out 1.1, lse 0.8, dq 2.7 (2.2 on the default seeds), dk 1.3, dv 1.8; float64 at most 0.85 of its
# own ulp. Set 2.3-3x above. float16/bfloat16: within half an ulp of their dtype of sum|terms|
# (measured at most 0.2: the kernel rounds to the dtype, as a same-dtype reference would).
ULPS = {"out": 3, "lse": 2.5, "dq": 6, "dk": 4, "dv": 5}
# GPU runs keep the tolerances they were validated with (see kit.on_gpu): low precision against
# the float32 oracle, float32 against the float64 one.
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
    torch.float64: (1e-10, 1e-10),
}
LOWP_ULPS = 0.5


def dilated_problem(spatial, group, scope, scale=None):
    """The groups as a batched dense attention problem for kit.attention_terms: logits
    [B, heads, groups, members, members], padded members masked, layout back to [B, D, H, W, heads, X]."""
    index, valid = ops.dilated_groups(spatial, group, scope)
    G, M = index.shape
    allowed = valid[:, :, None] & valid[:, None, :]
    tokens = index[valid]

    def build(query, key, value):
        B, heads, dim = query.shape[0], query.shape[-2], query.shape[-1]
        sc = dim**-0.5 if scale is None else scale

        def grouped(t):  # [B, D, H, W, heads, X] -> [B, heads, G, M, X]
            return t.reshape(B, -1, heads, t.shape[-1])[:, index].permute(0, 3, 1, 2, 4)

        q, k, v = grouped(query.double()), grouped(key.double()), grouped(value.double())

        def layout(t):  # [B, heads, G, M, X] -> [B, D, H, W, heads, X], padded members dropped
            members = t.permute(0, 2, 3, 1, 4)[:, valid]
            out = members.new_zeros(B, spatial[0] * spatial[1] * spatial[2], heads, t.shape[-1])
            return out.index_add(1, tokens, members).reshape(B, *spatial, heads, t.shape[-1])

        return sc * q @ k.transpose(-1, -2), allowed, v, layout

    return build


def random_case(seed: int, max_size: int = 9, max_group: int = 5):
    """Sizes not divisible by the group size, groups larger than an axis, both scopes, awkward head dims."""
    g = torch.Generator().manual_seed(seed)

    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    return dict(
        spatial=tuple(pick(1, max_size) for _ in range(3)),
        group=tuple(pick(1, max_group) for _ in range(3)),
        scope=("local", "global")[pick(0, 1)],
        batch=pick(1, 2),
        heads=pick(1, 3),
        dim=pick(1, 12),
        seed=seed,
    )


def make_qkv(c, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(c["seed"] + 1000)
    shape = (c["batch"], *c["spatial"], c["heads"], c["dim"])
    return [torch.randn(*shape, generator=g).to(device=device, dtype=dtype) for _ in range(3)]


def _check_on_gpu(c, backend, dtype, device):
    """GPU kernels against the float64 (float32 for low precision) oracle with the tolerances they were
    validated with: kept."""
    qkv = make_qkv(c, dtype, device)
    ref_dtype = torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32
    leaves = [t.detach().clone().requires_grad_(True) for t in qkv]
    ref_leaves = [t.detach().to(ref_dtype).clone().requires_grad_(True) for t in qkv]
    out, lse = ops.dilated_attention3d(*leaves, c["group"], c["scope"], return_lse=True, backend=backend)
    ref, ref_lse = ops.dilated_attention3d_ref(*ref_leaves, c["group"], c["scope"], return_lse=True)
    assert out.shape == leaves[0].shape and out.dtype == dtype and lse.shape == leaves[0].shape[:-1]
    rtol, atol = TOL[dtype]
    close(out, ref, rtol, atol, "out")
    close(lse, ref_lse, rtol, atol, "lse")
    g = torch.Generator().manual_seed(c["seed"])
    gout = torch.randn(out.shape, generator=g).to(device)
    glse = torch.randn(lse.shape, generator=g).to(device)
    got = torch.autograd.grad((out * gout.to(dtype)).sum() + (lse * glse.to(lse.dtype)).sum(), leaves)
    want = torch.autograd.grad((ref * gout.to(ref_dtype)).sum() + (ref_lse * glse.to(ref_dtype)).sum(), ref_leaves)
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        close(a, b, 4 * rtol, 4 * atol, name)


def check_against_oracle(c, backend, dtype=torch.float32, device="cpu"):
    """Forward, lse and every gradient (through out and lse) of ``backend`` vs the float64 oracle, within
    ULPS of sum|terms| (GPU kernels: _check_on_gpu)."""
    if on_gpu(backend, device):
        return _check_on_gpu(c, backend, dtype, device)
    qkv = make_qkv(c, dtype, device)
    ref_dtype = torch.float64
    leaves = [t.detach().clone().requires_grad_(True) for t in qkv]
    ref_leaves = [t.detach().cpu().to(ref_dtype).clone().requires_grad_(True) for t in qkv]
    out, lse = ops.dilated_attention3d(*leaves, c["group"], c["scope"], return_lse=True, backend=backend)
    ref, ref_lse = ops.dilated_attention3d_ref(*ref_leaves, c["group"], c["scope"], return_lse=True)
    assert out.shape == leaves[0].shape and out.dtype == dtype and lse.shape == leaves[0].shape[:-1]
    g = torch.Generator().manual_seed(c["seed"])
    gout = torch.randn(out.shape, generator=g).to(device=device, dtype=dtype)
    glse = torch.randn(lse.shape, generator=g).to(device=device, dtype=lse.dtype)
    got = torch.autograd.grad((out * gout).sum() + (lse * glse).sum(), leaves)
    want = torch.autograd.grad((ref * gout.to(ref_dtype)).sum() + (ref_lse * glse.to(ref_dtype)).sum(), ref_leaves)
    terms = attention_terms(
        dilated_problem(c["spatial"], c["group"], c["scope"]), dict(query=qkv[0], key=qkv[1], value=qkv[2]), gout, glse
    )
    terms.update(dq=terms["query"], dk=terms["key"], dv=terms["value"])

    def check(name, a, r):
        if a.dtype in (torch.float16, torch.bfloat16):  # half an ulp of the dtype of sum|terms|
            close_ulp(a, r, name, ulps=LOWP_ULPS, dtype=a.dtype, scale=terms[name])
        else:
            close_ulp(a, r, name, ulps=ULPS[name], dtype=a.dtype, scale=terms[name])

    check("out", out, ref)
    check("lse", lse, ref_lse)
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        check(name, a, b)


SWEEP = list(range(40 if LONG else 12))


# --- group geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize(
    "spatial,group", [((5, 7, 9), (2, 3, 4)), ((32, 32, 32), (2, 8, 8)), ((3, 4, 4), (4, 8, 8)), ((1, 6, 5), (2, 2, 2))]
)
def test_groups_partition_every_token_once(scope, spatial, group):
    index, valid = ops.dilated_groups(spatial, group, scope)
    members = index[valid]
    assert torch.equal(members.sort().values, torch.arange(spatial[0] * spatial[1] * spatial[2]))
    assert valid[:, 0].all()  # member 0 exists in every group: no query ever has only padded keys


def test_group_geometry_is_d_formers():
    # 32^3 tokens, group (2, 8, 8): local windows of 2x8x8; global interval I = (16, 4, 4), group r holds r + m * I.
    index, valid = ops.dilated_groups((32, 32, 32), (2, 8, 8), "local")
    assert index.shape == (16 * 4 * 4, 128) and valid.all()
    first = index[0].reshape(2, 8, 8)
    assert first[1, 0, 0] == 32 * 32 and first[0, 1, 0] == 32 and first[0, 0, 1] == 1
    index, valid = ops.dilated_groups((32, 32, 32), (2, 8, 8), "global")
    assert index.shape == (16 * 4 * 4, 128) and valid.all()
    first = index[0].reshape(2, 8, 8)
    assert first[1, 0, 0] == 16 * 32 * 32 and first[0, 1, 0] == 4 * 32 and first[0, 0, 1] == 4
    # a group larger than the axis is clamped: a 4^3 map with group (2, 8, 8) has groups (2, 4, 4)
    index, _ = ops.dilated_groups((4, 4, 4), (2, 8, 8), "local")
    assert index.shape == (2, 32)


# --- backends against the oracle and the pad-reshape-permute implementations ------------------------


@pytest.mark.parametrize("seed", SWEEP)
def test_cpu_matches_reference(cpu_isa, seed):
    check_against_oracle(random_case(seed), "cpu")


@pytest.mark.parametrize("seed", SWEEP[:8])
def test_reference_and_cpu_match_pad_reshape_permute(seed):
    c = random_case(100 + seed)
    q, k, v = (t.double() for t in make_qkv(c))
    terms = attention_terms(dilated_problem(c["spatial"], c["group"], c["scope"]), dict(query=q, key=k, value=v))
    for peer in (dformer_attention_official, dformer_attention_sdpa):  # all float64: measured at most 1.3 ulp
        want = peer(q, k, v, c["group"], c["scope"])
        close_ulp(
            ops.dilated_attention3d_ref(q, k, v, c["group"], c["scope"]),
            want,
            peer.__name__,
            ulps=3,
            dtype=torch.float64,
            scale=terms["out"],
        )
        close_ulp(
            ops.dilated_attention3d(q, k, v, c["group"], c["scope"], backend="cpu"),
            want,
            f"cpu vs {peer.__name__}",
            ulps=3,
            dtype=torch.float64,
            scale=terms["out"],
        )


@pytest.mark.parametrize("scope", ["local", "global"])
def test_padding_on_every_axis_is_excluded(scope):
    # the official global-scope mask ignores depth padding; a padded depth member must not be attended
    q, k, v = (torch.randn(1, 3, 4, 4, 1, 4, dtype=torch.float64) for _ in range(3))
    out = ops.dilated_attention3d(q, k, v, (2, 4, 4), scope, backend="cpu")
    terms = attention_terms(dilated_problem((3, 4, 4), (2, 4, 4), scope), dict(query=q, key=k, value=v))["out"]
    close_ulp(
        out, dformer_attention_official(q, k, v, (2, 4, 4), scope), "out", ulps=2, dtype=torch.float64, scale=terms
    )  # measured at most 0.55
    # changing what zero-padding would have been cannot matter: compare to attention over the real tokens only
    index, valid = ops.dilated_groups((3, 4, 4), (2, 4, 4), scope)
    flat = [t.reshape(-1, 4) for t in (q, k, v)]
    for members in (index[g][valid[g]] for g in range(index.shape[0])):
        attn = torch.softmax(flat[0][members] @ flat[1][members].T * 0.5, -1)
        close_ulp(
            out.reshape(-1, 4)[members],
            attn @ flat[2][members],
            "group",
            ulps=2,
            dtype=torch.float64,
            scale=terms.reshape(-1, 4)[members],
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_cpu_dtypes(dtype):
    check_against_oracle(
        dict(spatial=(3, 5, 6), group=(2, 3, 4), scope="global", batch=1, heads=2, dim=9, seed=7), "cpu", dtype
    )


@pytest.mark.parametrize("scope", ["local", "global"])
def test_cpu_bf16_on_every_isa(cpu_isa, scope):
    # bf16 storage on each instruction set (avx512bf16: QK^T and dO V^T as vdpbf16ps products, csrc/README.md);
    # 312 members (two key blocks, five query blocks) and an odd head dim (a padded bf16 pair)
    c = dict(spatial=(4, 12, 13), group=(2, 12, 13), scope=scope, batch=1, heads=2, dim=11, seed=5)
    check_against_oracle(c, "cpu", torch.bfloat16)


@pytest.mark.skipif("avx512bf16" not in ops.cpu_isas(), reason="this CPU or build has no AVX-512 BF16")
def test_avx512bf16_changes_bf16_products_only():
    # avx512bf16 sums bf16 products in pairs (vdpbf16ps), so its float32 lse differs from avx512's in low bits;
    # float32 inputs run on the avx512 table, bit for bit
    before = ops.cpu_isa()
    lse = {}
    try:
        for dtype in (torch.bfloat16, torch.float32):
            q, k, v = make_qkv(dict(spatial=(4, 8, 8), batch=1, heads=2, dim=32, seed=1), dtype, "cpu")
            for isa in ("avx512", "avx512bf16"):
                ops.set_cpu_isa(isa)
                lse[dtype, isa] = ops.dilated_attention3d(q, k, v, (2, 8, 8), "local", return_lse=True, backend="cpu")[
                    1
                ]
    finally:
        ops.set_cpu_isa(before)
    assert not torch.equal(lse[torch.bfloat16, "avx512"], lse[torch.bfloat16, "avx512bf16"])
    torch.testing.assert_close(lse[torch.bfloat16, "avx512"], lse[torch.bfloat16, "avx512bf16"], rtol=1e-5, atol=1e-5)
    assert torch.equal(lse[torch.float32, "avx512"], lse[torch.float32, "avx512bf16"])


@pytest.mark.parametrize("scope", ["local", "global"])
def test_large_groups_span_several_blocks(scope):
    # 4 x 12 x 13 members: several query blocks and online-softmax key blocks in the CPU kernel
    check_against_oracle(
        dict(spatial=(4, 12, 13), group=(4, 12, 13), scope=scope, batch=1, heads=1, dim=5, seed=3), "cpu"
    )
    check_against_oracle(
        dict(spatial=(8, 24, 26), group=(4, 12, 13), scope=scope, batch=1, heads=1, dim=3, seed=4), "cpu"
    )


def test_strided_views_are_read_in_place():
    # q/k/v as views of one qkv projection (token stride 3*C), and a head dim with stride != 1
    qkv = torch.randn(2, 3, 5, 4, 3, 2, 6)
    q, k, v = qkv.unbind(4)
    out = ops.dilated_attention3d(q, k, v, (2, 2, 3), "global", backend="cpu")
    terms = attention_terms(dilated_problem((3, 5, 4), (2, 2, 3), "global"), dict(query=q, key=k, value=v))["out"]
    want = ops.dilated_attention3d_ref(*(t.double() for t in (q, k, v)), (2, 2, 3), "global")
    close_ulp(out, want, "views", ulps=ULPS["out"], scale=terms)
    qt = torch.randn(1, 3, 4, 5, 6, 2).transpose(-1, -2)  # head dim not contiguous
    terms = attention_terms(dilated_problem((3, 4, 5), (2, 2, 2), "local"), dict(query=qt, key=qt, value=qt))["out"]
    close_ulp(
        ops.dilated_attention3d(qt, qt, qt, 2, "local", backend="cpu"),
        ops.dilated_attention3d_ref(*(qt.double(),) * 3, 2, "local"),
        "transposed",
        ulps=ULPS["out"],
        scale=terms,
    )


@requires_triton
@pytest.mark.parametrize(
    "c",
    [
        dict(spatial=(3, 5, 6), group=(2, 2, 4), scope="local", batch=1, heads=2, dim=8, seed=1),
        dict(
            spatial=(3, 5, 6), group=(2, 4, 5), scope="global", batch=1, heads=1, dim=5, seed=2
        ),  # 40 members: 2 blocks
        dict(spatial=(2, 3, 2), group=(4, 8, 8), scope="local", batch=2, heads=1, dim=4, seed=3),
    ],
    ids=["local", "global-two-blocks", "clamped"],
)
def test_triton_matches_reference(c):
    """On CPU through the Triton interpreter (TRITON_INTERPRET=1): tiny shapes only."""
    check_against_oracle(c, "triton", device=TEST_DEVICE)


def test_scale_and_default_scale():
    c = dict(spatial=(2, 3, 4), group=(2, 2, 2), scope="local", batch=1, heads=1, dim=7, seed=5)
    q, k, v = make_qkv(c, torch.float64)
    close(
        ops.dilated_attention3d(q, k, v, 2, "local", backend="cpu"),
        ops.dilated_attention3d(q, k, v, 2, "local", scale=7**-0.5, backend="cpu"),
        0,
        0,
        "default scale",
    )
    # q * 0.3 * sqrt(7) rounds each entry (float64): ulp of the attention's sum|terms| (measured 0.47)
    terms = attention_terms(dilated_problem((2, 3, 4), (2, 2, 2), "local", 0.3), dict(query=q, key=k, value=v))["out"]
    close_ulp(
        ops.dilated_attention3d(q, k, v, 2, "local", scale=0.3, backend="cpu"),
        ops.dilated_attention3d(q * 0.3 * 7**0.5, k, v, 2, "local", backend="cpu"),
        "scale",
        ulps=2,
        dtype=torch.float64,
        scale=terms,
    )


# --- gradcheck, determinism, compile, opcheck ----------------------------------------------------------


@pytest.mark.parametrize("scope", ["local", "global"])
def test_gradcheck_float64(scope):
    c = dict(spatial=(3, 2, 5), group=(2, 2, 3), scope=scope, batch=1, heads=2, dim=3, seed=8)
    leaves = [t.requires_grad_(True) for t in make_qkv(c, torch.float64)]
    assert torch.autograd.gradcheck(
        lambda q, k, v: ops.dilated_attention3d(q, k, v, c["group"], scope, return_lse=True, backend="cpu"), leaves
    )


def test_deterministic_across_runs_and_thread_counts():
    c = dict(spatial=(6, 10, 9), group=(2, 4, 4), scope="global", batch=2, heads=2, dim=16, seed=4)
    qkv = make_qkv(c)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (threads, threads, 1):
            torch.set_num_threads(n)
            leaves = [t.clone().requires_grad_(True) for t in qkv]
            out = ops.dilated_attention3d(*leaves, c["group"], c["scope"], backend="cpu")
            results.append([out, *torch.autograd.grad(out.square().sum(), leaves)])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


COMPILE_ULPS = 1  # measured 0 (the loss: 1.3 ulp of its sum|terms|)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    c = dict(spatial=(3, 6, 5), group=(2, 4, 4), scope="global", batch=1, heads=2, dim=8, seed=6)
    leaves = [t.requires_grad_(True) for t in make_qkv(c)]

    def f(q, k, v):
        out, lse = ops.dilated_attention3d(q, k, v, (2, 4, 4), "global", return_lse=True)
        local = ops.dilated_attention3d(q, k, v, (2, 4, 4), "local")
        return out.square().sum() + lse.sum() + local.sum()

    loss_c = torch.compile(f, fullgraph=True, dynamic=dynamic)(*leaves)
    loss_e = f(*leaves)
    # the same kernels: Inductor may reorder the loss's sums (a few ulp of sum|terms|); the gradients
    # then match to the ulp of both attentions' sum|terms|
    with torch.no_grad():
        out, lse = ops.dilated_attention3d(*leaves, (2, 4, 4), "global", return_lse=True)
        local = ops.dilated_attention3d(*leaves, (2, 4, 4), "local")
        size = out.square().sum() + lse.abs().sum() + local.abs().sum()
        close_ulp(loss_c, loss_e, "loss", ulps=4, scale=size.item())
    qkv = dict(zip(("query", "key", "value"), leaves))
    glob = attention_terms(dilated_problem((3, 6, 5), (2, 4, 4), "global"), qkv, 2 * out, torch.ones(lse.shape))
    loc = attention_terms(dilated_problem((3, 6, 5), (2, 4, 4), "local"), qkv, torch.ones(out.shape))
    for name, a, b in zip(qkv, torch.autograd.grad(loss_c, leaves), torch.autograd.grad(loss_e, leaves)):
        close_ulp(a, b, f"d{name}", ulps=COMPILE_ULPS, scale=glob[name] + loc[name])


def opcheck_samples():
    c = dict(spatial=(3, 4, 5), group=(2, 3, 2), scope="global", batch=1, heads=2, dim=3, seed=11)
    q, k, v = make_qkv(c)
    out, lse = torch.ops.medkernels.dilated_attention3d_fwd(q, k, v, [2, 3, 2], True, 0.5)
    grad = lambda xs: [x.clone().requires_grad_(True) if isinstance(x, torch.Tensor) else x for x in xs]  # noqa: E731
    fwd = [q, k, v, [2, 3, 2], True, 0.5]
    bwd = [torch.randn_like(out), torch.randn_like(lse), q, k, v, out, lse, [2, 3, 2], True, 0.5]
    samples = {
        "dilated_attention3d_fwd": [grad(fwd), [q, k, v, [2, 8, 1], False, 0.3]],
        "dilated_attention3d_bwd": [bwd, [bwd[0], None, *bwd[2:]]],
    }
    packed = torch.stack([q, k, v], 4)
    pbwd = [bwd[0], bwd[1], packed, out, lse, [2, 3, 2], True, 0.5]
    samples["dilated_attention3d_qkvpacked_fwd"] = [grad([packed, [2, 3, 2], True, 0.5])]
    samples["dilated_attention3d_qkvpacked_bwd"] = [pbwd, [pbwd[0], None, *pbwd[2:]]]
    if hasattr(torch.ops.medkernels, "dilated_attention3d_fwd_triton"):  # interpreted: the smallest problem
        tq, tk, tv = make_qkv(dict(spatial=(1, 2, 3), batch=1, heads=1, dim=2, seed=12))
        tout, tlse = torch.ops.medkernels.dilated_attention3d_fwd(tq, tk, tv, [1, 2, 2], True, 0.5)
        samples["dilated_attention3d_fwd_triton"] = [grad([tq, tk, tv, [1, 2, 2], True, 0.5])]
        tbwd = [torch.randn_like(tout), torch.randn_like(tlse), tq, tk, tv, tout, tlse, [1, 2, 2], True, 0.5]
        samples["dilated_attention3d_bwd_triton"] = [tbwd]
        tpacked = torch.stack([tq, tk, tv], 4)
        samples["dilated_attention3d_qkvpacked_fwd_triton"] = [grad([tpacked, [1, 2, 2], True, 0.5])]
        samples["dilated_attention3d_qkvpacked_bwd_triton"] = [[*tbwd[:2], tpacked, *tbwd[5:]]]
    return samples


# --- the packed entry point (one qkv tensor, one packed gradient) ---------------------------------------


def _packed_and_unpacked(c, backend, dtype=torch.float32, device="cpu"):
    """out, lse and d(qkv) of the packed op and of the unpacked op on the same qkv (views of a projection-like
    [B, D, H, W, 3, heads, dim] tensor)."""
    g = torch.Generator().manual_seed(c["seed"] + 2000)
    qkv = torch.randn(c["batch"], *c["spatial"], 3, c["heads"], c["dim"], generator=g).to(device, dtype)
    results = []
    for packed in (True, False):
        leaf = qkv.clone().requires_grad_(True)
        if packed:
            out, lse = ops.dilated_attention3d_qkvpacked(leaf, c["group"], c["scope"], return_lse=True, backend=backend)
        else:
            out, lse = ops.dilated_attention3d(
                *leaf.unbind(4), c["group"], c["scope"], return_lse=True, backend=backend
            )
        gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(c["seed"])).to(device, dtype)
        (grad,) = torch.autograd.grad((out * gout).sum() + lse.sum(), leaf)
        results.append((out, lse, grad))
    return results


@pytest.mark.parametrize("seed", SWEEP[:8])
def test_qkvpacked_is_the_unpacked_op_bit_for_bit(cpu_isa, seed):
    """The same kernels: equal outputs and gradients, the packed gradient written whole by the kernel (a
    missed row would be uninitialised memory, not the unbind path's value)."""
    c = random_case(seed)
    (out, lse, grad), (out_u, lse_u, grad_u) = _packed_and_unpacked(c, "cpu")
    assert torch.equal(out, out_u) and torch.equal(lse, lse_u)
    assert grad.is_contiguous() and torch.equal(grad, grad_u)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_qkvpacked_dtypes(dtype):
    c = dict(spatial=(3, 5, 4), group=(2, 2, 3), scope="global", batch=2, heads=2, dim=5, seed=21)
    (out, lse, grad), (out_u, lse_u, grad_u) = _packed_and_unpacked(c, "cpu", dtype)
    assert out.dtype == grad.dtype == dtype
    assert torch.equal(out, out_u) and torch.equal(lse, lse_u) and torch.equal(grad, grad_u)


def test_qkvpacked_reference_backend_matches_the_cpu_kernels():
    c = dict(spatial=(4, 5, 3), group=(2, 4, 2), scope="local", batch=1, heads=2, dim=6, seed=22)
    (out, lse, grad), _ = _packed_and_unpacked(c, "cpu", torch.float64)
    (out_r, lse_r, grad_r), _ = _packed_and_unpacked(c, "reference", torch.float64)
    close(out, out_r, 1e-12, 1e-12, "out")
    close(lse, lse_r, 1e-12, 1e-12, "lse")
    close(grad, grad_r, 1e-12, 1e-12, "dqkv")


@requires_triton
def test_qkvpacked_triton_is_the_unpacked_triton_op():
    c = dict(spatial=(2, 3, 4), group=(2, 2, 2), scope="global", batch=1, heads=1, dim=4, seed=23)
    (out, lse, grad), (out_u, lse_u, grad_u) = _packed_and_unpacked(c, "triton", device=TEST_DEVICE)
    assert torch.equal(out, out_u) and torch.equal(lse, lse_u) and torch.equal(grad, grad_u)


def test_qkvpacked_gradcheck_float64_and_compile():
    c = dict(spatial=(3, 2, 5), group=(2, 2, 3), scope="global", batch=1, heads=2, dim=3, seed=24)
    qkv = torch.randn(1, 3, 2, 5, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: ops.dilated_attention3d_qkvpacked(t, c["group"], "global", return_lse=True, backend="cpu"), [qkv]
    )

    def f(t):
        out, lse = ops.dilated_attention3d_qkvpacked(t, (2, 2, 3), "local", return_lse=True)
        return out.square().sum() + lse.sum()

    x = qkv.detach().float().requires_grad_(True)
    loss_c = torch.compile(f, fullgraph=True)(x)
    (g_c,) = torch.autograd.grad(loss_c, x)
    loss_e = f(x)
    (g_e,) = torch.autograd.grad(loss_e, x)
    close(loss_c, loss_e, 1e-6, 0, "loss")  # Inductor may reorder the loss's sums
    assert torch.equal(g_c, g_e)  # the same backward kernel on the same inputs


@pytest.mark.parametrize(
    "qkv,match",
    [
        (torch.zeros(1, 2, 2, 2, 1, 4), r"qkv must be \[batch, D, H, W, 3, heads, head_dim\]"),
        (torch.zeros(1, 2, 2, 2, 2, 1, 4), r"qkv must be \[batch, D, H, W, 3, heads, head_dim\]"),
        (torch.zeros(1, 2, 2, 2, 3, 1, 4, dtype=torch.int32), "dilated_attention3d_qkvpacked: query must be float32"),
    ],
    ids=["rank", "not-3", "dtype"],
)
def test_qkvpacked_bad_input(qkv, match):
    with pytest.raises(ValueError, match=match):
        ops.dilated_attention3d_qkvpacked(qkv, 2, "local")
    with pytest.raises(TypeError, match="qkv must be a torch.Tensor"):
        ops.dilated_attention3d_qkvpacked([1.0], 2, "local")


def test_qkvpacked_cpp_checks_guard_direct_op_calls():
    bad = _t(1, 2, 2, 2, 2, 1, 4)
    with pytest.raises(RuntimeError, match=r"dilated_attention3d_qkvpacked_fwd: qkv must be \(batch, D, H, W, 3"):
        torch.ops.medkernels.dilated_attention3d_qkvpacked_fwd(bad, [2, 2, 2], False, 0.5)
    qkv = _t(1, 2, 2, 2, 3, 1, 4)
    with pytest.raises(RuntimeError, match="dilated_attention3d_qkvpacked_fwd: group_size entries must be >= 1"):
        torch.ops.medkernels.dilated_attention3d_qkvpacked_fwd(qkv, [2, 0, 2], False, 0.5)
    out, lse = torch.ops.medkernels.dilated_attention3d_qkvpacked_fwd(qkv, [2, 2, 2], False, 0.5)
    with pytest.raises(RuntimeError, match="dilated_attention3d_qkvpacked_bwd: lse must be"):
        torch.ops.medkernels.dilated_attention3d_qkvpacked_bwd(out, None, qkv, out, lse[..., :0], [2, 2, 2], False, 0.5)


# --- modules -----------------------------------------------------------------------------------------


MODULE_ULPS = 1  # measured at most 0.39 (seeded and two other seeds)


@pytest.mark.parametrize("scope", ["local", "global"])
def test_module_matches_projections_around_the_oracle(scope):
    torch.manual_seed(0)
    m = mknn.DilatedAttention3d(24, 3, (2, 4, 4), scope).eval()
    x = torch.randn(2, 3, 9, 7, 24)
    B, D, H, W, C = x.shape
    q, k, v = m.qkv(x).reshape(B, D, H, W, 3, 3, 8).unbind(4)
    W_, b_ = m.proj.weight.double(), m.proj.bias.double()
    want = torch.nn.functional.linear(
        ops.dilated_attention3d_ref(q.double(), k.double(), v.double(), (2, 4, 4), scope).reshape(B, D, H, W, C), W_, b_
    )
    # the attention's sum|terms| carried through the projection (whose own rounding it also bounds)
    terms = attention_terms(dilated_problem((D, H, W), (2, 4, 4), scope), dict(query=q, key=k, value=v))["out"]
    close_ulp(
        m(x),
        want,
        "module",
        ulps=MODULE_ULPS,
        scale=torch.nn.functional.linear(terms.reshape(B, D, H, W, C), W_.abs(), b_.abs()),
    )
    assert set(m.state_dict()) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}


BLOCK_ULPS = 8


def test_dformer_block_loads_official_names_and_goes_full_attention_on_small_maps():
    torch.manual_seed(0)
    blk = mknn.DFormerBlock(32, 2, (2, 8, 8), "global").eval()
    official_keys = {
        "norm1.weight",
        "norm1.bias",
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
        "norm2.weight",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
    }
    assert set(blk.state_dict()) == official_keys
    assert blk.mlp.fc1.out_features == 128
    x = torch.randn(1, 4, 4, 4, 32)  # smaller than the group in H and W: one group over the whole volume
    b64 = copy.deepcopy(blk).double()  # the full-attention block in float64: the float32 block's truth
    x64 = x.double()
    h = b64.norm1(x64)
    q, k, v = b64.attn.qkv(h).reshape(1, 4, 4, 4, 3, 2, 16).unbind(4)
    full = torch.nn.functional.scaled_dot_product_attention(
        *(t.reshape(1, 64, 2, 16).transpose(1, 2) for t in (q, k, v))
    )
    y = x64 + b64.attn.proj(full.transpose(1, 2).reshape(1, 4, 4, 4, 32))
    # layer norms, attention, a 4x MLP: measured at most 2.6 ulp of max(|out|, rms(out)) (three seeds)
    close_ulp(blk(x), y + b64.mlp(b64.norm2(y)), "block", ulps=BLOCK_ULPS)


def test_module_attention_dropout_and_drop_path_train_only():
    torch.manual_seed(0)
    blk = mknn.DFormerBlock(16, 2, (2, 4, 4), "local", attn_drop=0.5, drop_path=0.5)
    x = torch.randn(2, 2, 4, 4, 16, requires_grad=True)
    blk.train()
    a, b = blk(x), blk(x)
    assert not torch.allclose(a, b)
    a.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    blk.eval()
    torch.testing.assert_close(blk(x), blk(x), rtol=0, atol=0)


def test_module_config_errors():
    with pytest.raises(ValueError, match="must divide"):
        mknn.DilatedAttention3d(10, 3, 2, "local")
    with pytest.raises(ValueError, match="scope"):
        mknn.DilatedAttention3d(12, 3, 2, "dilated")
    with pytest.raises(ValueError, match="group_size"):
        mknn.DilatedAttention3d(12, 3, (2, 0, 2), "local")
    with pytest.raises(ValueError, match=r"\[B, D, H, W, 12\]"):
        mknn.DilatedAttention3d(12, 3, 2, "local")(torch.randn(1, 2, 2, 2, 8))
    assert "scope='global'" in repr(mknn.DilatedAttention3d(12, 3, 2, "global"))


# --- bad input -----------------------------------------------------------------------------------------


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


BAD = [
    (
        "rank",
        lambda: ops.dilated_attention3d(_t(1, 4, 4, 2, 4), _t(1, 4, 4, 2, 4), _t(1, 4, 4, 2, 4), 2, "local"),
        ValueError,
        r"query must be \[batch, D, H, W, heads, head_dim\]",
    ),
    (
        "dtype",
        lambda: ops.dilated_attention3d(*(torch.ones(1, 2, 2, 2, 1, 4, dtype=torch.int32),) * 3, 2, "local"),
        ValueError,
        "query must be float32",
    ),
    (
        "mixed dtype",
        lambda: ops.dilated_attention3d(
            _t(1, 2, 2, 2, 1, 4), _t(1, 2, 2, 2, 1, 4, dtype=torch.float64), _t(1, 2, 2, 2, 1, 4), 2, "local"
        ),
        ValueError,
        "key has dtype",
    ),
    (
        "device",
        lambda: ops.dilated_attention3d(
            _t(1, 2, 2, 2, 1, 4), _t(1, 2, 2, 2, 1, 4).to("meta"), _t(1, 2, 2, 2, 1, 4), 2, "local"
        ),
        ValueError,
        "key is on meta",
    ),
    (
        "shape",
        lambda: ops.dilated_attention3d(_t(1, 2, 2, 2, 1, 4), _t(1, 2, 2, 3, 1, 4), _t(1, 2, 2, 2, 1, 4), 2, "local"),
        ValueError,
        "key must have query's shape",
    ),
    (
        "group zero",
        lambda: ops.dilated_attention3d(*(_t(1, 2, 2, 2, 1, 4),) * 3, (2, 0, 2), "local"),
        ValueError,
        "group_size must be",
    ),
    (
        "group length",
        lambda: ops.dilated_attention3d(*(_t(1, 2, 2, 2, 1, 4),) * 3, (2, 2), "local"),
        ValueError,
        "group_size must be",
    ),
    (
        "scope",
        lambda: ops.dilated_attention3d(*(_t(1, 2, 2, 2, 1, 4),) * 3, 2, "dilated"),
        ValueError,
        "scope must be 'local' or 'global'",
    ),
    (
        "not a tensor",
        lambda: ops.dilated_attention3d([1.0], _t(1, 2, 2, 2, 1, 4), _t(1, 2, 2, 2, 1, 4), 2, "local"),
        TypeError,
        "query must be a torch.Tensor",
    ),
]


@pytest.mark.parametrize("case,call,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(case, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_cpp_checks_guard_direct_op_calls():
    q = _t(1, 2, 2, 2, 1, 4)
    with pytest.raises(RuntimeError, match="dilated_attention3d_fwd: key must match query's shape"):
        torch.ops.medkernels.dilated_attention3d_fwd(q, _t(1, 2, 2, 3, 1, 4), q, [2, 2, 2], False, 0.5)
    with pytest.raises(RuntimeError, match="dilated_attention3d_fwd: group_size entries must be >= 1"):
        torch.ops.medkernels.dilated_attention3d_fwd(q, q, q, [2, 0, 2], False, 0.5)
    with pytest.raises(RuntimeError, match="dilated_attention3d_fwd: query must be"):
        torch.ops.medkernels.dilated_attention3d_fwd(q[0], q[0], q[0], [2, 2, 2], False, 0.5)


# --- on a GPU (marked gpu: `pytest -m gpu`, scripts/gpu_check.sh; skipped without CUDA) ----------


@gpu_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("seed", [600, 601, 602, 603])
def test_dilated_attention_triton_on_gpu(seed, dtype):
    check_against_oracle(random_case(seed, max_size=20, max_group=9), "triton", dtype, device="cuda")


@gpu_test
@pytest.mark.parametrize("scope", ["local", "global"])
def test_dilated_attention_triton_stage1_shape_matches_cpu(scope):
    """D-Former's stage-1 shape: groups of 128 tokens span several key blocks."""
    q, k, v = (torch.randn(1, 32, 32, 32, 3, 32, generator=torch.Generator().manual_seed(i)) for i in range(3))
    outs = []
    for device, backend in (("cpu", "cpu"), ("cuda", "triton")):
        leaves = [t.to(device).requires_grad_(True) for t in (q, k, v)]
        o = ops.dilated_attention3d(*leaves, (2, 8, 8), scope, backend=backend)
        outs.append([o, *torch.autograd.grad(o.square().sum(), leaves)])
    for a, r in zip(outs[1], outs[0]):
        close(a.cpu(), r, 1e-3, 1e-3, f"dilated attention {scope}")
