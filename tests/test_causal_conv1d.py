"""Causal conv1d: every backend against causal-conv1d's formula, states, seq_idx, update, gradcheck,
opcheck, torch.compile, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kit import TEST_DEVICE, close, gpu_test, requires_triton

from medkernels import ops

# float32 tolerances (rtol, atol) from the rounding of the sums, unit roundoff u = 2**-24 ~ 6e-8. An output
# sums width <= 8 products and the bias: 1e-6 ~ 2 * 8 * u. A weight/bias gradient sums batch * seqlen = 26
# terms: 2e-6 ~ 26 * u. Measured against float64 (CPU kernel on every ISA, and the reference): outputs
# differ by at most 1.05e-6 absolute, and within rtol 1e-6 + atol 1.6e-7; gradients by at most 3.1e-6
# absolute, and within rtol 1e-6 + atol 8.8e-7.
OUT = (1e-6, 1e-6)
GRAD = (2e-6, 2e-6)
# float16/bfloat16 outputs are float32 results rounded once: the CPU kernel and the reference agree to
# one unit in the last place (measured: bit-identical), i.e. 2**-10 (float16) and 2**-7 (bfloat16) relative.
LOW = {torch.float16: (2**-10, 1e-5), torch.bfloat16: (2**-7, 1e-5)}
# Triton's interpreter runs the kernels' float32 math on the CPU (measured against the reference: within
# rtol 1e-6 + atol 3e-9). The compiled GPU kernels (their sigmoid, FMA contraction) are not measured
# here, so the GPU keeps the earlier 1e-5.
TRITON = GRAD if TEST_DEVICE == "cpu" else (1e-5, 1e-5)


def upstream_formula(x, w, b, init, activation):
    """causal-conv1d's reference: F.conv1d over [initial states, x], cropped, then SiLU."""
    L, W = x.shape[-1], w.shape[1]
    xx = x.double() if init is None else torch.cat([init, x], -1).double()
    out = F.conv1d(
        xx,
        w.double()[:, None],
        None if b is None else b.double(),
        padding=W - 1 if init is None else 0,
        groups=w.shape[0],
    )[..., :L]
    final = F.pad(xx, (W - 1 - xx.shape[-1], 0))
    return (F.silu(out) if activation else out), final


