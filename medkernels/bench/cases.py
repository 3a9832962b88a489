"""Benchmark cases: what ``medkernels-bench`` times, per op and profile.

A case builds its inputs, calls the op on a named backend (or a peer library), and may state
targets (speed-up and memory ratios against the reference) that the report checks.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from medkernels import ops

from . import peers as _peers

PROFILES = ("quick", "default", "full", "gpu")


@dataclass(frozen=True)
class Target:
    """A ratio a case must reach: ``metric`` of ``backend`` against ``against`` (the reference or a
    peer, "peer:<name>"), per pass."""

    description: str
    backend: str
    passname: str  # "fwd" or "fwd+bwd"
    metric: str  # "speedup" (their time / backend time), "memory" (backend peak / their peak) or
    # "bandwidth" (the backend's effective GB/s / the device's measured copy GB/s)
    bound: float  # speedup or bandwidth >= bound, memory <= bound
    against: str = "reference"

    def met(self, value: float) -> bool:
        return value <= self.bound if self.metric == "memory" else value >= self.bound


@dataclass(frozen=True)
class Peer:
    """Another library's (or plain PyTorch's) way to compute the case, measured in the same run."""

    call: Callable[[dict], object]
    unavailable: Callable[[torch.device], "str | None"] = lambda device: None
    forward_only: bool = False  # not differentiable (e.g. a numpy library): timed in the forward pass only


@dataclass(frozen=True)
class Case:
    op: str
    label: str
    params: dict
    profiles: tuple[str, ...]
    make_inputs: Callable[[torch.device, torch.dtype], dict]
    call: Callable[[str, dict], object]  # (backend, inputs) -> output tensor(s)
    differentiable: tuple[str, ...]  # inputs that get gradients in the fwd+bwd pass
    dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    reference_backends: tuple[str, ...] = ("reference",)
    peers: dict[str, Peer] = field(default_factory=dict)
    targets: tuple[Target, ...] = ()
    parameters: Callable[[dict], list] | None = None  # module parameters that also get gradients

    def title(self, dtype: torch.dtype) -> str:
        return f"{self.op}  {self.label}  {str(dtype).replace('torch.', '')}"


# --- selective scan -------------------------------------------------------------------------------


def _scan_inputs(batch: int, dim: int, dstate: int, seqlen: int, bc: str):
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        g = torch.Generator().manual_seed(0)

        def randn(*shape, scale=1.0):
            return (scale * torch.randn(*shape, generator=g)).to(device)

        var = (batch, dstate, seqlen)
        return {
            "u": randn(batch, dim, seqlen).to(dtype),
            "delta": (0.5 * torch.rand(batch, dim, seqlen, generator=g)).to(device, dtype),
            "A": (-torch.rand(dim, dstate, generator=g) - 0.5).to(device),
            "B": randn(*var).to(dtype) if bc == "variable" else randn(dim, dstate),
            "C": randn(*var).to(dtype) if bc == "variable" else randn(dim, dstate),
            "D": randn(dim),
            "z": randn(batch, dim, seqlen).to(dtype),
            "delta_bias": (0.5 * torch.rand(dim, generator=g)).to(device),
        }

    return make


def _scan_call(backend: str, x: dict):
    if backend == "reference":
        return ops.selective_scan_ref(**x, delta_softplus=True)
    return ops.selective_scan_fn(**x, delta_softplus=True, backend=backend)


def _mamba_ssm_call(x: dict):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as peer  # type: ignore

    return peer(**x, delta_softplus=True)


def _mamba_ssm_unavailable(device: torch.device) -> str | None:
    if importlib.util.find_spec("mamba_ssm") is None:
        return "mamba_ssm is not installed (it needs a CUDA build)"
    if device.type != "cuda":
        return "mamba_ssm runs on CUDA only"
    return None


def _scan_case(batch, dim, dstate, seqlen, bc, profiles, dtypes=(torch.float32,), targets=(),
               reference=True) -> Case:
    label = f"B={batch} D={dim} N={dstate} L={seqlen} {bc} B/C, D, z, delta_bias, softplus"
    return Case(
        op="selective_scan",
        label=label,
        params={"batch": batch, "dim": dim, "dstate": dstate, "seqlen": seqlen, "B_C": bc,
                "D": True, "z": True, "delta_bias": True, "delta_softplus": True},
        profiles=profiles,
        make_inputs=_scan_inputs(batch, dim, dstate, seqlen, bc),
        call=_scan_call,
        differentiable=("u", "delta", "A", "B", "C", "D", "z", "delta_bias"),
        dtypes=dtypes,
        reference_backends=("reference",) if reference else (),
        peers={"mamba_ssm": Peer(_mamba_ssm_call, _mamba_ssm_unavailable)},
        targets=targets,
    )


ISSUE_TARGETS = (
    Target("forward >= 20x the reference", "cpu", "fwd", "speedup", 20.0),
    Target("forward+backward >= 100x the reference's autograd", "cpu", "fwd+bwd", "speedup", 100.0),
    Target("forward+backward peak memory <= 1/10 of the reference's", "cpu", "fwd+bwd", "memory", 0.1),
)

# --- multi-order selective scan (PointMamba2's group Point-SSM) ---------------------------------


def _multi_scan_inputs(batch: int, dim: int, dstate: int, seqlen: int, K: int):
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        g = torch.Generator().manual_seed(0)
        return {
            "u": torch.randn(batch, dim, seqlen, generator=g).to(device, dtype),
            "delta": (0.5 * torch.rand(batch, K, dim, seqlen, generator=g)).to(device, dtype),
            "A": (-torch.rand(K, dim, dstate, generator=g) - 0.5).to(device),
            "B": torch.randn(batch, K, dstate, seqlen, generator=g).to(device, dtype),
            "C": torch.randn(batch, K, dstate, seqlen, generator=g).to(device, dtype),
            "D": torch.randn(K, dim, generator=g).to(device),
            "delta_bias": (0.5 * torch.rand(K, dim, generator=g)).to(device),
            "orders": torch.argsort(torch.rand(batch, K, seqlen, generator=g), dim=-1).to(device),
        }

    return make


def _multi_scan_copies(x: dict):
    """PointMamba2's way: per ordering, permuted copies of u, delta, B, C, one selective scan (ours,
    on the best backend here), the output scattered back, the K outputs summed."""
    u, orders = x["u"], x["orders"]
    out = None
    for k in range(orders.shape[1]):
        o = orders[:, k, None, :]
        ou, ob = o.expand_as(u), o.expand_as(x["B"][:, k])
        y = ops.selective_scan_fn(u.gather(2, ou), x["delta"][:, k].gather(2, ou), x["A"][k],
                                  x["B"][:, k].gather(2, ob), x["C"][:, k].gather(2, ob), x["D"][k], None,
                                  x["delta_bias"][k], True)
        y = torch.zeros_like(y).scatter(2, ou, y)
        out = y if out is None else out + y
    return out


def _multi_scan_case(batch, dim, dstate, seqlen, K, profiles, targets=(), with_reference=False) -> Case:
    # K reference scans at the issue's size take minutes: only the full profile lists the reference.
    return Case(
        op="multi_order_selective_scan",
        label=f"B={batch} D={dim} N={dstate} L={seqlen} K={K} D, delta_bias, softplus",
        params={"batch": batch, "dim": dim, "dstate": dstate, "seqlen": seqlen, "K": K},
        profiles=profiles,
        make_inputs=_multi_scan_inputs(batch, dim, dstate, seqlen, K),
        call=lambda backend, x: ops.multi_order_selective_scan(**x, backend=backend),
        differentiable=("u", "delta", "A", "B", "C", "D", "delta_bias"),
        reference_backends=("reference",) if with_reference else (),
        peers={"8_copies": Peer(_multi_scan_copies)},
        targets=targets,
    )


MULTI_SCAN_TARGETS = (
    Target("forward+backward >= 2x the 8-copies path on our own scan", "cpu", "fwd+bwd", "speedup", 2.0,
           against="peer:8_copies"),
    Target("forward+backward peak memory <= 1/2 of the 8-copies path", "cpu", "fwd+bwd", "memory", 0.5,
           against="peer:8_copies"),
)

# --- neighborhood attention -------------------------------------------------------------------------


def _na_inputs(spatial: tuple[int, ...], heads: int, dim: int):
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        g = torch.Generator().manual_seed(0)
        return {name: torch.randn(1, *spatial, heads, dim, generator=g).to(device, dtype)
                for name in ("query", "key", "value")}

    return make


def _na_call(na_dim: int, kernel: int, dilation: int):
    def call(backend: str, x: dict):
        fn = getattr(ops, f"na{na_dim}d")
        return fn(x["query"], x["key"], x["value"], kernel, dilation=dilation, backend=backend)

    return call


def _sdpa_call(x: dict):
    """Dense attention over all tokens (what NA avoids): torch's scaled_dot_product_attention."""
    q, k, v = (t.flatten(1, -3).transpose(1, 2) for t in (x["query"], x["key"], x["value"]))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _natten_call(na_dim: int, kernel: int, dilation: int):
    def call(x: dict):
        import natten  # type: ignore

        return getattr(natten, f"na{na_dim}d")(x["query"], x["key"], x["value"], kernel_size=kernel, dilation=dilation)

    return call


