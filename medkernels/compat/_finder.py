"""The import machinery of :mod:`medkernels.compat`: which module names it serves, and how.

Standard library only: the ``.pth`` start-up hook loads this file before torch or medkernels, so that
``MEDKERNELS_COMPAT=...`` costs nothing until a client imports a served name. The modules themselves
are built by the providers (``medkernels.compat._natten``, ``._mamba``, ``._causal_conv1d``),
imported only then.

Mechanism (importlib's documented extension points, no monkey-patching):

- :class:`CompatFinder`, a ``sys.meta_path`` finder placed first, answers ``find_spec`` for the
  served top-level names (``natten``, ``mamba_ssm``, ``selective_scan_cuda``, ``causal_conv1d``,
  ``causal_conv1d_cuda``) and their submodules, and ``find_distributions`` with a
  :class:`ShimDistribution` (importlib.metadata) for the packages it serves, so that availability
  checks reading distribution metadata (transformers' ``is_natten_available``) see them.
- A real, installed package is never shadowed silently. Per top-level name, the first import decides:
  not installed: medkernels serves it; installed and ``prefer="medkernels"``, or installed natten of
  another API generation than the one asked for: medkernels serves it, with a :class:`CompatWarning`;
  otherwise the real one is imported (``prefer="real"``, the default) and, if that import works, it
  serves the name from then on (a :class:`CompatWarning` says so); if it fails, its partial modules are
  removed and medkernels serves the name, with a warning giving the error.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import pathlib
import re
import sys
import threading
import types
import warnings
from dataclasses import dataclass, field

__all__ = [
    "CompatFinder",
    "CompatWarning",
    "Config",
    "ShimDistribution",
    "ENV_VAR",
    "ENV_PREFER",
    "PACKAGES",
    "NATTEN_GENERATIONS",
    "parse_env",
    "install",
    "uninstall",
    "installed",
]

ENV_VAR = "MEDKERNELS_COMPAT"
ENV_PREFER = "MEDKERNELS_COMPAT_PREFER"
PREFER = ("real", "medkernels")


class CompatWarning(UserWarning):
    """Which implementation serves a package name, when a real installed one is involved."""


class TableProvider:
    """The provider interface for modules served from a fixed table (mamba_ssm's and causal-conv1d's Python
    packages): ``modules`` maps each served name to ``(is_package, attribute names)``, the attributes taken from
    ``namespace`` (the providing module's globals) when the module is built; the ``root`` package also gets
    ``__version__`` and whatever ``finish(module)`` adds.

    A providing module exposes the interface as module attributes: ``has_module, is_package, create_module,
    build = TableProvider(...).interface()``.
    """

    def __init__(self, modules, namespace, label: str, root: str, version: str, finish=None) -> None:
        self.modules, self.namespace, self.label = modules, namespace, label
        self.root, self.version, self.finish = root, version, finish

    def has_module(self, fullname: str, config) -> bool:
        return fullname in self.modules

    def is_package(self, fullname: str, config) -> bool:
        return self.modules[fullname][0]

    def create_module(self, fullname: str, config):
        return None

    def build(self, module, fullname: str, config) -> None:
        names = self.modules[fullname][1]
        for name in names:
            setattr(module, name, self.namespace[name])
        module.__all__ = list(names)
        module.__doc__ = f"{self.label} {fullname}, served by medkernels.compat (medkernels.ops kernels)."
        if fullname == self.root:
            module.__version__ = self.version
            if self.finish is not None:
                self.finish(module)

    def interface(self):
        return self.has_module, self.is_package, self.create_module, self.build


@dataclass(frozen=True)
class Unit:
    """One top-level module name medkernels can serve.

    Args:
        name: the top-level module name (``natten``, ``selective_scan_cuda``, ...).
        package: the activation key it belongs to (``natten``, ``mamba_ssm``, ``causal_conv1d``).
        provider: the module (imported lazily) that builds it: ``build(module, fullname, config)``,
            ``has_module(fullname, config)``, ``is_package(fullname, config)``, ``version(config)``.
        distribution: the distribution name its metadata is published under, or None (an extension
            module has none of its own).
    """

    name: str
    package: str
    provider: str
    distribution: str | None


UNITS: dict[str, Unit] = {
    u.name: u
    for u in (
        Unit("natten", "natten", "medkernels.compat._natten", "natten"),
        Unit("mamba_ssm", "mamba_ssm", "medkernels.compat._mamba", "mamba_ssm"),
        Unit("selective_scan_cuda", "mamba_ssm", "medkernels.compat._extensions", None),
        Unit("causal_conv1d", "causal_conv1d", "medkernels.compat._causal_conv1d", "causal_conv1d"),
        Unit("causal_conv1d_cuda", "causal_conv1d", "medkernels.compat._extensions", None),
    )
}
PACKAGES: tuple[str, ...] = ("natten", "mamba_ssm", "causal_conv1d")
ALIASES = {"mamba": ("mamba_ssm", "causal_conv1d"), "all": PACKAGES}

# natten API generations: the version each reports, and which real versions belong to each.
NATTEN_GENERATIONS = {"0.14": "0.14.6", "0.15": "0.15.1", "0.17": "0.17.5", "0.21": "0.21.7"}
_NATTEN_ALIASES = {"0.16": "0.15", "0.18": "0.17", "0.19": "0.17", "0.20": "0.21"}


def natten_generation(version: str | None, name: str = "natten") -> str:
    """The natten API generation of ``version`` ("0.14", "0.15", "0.17", "0.21" or "auto").

    Args:
        version: None or "auto" (the newest API a call fits, see ``docs/compat.md``), a generation, or a
            full version such as "0.17.3".
        name: the argument's name, for the error message.

    Raises:
        ValueError: a version no generation covers.
    """
    if version is None or version == "auto":
        return "auto"
    m = re.fullmatch(r"\s*(?:==)?\s*0\.(\d+)(?:\.[0-9A-Za-z.+-]*)?\s*", str(version))
    if m:
        key = f"0.{int(m.group(1))}"
        key = _NATTEN_ALIASES.get(key, key)
        if key in NATTEN_GENERATIONS:
            return key
        if int(m.group(1)) > 21:
            return "0.21"
    raise ValueError(
        f"{name}={version!r}: expected 'auto' or a natten API generation "
        f"({', '.join(NATTEN_GENERATIONS)}; 0.14-0.15 share one, 0.20 clients use 0.21)"
    )


def _family(generation: str) -> str:
    """Generations that serve the same calls: 0.14 and 0.15 are one family."""
    return "0.14" if generation in ("0.14", "0.15") else generation


@dataclass(frozen=True)
class Config:
    """What :func:`install` was asked for.

    Args:
        packages: activation keys, a subset of :data:`PACKAGES`.
        natten: the natten API generation ("auto", "0.14", "0.15", "0.17", "0.21").
        prefer: "real" (an installed package that imports wins) or "medkernels" (medkernels always serves).
    """

    packages: tuple[str, ...] = PACKAGES
    natten: str = "auto"
    prefer: str = "real"

    @staticmethod
    def make(packages=(), natten=None, prefer="real") -> Config:
        """Validates the arguments of :func:`install` (ValueError/TypeError naming the argument)."""
        if isinstance(packages, str):
            packages = (packages,)
        chosen: list[str] = []
        for p in packages:
            if not isinstance(p, str):
                raise TypeError(f"packages: expected names (str), got {type(p).__name__}")
            key = p.strip().lower().replace("-", "_")
            names = ALIASES.get(key, (key,))
            for n in names:
                if n not in PACKAGES:
                    raise ValueError(
                        f"packages: {p!r} is not a package medkernels.compat serves; expected some of "
                        f"{PACKAGES} (or 'mamba' for mamba_ssm and causal_conv1d, 'all')"
                    )
                if n not in chosen:
                    chosen.append(n)
        if not chosen:
            chosen = list(PACKAGES)
        generation = natten_generation(natten, "natten")
        if natten is not None and generation != "auto" and "natten" not in chosen:
            raise ValueError(f"natten={natten!r} was given but 'natten' is not among the packages {tuple(chosen)}")
        if prefer not in PREFER:
            raise ValueError(f"prefer={prefer!r}: expected one of {PREFER}")
        return Config(tuple(chosen), generation, prefer)

    def units(self) -> dict[str, Unit]:
        return {n: u for n, u in UNITS.items() if u.package in self.packages}


def parse_env(value: str | None, prefer: str | None = None) -> Config | None:
    """The :class:`Config` that ``MEDKERNELS_COMPAT`` (and ``MEDKERNELS_COMPAT_PREFER``) ask for, or None.

    Syntax: a comma-separated list of ``natten``, ``natten=0.17`` (or ``natten==0.17``), ``mamba_ssm``,
    ``causal_conv1d``, ``mamba`` (both), ``all`` / ``1`` (everything); empty or ``0`` turns it off.

    Raises:
        ValueError: an entry that is not one of those, naming the variable.
    """
    if value is None or value.strip().lower() in ("", "0", "false", "no", "off"):
        return None
    packages: list[str] = []
    natten = None
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.lower() in ("1", "true", "yes", "on"):
            item = "all"
        name, sep, ver = item.partition("=")
        name = name.strip()
        if sep:
            if name.lower() != "natten":
                raise ValueError(f"{ENV_VAR}: only natten takes a version ('natten=0.17'), got {item!r}")
            natten = ver.lstrip("=").strip()
        packages.append(name)
    try:
        return Config.make(packages, natten=natten, prefer=(prefer or "real").strip().lower())
    except ValueError as exc:
        raise ValueError(f"{ENV_VAR}={value!r} ({ENV_PREFER}={prefer!r}): {exc}") from None


# ---------------------------------------------------------------------------------------------------
# Distribution metadata (importlib.metadata): what availability checks read.


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


class ShimDistribution(importlib.metadata.Distribution):
    """The distribution metadata of a package medkernels serves (name, version, top-level module).

    Args:
        name: the distribution name.
        version: the version it reports (the API generation impersonated).
        summary: a line saying that medkernels provides it.
    """

    def __init__(self, name: str, version: str, summary: str) -> None:
        self._name_ = name
        self._version_ = version
        self._summary = summary

    def read_text(self, filename: str) -> str | None:
        if filename in ("METADATA", "PKG-INFO"):
            return (
                f"Metadata-Version: 2.1\nName: {self._name_}\nVersion: {self._version_}\n"
                f"Summary: {self._summary}\nHome-page: https://github.com/medkernels\n"
            )
        if filename == "top_level.txt":
            return f"{self._name_}\n"
        if filename == "INSTALLER":
            return "medkernels.compat\n"
        return None

    def locate_file(self, path) -> pathlib.Path:
        return pathlib.Path(__file__).parent / str(path)

    def __repr__(self) -> str:
        return f"<ShimDistribution {self._name_} {self._version_} (medkernels.compat)>"


# ---------------------------------------------------------------------------------------------------
# The finder.


@dataclass
class Decision:
    """Who serves one top-level name: "medkernels", "real", or "pending" (the real one is being tried)."""

    served_by: str
    reason: str
    real_origin: str | None = None
    real_version: str | None = None


@dataclass
class _State:
    decisions: dict[str, Decision] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)


_local = threading.local()


class CompatFinder(importlib.abc.MetaPathFinder):
    """The ``sys.meta_path`` finder that serves the configured names (see the module docstring).

    Args:
        config: what to serve and the ``prefer`` policy.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.units = config.units()
        self._state = _State()

    # -- helpers ----------------------------------------------------------------------------------

    def _others(self):
        return [f for f in sys.meta_path if f is not self and not isinstance(f, CompatFinder)]

    def _find_real(self, name: str):
        """The spec another finder gives ``name`` (None: not installed, or only a namespace directory)."""
        if getattr(_local, "busy", False):
            return None
        _local.busy = True
        try:
            for finder in self._others():
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                try:
                    spec = find(name, None)
                except (ImportError, ValueError):
                    spec = None
                if spec is not None:
                    if spec.loader is None or spec.origin in (None, "namespace"):
                        return None  # a bare directory of that name (a checkout, a data folder), not a package
                    return spec
            return None
        finally:
            _local.busy = False

    def _real_version(self, unit: Unit) -> str | None:
        if unit.distribution is None:
            return None
        if getattr(_local, "busy", False):
            return None
        _local.busy = True
        try:
            for finder in self._others():
                find = getattr(finder, "find_distributions", None)
                if find is None:
                    continue
                for dist in find(importlib.metadata.DistributionFinder.Context(name=unit.distribution)):
                    try:
                        return dist.version
                    except Exception:  # noqa: BLE001 - a broken dist-info: no version
                        return None
            return None
        finally:
            _local.busy = False

    def _version(self, unit: Unit) -> str:
        if unit.package == "natten":
            return NATTEN_GENERATIONS["0.21" if self.config.natten == "auto" else self.config.natten]
        return {"mamba_ssm": "2.3.2.post1", "causal_conv1d": "1.7.0"}[unit.package]

    def _api(self, unit: Unit) -> str:
        if unit.package == "natten":
            gen = self.config.natten
            return "natten (the newest API each call fits)" if gen == "auto" else f"natten {gen} API"
        return unit.name

    def _warn(self, message: str) -> None:
        warnings.warn(f"medkernels.compat: {message}", CompatWarning, stacklevel=4)

    def decision(self, name: str) -> Decision | None:
        """Who serves the top-level ``name`` (None: not decided yet, or not a served name)."""
        return self._state.decisions.get(name)

    def _decide(self, unit: Unit) -> tuple[Decision, object]:
        """The decision for ``unit`` and, when the real one is to be tried, its spec."""
        with self._state.lock:
            made = self._state.decisions.get(unit.name)
            if made is not None and made.served_by != "pending":
                return made, None
            real = self._find_real(unit.name)
            if real is None:
                d = Decision("medkernels", f"{unit.name} is not installed")
            else:
                origin = real.origin
                version = self._real_version(unit)
                label = f"{unit.name} {version}" if version else unit.name
                if self.config.prefer == "medkernels":
                    d = Decision(
                        "medkernels",
                        f"prefer='medkernels': shadows the installed {label} ({origin})",
                        origin,
                        version,
                    )
                    self._warn(f"'{unit.name}' is served by medkernels ({self._api(unit)}), {d.reason}")
                elif (
                    unit.package == "natten"
                    and self.config.natten != "auto"
                    and version is not None
                    and _family(natten_generation(version)) != _family(self.config.natten)
                ):
                    d = Decision(
                        "medkernels",
                        f"the installed natten {version} ({origin}) does not provide the natten "
                        f"{self.config.natten} API asked for",
                        origin,
                        version,
                    )
                    self._warn(f"'{unit.name}' is served by medkernels: {d.reason}")
                else:
                    d = Decision("pending", f"trying the installed {label}", origin, version)
                    self._state.decisions[unit.name] = d
                    return d, real
            self._state.decisions[unit.name] = d
            return d, None

    def _shim_spec(self, unit: Unit, fullname: str):
        provider = importlib.import_module(unit.provider)
        if not provider.has_module(fullname, self.config):
            return None
        is_package = provider.is_package(fullname, self.config)
        spec = importlib.machinery.ModuleSpec(
            fullname, ShimLoader(self, unit), origin=f"medkernels.compat ({unit.provider})", is_package=is_package
        )
        if is_package:
            spec.submodule_search_locations = []
        return spec

    # -- importlib protocol -----------------------------------------------------------------------

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        unit = self.units.get(top)
        if unit is None or getattr(_local, "busy", False):
            return None
        if fullname != top:
            d = self._state.decisions.get(top)
            if d is not None and d.served_by == "medkernels":
                return self._shim_spec(unit, fullname)
            return None
        decision, real = self._decide(unit)
        if decision.served_by == "medkernels":
            return self._shim_spec(unit, fullname)
        if decision.served_by == "real" or real is None:
            return None
        spec = importlib.machinery.ModuleSpec(
            real.name,
            TryRealLoader(self, unit, real),
            origin=real.origin,
            loader_state=real.loader_state,
            is_package=real.submodule_search_locations is not None,
        )
        spec.submodule_search_locations = real.submodule_search_locations
        spec.has_location = real.has_location
        spec.cached = real.cached
        return spec

    def find_distributions(self, context=None):
        context = context or importlib.metadata.DistributionFinder.Context()
        if getattr(_local, "busy", False):
            return iter(())
        wanted = None if context.name is None else _normalize(context.name)
        found = []
        for unit in self.units.values():
            if unit.distribution is None or (wanted is not None and wanted != _normalize(unit.distribution)):
                continue
            if self._decide(unit)[0].served_by == "medkernels":
                found.append(
                    ShimDistribution(
                        unit.distribution,
                        self._version(unit),
                        f"{unit.distribution} served by medkernels.compat ({self._api(unit)})",
                    )
                )
        return iter(found)

    def invalidate_caches(self) -> None:
        pass


class ShimLoader(importlib.abc.Loader):
    """Builds a module medkernels serves, through its provider."""

    def __init__(self, finder: CompatFinder, unit: Unit) -> None:
        self.finder = finder
        self.unit = unit

    def create_module(self, spec):
        provider = importlib.import_module(self.unit.provider)
        return provider.create_module(spec.name, self.finder.config)

    def exec_module(self, module) -> None:
        provider = importlib.import_module(self.unit.provider)
        module.__medkernels_compat__ = True
        provider.build(module, module.__name__, self.finder.config)


class TryRealLoader(importlib.abc.Loader):
    """Imports the real package; if that fails, medkernels serves the name instead (with a warning)."""

    def __init__(self, finder: CompatFinder, unit: Unit, real_spec) -> None:
        self.finder = finder
        self.unit = unit
        self.real = real_spec.loader
        self.real_spec = real_spec
        self.error: BaseException | None = None

    def __getattr__(self, name):  # get_source, get_code, resource readers: the real loader's
        return getattr(self.real, name)

    def create_module(self, spec):
        create = getattr(self.real, "create_module", None)
        if create is None:
            return None
        try:
            return create(spec)
        except Exception as exc:  # noqa: BLE001 - e.g. an extension built for another torch
            self.error = exc
            return types.ModuleType(spec.name)

    def _fail(self, module, exc: BaseException) -> None:
        name = self.unit.name
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            if sys.modules[key] is not module:
                del sys.modules[key]
        d = self.finder._state.decisions[name]
        d.served_by = "medkernels"
        d.reason = (
            f"the installed {name}{' ' + d.real_version if d.real_version else ''} ({d.real_origin}) failed to "
            f"import: {type(exc).__name__}: {exc}"
        )
        self.finder._warn(f"'{name}' is served by medkernels ({self.finder._api(self.unit)}): {d.reason}")
        spec = self.finder._shim_spec(self.unit, name)
        shim = importlib.util.module_from_spec(spec)
        sys.modules[name] = shim
        try:
            spec.loader.exec_module(shim)
        except BaseException:
            sys.modules.pop(name, None)
            raise

    def exec_module(self, module) -> None:
        if self.error is not None:
            self._fail(module, self.error)
            return
        try:
            self.real.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure means the real package does not work here
            self._fail(module, exc)
            return
        d = self.finder._state.decisions[self.unit.name]
        d.served_by = "real"
        d.reason = (
            f"the installed {self.unit.name}{' ' + d.real_version if d.real_version else ''} ({d.real_origin}) "
            "imports and works, and prefer='real'"
        )
        self.finder._warn(
            f"'{self.unit.name}' is served by {d.reason}; pass prefer='medkernels' "
            f"({ENV_PREFER}=medkernels, --prefer medkernels) for medkernels' kernels instead"
        )


# ---------------------------------------------------------------------------------------------------
# Installing.


def installed() -> CompatFinder | None:
    """The active :class:`CompatFinder`, or None."""
    return next((f for f in sys.meta_path if isinstance(f, CompatFinder)), None)


def install(config: Config) -> CompatFinder:
    """Puts a :class:`CompatFinder` for ``config`` first on ``sys.meta_path`` (replacing an active one)."""
    uninstall(purge=False)
    finder = CompatFinder(config)
    sys.meta_path.insert(0, finder)
    importlib.invalidate_caches()
    return finder


def uninstall(purge: bool = True) -> None:
    """Removes the finder; with ``purge``, also the modules medkernels served from ``sys.modules``."""
    for finder in [f for f in sys.meta_path if isinstance(f, CompatFinder)]:
        sys.meta_path.remove(finder)
        if purge:
            for name, d in finder._state.decisions.items():
                if d.served_by != "medkernels":
                    continue
                for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                    if getattr(sys.modules[key], "__medkernels_compat__", False):
                        del sys.modules[key]


def install_from_env(environ=None) -> CompatFinder | None:
    """Installs what ``MEDKERNELS_COMPAT`` asks for (nothing when unset).

    Raises:
        ValueError: a malformed value (the message names the variable).
    """
    environ = os.environ if environ is None else environ
    config = parse_env(environ.get(ENV_VAR), environ.get(ENV_PREFER))
    return None if config is None else install(config)