def inputs(batch=2, dim=6, seqlen=13, width=4, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    return r(batch, dim, seqlen), r(dim, width), r(dim), r(batch, dim, width - 1)


BACKENDS = ["cpu", "reference"]


def segments(batch, seqlen, starts, device="cpu"):
    """int32 seq_idx (batch, seqlen): row 0 starts a new segment at each of ``starts``, the other rows
    put only their last token in a segment of its own."""
    rows = [[sum(t >= s for s in starts) for t in range(seqlen)]]
    rows += [[0] * (seqlen - 1) + [1]] * (batch - 1)
    return torch.tensor(rows, dtype=torch.int32, device=device)


def oracle(x, w, b, init, seq_idx, activation):
    """causal-conv1d's formula in float64 -> [out] (+ [final states] with init); with seq_idx, applied to
    each packed segment on its own (independent of the masking the backends do)."""
    if seq_idx is None:
        out, final = upstream_formula(x, w, b, init, activation)
        return [out] if init is None else [out, final]
    rows = []
    for i, ids in enumerate(seq_idx.tolist()):
        cuts = [t for t in range(len(ids)) if t == 0 or ids[t] != ids[t - 1]] + [len(ids)]
        rows.append(
            torch.cat(
                [upstream_formula(x[i : i + 1, :, a:e], w, b, None, activation)[0] for a, e in zip(cuts, cuts[1:])], -1
            )
        )
    return [torch.cat(rows)]


def outputs_and_grads(call, leaves, seed=1):
    """call(*leaves) -> tensor or tuple: (outputs, gradients w.r.t. leaves of a seeded random projection)."""
    res = call(*leaves)
    outs = list(res) if isinstance(res, (tuple, list)) else [res]
    g = torch.Generator().manual_seed(seed)
    cot = [torch.randn(o.shape, generator=g).to(o) for o in outs]
    return outs, list(torch.autograd.grad(outs, leaves, cot))


def against_oracle(backend, x, w, b, init, seq_idx, activation="silu", tol=None):
    """Forward (out, final states) and backward of ``backend`` vs the float64 oracle."""
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b) + (() if init is None else (init,))]
    ref_leaves = [t.detach().cpu().double().requires_grad_(True) for t in leaves]
    seq_cpu = None if seq_idx is None else seq_idx.cpu()
    outs, grads = outputs_and_grads(
        lambda *t: ops.causal_conv1d_fn(
            t[0],
            t[1],
            t[2],
            seq_idx,
            t[3] if init is not None else None,
            return_final_states=init is not None,
            activation=activation,
            backend=backend,
        ),
        leaves,
    )
    outs_r, grads_r = outputs_and_grads(
        lambda *t: oracle(t[0], t[1], t[2], t[3] if init is not None else None, seq_cpu, activation), ref_leaves
    )
    assert len(outs) == len(outs_r)
    for i, (a, r) in enumerate(zip(outs, outs_r)):
        assert a.shape == r.shape, f"output {i}: {tuple(a.shape)} != {tuple(r.shape)}"
        close(a.cpu(), r, *((0, 0) if i else tol or OUT), ["out", "final_states (copies of inputs)"][i])
    for name, a, r in zip(["x", "weight", "bias", "initial_states"], grads, grads_r):
        close(a.cpu(), r, *(tol or GRAD), f"d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("states", [False, True])
def test_matches_upstream_formula_with_gradients(backend, width, activation, states):
    x, w, b, init = inputs(width=width, seed=width)
    init = init if states else None
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)] + (
        [init.clone().requires_grad_(True)] if states else []
    )
    res = ops.causal_conv1d_fn(
        leaves[0],
        leaves[1],
        leaves[2],
        None,
        leaves[3] if states else None,
        return_final_states=states,
        activation=activation,
        backend=backend,
    )
    out, final = res if states else (res, None)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    out_r, final_r = upstream_formula(
        ref_leaves[0], ref_leaves[1], ref_leaves[2], ref_leaves[3] if states else None, activation
    )
    close(out, out_r, *OUT, "out")
    g = torch.Generator().manual_seed(1)
    gout = torch.randn(out.shape, generator=g)
    outs, grads_in, outs_r, grads_r_in = [out], [gout], [out_r], [gout.double()]
    if states:
        close(final, final_r, 0, 0, "final_states")
        gfin = torch.randn(final.shape, generator=g)
        outs.append(final), grads_in.append(gfin), outs_r.append(final_r), grads_r_in.append(gfin.double())
    grads = torch.autograd.grad(outs, leaves, grads_in)
    grads_r = torch.autograd.grad(outs_r, ref_leaves, grads_r_in)
    for name, a, r in zip(["x", "weight", "bias", "initial_states"], grads, grads_r):
        close(a, r, *GRAD, f"d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_seq_idx_separates_packed_sequences(backend):
    x, w, b, _ = inputs(batch=1, seqlen=20)
    seq = torch.tensor([[0] * 7 + [1] * 2 + [2] * 11], dtype=torch.int32)
    xl, wl = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    packed = ops.causal_conv1d_fn(xl, wl, b, seq_idx=seq, activation="silu", backend=backend)
    parts = [
        ops.causal_conv1d_fn(xl[..., a:e], wl, b, activation="silu", backend="reference")
        for a, e in ((0, 7), (7, 9), (9, 20))
    ]
    close(packed, torch.cat(parts, -1), *OUT, "out")
    g1 = torch.autograd.grad(packed.square().sum(), [xl, wl])
    g2 = torch.autograd.grad(torch.cat(parts, -1).square().sum(), [xl, wl])
    for a, r in zip(g1, g2):
        close(a, r, *GRAD, "grad")


@requires_triton
@pytest.mark.parametrize("width,seq", [(4, False), (2, True)])
def test_triton_matches_reference(width, seq):
    x, w, b, init = inputs(batch=2, dim=3, seqlen=9, width=width, device=TEST_DEVICE)
    seq_idx = torch.tensor([[0] * 4 + [1] * 5, [0] * 9], dtype=torch.int32, device=TEST_DEVICE) if seq else None
    init = None if seq else init
    res = {}
    for backend in ("triton", "reference"):
        leaves = [t.clone().requires_grad_(True) for t in (x, w, b)] + (
            [init.clone().requires_grad_(True)] if init is not None else []
        )
        o = ops.causal_conv1d_fn(
            leaves[0],
            leaves[1],
            leaves[2],
            seq_idx,
            leaves[3] if init is not None else None,
            return_final_states=init is not None,
            activation="silu",
            backend=backend,
        )
        outs = list(o) if isinstance(o, tuple) else [o]
        res[backend] = (outs, torch.autograd.grad([t.square().sum() for t in outs], leaves))
    for a, r in zip(res["triton"][0] + list(res["triton"][1]), res["reference"][0] + list(res["reference"][1])):
        close(a.cpu(), r.cpu(), *TRITON, "triton")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype):
    x, w, b, init = inputs(dtype=dtype)
    out = ops.causal_conv1d_fn(x, w, b, initial_states=init, activation="silu", backend="cpu")
    ref = ops.causal_conv1d_fn(x, w, b, initial_states=init, activation="silu", backend="reference")
    assert out.dtype == dtype
    close(out, ref, *LOW[dtype], "out")