def _natten_unavailable(device: torch.device) -> str | None:
    return None if importlib.util.find_spec("natten") else "natten is not installed (GPU wheels on a private index)"


def _na_case(spatial, kernel, dilation, profiles, targets=(), heads=4, dim=32, dtypes=(torch.float32,)) -> Case:
    na_dim = len(spatial)
    return Case(
        op=f"na{na_dim}d",
        label=f"B=1 {'x'.join(map(str, spatial))} K={kernel} d={dilation} heads={heads} head_dim={dim}",
        params={"spatial": list(spatial), "kernel_size": kernel, "dilation": dilation, "heads": heads, "head_dim": dim},
        profiles=profiles,
        make_inputs=_na_inputs(spatial, heads, dim),
        call=_na_call(na_dim, kernel, dilation),
        differentiable=("query", "key", "value"),
        dtypes=dtypes,
        peers={"sdpa": Peer(_sdpa_call),
               "natten": Peer(_natten_call(na_dim, kernel, dilation), _natten_unavailable)},
        targets=targets,
    )


def _na_targets(three_d: bool) -> tuple[Target, ...]:
    if three_d:
        return (Target("forward >= 5x the gather baseline", "cpu", "fwd", "speedup", 5.0),)
    return (
        Target("forward >= 10x the gather baseline", "cpu", "fwd", "speedup", 10.0),
        Target("forward >= 5x dense SDPA", "cpu", "fwd", "speedup", 5.0, against="peer:sdpa"),
        Target("forward+backward >= 5x the gather baseline's autograd", "cpu", "fwd+bwd", "speedup", 5.0),
    )


