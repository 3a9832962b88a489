"""The GPU launch configurations are pure functions of the shapes, and every launch is one the compile check
covers (issue 12).

Each Triton module's ``configs()`` lists every configuration its ``launch_config`` can return on a GPU;
scripts/gpu_compile_check.py compiles exactly that list for sm_90 and sm_80. Here the kernels are replaced
by recorders and the public ops run forward and backward with the GPU's tiles over many shapes: every
recorded launch (its constexprs, options and the Triton type of every run-time argument) must be in the
list. No kernel runs, so the shapes can be large and many.
"""

from __future__ import annotations

import importlib
import inspect
import random

import pytest
import torch
from kit import requires_triton

from medkernels import ops

pytestmark = requires_triton

_OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion")


def _modules():
    from medkernels import triton as mt

    return {name: importlib.import_module(f"medkernels.triton.{name}") for name in mt.MODULES}


def _kernels(module):
    """The module's @triton.jit kernels (the launched ones are named ``_*_kernel``)."""
    return {name: obj for name, obj in vars(module).items() if name.endswith("_kernel") and hasattr(obj, "fn")}


def _arg_type(value) -> str:
    from medkernels.triton import tl_type

    if isinstance(value, torch.Tensor):
        return "*" + tl_type(value.dtype)
    if isinstance(value, bool):
        return "u1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"unexpected kernel argument {value!r}")


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records the launch as a LaunchConfig."""

    def __init__(self, kernel, launches):
        self.fn = kernel.fn
        self.arg_names = list(inspect.signature(kernel.fn).parameters)
        self.launches = launches

    def __getitem__(self, grid):
        from medkernels.triton import LaunchConfig, kernel_params

        def launch(*args, **kwargs):
            options = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs}
            bound = inspect.signature(self.fn).bind(*args, **kwargs).arguments
            params = kernel_params(self)
            assert set(bound) == {n for n, _ in params}, f"{self.fn.__name__}: not every argument was passed"
            assert set(options) == set(_OPTIONS), f"{self.fn.__name__}: launched with options {options}"
            self.launches.append(
                LaunchConfig(
                    module=self.fn.__module__,
                    kernel=self.fn.__name__,
                    signature=tuple((n, _arg_type(bound[n])) for n, c in params if not c),
                    constexprs=tuple(sorted((n, bound[n]) for n, c in params if c)),
                    **options,
                )
            )

        return launch


@pytest.fixture
def launches(monkeypatch):
    """Every Triton kernel replaced by a recorder, with the GPU's tiles; yields the recorded launches."""
    from medkernels.triton import force_gpu_configs

    recorded = []
    for module in _modules().values():
        for name, kernel in _kernels(module).items():
            monkeypatch.setattr(module, name, _Recorder(kernel, recorded))
    with force_gpu_configs():
        yield recorded


def _covered(recorded, n_kernels_at_least: int):
    assert len({(c.module, c.kernel) for c in recorded}) >= n_kernels_at_least
    allowed = {c for m in _modules().values() for c in m.configs()}
    missing = sorted({f"{c.kernel} {c.label()} {dict(c.signature)}" for c in recorded if c not in allowed})
    assert not missing, "launches the compile check does not compile:\n" + "\n".join(missing[:10])


def _backward(out, *leaves):
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum(o.float().sum() for o in outs if o.is_floating_point() and o.requires_grad)
    torch.autograd.grad(loss, [t for t in leaves if t.requires_grad], allow_unused=True)


def _t(*shape, dtype=torch.float32, grad=True):
    return torch.randn(*shape).to(dtype).requires_grad_(grad)


DTYPES = [torch.float32, torch.bfloat16, torch.float16]
RNG = random.Random(12)


# --- the configuration lists -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(_modules()))
def test_configs_list_every_kernel_once(name):
    module = _modules()[name]
    configs = module.configs()
    assert configs and len(configs) == len(set(configs))
    assert {c.kernel for c in configs} == set(_kernels(module)), "a kernel the compile check never compiles"
    for c in configs:
        assert c.module == module.__name__
        assert dict(c.options()).keys() == set(_OPTIONS)
        assert all(t.startswith(("*", "i32", "fp32", "u1")) for _, t in c.signature)