def test_weight_in_float32_with_bf16_input_and_strided_x():
    x, w, b, _ = inputs(dtype=torch.bfloat16)
    wide = torch.zeros(2, 12, 13, dtype=torch.bfloat16)
    wide[:, ::2] = x
    out = ops.causal_conv1d_fn(wide[:, ::2], w.float(), b.float(), backend="cpu")
    close(out, ops.causal_conv1d_fn(x, w.float(), b.float(), backend="reference"), *LOW[torch.bfloat16], "out")


def test_final_states_out_is_written():
    x, w, b, init = inputs()
    buf = torch.empty(2, 6, 3)
    out, fin = ops.causal_conv1d_fn(x, w, b, initial_states=init, return_final_states=True, final_states_out=buf)
    assert fin is buf
    assert torch.equal(buf, x[..., -3:])


def test_gradcheck_float64():
    x, w, b, init = (t.requires_grad_(True) for t in inputs(batch=1, dim=2, seqlen=6, width=3, dtype=torch.float64))

    def fn(x, w, b, init):
        return ops.causal_conv1d_fn(x, w, b, None, init, True, activation="silu", backend="cpu")

    assert torch.autograd.gradcheck(fn, (x, w, b, init))
    seq = torch.tensor([[0, 0, 1, 1, 1, 2]], dtype=torch.int32)
    assert torch.autograd.gradcheck(lambda x, w: ops.causal_conv1d_fn(x, w, seq_idx=seq, backend="cpu"), (x, w))


def test_deterministic():
    x, w, b, init = inputs(batch=4, dim=32, seqlen=300)
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_(True) for t in (x, w, b, init)]
        out = ops.causal_conv1d_fn(leaves[0], leaves[1], leaves[2], initial_states=leaves[3], activation="silu")
        runs.append(torch.autograd.grad(out.square().sum(), leaves))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_torch_compile_fullgraph():
    x, w, b, init = (t.requires_grad_(True) for t in inputs())

    def f(x, w, b, init):
        out, fin = ops.causal_conv1d_fn(x, w, b, None, init, True, activation="silu")
        return out.square().sum() + fin.sum()

    lc = torch.compile(f, fullgraph=True)(x, w, b, init)
    le = f(x, w, b, init)
    close(lc, le, *OUT, "loss")
    for a, r in zip(torch.autograd.grad(lc, [x, w, b, init]), torch.autograd.grad(le, [x, w, b, init])):
        close(a, r, *OUT, "grad")


@pytest.mark.parametrize("width", [1, 2, 4, 8])
@pytest.mark.parametrize("mode", ["plain", "states", "seq_idx"])
def test_cpu_kernel_on_every_isa(cpu_isa, width, mode):
    """The CPU kernel of each compiled instruction set (avx2, and the baseline every x86-64 runs)."""
    x, w, b, init = inputs(seqlen=21, width=width, seed=width)
    seq = segments(2, 21, [5, 6, 17]) if mode == "seq_idx" else None
    against_oracle("cpu", x, w, b, init if mode == "states" else None, seq)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seqlen", [1, 2, 3])
@pytest.mark.parametrize("mode", ["plain", "states", "seq_idx"])
def test_sequence_shorter_than_width(backend, seqlen, mode):
    """width 4, seqlen 1..3: the final states then mix initial states (or zeros) and x."""
    x, w, b, init = inputs(seqlen=seqlen, width=4, seed=seqlen)
    seq = segments(2, seqlen, [1]) if mode == "seq_idx" else None
    against_oracle(backend, x, w, b, init if mode == "states" else None, seq)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["channel_last", "every_other"])
