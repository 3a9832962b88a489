"""A timm-style model registry: ``@register_model`` on a factory, ``create_model(name, **kwargs)``,
``list_models(pattern)``, and :func:`load_checkpoint` for the official checkpoints' layouts."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping

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


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models matching a shell-style ``pattern`` (all when None)."""
    return sorted(n for n in _MODELS if pattern is None or fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _MODELS


def create_model(name: str, pretrained: bool = False, **kwargs) -> torch.nn.Module:
    """Builds the registered model ``name`` with the factory's keyword arguments (timm's convention).

    Args:
        name: a name from :func:`list_models`.
        pretrained: must be False: medkernels downloads nothing (there is no weight hub to reach); load a
            checkpoint file with :func:`load_checkpoint` instead.
        **kwargs: the factory's arguments (e.g. ``num_classes``).

    Raises:
        ValueError: no model of that name (the message lists the close matches), or ``pretrained=True``.
    """
    if name not in _MODELS:
        close = [n for n in _MODELS if name.split("_")[0] in n][:5]
        hint = f"; did you mean one of {close}?" if close else ""
        raise ValueError(f"create_model: unknown model {name!r}{hint} (see medkernels.models.list_models())")
    if pretrained:
        raise ValueError(
            f"create_model: pretrained=True is not available for {name!r}: medkernels downloads no "
            "weights; build the model, then load a checkpoint file with "
            "medkernels.models.load_checkpoint(model, path)"
        )
    return _MODELS[name](**kwargs)


def _read(path: str | os.PathLike, map_location) -> Mapping[str, torch.Tensor]:
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"load_checkpoint: {path} is a safetensors file; install safetensors (pip install safetensors)"
            ) from exc
        return load_file(path, device=str(map_location))
    obj = torch.load(path, map_location=map_location, weights_only=True)
    for key in ("state_dict", "model", "model_state_dict", "module"):  # the usual wrappings
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"load_checkpoint: {path} holds no state dict (a mapping of names to tensors, possibly "
            "under 'state_dict' or 'model')"
        )
    return obj


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without the prefixes DataParallel/DDP (``module.``) and torch.compile (``_orig_mod.``)
    add to every name."""
    out = {}
    for k, v in state_dict.items():
        prefix = next((p for p in ("module.", "_orig_mod.") if k.startswith(p)), None)
        while prefix is not None:
            k = k[len(prefix) :]
            prefix = next((p for p in ("module.", "_orig_mod.") if k.startswith(p)), None)
        out[k] = v
    return out


def load_checkpoint(
    model: torch.nn.Module, path: str | os.PathLike, *, strict: bool = True, map_location: str | torch.device = "cpu"
) -> list[str]:
    """Loads a checkpoint file into ``model`` and returns the notes of what was adapted.

    Reads ``.pth``/``.pt`` files with ``torch.load(weights_only=True)`` (a bare state dict, or one under
    ``"state_dict"``/``"model"``) and ``.safetensors`` files; strips ``module.``/``_orig_mod.`` prefixes;
    then, when the model defines ``checkpoint_filter(state_dict) -> (state_dict, notes)`` (timm's
    ``checkpoint_filter_fn``), lets it map an official checkpoint's layout onto its own (e.g. drop weights the
    official code builds but never uses, saying so in a note).

    Args:
        model: the model to load into.
        path: the checkpoint file.
        strict: as ``load_state_dict``: every name must match.
        map_location: where the tensors are read to before copying into the model.

    Returns:
        The notes (empty when nothing was adapted).

    Raises:
        ValueError: the file holds no state dict; RuntimeError (from ``load_state_dict``): names or shapes
            that do not match under ``strict``.
    """
    state = clean_state_dict(_read(path, map_location))
    notes: list[str] = []
    flt = getattr(model, "checkpoint_filter", None)
    if callable(flt):
        state, notes = flt(state)
    model.load_state_dict(state, strict=strict)
    return list(notes)
