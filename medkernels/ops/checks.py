"""Public argument checks: shared by several ops, and by the modules and models that validate their
configuration the way the ops will (each raises ValueError/TypeError naming the argument)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["has_values", "softmax_scale", "group_size3", "na_dims", "na_causal"]


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
        return head_dim**-0.5
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1 or scale.is_complex():
            raise ValueError(
                f"{fn}: scale must be a real number or a one-element tensor, got a tensor of shape "
                f"{tuple(scale.shape)} ({scale.dtype})"
            )
        return float(scale)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"{fn}: scale must be a float (or None for head_dim ** -0.5), got {type(scale).__name__}")
    return float(scale)


def group_size3(fn: str, group_size) -> tuple[int, int, int]:
    """D-Former's group size: an int or 3 ints ``(gD, gH, gW)``, each >= 1.

    Raises:
        ValueError: anything else, naming ``group_size``.
    """
    if isinstance(group_size, int) and not isinstance(group_size, bool):
        group_size = (group_size,) * 3
    if (
        isinstance(group_size, (tuple, list))
        and len(group_size) == 3
        and all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in group_size)
    ):
        return tuple(group_size)
    raise ValueError(f"{fn}: group_size must be an int or a tuple of 3 ints, each >= 1, got {group_size!r}")


def na_dims(name: str, value, na_dim: int, minimum: int, what: str) -> tuple[int, ...]:
    """A neighborhood-attention size argument (kernel_size, stride, dilation): an int or ``na_dim`` ints,
    each >= ``minimum``; natten's rule and message.

    Raises:
        ValueError: anything else (``what`` says the rule, e.g. "all >= 2").
    """
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and value >= minimum:
        return (value,) * na_dim
    if (
        isinstance(value, Sequence)
        and len(value) == na_dim
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= minimum for x in value)
    ):
        return tuple(value)
    raise ValueError(
        f"Invalid value for `{name}`; expected an integer or tuple of {na_dim} integers, {what}, "
        f"got {type(value)=}, {value=}."
    )


def na_causal(value, na_dim: int) -> tuple[bool, ...]:
    """``is_causal``: a bool or ``na_dim`` bools (natten's rule and message).

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, bool):
        return (value,) * na_dim
    if isinstance(value, Sequence) and len(value) == na_dim and all(isinstance(c, bool) for c in value):
        return tuple(value)
    raise ValueError(
        f"Invalid value for `is_causal`; expected a boolean or tuple of {na_dim} booleans, "
        f"got {type(value)=}, {value=}."
    )