def test_strided_float32_x_forward_and_backward(backend, layout):
    x, w, b, init = inputs(seqlen=13)
    if layout == "channel_last":  # a (batch, seqlen, dim) tensor seen as (batch, dim, seqlen)
        base, view = x.transpose(1, 2).contiguous(), lambda t: t.transpose(1, 2)
    else:  # every other element of a longer sequence
        base, view = torch.zeros(2, 6, 26), lambda t: t[..., ::2]
        base[..., ::2] = x
    assert not view(base).is_contiguous() and torch.equal(view(base), x)
    leaves = [base.requires_grad_(True)] + [t.clone().requires_grad_(True) for t in (w, b, init)]
    outs, grads = outputs_and_grads(
        lambda xb, w, b, init: ops.causal_conv1d_fn(
            view(xb), w, b, None, init, True, activation="silu", backend=backend
        ),
        leaves,
    )
    ref_leaves = [t.double().requires_grad_(True) for t in (x, w, b, init)]
    outs_r, grads_r = outputs_and_grads(lambda *t: oracle(*t, None, "silu"), ref_leaves)
    for a, r, what in zip(outs, outs_r, ["out", "final_states"]):
        close(a, r, *OUT, what)
    close(view(grads[0]), grads_r[0], *GRAD, "dx")
    if layout == "every_other":
        assert not grads[0][..., 1::2].any(), "dx leaked into elements x does not view"
    for name, a, r in zip(["weight", "bias", "initial_states"], grads[1:], grads_r[1:]):
        close(a, r, *GRAD, f"d{name}")


@requires_triton
@pytest.mark.parametrize("mode", ["states", "seq_idx"])
def test_triton_across_block_boundaries(mode):
    """Two block boundaries and a ragged tail: seqlen 37 in the interpreter (blocks of 16), 517 on a GPU
    (blocks of 256); the segments start at a block boundary and right after one."""
    from medkernels.triton import causal_conv1d as tcc

    block = tcc._block(0)
    seqlen = 2 * block + 5
    x, w, b, init = inputs(batch=2, dim=3, seqlen=seqlen, width=4, seed=5, device=TEST_DEVICE)
    seq = segments(2, seqlen, [block, block + 1, 2 * block + 2], TEST_DEVICE) if mode == "seq_idx" else None
    against_oracle("triton", x, w, b, init if mode == "states" else None, seq, tol=TRITON)


@pytest.mark.parametrize("mode", ["states", "seq_idx"])
def test_same_bits_for_every_thread_count(mode):
    """The CPU kernel splits (batch * dim) rows over threads: forward and backward must not depend on how."""
    x, w, b, init = inputs(batch=3, dim=40, seqlen=300, width=4, seed=3)
    seq = segments(3, 300, [100, 101, 250]) if mode == "seq_idx" else None
    init = init if mode == "states" else None
    leaves = [x, w, b] + ([] if init is None else [init])
    before = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3, 7):
            torch.set_num_threads(n)
            runs.append(
                outputs_and_grads(
                    lambda *t: ops.causal_conv1d_fn(
                        t[0],
                        t[1],
                        t[2],
                        seq,
                        t[3] if init is not None else None,
                        init is not None,
                        activation="silu",
                        backend="cpu",
                    ),
                    [t.clone().requires_grad_(True) for t in leaves],
                )
            )
    finally:
        torch.set_num_threads(before)
    first = runs[0][0] + runs[0][1]
    for n, (outs, grads) in zip((2, 3, 7), runs[1:]):
        for i, (a, r) in enumerate(zip(outs + grads, first)):
            assert torch.equal(a, r), f"{n} threads: tensor {i} differs from 1 thread"


def opcheck_samples():
    x, w, b, init = inputs(batch=2, dim=3, seqlen=7, width=3)
    seq = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0] * 7], dtype=torch.int32)

    def grad(xs):
        return [
            t.clone().requires_grad_(True) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in xs
        ]

    fwd = [grad([x, w, b, None, init, True, True]), grad([x, w, None, seq, None, False, False])]
    bwd = [
        [x, w, b, None, init, torch.randn_like(x), torch.randn_like(init), True],
        [x, w, None, seq, None, torch.randn_like(x), None, False],
    ]
    samples = {"causal_conv1d_fwd": fwd, "causal_conv1d_bwd": bwd}
    if hasattr(torch.ops.medkernels, "causal_conv1d_fwd_triton"):
        samples["causal_conv1d_fwd_triton"] = fwd[:1]
        samples["causal_conv1d_bwd_triton"] = bwd[:1]
    return samples


# --- decoding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("state_len_extra", [0, 2])
def test_update_step_by_step_equals_full_conv(state_len_extra):
    x, w, b, _ = inputs(seqlen=9)
    full = ops.causal_conv1d_fn(x, w, b, activation="silu")
    state = torch.zeros(2, 6, 3 + state_len_extra)
    outs = [ops.causal_conv1d_update(x[..., t], state, w, b, "silu") for t in range(9)]
    close(torch.stack(outs, -1), full, *OUT, "steps")
    assert torch.equal(state[..., -3:], x[..., -3:])
    state2 = torch.zeros(2, 6, 3)
    chunked = torch.cat(
        [
            ops.causal_conv1d_update(x[..., :4], state2, w, b, "silu"),
            ops.causal_conv1d_update(x[..., 4:], state2, w, b, "silu"),
        ],
        -1,
    )
    close(chunked, full, *OUT, "chunks")