def test_make_config_rejects_a_launcher_that_disagrees_with_its_kernel():
    from medkernels.triton import make_config
    from medkernels.triton import selective_scan as tss

    good = tss.launch_config(False, torch.float32, 16, 64, True, True)
    assert dict(good.constexprs) == {"VAR_B": True, "VAR_C": True, "BL": 64, "BN": 16}
    with pytest.raises(ValueError, match="constexprs"):
        make_config(tss._fwd_kernel, pointers={}, constexprs={"BL": 64, "BN": 16})
    with pytest.raises(ValueError, match="no parameters"):
        make_config(tss._fwd_kernel, pointers={"NOPE": torch.float32}, constexprs=dict(good.constexprs))


def test_tiles_cover_the_shapes_and_stay_within_the_register_budget():
    """The tile rules the compile check's no-spill results rest on (scripts/gpu_compile_check.py)."""
    from medkernels.triton import dilated_attention as tda
    from medkernels.triton import multi_order_scan as tmos
    from medkernels.triton import neighborhood_attention as tna
    from medkernels.triton import rswaf_kan as tkan
    from medkernels.triton import selective_scan as tss

    def pow2(n):
        return n & (n - 1) == 0

    for n in range(1, tss.MAX_STATE + 1):
        bn = tss.state_block(n)
        assert n <= bn < 2 * max(n, 16) and pow2(bn) and tss.gpu_chunk_len(n) * bn == 1024
    assert tss.gpu_chunk_len(16) == 64 and tss.gpu_chunk_len(64) == 16
    for n in range(1, tmos.MAX_STATE + 1):
        bd, bn = tmos.tiles(n)
        assert n <= bn < 2 * max(n, 16) and pow2(bn) and bd * bn <= tmos.TILE and pow2(bd)
    for d in range(1, tda.MAX_HEAD_DIM + 1):
        bm, bd = tda.tiles(d)
        assert d <= bd < 2 * max(d, 16) and bm == 16
    for d in range(1, tna.MAX_HEAD_DIM + 1):
        for kernel in ("fwd", "dq", "dkdv"):
            bq, bd = tna.tiles(kernel, d, 1)
            assert d <= bd < 2 * max(d, 16) and bq * bd <= 4096 and bq >= 8
            assert tna.tiles(kernel, d, 1, gpu=False)[0] == 16
    for g in range(1, tkan.MAX_GRID + 1):
        for kernel in ("fwd", "dx", "dw"):
            bm, bn, bi, gp = tkan.tiles(kernel, g)
            assert g <= gp and pow2(gp) and bi * gp in (32, 64) and bi >= 1
            assert tkan.launch_config(kernel, torch.float32, g).num_warps == 8


# --- every launch is covered ---------------------------------------------------------------------------------


def test_selective_scan_launches(launches):
    for _ in range(24):
        dtype, n = RNG.choice(DTYPES), RNG.choice([1, 4, 15, 16, 17, 32, 33, 63, 64])
        batch, dim, L = RNG.choice([1, 2]), RNG.choice([1, 3, 8]), RNG.choice([1, 7, 64, 65, 300])
        u, delta = _t(batch, dim, L, dtype=dtype), _t(batch, dim, L, dtype=dtype)
        A = -_t(dim, n).detach().abs().requires_grad_()
        B = (
            _t(batch, n, L, dtype=dtype)
            if RNG.random() < 0.5
            else _t(batch, 1, n, L, dtype=dtype)
            if RNG.random() < 0.5
            else _t(dim, n)
        )
        C = _t(batch, n, L, dtype=dtype) if RNG.random() < 0.7 else _t(dim, n)
        D = _t(dim) if RNG.random() < 0.5 else None
        z = _t(batch, dim, L, dtype=dtype) if RNG.random() < 0.5 else None
        bias = _t(dim) if RNG.random() < 0.5 else None
        init = _t(batch, dim, n) if RNG.random() < 0.3 else None
        ret = RNG.random() < 0.5
        out = ops.selective_scan_fn(
            u, delta, A, B, C, D, z, bias, RNG.random() < 0.5, ret, initial_state=init, backend="triton"
        )
        _backward(out, u, delta, A, B, C, *(t for t in (D, z, bias, init) if t is not None))
    assert {c.kernel for c in launches} == {"_fwd_kernel", "_bwd_kernel"}
    _covered(launches, 2)


