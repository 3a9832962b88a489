"""A timm-style model registry: ``@register_model`` on a factory, ``create_model(name, **kwargs)``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import torch

_MODELS: dict[str, Callable[..., torch.nn.Module]] = {}


def register_model(fn: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
    """Registers a model factory under its function name.

    Raises:
        ValueError: a model of that name is already registered.
    """
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"register_model: a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern``."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _MODELS


def create_model(name: str, **kwargs) -> torch.nn.Module:
    """Builds the registered model ``name`` with the factory's keyword arguments.

    Raises:
        ValueError: no model of that name (the message lists the close matches).
    """
    if name not in _MODELS:
        close = [n for n in _MODELS if name.split("_")[0] in n][:5]
        hint = f"; did you mean one of {close}?" if close else ""
        raise ValueError(f"create_model: unknown model {name!r}{hint} (see medkernels.models.list_models())")
    return _MODELS[name](**kwargs)