def test_update_circular_buffer_and_state_indices():
    x, w, b, _ = inputs(seqlen=9)
    full = ops.causal_conv1d_fn(x, w, b)
    state = torch.zeros(2, 6, 5)
    outs = [
        ops.causal_conv1d_update(x[..., t], state, w, b, cache_seqlens=torch.full((2,), t, dtype=torch.int32))
        for t in range(9)
    ]
    close(torch.stack(outs, -1), full, *OUT, "circular")
    cache = torch.zeros(5, 6, 3)
    rows = torch.tensor([3, 1], dtype=torch.int32)
    outs = [ops.causal_conv1d_update(x[..., t], cache, w, b, conv_state_indices=rows) for t in range(9)]
    close(torch.stack(outs, -1), full, *OUT, "indices")
    assert cache[[0, 2, 4]].abs().sum() == 0


def test_update_circular_buffer_with_more_tokens_than_state():
    """seqlen 7 > state_len 5: the buffer keeps the last 5 tokens, as 7 single steps leave it."""
    x, w, b, _ = inputs(seqlen=7)
    state = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(2))
    steps, pos = state.clone(), torch.tensor([3, 9], dtype=torch.int32)
    out = ops.causal_conv1d_update(x, state, w, b, "silu", cache_seqlens=pos)
    outs = [ops.causal_conv1d_update(x[..., t], steps, w, b, "silu", cache_seqlens=pos + t) for t in range(7)]
    close(out, torch.stack(outs, -1), *OUT, "out")
    assert torch.equal(state, steps)


def test_update_with_no_tokens_leaves_the_state():
    _, w, b, _ = inputs()
    state = torch.randn(2, 6, 3)
    before = state.clone()
    out = ops.causal_conv1d_update(torch.randn(2, 6, 0), state, w, b)
    assert out.shape == (2, 6, 0) and torch.equal(state, before)


PAD = -1  # causal-conv1d's padding slot in conv_state_indices


def pad_slot_case(seqlen, circular, seed=0):
    """A 5-row cache, 4 batch rows of which rows 1 and 3 are padding; the real rows use cache rows 3 and 0."""
    g = torch.Generator().manual_seed(seed)
    cache = torch.randn(5, 6, 4, generator=g)
    x = torch.randn(4, 6, seqlen, generator=g)
    w, b = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    rows = torch.tensor([3, PAD, 0, PAD], dtype=torch.int32)
    seqlens = torch.tensor([6, 2, 1, 9], dtype=torch.int32) if circular else None
    return x, cache, w, b, rows, seqlens


@pytest.mark.parametrize("seqlen", [None, 1, 3])  # None: 2-D x (batch, dim)
@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_update_padding_slot(seqlen, circular, index_dtype):
    """-1 in conv_state_indices: that row outputs zeros, no state row is written (the last cache row, which
    a Python index -1 would hit, included), and the other rows get what they get without padding rows."""
    x, cache, w, b, rows, seqlens = pad_slot_case(seqlen or 1, circular)
    rows, seqlens = rows.to(index_dtype), None if seqlens is None else seqlens.to(index_dtype)
    x = x[..., 0] if seqlen is None else x
    real = torch.tensor([0, 2])
    cache_real = cache.clone()
    out_real = ops.causal_conv1d_update(
        x[real], cache_real, w, b, "silu", None if seqlens is None else seqlens[real], rows[real]
    )
    before = cache.clone()
    out = ops.causal_conv1d_update(x, cache, w, b, "silu", seqlens, rows)
    assert out.shape == x.shape
    assert torch.equal(out[[1, 3]], torch.zeros_like(out[[1, 3]]))
    assert torch.equal(out[real], out_real)
    assert torch.equal(cache, cache_real)
    assert torch.equal(cache[[1, 2, 4]], before[[1, 2, 4]])  # cache row 4 = conv_state[-1]
    assert not torch.equal(cache[[0, 3]], before[[0, 3]])


@pytest.mark.parametrize("circular", [False, True])
def test_update_padding_rows_read_nothing(circular):
    """Every row padding: zeros out, even with inf/nan in the cache, and the cache is unchanged."""
    x, cache, w, b, _, seqlens = pad_slot_case(2, circular)
    cache[0] = float("nan")
    cache[4] = float("inf")
    before = cache.clone()
    out = ops.causal_conv1d_update(x, cache, w, b, None, seqlens, torch.full((4,), PAD, dtype=torch.int32))
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(cache.nan_to_num(), before.nan_to_num()) and cache[0].isnan().all()


