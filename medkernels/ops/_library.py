"""Loads the compiled extension and records what it provides.

``medkernels._C`` registers the ``torch.ops.medkernels.*`` operators (C++/CUDA kernels). If it
cannot be loaded (a source checkout that was never built, or a torch upgraded after the build),
medkernels still imports, with a warning that says why the compiled kernels are missing and how to
rebuild; an op on CPU tensors then raises (see _backend._fell_back) instead of quietly running the slow
reference, which stays available with backend='reference' (and Triton, where present, on GPUs).
"""

from __future__ import annotations

import importlib.util
import warnings

import torch  # noqa: F401  (load torch's libraries before the extension that links them)

try:
    from .. import _C  # type: ignore[attr-defined]

    LOAD_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _C = None
    LOAD_ERROR = str(exc)
    warnings.warn(
        "medkernels: the compiled kernels (medkernels._C) could not be loaded: "
        f"{exc}. Every op on CPU tensors raises until it is rebuilt against the installed torch "
        "(`pip install --no-build-isolation .`, torch installed first); backend='reference' runs the slow "
        "pure-PyTorch oracles explicitly.",
        RuntimeWarning,
        stacklevel=2,
    )

HAS_C: bool = _C is not None
WITH_CUDA: bool = bool(HAS_C and _C.with_cuda)
HAS_TRITON: bool = importlib.util.find_spec("triton") is not None


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``torch.ops.medkernels.<op>`` has a kernel for ``dispatch_key`` ("CPU", "CUDA")."""
    if not HAS_C:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"medkernels::{op}", dispatch_key)


def cpu_reason(op: str):
    """The "cpu" backend's reason function (see ``choose_backend``) for an op whose CPU kernel is
    ``torch.ops.medkernels.<op>``: None when the first input is on the CPU (or the meta device: the
    registered op's fake implementation then gives a shape-only result) and the kernel is loaded."""
    loaded = has_kernel(op, "CPU")

    def reason(x, *rest, forced: bool = False, **kw) -> str | None:
        if x.device.type not in ("cpu", "meta"):
            return f"inputs are on {x.device.type}, not cpu"
        if not loaded:
            return f"the compiled kernels are not loaded ({LOAD_ERROR})"
        return None

    return reason


def no_double_backward(public: str, *backward_ops: str) -> None:
    """Makes differentiating ``public``'s gradient an error instead of a silent zero.

    The fused backward kernels (``torch.ops.medkernels.<backward_op>``) are not differentiable; without an
    autograd formula, torch would treat their outputs as constants and a second derivative (a gradient
    penalty, a Hessian-vector product) would come out as zeros with only a generic warning. This
    registers, on each backward op, a formula that raises a clear error when autograd reaches it.
    """

    def backward(ctx, *grads):
        raise NotImplementedError(
            f"{public}: double backward (differentiating its gradient, e.g. for a gradient penalty) is not "
            "supported by its fused kernels; call it with backend='reference' where second derivatives are "
            "needed (the pure-PyTorch reference is differentiable twice)")

    for op in backward_ops:
        torch.library.register_autograd(f"medkernels::{op}", backward)


def cpu_isas() -> list[str]:
    """CPU instruction sets with compiled kernels that this CPU runs, widest first."""
    return list(_C.cpu_isas()) if HAS_C else []


def cpu_isa() -> str | None:
    """The CPU instruction set the compiled kernels use now (None without the extension)."""
    return _C.cpu_isa() if HAS_C else None


def set_cpu_isa(name: str) -> None:
    """Select the CPU kernel bodies ("avx2", "base"); the default is the widest this CPU runs.

    Also settable with the environment variable ``MEDKERNELS_CPU_ISA`` before import.

    Raises:
        ValueError: unknown name, or an instruction set this CPU or build lacks.
    """
    if not HAS_C:
        raise ValueError(f"medkernels: no compiled kernels to configure ({LOAD_ERROR})")
    _C.set_cpu_isa(name)
