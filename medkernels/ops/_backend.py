"""One backend choice for every op (after NATTEN's ``choose_backend``).

Each op names, per backend, a function ``reason(*args, forced=False)`` that returns ``None`` when that
backend can run the given inputs and otherwise the reason it cannot (``forced`` tells it the user
asked for that backend by name). ``choose_backend`` walks them in the order
cuda > triton > cpu > reference and takes the first that can run, logging at DEBUG level
(logger ``"medkernels"``) why each earlier one was skipped; landing on the pure-PyTorch reference is
never quiet (a warning once per op, device and reasons, or an error on CPU tensors when the compiled
extension did not load). A backend forced by the ``backend``
argument, or by the ``MEDKERNELS_BACKEND`` environment variable, must be able to run: otherwise
:class:`BackendUnavailableError` names the reason.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
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
            "kernel to run; rebuild with `pip install --no-build-isolation .` against the installed torch, or ask "
            "for the slow pure-PyTorch reference explicitly with backend='reference' (or MEDKERNELS_BACKEND)")
    key = (op, device, tuple(skipped))
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"{op}: no faster backend can run these {device} inputs, so the pure-PyTorch reference runs "
                      f"(pass backend='reference' to choose it explicitly); skipped: {'; '.join(skipped)}",
                      RuntimeWarning, stacklevel=3)