# --- D-Former dilated attention and DCT attention ------------------------------------------------------


def _da_case(spatial, group, scope, profiles, targets=(), heads=3, dim=32, dtypes=(torch.float32,)) -> Case:
    def call(backend: str, x: dict):
        return ops.dilated_attention3d(x["query"], x["key"], x["value"], group, scope, backend=backend)

    def peer(fn):
        return Peer(lambda x: fn(x["query"], x["key"], x["value"], group, scope))

    return Case(
        op="dilated_attention3d",
        label=f"B=1 {'x'.join(map(str, spatial))} group={'x'.join(map(str, group))} {scope} heads={heads} "
              f"head_dim={dim}",
        params={"spatial": list(spatial), "group_size": list(group), "scope": scope, "heads": heads, "head_dim": dim},
        profiles=profiles,
        make_inputs=_na_inputs(spatial, heads, dim),
        call=call,
        differentiable=("query", "key", "value"),
        dtypes=dtypes,
        peers={"official": peer(_peers.dformer_attention_official), "sdpa": peer(_peers.dformer_attention_sdpa)},
        targets=targets,
    )


DA_TARGETS = (
    Target("forward >= 1.5x the official pad-reshape-permute path", "cpu", "fwd", "speedup", 1.5, against="peer:official"),
    Target("forward+backward >= 1.5x the official path", "cpu", "fwd+bwd", "speedup", 1.5, against="peer:official"),
    Target("forward not slower than SDPA on permuted tokens", "cpu", "fwd", "speedup", 1.0, against="peer:sdpa"),
    Target("forward+backward not slower than SDPA on permuted tokens", "cpu", "fwd+bwd", "speedup", 1.0,
           against="peer:sdpa"),
)


def _dct_attention_case(batch, dim, size, heads, keep, profiles, targets=()) -> Case:
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        from medkernels.nn import DCTAttention

        torch.manual_seed(0)
        module = DCTAttention(dim, heads, keep, device=device, dtype=dtype)
        return {"x": torch.randn(batch, dim, size, size, device=device, dtype=dtype), "module": module}

    def call(backend: str, x: dict):
        x["module"].backend = backend
        return x["module"](x["x"])

    def spatial(x: dict):
        m = x["module"]
        return _peers.spatial_attention(x["x"], m.qkv.weight, m.qkv.bias, m.proj.weight, m.proj.bias, heads)

    return Case(
        op="dct_attention",
        label=f"B={batch} C={dim} {size}x{size} heads={heads} keep={keep} (medkernels.nn.DCTAttention)",
        params={"batch": batch, "dim": dim, "size": size, "heads": heads, "keep": keep},
        profiles=profiles,
        make_inputs=make,
        call=call,
        differentiable=("x",),
        peers={"spatial_attention": Peer(spatial)},
        targets=targets,
        parameters=lambda x: list(x["module"].parameters()),
    )