def test_multi_order_scan_launches(launches):
    for _ in range(10):
        dtype, n = RNG.choice(DTYPES), RNG.choice([1, 5, 16, 31, 64, 256])
        batch, K, dim, L = 1, RNG.choice([1, 2]), RNG.choice([1, 5, 40]), RNG.choice([1, 9, 70])
        orders = torch.stack([torch.stack([torch.randperm(L) for _ in range(K)]) for _ in range(batch)])
        u, delta = _t(batch, dim, L, dtype=dtype), _t(batch, K, dim, L, dtype=dtype)
        A, B, C = (
            -_t(K, dim, n).detach().abs().requires_grad_(),
            _t(batch, K, n, L, dtype=dtype),
            _t(batch, K, n, L, dtype=dtype),
        )
        D, bias = (_t(K, dim) if RNG.random() < 0.5 else None), (_t(K, dim) if RNG.random() < 0.5 else None)
        out = ops.multi_order_selective_scan(
            u, delta, A, B, C, D, bias, orders, delta_softplus=RNG.random() < 0.5, backend="triton"
        )
        _backward(out, u, delta, A, B, C, *(t for t in (D, bias) if t is not None))
    _covered(launches, 2)


def test_causal_conv1d_launches(launches):
    for _ in range(16):
        dtype, batch, dim, L, width = RNG.choice(DTYPES), 2, 3, RNG.choice([1, 5, 256, 300]), RNG.choice([2, 4])
        x, w = _t(batch, dim, L, dtype=dtype), _t(dim, width, dtype=dtype)
        b = _t(dim, dtype=dtype) if RNG.random() < 0.5 else None
        seq = torch.zeros(batch, L, dtype=torch.int32) if RNG.random() < 0.5 else None
        init = _t(batch, dim, width - 1, dtype=dtype) if RNG.random() < 0.5 and seq is None else None
        out = ops.causal_conv1d_fn(
            x, w, b, seq_idx=seq, initial_states=init, activation=RNG.choice([None, "silu"]), backend="triton"
        )
        _backward(out, x, w, *(t for t in (b, init) if t is not None))
    _covered(launches, 3)


def test_dct_launches(launches):
    for h, w in [(1, 1), (5, 70), (16, 17), (33, 64), (65, 200), (300, 3)]:
        x = _t(2, h, w)
        _backward(ops.dct2d(x, backend="triton"), x)
        y = _t(1, h, w)
        _backward(ops.idct2d(y, backend="triton"), y)
    _covered(launches, 1)


def test_dilated_attention_launches(launches):
    for _ in range(12):
        dtype, dim = RNG.choice(DTYPES), RNG.choice([1, 8, 16, 17, 32, 64, 65, 96, 128])
        spatial, group = (2, 3, RNG.choice([4, 9])), (RNG.choice([1, 2]), 2, RNG.choice([2, 4, 9]))
        q, k, v = (_t(1, *spatial, 2, dim, dtype=dtype) for _ in range(3))
        out = ops.dilated_attention3d(
            q, k, v, group, RNG.choice(["local", "global"]), return_lse=True, backend="triton"
        )
        _backward(out, q, k, v)
    _covered(launches, 3)


