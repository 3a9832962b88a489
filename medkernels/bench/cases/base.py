"""What a benchmark case is: :class:`Case`, the :class:`Peer` it is measured against and the
:class:`Target` ratios it states; the profiles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

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
    against: str = "reference"  # "reference", a backend, "peer:<name>", or "peer": the fastest comparable peer

    def met(self, value: float) -> bool:
        return value <= self.bound if self.metric == "memory" else value >= self.bound


@dataclass(frozen=True)
class Peer:
    """Another library's (or plain PyTorch's) way to compute the case, measured in the same run."""

    call: Callable[[dict], object]
    unavailable: Callable[[torch.device], "str | None"] = lambda device: None
    forward_only: bool = False  # not differentiable (e.g. a numpy library): timed in the forward pass only
    how: str = ""  # how it is called, printed under the case ("bucket_fps_kdline_sampling(h=7), per cloud")
    package: str | None = None  # the distribution whose version is printed beside ``how``
    torch_memory: bool = True  # False: its buffers are not torch's (numpy), so memory is compared by process RSS
    comparable: bool = True  # False: not a replacement a user could call for the same result (a partial
    # measurement such as a query without its index build, or a different computation such as dense attention):
    # printed, but never the "best peer" that the vs-peer column and against="peer" targets divide by

    def describe(self) -> str:
        """``how``, prefixed with the package and its installed version when known."""
        version = None
        if self.package:
            from importlib.metadata import PackageNotFoundError
            from importlib.metadata import version as _version

            try:
                version = _version(self.package)
            except PackageNotFoundError:
                version = None
        prefix = f"{self.package} {version}" if version else (self.package or "")
        return f"{prefix}: {self.how}" if prefix and self.how else (prefix or self.how)


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


@dataclass(frozen=True)
class Sweep:
    """One axis of an op's scaling sweep for ``medkernels-bench --report``: the op's existing case (its backends,
    reference and peers) rebuilt at each value of the axis, the other sizes fixed.

    ``build(value, quick)`` returns the case at ``value`` (``quick``: the small fixed sizes of the quick profile);
    ``values`` maps a profile to the axis values it runs (profiles not listed run ``values["default"]``).
    """

    op: str
    name: str  # the axis in file names: "seqlen", "resolution", "kernel", "points", "batch"
    axis: str  # the axis as the plots and the report print it ("sequence length L")
    values: dict[str, tuple]
    build: Callable[[object, bool], Case]
    loglog: bool = True  # False: a linear x axis (a few kernel sizes), still a log time axis

    @property
    def key(self) -> str:
        """``<op>-<name>``: the sweep's id (file names, ``--match``)."""
        return f"{self.op}-{self.name}"

    def points(self, profile: str) -> tuple:
        """The axis values ``profile`` runs."""
        return self.values.get(profile, self.values["default"])
