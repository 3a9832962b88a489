"""The one backend policy for every op (after NATTEN's ``choose_backend``).

Each op declares its :class:`Backends`: which compiled (CPU, CUDA) and Triton operators implement it and
the limits particular to it; the rules every op shares (devices, the extension being loaded, the Triton
kernels' float32 compute, atomics in deterministic mode) live here, once. ``Backends.why_not`` gives,
per backend, ``None`` when it can run the given inputs and otherwise the reason it cannot (``forced``:
the user asked for that backend by name). ``choose_backend`` walks the backends in the order
cuda > triton > cpu > reference and takes the first that can run, logging at DEBUG level
(logger ``"medkernels"``) why each earlier one was skipped; landing on the pure-PyTorch reference is
never quiet (a warning once per op, device and reasons, or an error on CPU tensors when the compiled
extension did not load). A backend forced by the ``backend``
argument, or by the ``MEDKERNELS_BACKEND`` environment variable, must be able to run: otherwise
:class:`BackendUnavailableError` names the reason.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

BACKENDS: tuple[str, ...] = ("cuda", "triton", "cpu", "reference")
ENV_VAR = "MEDKERNELS_BACKEND"

log = logging.getLogger("medkernels")

Reason = Callable[..., "str | None"]


class BackendUnavailableError(ValueError):
    """A forced backend cannot run these inputs (the message says why)."""


def _requested(backend: str | None) -> tuple[str, str]:
    if backend is not None:
        return backend, "backend="
    env = os.environ.get(ENV_VAR)
    if env:
        return env, f"{ENV_VAR}="
    return "auto", ""


@dataclass(frozen=True)
class Backends:
    """What implements one op on each backend, and what each cannot run.

    Args:
        op: the public op's name (messages; the key of :func:`can_run`).
        cpu: the compiled operator whose CPU kernel runs it (``torch.ops.medkernels.<cpu>``), or None.
        cuda: the compiled operator with its CUDA kernel, or None (the Triton backend is the GPU path).
        triton: the Triton operator, or None.
        triton_float64: whether the Triton kernels take float64 (they compute in float32 otherwise, so
            float64 goes to the CPU or the reference rather than losing precision silently).
        triton_atomics: whether (a bool, or a function of the inputs) the Triton kernels sum with atomics:
            refused while ``torch.are_deterministic_algorithms_enabled()``.
        limits: per backend, a function of the inputs returning a reason it cannot run them (or None),
            checked after the shared rules (e.g. the CUDA kernel's largest dstate).

    The first tensor among the inputs decides the device.
    """

    op: str
    cpu: str | None = None
    cuda: str | None = None
    triton: str | None = None
    triton_float64: bool = False
    triton_atomics: bool | Callable[..., bool] = False
    limits: Mapping[str, Reason] = field(default_factory=dict)

    def __post_init__(self):
        from . import _library

        # Whether the compiled kernels exist, asked once here: the dispatcher query cannot be traced by
        # torch.compile, and the answer does not change after import.
        object.__setattr__(self, "_cpu_loaded", self.cpu is not None and _library.has_kernel(self.cpu, "CPU"))
        object.__setattr__(self, "_cuda_loaded", self.cuda is not None and _library.has_kernel(self.cuda, "CUDA"))
        _REGISTRY.setdefault(self.op, self)

    def why_not(self, backend: str, *args: Any, forced: bool = False) -> str | None:
        """None when ``backend`` can run the op on ``args``, else the reason it cannot."""
        from . import _library

        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        device = x.device.type if x is not None else "cpu"
        why: str | None = None
        if backend == "reference":
            return None
        if backend == "cpu":
            if self.cpu is None:
                why = f"{self.op} has no CPU kernel"
            elif device not in ("cpu", "meta"):  # meta: the compiled op's fake gives a shape-only result
                why = f"inputs are on {device}, not cpu"
            elif not self._cpu_loaded:
                why = f"the compiled kernels are not loaded ({_library.LOAD_ERROR})"
        elif backend == "cuda":
            if device != "cuda":
                why = f"inputs are on {device}, not cuda"
            elif self.cuda is None:
                why = f"{self.op} has no CUDA kernel (the triton backend is its GPU path)"
            elif not self._cuda_loaded:
                why = "medkernels was built without CUDA kernels (rebuild with MEDKERNELS_CUDA=ON)"
            elif x is not None and x.dtype == torch.float64:
                why = "the CUDA kernels compute in float32; float64 runs on the cpu or reference backend"
        elif backend == "triton":
            from medkernels.triton import interpreter_or_gpu

            if self.triton is None:
                why = f"{self.op} has no Triton kernel"
            else:
                why = interpreter_or_gpu(x, forced) if x is not None else "no tensor input"
            if why is None and not self.triton_float64 and x.dtype == torch.float64:
                why = "the Triton kernels compute in float32; float64 runs on the cpu or reference backend"
            if (
                why is None
                and torch.are_deterministic_algorithms_enabled()
                and (self.triton_atomics(*args) if callable(self.triton_atomics) else self.triton_atomics)
            ):
                why = "deterministic algorithms are on and the Triton kernels sum with atomics"
        else:
            raise ValueError(f"{self.op}: {backend!r} is not a backend; expected one of {BACKENDS}")
        if why is None and backend in self.limits:
            why = self.limits[backend](*args)
        return why

    def reasons(self) -> dict[str, Reason]:
        """The per-backend reason functions, as :func:`choose_backend` takes them."""
        return {name: functools.partial(self.why_not, name) for name in BACKENDS}

    def choose(self, backend: str | None, *args: Any, op: str | None = None) -> str:
        """The backend that runs the op on ``args`` (see :func:`choose_backend`); ``op`` names it in messages
        when one declaration serves several public functions (na1d/na2d/na3d)."""
        return choose_backend(op or self.op, self.reasons(), backend, *args)


_REGISTRY: dict[str, Backends] = {}


def why_not(op: str, backend: str, *inputs: Any) -> str | None:
    """Why ``backend`` cannot run the public op ``op`` on ``inputs`` (tensors like the op's), or None.

    Example: ``why_not("selective_scan_fn", "cuda", u, A)``. The inputs are the op's leading arguments
    (at least its first tensor); op-specific limits may look at more of them.

    Raises:
        KeyError: an unknown op name (see :func:`ops_with_backends`).
    """
    if op not in _REGISTRY:
        raise KeyError(f"{op!r} is not an op with backends; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[op].why_not(backend, *inputs, forced=True)


def can_run(op: str, backend: str, *inputs: Any) -> bool:
    """Whether ``backend`` can run the public op ``op`` on ``inputs`` (see :func:`why_not`)."""
    return why_not(op, backend, *inputs) is None


def ops_with_backends() -> list[str]:
    """The public ops that :func:`can_run` and :func:`why_not` know."""
    return sorted(_REGISTRY)


def choose_backend(op: str, reasons: Mapping[str, Reason], backend: str | None, *args: Any) -> str:
    """Picks the backend that runs ``op`` on ``args``.

    Args:
        op: the public op name, for messages.
        reasons: for each name in ``BACKENDS``, a function of ``args`` (and ``forced``) returning
            ``None`` when that backend can run them, else the reason it cannot.
        backend: ``None`` or ``"auto"`` to choose, or one of ``BACKENDS`` to force.
        *args: the op's inputs, passed to the reason functions.

    Returns:
        The backend name.

    Raises:
        ValueError: ``backend`` (or ``MEDKERNELS_BACKEND``) is not a known backend name.
        BackendUnavailableError: the forced backend cannot run these inputs.
    """
    requested, source = _requested(backend)
    if not isinstance(requested, str) or requested.lower() not in (*BACKENDS, "auto"):
        raise ValueError(f"{op}: {source}{requested!r} is not a backend; expected one of {('auto', *BACKENDS)}")
    requested = requested.lower()
    if requested != "auto":
        reason = reasons[requested](*args, forced=True)
        if reason is not None:
            raise BackendUnavailableError(f"{op}: {source}{requested!r} cannot run these inputs: {reason}")
        return requested
    skipped: list[str] = []
    for name in BACKENDS:
        reason = reasons[name](*args)
        if reason is None:
            if name == "reference" and not torch.compiler.is_compiling():
                _fell_back(op, args, skipped)
            return name
        skipped.append(f"{name}: {reason}")
        if not torch.compiler.is_compiling() and log.isEnabledFor(logging.DEBUG):
            log.debug("%s: skipping backend %r: %s", op, name, reason)
    raise AssertionError("unreachable: the reference backend always runs")  # pragma: no cover


_WARNED: set[tuple[str, str, tuple[str, ...]]] = set()


def _fell_back(op: str, args: tuple, skipped: list[str]) -> None:
    """The automatic choice landed on the pure-PyTorch reference: never quietly. Without the compiled
    extension a CPU tensor raises (the reference is a slow oracle, not a fallback); otherwise the first
    fall-back of each (op, device, reasons) warns with the reasons."""
    from . import _library

    device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "unknown")
    if device == "meta":
        return
    if device == "cpu" and not _library.HAS_C:
        raise BackendUnavailableError(
            f"{op}: the compiled medkernels kernels did not load ({_library.LOAD_ERROR}), so there is no CPU "
            "kernel to run; install a medkernels build for the installed torch (`pip install .`), or ask "
            "for the slow pure-PyTorch reference explicitly with backend='reference' (or MEDKERNELS_BACKEND)"
        )
    key = (op, device, tuple(skipped))
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(
            f"{op}: no faster backend can run these {device} inputs, so the pure-PyTorch reference runs "
            f"(pass backend='reference' to choose it explicitly); skipped: {'; '.join(skipped)}",
            RuntimeWarning,
            stacklevel=3,
        )
