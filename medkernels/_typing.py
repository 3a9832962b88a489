"""Type aliases for the public signatures of medkernels.ops and medkernels.nn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch

Tensor = torch.Tensor
OptTensor = Union[torch.Tensor, None]
IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]
Number = Union[float, int]
Backend = Union[str, None]  # None/"auto", "cuda", "triton", "cpu" or "reference"
Device = Union[torch.device, str, None]
DType = Union[torch.dtype, None]
Norm = Union[str, None]  # "ortho", "backward"/None or "forward"

__all__ = ["Tensor", "OptTensor", "IntOrTuple", "BoolOrTuple", "Number", "Backend", "Device", "DType", "Norm"]