def test_update_padding_slot_under_torch_compile():
    x, cache, w, b, rows, seqlens = pad_slot_case(2, True)
    eager_cache = cache.clone()
    eager = ops.causal_conv1d_update(x, eager_cache, w, b, "silu", seqlens, rows)
    compiled = torch.compile(ops.causal_conv1d_update, fullgraph=True)(x, cache, w, b, "silu", seqlens, rows)
    close(compiled, eager, *OUT, "out")
    assert torch.equal(compiled[[1, 3]], torch.zeros_like(compiled[[1, 3]]))
    assert torch.equal(cache, eager_cache)


# --- bad input ------------------------------------------------------------------------------------


BAD = [
    (
        "rank",
        lambda: ops.causal_conv1d_fn(torch.randn(6, 13), torch.randn(6, 4)),
        ValueError,
        r"x must be \(batch, dim, seqlen\)",
    ),
    (
        "weight shape",
        lambda: ops.causal_conv1d_fn(torch.randn(2, 6, 13), torch.randn(5, 4)),
        ValueError,
        r"weight must be \(dim, width\) with dim=6",
    ),
    (
        "weight dtype",
        lambda: ops.causal_conv1d_fn(torch.randn(2, 6, 13), torch.randn(6, 4).double()),
        ValueError,
        r"weight must have x's dtype",
    ),
    (
        "integer",
        lambda: ops.causal_conv1d_fn(torch.ones(2, 6, 13, dtype=torch.long), torch.randn(6, 4)),
        ValueError,
        r"x must be float32",
    ),
    (
        "activation",
        lambda: ops.causal_conv1d_fn(torch.randn(2, 6, 13), torch.randn(6, 4), activation="relu"),
        ValueError,
        r"activation must be None, 'silu' or 'swish'",
    ),
    (
        "seq and states",
        lambda: ops.causal_conv1d_fn(
            torch.randn(1, 6, 5),
            torch.randn(6, 4),
            seq_idx=torch.zeros(1, 5, dtype=torch.int32),
            initial_states=torch.randn(1, 6, 3),
        ),
        ValueError,
        r"initial_states must be None if seq_idx is not None",
    ),
    (
        "init shape",
        lambda: ops.causal_conv1d_fn(torch.randn(1, 6, 5), torch.randn(6, 4), initial_states=torch.randn(1, 6, 4)),
        ValueError,
        r"initial_states must be \(batch, dim, width - 1\) = \(1, 6, 3\)",
    ),
    (
        "seq dtype",
        lambda: ops.causal_conv1d_fn(torch.randn(1, 6, 5), torch.randn(6, 4), seq_idx=torch.zeros(1, 5)),
        ValueError,
        r"seq_idx must be an int32",
    ),
    (
        "device",
        lambda: ops.causal_conv1d_fn(torch.randn(1, 6, 5), torch.randn(6, 4, device="meta")),
        ValueError,
        r"weight is on meta but x is on cpu",
    ),
    (
        "x not a tensor",
        lambda: ops.causal_conv1d_fn([[[1.0]]], torch.randn(1, 1)),
        TypeError,
        r"causal_conv1d_fn: x must be a torch.Tensor, got list",
    ),
    (
        "fn bias list",
        lambda: ops.causal_conv1d_fn(torch.randn(2, 6, 5), torch.randn(6, 4), [0.0] * 6),
        TypeError,
        r"bias must be a torch.Tensor or None, got list",
    ),
    (
        "initial_states list",
        lambda: ops.causal_conv1d_fn(torch.randn(1, 6, 5), torch.randn(6, 2), initial_states=[[[0.0]] * 6]),
        TypeError,
        r"initial_states must be a torch.Tensor or None, got list",
    ),
    (
        "seq_idx list",
        lambda: ops.causal_conv1d_fn(torch.randn(1, 6, 3), torch.randn(6, 2), seq_idx=[[0, 0, 1]]),
        TypeError,
        r"seq_idx must be a torch.Tensor or None, got list",
    ),
    (
        "final_states_out list",
        lambda: ops.causal_conv1d_fn(
            torch.randn(1, 6, 5), torch.randn(6, 2), return_final_states=True, final_states_out=[0.0]
        ),
        TypeError,
        r"final_states_out must be a torch.Tensor or None, got list",
    ),
    (
        "final_states_out int32",
        lambda: ops.causal_conv1d_fn(
            torch.randn(1, 6, 5),
            torch.randn(6, 4),
            return_final_states=True,
            final_states_out=torch.zeros(1, 6, 3, dtype=torch.int32),
        ),
        ValueError,
        r"final_states_out must be \(batch, dim, width - 1\) = \(1, 6, 3\) in x's dtype \(torch.float32\), "
        r"got \(1, 6, 3\) torch.int32",
    ),
    (
        "final_states_out float16",
        lambda: ops.causal_conv1d_fn(
            torch.randn(1, 6, 5),
            torch.randn(6, 4),
            return_final_states=True,
            final_states_out=torch.zeros(1, 6, 3).half(),
        ),
        ValueError,
        r"final_states_out must be .* in x's dtype \(torch.float32\)",
    ),
    (
        "final_states_out device",
        lambda: ops.causal_conv1d_fn(
            torch.randn(1, 6, 5),
            torch.randn(6, 4),
            return_final_states=True,
            final_states_out=torch.zeros(1, 6, 3, device="meta"),
        ),
        ValueError,
        r"final_states_out is on meta but x is on cpu",
    ),
    (
        "reference shares the checks",
        lambda: ops.causal_conv1d_ref(
            torch.randn(1, 6, 5),
            torch.randn(6, 4),
            return_final_states=True,
            final_states_out=torch.zeros(1, 6, 3).int(),
        ),
        ValueError,
        r"causal_conv1d_ref: final_states_out must be",
    ),
    (
        "reference bias list",
        lambda: ops.causal_conv1d_ref(torch.randn(2, 6, 5), torch.randn(6, 4), [0.0] * 6),
        TypeError,
        r"causal_conv1d_ref: bias must be a torch.Tensor or None",
    ),
]


