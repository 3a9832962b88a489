"""Argument checks shared by several ops (and by the modules that call them)."""

from __future__ import annotations

import torch


def has_values(t: torch.Tensor) -> bool:
    """Whether checks may read ``t``'s values: not while torch.compile traces, not for meta tensors (which
    have shapes only; every op gives them a shape-only result through its fake implementation)."""
    return not torch.compiler.is_compiling() and t.device.type != "meta"


def softmax_scale(fn: str, scale, head_dim: int) -> float:
    """The attention logits' scale: ``head_dim ** -0.5`` for None, else a real number (a Python number, or
    a tensor holding one element).

    Raises:
        ValueError: head_dim 0, or a tensor scale with several elements.
        TypeError: a scale that is neither a number nor a tensor.
    """
    if head_dim < 1:
        raise ValueError(f"{fn}: head_dim (the last axis of query) must be >= 1, got {head_dim}")
    if scale is None:
        return head_dim ** -0.5
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1 or scale.is_complex():
            raise ValueError(f"{fn}: scale must be a real number or a one-element tensor, got a tensor of shape "
                             f"{tuple(scale.shape)} ({scale.dtype})")
        return float(scale)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"{fn}: scale must be a float (or None for head_dim ** -0.5), got {type(scale).__name__}")
    return float(scale)
