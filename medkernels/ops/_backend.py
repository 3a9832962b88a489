"""One backend choice for every op (after NATTEN's ``choose_backend``).

Each op names, per backend, a function ``reason(*args, forced=False)`` that returns ``None`` when that
backend can run the given inputs and otherwise the reason it cannot (``forced`` tells it the user
asked for that backend by name). ``choose_backend`` walks them in the order
cuda > triton > cpu > reference and takes the first that can run, logging at DEBUG level
(logger ``"medkernels"``) why each earlier one was skipped. A backend forced by the ``backend``
argument, or by the ``MEDKERNELS_BACKEND`` environment variable, must be able to run: otherwise
:class:`BackendUnavailableError` names the reason.
"""

from __future__ import annotations

import logging
import os
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
    for name in BACKENDS:
        reason = reasons[name](*args)
        if reason is None:
            return name
        if not torch.compiler.is_compiling() and log.isEnabledFor(logging.DEBUG):
            log.debug("%s: skipping backend %r: %s", op, name, reason)
    raise AssertionError("unreachable: the reference backend always runs")  # pragma: no cover


def can_run(op: str, reasons: Mapping[str, Reason], backend: str, *args: Any, raise_error: bool = False) -> bool:
    """Whether ``backend`` can run ``op`` on ``args``; with ``raise_error``, raise the reason instead."""
    reason = reasons[backend](*args, forced=True)
    if reason is not None and raise_error:
        raise BackendUnavailableError(f"{op}: backend {backend!r} cannot run these inputs: {reason}")
    return reason is None
