"""Run networks written against natten, mamba_ssm and causal_conv1d unchanged, on medkernels' kernels.

Activation, three ways (see ``docs/compat.md``):

1. ``medkernels.compat.install(...)`` before the client's imports;
2. ``python -m medkernels.compat [--natten 0.17|0.21] [--prefer real|medkernels] script.py args...``;
3. the environment variable ``MEDKERNELS_COMPAT`` (``natten``, ``natten=0.17``, ``mamba``, ``all``, ...), read
   at interpreter start-up by the ``medkernels_compat.pth`` hook installed with the package (it does nothing
   while the variable is unset).

Served names: ``natten`` (API generations 0.14-0.15, 0.17, 0.21; "auto", the default, serves them all,
each call read as the newest API it fits), ``mamba_ssm`` (Mamba-1), ``causal_conv1d``, and the compiled
extensions ``selective_scan_cuda`` / ``causal_conv1d_cuda`` (which let the REAL mamba_ssm and causal_conv1d
packages, installed without their CUDA builds, run on medkernels). A real, installed package that imports
is never shadowed silently: ``prefer="real"`` (default) lets it win, ``prefer="medkernels"`` shadows it,
and either way a :class:`CompatWarning` says which serves the name and why.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._finder import (
    ENV_PREFER,
    ENV_VAR,
    NATTEN_GENERATIONS,
    PACKAGES,
    CompatFinder,
    CompatWarning,
    Config,
    Decision,
    ShimDistribution,
    installed,
)
from ._finder import install as _install
from ._finder import uninstall as _uninstall

__all__ = [
    "install",
    "uninstall",
    "installed",
    "status",
    "CompatFinder",
    "CompatWarning",
    "Config",
    "Decision",
    "ShimDistribution",
    "ENV_VAR",
    "ENV_PREFER",
    "PACKAGES",
    "NATTEN_GENERATIONS",
]


def install(packages: str | Iterable[str] = (), *, natten: str | None = None, prefer: str = "real") -> CompatFinder:
    """Serves natten / mamba_ssm / causal_conv1d from medkernels for the imports that follow.

    Call it before the client imports them (a module already in ``sys.modules`` is not replaced).

    Args:
        packages: some of ``"natten"``, ``"mamba_ssm"``, ``"causal_conv1d"``, ``"mamba"`` (the last two),
            ``"all"``; empty (the default) means all.
        natten: the natten API generation to impersonate: None/"auto" (all generations at once, each call
            read as the newest API it fits), "0.14", "0.15", "0.17", "0.21", or a full version ("0.17.3").
        prefer: "real" (an installed package that imports and works wins) or "medkernels" (medkernels
            serves the name even then). Either way a :class:`CompatWarning` names the winner when a real
            package is installed.

    Returns:
        The active :class:`CompatFinder` (``finder.decision(name)`` says who served ``name`` and why).

    Raises:
        ValueError / TypeError: an unknown package, generation or ``prefer`` value (naming the argument).
    """
    return _install(Config.make(packages, natten=natten, prefer=prefer))


def uninstall(purge: bool = True) -> None:
    """Stops serving; with ``purge`` (default) also drops the modules medkernels served from ``sys.modules``.

    Args:
        purge: remove the served modules too (objects the client already holds keep working).
    """
    _uninstall(purge)


def status() -> dict[str, str]:
    """Who serves each name decided so far: ``{name: "medkernels: <why>" | "real: <why>"}`` (empty if inactive)."""
    finder = installed()
    if finder is None:
        return {}
    return {name: f"{d.served_by}: {d.reason}" for name, d in finder._state.decisions.items()}