def test_neighborhood_attention_launches(launches):
    for _ in range(12):
        d, dv = RNG.choice([4, 16, 32, 33, 64, 100, 128, 256]), RNG.choice([4, 32, 64, 128, 256])
        heads, kv_heads = RNG.choice([(2, 2), (4, 2), (2, 1)])
        q = _t(1, 5, 6, heads, d)
        k, v = _t(1, 5, 6, kv_heads, d), _t(1, 5, 6, kv_heads, dv)
        rpb = _t(heads, 5, 5) if RNG.random() < 0.5 and heads == kv_heads and d == dv else None
        out = ops.na2d(q, k, v, 3, dilation=RNG.choice([1, (1, 2)]), rpb=rpb, return_lse=True, backend="triton")
        _backward(out, q, k, v, *(t for t in (rpb,) if t is not None))
    _covered(launches, 3)


def test_point_cloud_launches(launches):
    for _ in range(12):
        dtype, C, n = RNG.choice(DTYPES), RNG.choice([1, 3, 6, 64]), RNG.choice([20, 300, 2000])
        xyz = torch.randn(2, n, C).to(dtype)
        lengths = torch.tensor([n, n - 3]) if RNG.random() < 0.5 else None
        ops.furthest_point_sample(xyz, 5, lengths=lengths, backend="triton")
        k = RNG.choice([1, 2, 5, 16, 17, 64, 200, 256])
        qlen = torch.tensor([2, 1]) if RNG.random() < 0.5 else None
        ops.knn(
            torch.randn(2, 3, C).to(dtype), xyz, min(k, n - 3), query_lengths=qlen, lengths=lengths, backend="triton"
        )
    _covered(launches, 2)


def test_rswaf_kan_launches(launches):
    for _ in range(12):
        dtype, G, n_in = RNG.choice(DTYPES), RNG.choice([1, 3, 4, 8, 9, 16, 17, 32]), RNG.choice([1, 10, 70])
        x, w = _t(5, n_in, dtype=dtype), _t(7, n_in * G, dtype=dtype)
        grid = torch.linspace(-2, 2, G)
        _backward(ops.rswaf_kan(x, grid, 1.5, w, backend="triton"), x, w)
    _covered(launches, 3)


# --- shapes past the configurations run elsewhere --------------------------------------------------------------


def test_shapes_past_the_configs_are_refused_with_a_reason():
    from medkernels.ops import BackendUnavailableError

    u = torch.randn(1, 2, 5)
    with pytest.raises(BackendUnavailableError, match="dstate up to 64"):
        ops.selective_scan_fn(u, u, -torch.rand(2, 65), torch.randn(1, 65, 5), torch.randn(1, 65, 5), backend="triton")
    with pytest.raises(BackendUnavailableError, match="float32; float64"):
        ops.selective_scan_fn(
            u.double(),
            u.double(),
            -torch.rand(2, 4).double(),
            torch.randn(1, 4, 5).double(),
            torch.randn(1, 4, 5).double(),
            backend="triton",
        )
    orders = torch.arange(5)[None, None]
    with pytest.raises(BackendUnavailableError, match="dstate up to 256"):
        ops.multi_order_selective_scan(
            u,
            u[:, None],
            -torch.rand(1, 2, 257),
            torch.randn(1, 1, 257, 5),
            torch.randn(1, 1, 257, 5),
            None,
            None,
            orders,
            backend="triton",
        )
    q = torch.randn(1, 2, 2, 2, 1, 129)
    with pytest.raises(BackendUnavailableError, match="head_dim up to 128"):
        ops.dilated_attention3d(q, q, q, 2, "local", backend="triton")
    with pytest.raises(BackendUnavailableError, match="float32; float64"):
        ops.dilated_attention3d(
            q[..., :4].double(), q[..., :4].double(), q[..., :4].double(), 2, "local", backend="triton"
        )
    q = torch.randn(1, 5, 1, 257)
    with pytest.raises(BackendUnavailableError, match="head dims up to 256"):
        ops.na1d(q, q, q, 3, backend="triton")
    with pytest.raises(BackendUnavailableError, match="at most 256 neighbours"):
        ops.knn(torch.randn(1, 2, 3), torch.randn(1, 300, 3), 257, backend="triton")
    with pytest.raises(BackendUnavailableError, match="up to 32 grid points"):
        ops.rswaf_kan(torch.randn(3, 2), torch.linspace(-1, 1, 33), 1.0, torch.randn(4, 66), backend="triton")