def _dct_case(batch, channels, size, keep, profiles) -> Case:
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        g = torch.Generator().manual_seed(0)
        return {"x": torch.randn(batch, channels, size, size, generator=g).to(device, dtype)}

    return Case(
        op="dct2d",
        label=f"B={batch} C={channels} {size}x{size} keep={keep}x{keep} (against two matmuls with cached bases)",
        params={"batch": batch, "channels": channels, "size": size, "keep": keep},
        profiles=profiles,
        make_inputs=make,
        call=lambda backend, x: ops.dct2d(x["x"], keep=(keep, keep), backend=backend),
        differentiable=("x",),
    )


# --- causal conv1d and the Mamba block ----------------------------------------------------------------


def _conv_inputs(batch, dim, seqlen, width):
    def make(device, dtype):
        g = torch.Generator().manual_seed(0)
        return {"x": torch.randn(batch, dim, seqlen, generator=g).to(device, dtype),
                "weight": torch.randn(dim, width, generator=g).to(device, dtype),
                "bias": torch.randn(dim, generator=g).to(device, dtype)}

    return make


def _conv_torch(x: dict):
    """What a model does without causal-conv1d: a padded depthwise nn.functional.conv1d, cropped, SiLU."""
    w = x["weight"]
    out = torch.nn.functional.conv1d(x["x"], w[:, None], x["bias"], padding=w.shape[1] - 1, groups=w.shape[0])
    return torch.nn.functional.silu(out[..., :x["x"].shape[-1]])


def _conv_case(batch, dim, seqlen, width, profiles) -> Case:
    return Case(
        op="causal_conv1d",
        label=f"B={batch} D={dim} L={seqlen} W={width} bias, silu",
        params={"batch": batch, "dim": dim, "seqlen": seqlen, "width": width},
        profiles=profiles,
        make_inputs=_conv_inputs(batch, dim, seqlen, width),
        call=lambda backend, x: ops.causal_conv1d_fn(x["x"], x["weight"], x["bias"], activation="silu",
                                                     backend=backend),
        differentiable=("x", "weight", "bias"),
        peers={"torch_conv1d": Peer(_conv_torch)},
    )


def _mamba_inputs(batch, seqlen, d_model, d_state):
    def make(device, dtype):
        from medkernels.nn import Mamba

        torch.manual_seed(0)
        module = Mamba(d_model, d_state=d_state, device=device, dtype=dtype)
        return {"hidden_states": torch.randn(batch, seqlen, d_model, device=device, dtype=dtype), "module": module}

    return make


def _mamba_call(backend, x):
    x["module"].backend = backend
    return x["module"](x["hidden_states"])


def _mamba_case(batch, seqlen, d_model, d_state, profiles, targets=(), dtypes=(torch.float32,)) -> Case:
    return Case(
        op="mamba_block",
        label=f"B={batch} L={seqlen} d_model={d_model} d_state={d_state} (medkernels.nn.Mamba)",
        params={"batch": batch, "seqlen": seqlen, "d_model": d_model, "d_state": d_state},
        profiles=profiles,
        make_inputs=_mamba_inputs(batch, seqlen, d_model, d_state),
        call=_mamba_call,
        differentiable=("hidden_states",),
        dtypes=dtypes,
        parameters=lambda x: list(x["module"].parameters()),
        targets=targets,
    )


# --- FasterKAN (MedViTV2's KAN) ------------------------------------------------------------------------