def update(x=(2, 6), state=(2, 6, 3), weight=(6, 4), bias=None, activation=None, seqlens=None, rows=None):
    """causal_conv1d_update with float32 tensors made from shapes (anything else passes through as is)."""
    make = lambda v: torch.randn(*v) if isinstance(v, tuple) else v  # noqa: E731
    return ops.causal_conv1d_update(make(x), make(state), make(weight), make(bias), activation, seqlens, rows)


i32 = lambda *v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
UPDATE_BAD = [
    (
        "x list",
        lambda: update(x=[[0.0] * 6] * 2),
        TypeError,
        r"causal_conv1d_update: x must be a torch.Tensor, got list",
    ),
    ("conv_state list", lambda: update(state=[0.0]), TypeError, r"conv_state must be a torch.Tensor, got list"),
    ("weight list", lambda: update(weight=[[0.0] * 4] * 6), TypeError, r"weight must be a torch.Tensor, got list"),
    ("bias list", lambda: update(bias=[0.0] * 6), TypeError, r"bias must be a torch.Tensor or None, got list"),
    ("cache_seqlens list", lambda: update(seqlens=[0, 0]), TypeError, r"cache_seqlens must be a torch.Tensor or None"),
    (
        "indices list",
        lambda: update(state=(5, 6, 3), rows=[0, 1]),
        TypeError,
        r"conv_state_indices must be a torch.Tensor or None",
    ),
    ("x rank", lambda: update(x=(2, 6, 1, 1)), ValueError, r"x must be \(batch, dim\) or \(batch, dim, seqlen\)"),
    (
        "x integer",
        lambda: update(x=torch.ones(2, 6, dtype=torch.int64)),
        ValueError,
        r"x must be float32, float16 or bfloat16 \(or float64\), got torch.int64",
    ),
    (
        "x complex",
        lambda: update(x=torch.ones(2, 6, dtype=torch.complex64)),
        ValueError,
        r"x must be float32.*complex64",
    ),
    ("x bool", lambda: update(x=torch.ones(2, 6, dtype=torch.bool)), ValueError, r"x must be float32.*bool"),
    (
        "weight dim",
        lambda: update(weight=(5, 4)),
        ValueError,
        r"weight must be \(dim, width\) with dim=6, got \(5, 4\)",
    ),
    ("weight 3-D", lambda: update(weight=(6, 1, 4)), ValueError, r"weight must be \(dim, width\) with dim=6"),
    (
        "weight integer",
        lambda: update(weight=torch.ones(6, 4, dtype=torch.int32)),
        ValueError,
        r"weight must be float32, float16, bfloat16 or float64, got torch.int32",
    ),
    ("bias size", lambda: update(bias=(5,)), ValueError, r"bias must be \(dim,\) = \(6,\), got \(5,\)"),
    (
        "bias integer",
        lambda: update(bias=torch.ones(6, dtype=torch.int64)),
        ValueError,
        r"bias must be float32, float16, bfloat16 or float64, got torch.int64",
    ),
    (
        "conv_state short",
        lambda: update(state=(2, 6, 2)),
        ValueError,
        r"conv_state must be \(batch=2, dim=6, state_len >= width - 1 = 3\), got \(2, 6, 2\)",
    ),
    ("conv_state batch", lambda: update(state=(3, 6, 3)), ValueError, r"conv_state must be \(batch=2, dim=6"),
    ("conv_state rank", lambda: update(state=(2, 6)), ValueError, r"conv_state must be \(batch=2, dim=6"),
    (
        "conv_state integer",
        lambda: update(state=torch.zeros(2, 6, 3, dtype=torch.int32)),
        ValueError,
        r"conv_state must be float32, float16, bfloat16 or float64, got torch.int32",
    ),
    (
        "conv_state device",
        lambda: update(state=torch.zeros(2, 6, 3, device="meta")),
        ValueError,
        r"conv_state is on meta but x is on cpu",
    ),
    (
        "weight device",
        lambda: update(weight=torch.zeros(6, 4, device="meta")),
        ValueError,
        r"weight is on meta but x is on cpu",
    ),
    ("bias device", lambda: update(bias=torch.zeros(6, device="meta")), ValueError, r"bias is on meta but x is on cpu"),
    (
        "cache_seqlens length",
        lambda: update(seqlens=i32(0, 0, 0)),
        ValueError,
        r"cache_seqlens must have shape \(batch,\) = \(2,\), got \(3,\)",
    ),
    (
        "cache_seqlens float",
        lambda: update(seqlens=torch.zeros(2)),
        ValueError,
        r"cache_seqlens must be an int32 \(or int64\) tensor, got torch.float32",
    ),
    ("cache_seqlens negative", lambda: update(seqlens=i32(3, -1)), ValueError, r"cache_seqlens must be >= 0"),
    (
        "cache_seqlens device",
        lambda: update(seqlens=torch.zeros(2, dtype=torch.int32, device="meta")),
        ValueError,
        r"cache_seqlens is on meta but x is on cpu",
    ),
    (
        "indices too large",
        lambda: update(state=(5, 6, 3), rows=i32(0, 5)),
        ValueError,
        r"conv_state_indices must be in \[-1, conv_state.shape\[0\]\) = \[-1, 5\) \(-1: padding row\), "
        r"got values in \[0, 5\]",
    ),
    (
        "indices below -1",
        lambda: update(state=(5, 6, 3), rows=i32(-2, 1)),
        ValueError,
        r"conv_state_indices must be in \[-1, conv_state.shape\[0\]\) = \[-1, 5\)",
    ),
    (
        "indices length",
        lambda: update(state=(5, 6, 3), rows=i32(0, 1, 2)),
        ValueError,
        r"conv_state_indices must have shape \(batch,\) = \(2,\), got \(3,\)",
    ),
    (
        "indices float",
        lambda: update(state=(5, 6, 3), rows=torch.tensor([0.0, 1.7])),
        ValueError,
        r"conv_state_indices must be an int32 \(or int64\) tensor, got torch.float32",
    ),
    (
        "indices repeated",
        lambda: update(x=(3, 6), state=(5, 6, 3), rows=i32(4, -1, 4)),
        ValueError,
        r"conv_state_indices must not repeat a state row .*; repeated: \[4\]",
    ),
    (
        "indices device",
        lambda: update(state=(5, 6, 3), rows=torch.zeros(2, dtype=torch.int32, device="meta")),
        ValueError,
        r"conv_state_indices is on meta but x is on cpu",
    ),
    (
        "update activation",
        lambda: update(activation="gelu"),
        ValueError,
        r"causal_conv1d_update: activation must be None, 'silu' or 'swish'",
    ),
]
BAD += UPDATE_BAD


@pytest.mark.parametrize("case,call,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_error(case, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --- on a GPU (marked gpu: `pytest -m gpu`, scripts/gpu_check.sh; skipped without CUDA) ----------


@gpu_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_causal_conv_triton_on_gpu(dtype):
    x, w, b, init = inputs(batch=2, dim=64, seqlen=3000, width=4, dtype=dtype)
    outs = []
    for device, backend in (("cpu", "cpu"), ("cuda", "triton")):
        leaves = [t.to(device).requires_grad_(True) for t in (x, w, b, init)]
        o, f = ops.causal_conv1d_fn(
            leaves[0], leaves[1], leaves[2], None, leaves[3], True, activation="silu", backend=backend
        )
        outs.append([o, f, *torch.autograd.grad(o.float().square().sum() + f.float().sum(), leaves)])
    for a, r in zip(outs[1], outs[0]):
        close(a.cpu(), r, 2e-2, 2e-2, "conv triton")
