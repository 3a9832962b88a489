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