def _kan_case(tokens, in_dim, out_dim, grids, profiles, targets=(), dtypes=(torch.float32,)) -> Case:
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        g = torch.Generator().manual_seed(0)
        return {"x": torch.randn(tokens, in_dim, generator=g).to(device, dtype),
                "grid": torch.linspace(-2.0, 2.0, grids, device=device),
                "inv_denominator": torch.tensor(1 / 0.33, device=device),
                "weight": (torch.randn(out_dim, in_dim * grids, generator=g) / (in_dim * grids) ** 0.5).to(device,
                                                                                                           dtype)}

    def call(backend: str, x: dict):
        return ops.rswaf_kan(x["x"], x["grid"], x["inv_denominator"], x["weight"], backend=backend)

    return Case(
        op="rswaf_kan",
        label=f"T={tokens} in={in_dim} out={out_dim} G={grids} (FasterKAN layer after its LayerNorm)",
        params={"tokens": tokens, "in": in_dim, "out": out_dim, "grids": grids},
        profiles=profiles,
        make_inputs=make,
        call=call,
        differentiable=("x", "weight"),
        dtypes=dtypes,
        peers={"unfused": Peer(lambda x: _peers.kan_unfused(x["x"], x["grid"], x["inv_denominator"], x["weight"]))},
        targets=targets,
    )


KAN_TARGETS = (
    Target("forward+backward peak memory <= 1/3 of the unfused layer's", "cpu", "fwd+bwd", "memory", 1 / 3,
           against="peer:unfused"),
    Target("forward+backward not slower than the unfused layer (basis, then nn.Linear)", "cpu", "fwd+bwd", "speedup",
           1.0, against="peer:unfused"),
)


# --- point clouds -----------------------------------------------------------------------------------


def _installed_cpu(module: str, why: str):
    def unavailable(device: torch.device) -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({why})"
        return None if device.type == "cpu" else f"{module} runs on the CPU only"

    return unavailable


def _fps_case(batch, n, npoint, c, profiles, targets=(), reference=True) -> Case:
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        g = torch.Generator().manual_seed(0)
        return {"xyz": torch.randn(batch, n, c, generator=g).to(device, dtype)}

    return Case(
        op="furthest_point_sample",
        label=f"B={batch} N={n} -> {npoint} C={c} exact (reference: the textbook torch loop)",
        params={"batch": batch, "n": n, "npoint": npoint, "c": c},
        profiles=profiles,
        make_inputs=make,
        call=lambda backend, x: ops.furthest_point_sample(x["xyz"], npoint, backend=backend),
        differentiable=(),
        reference_backends=("reference",) if reference else (),
        peers={"fpsample": Peer(lambda x: _peers.fpsample_fps(x["xyz"], npoint),
                                _installed_cpu("fpsample", "pip install fpsample"), forward_only=True)},
        targets=targets,
    )


def _knn_case(batch, m, n, k, c, profiles, targets=(), reference=True) -> Case:
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        g = torch.Generator().manual_seed(0)
        return {"query": torch.randn(batch, m, c, generator=g).to(device, dtype),
                "points": torch.randn(batch, n, c, generator=g).to(device, dtype)}

    return Case(
        op="knn",
        label=f"B={batch} {m} queries over {n} points k={k} C={c}",
        params={"batch": batch, "m": m, "n": n, "k": k, "c": c},
        profiles=profiles,
        make_inputs=make,
        call=lambda backend, x: ops.knn(x["query"], x["points"], k, backend=backend),
        differentiable=("query", "points"),
        reference_backends=("reference",) if reference else (),
        peers={"faiss_flat": Peer(lambda x: _peers.faiss_flat_knn(x["query"], x["points"], k),
                                  _installed_cpu("faiss", "pip install faiss-cpu"), forward_only=True),
               "cdist_topk": Peer(lambda x: _peers.cdist_topk_knn(x["query"], x["points"], k))},
        targets=targets,
    )


