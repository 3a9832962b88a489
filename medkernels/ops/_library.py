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


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("+")[0].split(".")[:2] if x.isdigit())


def _unsupported_torch() -> str | None:
    """Why the installed torch cannot load this build of ``_C``, or None. The extension uses torch's stable ABI
    only, so it loads into every torch from the one it was built with up to the next major version; outside that
    range (or a CUDA build under a torch of another CUDA major) it is not loaded at all, so that no import can
    fail on an undefined symbol."""
    try:
        from .. import _build_info  # type: ignore[attr-defined]
    except ImportError:  # a source tree with a hand-copied _C: nothing recorded, nothing to check
        return None
    built, have = _version(_build_info.TORCH_BUILD_VERSION), _version(torch.__version__)
    supported = f"torch >= {_build_info.TORCH_BUILD_VERSION}, < {built[0] + 1}"
    if have < built or have[0] > built[0]:
        return (
            f"this build supports {supported} (LibTorch stable ABI), but torch {torch.__version__} is installed: "
            f"install a torch in that range, or rebuild medkernels against this one (`pip install .`)"
        )
    if _build_info.CUDA_VERSION:
        want, got = _build_info.CUDA_VERSION.split(".")[0], (torch.version.cuda or "").split(".")[0]
        if want != got:
            return (
                f"this is a CUDA {_build_info.CUDA_VERSION} build, but torch {torch.__version__} has "
                f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'no CUDA'}: install the CPU wheel or "
                f"rebuild medkernels against this torch (`pip install .`)"
            )
    return None


_C = None
LOAD_ERROR: str | None = _unsupported_torch()
if LOAD_ERROR is None:
    try:
        from .. import _C  # type: ignore[attr-defined,no-redef]
    except ImportError as exc:  # pragma: no cover - exercised only on broken installs
        LOAD_ERROR = f"{exc}. Rebuild it against the installed torch (`pip install .`)"
if LOAD_ERROR is not None:
    warnings.warn(
        f"medkernels: the compiled kernels (medkernels._C) are not loaded: {LOAD_ERROR}. Every op on CPU tensors "
        "raises until then; backend='reference' runs the slow pure-PyTorch oracles explicitly.",
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


def has_op(op: str) -> bool:
    """Whether ``torch.ops.medkernels.<op>`` is defined (a compiled op when the extension loaded, a Triton
    custom op when triton is installed)."""
    try:
        getattr(torch.ops.medkernels, op)
    except (AttributeError, RuntimeError):
        return False
    return True


def register_kernel(
    public: str,
    *pairs: tuple[str, str | None],
    fwd_fake,
    bwd_fake=None,
    setup_context=None,
    backward=None,
    twice_differentiable: bool = False,
) -> None:
    """Registers an op's operators with torch.library: one call per op, for every backend's pair.

    For each ``(forward op, backward op)`` pair that is defined (the compiled pair when the extension
    loaded, the Triton pair when triton is installed; others are skipped): ``fwd_fake`` (and ``bwd_fake``)
    as the fake implementations (torch.compile, meta tensors), and, with ``backward``, the forward's autograd
    formula ``backward(ctx, bwd_op, *grads)`` (``bwd_op``: the pair's backward operator, or None) with
    ``setup_context``. Unless ``twice_differentiable`` (a backward that is itself a differentiable op), a
    second derivative through the backward operator raises (:func:`no_double_backward`).

    Args:
        public: the public op's name, for messages.
        *pairs: ``(forward, backward)`` operator names under ``torch.ops.medkernels``; backward may be None
            (a backward written with differentiable torch ops) or the forward itself.
    """
    for fwd, bwd in pairs:
        if not has_op(fwd):
            continue
        torch.library.register_fake(f"medkernels::{fwd}")(fwd_fake)
        if bwd is not None and bwd != fwd:
            torch.library.register_fake(f"medkernels::{bwd}")(bwd_fake)
        if backward is not None:
            bwd_op = None if bwd is None else getattr(torch.ops.medkernels, bwd)
            torch.library.register_autograd(
                f"medkernels::{fwd}",
                lambda ctx, *grads, _op=bwd_op: backward(ctx, _op, *grads),
                setup_context=setup_context,
            )
        if bwd is not None and bwd != fwd and not twice_differentiable:
            no_double_backward(public, bwd)


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
            "needed (the pure-PyTorch reference is differentiable twice)"
        )

    for op in backward_ops:
        torch.library.register_autograd(f"medkernels::{op}", backward)


def cpu_isas() -> list[str]:
    """CPU instruction sets with compiled kernels that this CPU runs, widest first."""
    return list(_C.cpu_isas()) if HAS_C else []


def cpu_isa() -> str | None:
    """The CPU instruction set the compiled kernels use now (None without the extension)."""
    return _C.cpu_isa() if HAS_C else None


def set_cpu_isa(name: str) -> None:
    """Select the CPU kernel bodies ("avx512bf16", "avx512", "avx2", "base"); the default is the widest this CPU
    runs ("avx512bf16" differs from "avx512" only where bf16 dot products paid: the dilated attention's bf16 inputs).

    Also settable with the environment variable ``MEDKERNELS_CPU_ISA`` before import.

    Raises:
        ValueError: unknown name, or an instruction set this CPU or build lacks.
    """
    if not HAS_C:
        raise ValueError(f"medkernels: no compiled kernels to configure ({LOAD_ERROR})")
    _C.set_cpu_isa(name)
