"""medkernels.triton: Triton kernels (the GPU path) and their launch configurations; used only by medkernels.ops.

On CPU tensors the kernels run only in Triton's interpreter (``TRITON_INTERPRET=1``, set before
import), and only when ``backend="triton"`` is forced: that is how CI tests them without a GPU.

Every launcher picks its launch configuration with a pure function of the shapes and dtypes (each module's
``launch_config``) that returns a :class:`LaunchConfig`, and each module's ``configs()`` lists every
configuration that function can return on a GPU. ``scripts/gpu_compile_check.py`` compiles exactly that list
for sm_90 and sm_80 without a GPU (issue 12); tests/test_launch_configs.py checks that the launches made
across many shapes are all in it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import inspect
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

AVAILABLE = importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_force_gpu_configs = False


def gpu_configs() -> bool:
    """Whether launches take the GPU launch configuration (block sizes, chunk lengths). Always on a GPU; in
    the interpreter only inside :func:`force_gpu_configs`: it runs every program slowly, so by default it
    uses small tiles, and tests run each kernel once with the GPU's tiles there (issue 11)."""
    return _force_gpu_configs or not interpreting()


@contextlib.contextmanager
def force_gpu_configs():
    """Within the block, interpreted launches use the GPU launch configuration (see :func:`gpu_configs`)."""
    global _force_gpu_configs
    before, _force_gpu_configs = _force_gpu_configs, True
    try:
        yield
    finally:
        _force_gpu_configs = before


def interpreter_or_gpu(x, forced: bool = False) -> str | None:
    """Why the Triton backend cannot run on tensors like ``x`` (None when it can)."""
    if not AVAILABLE:
        return "triton is not installed"
    if x.device.type == "cuda":
        return None
    if x.device.type == "cpu" and interpreting():
        return None if forced else "CPU tensors run the Triton interpreter only when backend='triton' is forced"
    return f"inputs are on {x.device.type}, not cuda"


# ---------------------------------------------------------------------------------------------
# Launch configurations.

#: Modules with Triton kernels, each with ``configs()`` (every GPU launch configuration).
MODULES = (
    "causal_conv1d",
    "dct",
    "dilated_attention",
    "multi_order_scan",
    "neighborhood_attention",
    "point_cloud",
    "rswaf_kan",
    "selective_scan",
)

_TL_TYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
    torch.int8: "i8",
    torch.int32: "i32",
    torch.int64: "i64",
}

#: The floating storage dtypes a kernel that converts on load sees on a GPU (float64 runs elsewhere).
HALF_AND_FLOAT = (torch.float32, torch.bfloat16, torch.float16)


def tl_type(dtype: torch.dtype) -> str:
    """Triton's name of a tensor element type (``torch.bfloat16`` -> ``"bf16"``)."""
    return _TL_TYPES[dtype]


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1); as ``triton.next_power_of_2``, without triton."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """One compiled variant of a Triton kernel: everything a launch fixes at compile time.

    Attributes:
        module: the kernel's module, e.g. ``"medkernels.triton.selective_scan"``.
        kernel: the kernel's name in that module, e.g. ``"_fwd_kernel"``.
        signature: every run-time argument in order as ``(name, Triton type)``: ``"*bf16"`` for a pointer,
            ``"i32"``, ``"fp32"``, ``"u1"`` (a bool flag, which Triton never specializes on).
        constexprs: the compile-time arguments (block sizes, variants) as sorted ``(name, value)`` pairs.
        num_warps: warps per program.
        num_stages: software-pipelining depth of loops that feed ``tl.dot``.
        enable_fp_fusion: whether a * b + c may become one fused multiply-add.
    """

    module: str
    kernel: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, Any], ...]
    num_warps: int
    num_stages: int
    enable_fp_fusion: bool

    def options(self) -> dict[str, Any]:
        """The compile options (``num_warps``, ``num_stages``, ``enable_fp_fusion``)."""
        return {"num_warps": self.num_warps, "num_stages": self.num_stages, "enable_fp_fusion": self.enable_fp_fusion}

    def launch_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the launch: the constexprs and the options."""
        return {**dict(self.constexprs), **self.options()}

    def label(self) -> str:
        """A short readable name: the constexprs, the non-float32 pointers' types, warps and stages."""
        parts = [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in self.constexprs]
        ptrs = sorted({t[1:] for _, t in self.signature if t.startswith("*") and t not in ("*fp32",)})
        if ptrs:
            parts.append("+".join(ptrs))
        parts.append(f"w{self.num_warps}s{self.num_stages}" + ("" if self.enable_fp_fusion else " nofma"))
        return " ".join(parts)


@functools.lru_cache(maxsize=None)
def kernel_params(kernel) -> tuple[tuple[str, bool], ...]:
    """(name, is_constexpr) of each parameter of a ``@triton.jit`` kernel (compiled or interpreted)."""
    fn = getattr(kernel, "fn", kernel)
    return tuple((p.name, "constexpr" in str(p.annotation)) for p in inspect.signature(fn).parameters.values())


def make_config(
    kernel,
    *,
    pointers: Mapping[str, torch.dtype],
    constexprs: Mapping[str, Any],
    floats: Iterable[str] = (),
    flags: Iterable[str] = (),
    num_warps: int = 4,
    num_stages: int = 3,
    enable_fp_fusion: bool = True,
) -> LaunchConfig:
    """The :class:`LaunchConfig` of ``kernel``: every parameter must be a constexpr (given in ``constexprs``),
    a pointer (``pointers`` maps it to its element dtype), a float (``floats``), a bool flag (``flags``) or
    else a 32-bit integer.

    Raises:
        ValueError: a name that is not a parameter, a constexpr without a value, or a value for a
            parameter that is not a constexpr (the kernel and its launcher disagree).
    """
    params = kernel_params(kernel)
    floats, flags = set(floats), set(flags)
    names = {n for n, _ in params}
    unknown = (set(pointers) | set(constexprs) | floats | flags) - names
    if unknown:
        raise ValueError(f"{kernel_name(kernel)}: no parameters {sorted(unknown)}")
    want = {n for n, c in params if c}
    if set(constexprs) != want:
        raise ValueError(f"{kernel_name(kernel)}: constexprs {sorted(constexprs)} != the kernel's {sorted(want)}")
    sig = []
    for name, is_const in params:
        if is_const:
            continue
        if name in pointers:
            sig.append((name, "*" + tl_type(pointers[name])))
        elif name in floats:
            sig.append((name, "fp32"))
        elif name in flags:
            sig.append((name, "u1"))
        else:
            sig.append((name, "i32"))
    fn = getattr(kernel, "fn", kernel)
    return LaunchConfig(
        module=fn.__module__,
        kernel=fn.__name__,
        signature=tuple(sig),
        constexprs=tuple(sorted(constexprs.items())),
        num_warps=num_warps,
        num_stages=num_stages,
        enable_fp_fusion=enable_fp_fusion,
    )


def kernel_name(kernel) -> str:
    fn = getattr(kernel, "fn", kernel)
    return f"{fn.__module__}.{fn.__name__}"