CASES: list[Case] = [
    _scan_case(1, 16, 4, 64, "variable", ("quick",)),
    _scan_case(2, 768, 16, 1024, "variable", ("default", "full"), (torch.float32,), ISSUE_TARGETS),
    _scan_case(2, 768, 16, 1024, "variable", ("full",), (torch.bfloat16,)),
    _scan_case(1, 256, 16, 4096, "variable", ("full",)),
    _scan_case(2, 768, 16, 1024, "fixed", ("full",)),
    _scan_case(1, 1536, 64, 2048, "variable", ("full",)),
    # The GPU profile times the pure-PyTorch references (a Python loop over the sequence, or whole-tensor
    # gathers) only at shapes where a call takes well under a second, so that the profile fits
    # scripts/gpu_check.sh's time budget; the large shapes are timed against each other and the copy bandwidth.
    _scan_case(8, 1536, 16, 4096, "variable", ("gpu",), (torch.bfloat16, torch.float32), (
        Target("CUDA forward moves its bytes at >= 60% of the copy bandwidth", "cuda", "fwd", "bandwidth", 0.6),
        Target("Triton forward within 1.5x of the CUDA forward", "triton", "fwd", "speedup", 1 / 1.5, against="cuda"),
    ), reference=False),
    _scan_case(2, 768, 16, 1024, "variable", ("gpu",), (torch.float32,), (
        Target("CUDA forward+backward >= 30x the reference", "cuda", "fwd+bwd", "speedup", 30.0),
    )),
    _na_case((12, 12), 3, 2, ("quick",), heads=2, dim=8),
    _conv_case(2, 1536, 4096, 4, ("default", "full")),
    _conv_case(8, 3072, 8192, 4, ("gpu",)),
    _mamba_case(2, 1024, 256, 16, ("default", "full"),
                (Target("forward+backward >= 10x the block on reference ops", "cpu", "fwd+bwd", "speedup", 10.0),)),
    _mamba_case(4, 1024, 768, 16, ("gpu",), dtypes=(torch.bfloat16,)),  # the reference block loops over L
    _na_case((64, 64), 7, 1, ("default", "full"), _na_targets(False)),
    _na_case((64, 64), 7, 2, ("default", "full"), _na_targets(False)),
    _na_case((16, 16, 16), 5, 1, ("default", "full"), _na_targets(True)),
    _da_case((8, 16, 16), (2, 8, 8), "global", ("quick",), heads=2, dim=16),
    _da_case((32, 32, 32), (2, 8, 8), "local", ("default", "full"), DA_TARGETS),
    _da_case((32, 32, 32), (2, 8, 8), "global", ("default", "full"), DA_TARGETS),
    _da_case((64, 64, 64), (2, 8, 8), "global", ("gpu",), heads=3, dim=32, dtypes=(torch.bfloat16, torch.float32)),
    _dct_case(8, 64, 56, 28, ("default", "full")),
    _dct_attention_case(2, 64, 56, 2, 0.25, ("default", "full"), (
        Target("forward >= 4x full spatial attention", "cpu", "fwd", "speedup", 4.0, against="peer:spatial_attention"),
    )),
    _dct_attention_case(8, 64, 56, 2, 0.25, ("gpu",)),
    _na_case((128, 128), 7, 1, ("gpu",), heads=4, dim=32, dtypes=(torch.bfloat16,)),
    _na_case((32, 32, 32), 7, 1, ("gpu",), heads=4, dim=32, dtypes=(torch.bfloat16,)),
    _fps_case(1, 2000, 200, 3, ("quick",)),
    _fps_case(1, 16384, 2048, 3, ("default", "full"), (
        Target("exact FPS >= 10x the torch loop", "cpu", "fwd", "speedup", 10.0),
        Target("exact FPS >= 3x fpsample's exact fps_sampling", "cpu", "fwd", "speedup", 3.0, against="peer:fpsample"),
    )),
    _fps_case(8, 131072, 4096, 3, ("gpu",), reference=False),  # the textbook loop: one sync per step
    _knn_case(1, 64, 1000, 8, 3, ("quick",)),
    _knn_case(1, 2048, 16384, 32, 3, ("default", "full"), (
        Target("kNN >= 2x faiss-cpu's flat index", "cpu", "fwd", "speedup", 2.0, against="peer:faiss_flat"),
    ), reference=False),
    _knn_case(8, 1024, 2048, 32, 64, ("full",), reference=False),
    _knn_case(8, 8192, 16384, 32, 3, ("gpu",), reference=False),
    _kan_case(49 * 64, 512, 1024, 8, ("default", "full"), KAN_TARGETS),
    _kan_case(64 * 196, 512, 1024, 8, ("gpu",), dtypes=(torch.bfloat16, torch.float32)),
    # PointMamba2's level-1 group Point-SSM (8 orderings of 1024 points, 128 channels): the full profile
    # runs the issue's batch of 8 and the reference; the default one cloud of it (seconds).
    _multi_scan_case(1, 128, 64, 1024, 8, ("default",), MULTI_SCAN_TARGETS),
    _multi_scan_case(8, 128, 64, 1024, 8, ("full",), MULTI_SCAN_TARGETS, with_reference=True),
    _multi_scan_case(8, 128, 64, 1024, 8, ("gpu",)),
]


def cases_for(profile: str, ops_filter: set[str] | None = None) -> list[Case]:
    """The cases of a profile, optionally only those of some ops."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    return [c for c in CASES if profile in c.profiles and (not ops_filter or c.op in ops_filter)]
