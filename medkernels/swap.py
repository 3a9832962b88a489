"""Swap natten / mamba_ssm layers of a built network for medkernels modules, weights kept.

``medkernels.swap(model)`` walks the module tree and replaces

- neighborhood attention modules in natten's layouts (``NeighborhoodAttention{1,2,3}D`` of natten 0.14-0.21,
  real or vendored copies with natten's attribute and parameter names: ``qkv``, ``proj``, optional ``rpb``;
  MedViTV2's attention is natten 0.17's module with ``rpb``) by :class:`medkernels.nn.NeighborhoodAttention2D`
  and siblings, and
- ``mamba_ssm`` ``Mamba`` blocks (Mamba-1) by :class:`medkernels.nn.Mamba`,

loading the original parameters with ``strict=True`` and keeping train/eval mode, device and dtype, so
that the outputs are equal before and after (to float32 rounding: the same math on other kernels).
What is not swapped is listed in the report with the reason.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from medkernels import nn as mknn

__all__ = ["swap", "SwapReport"]

_NA_NAME = re.compile(r"^NeighborhoodAttention(?:([123])D)?$")


@dataclass
class SwapReport:
    """What :func:`swap` did.

    Attributes:
        swapped: ``(qualified name, original class, new class)`` per replaced module ("" is the root).
        not_swapped: ``(qualified name, class, reason)`` per candidate left in place.
    """

    swapped: list[tuple[str, str, str]] = field(default_factory=list)
    not_swapped: list[tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"medkernels.swap: {len(self.swapped)} swapped, {len(self.not_swapped)} not swapped"]
        lines += [f"  swapped     {name or '<root>'}: {old} -> {new}" for name, old, new in self.swapped]
        lines += [f"  not swapped {name or '<root>'}: {cls}: {why}" for name, cls, why in self.not_swapped]
        return "\n".join(lines)


def _qualname(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _from_medkernels(module: nn.Module) -> bool:
    return isinstance(
        module, (mknn.NeighborhoodAttention1D, mknn.NeighborhoodAttention2D, mknn.NeighborhoodAttention3D, mknn.Mamba)
    )


def _natten_kind(module: nn.Module) -> int | None:
    """The NA dimension of a natten-layout attention module, None if it is not one."""
    m = _NA_NAME.match(type(module).__name__)
    if m is None:
        return None
    if m.group(1):
        return int(m.group(1))
    ks = getattr(module, "kernel_size", None)
    return len(ks) if isinstance(ks, (tuple, list)) else 2  # natten 0.14's NeighborhoodAttention is 2-D


def _is_mamba(module: nn.Module) -> str | None:
    """ "mamba" for a Mamba-1 block in mamba_ssm's layout, "other" for another mamba_ssm mixer, else None."""
    cls = type(module)
    from_mamba_ssm = cls.__module__.startswith("mamba_ssm")
    if cls.__name__ == "Mamba" and all(
        hasattr(module, a) for a in ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj", "A_log", "D")
    ):
        return "mamba"
    if from_mamba_ssm and cls.__name__ in ("Mamba2", "Mamba3", "Mamba2Simple"):
        return "other"
    return None


def _tuple(value, n: int) -> tuple:
    if value is None:
        return (1,) * n
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _convert_na(m: nn.Module, n: int) -> tuple[nn.Module | None, str]:
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear):
        return None, "no qkv / proj nn.Linear (not natten's layout)"
    heads = getattr(m, "num_heads", None)
    dim = qkv.in_features
    if not isinstance(heads, int) or heads < 1 or dim % heads or qkv.out_features != 3 * dim:
        return None, f"qkv {qkv.in_features}->{qkv.out_features} and num_heads={heads!r} are not natten's layout"
    if proj.bias is None or proj.in_features != dim or proj.out_features != dim:
        return None, "proj is not a biased dim -> dim Linear (natten's layout)"
    kernel = getattr(m, "kernel_size", None)
    if kernel is None:
        return None, "no kernel_size attribute"
    rpb = getattr(m, "rpb", None)
    if rpb is not None and not isinstance(rpb, torch.Tensor):
        return None, "rpb is not a tensor"
    attn_drop = getattr(m, "attn_drop_rate", None)
    if attn_drop is None:
        attn_drop = m.attn_drop.p if isinstance(getattr(m, "attn_drop", None), nn.Dropout) else 0.0
    proj_drop = m.proj_drop.p if isinstance(getattr(m, "proj_drop", None), nn.Dropout) else 0.0
    causal = getattr(m, "is_causal", False)
    try:
        new = getattr(mknn, f"NeighborhoodAttention{n}D")(
            dim,
            heads,
            _tuple(kernel, n),
            _tuple(getattr(m, "stride", 1), n),
            _tuple(getattr(m, "dilation", 1), n),
            _tuple(False if causal is None else causal, n),
            qkv.bias is not None,
            float(getattr(m, "scale", (dim // heads) ** -0.5)),
            proj_drop,
            rel_pos_bias=rpb is not None,
            attn_drop=attn_drop,
            device=qkv.weight.device,
            dtype=qkv.weight.dtype,
        )
    except (TypeError, ValueError) as exc:
        return None, f"its configuration does not map to medkernels' module: {exc}"
    state = {f"qkv.{k}": v for k, v in qkv.state_dict().items()}
    state.update({f"proj.{k}": v for k, v in proj.state_dict().items()})
    if rpb is not None:
        if tuple(rpb.shape) != tuple(new.rpb.shape):
            return None, f"rpb {tuple(rpb.shape)} is not [heads, 2K-1, ...] {tuple(new.rpb.shape)}"
        state["rpb"] = rpb
    new.load_state_dict(state, strict=True)
    if not isinstance(getattr(m, "kernel_size", None), (tuple, list)) and hasattr(m, "window_size"):
        return new, "natten 0.14-0.15 layout: inputs smaller than kernel_size * dilation are no longer zero-padded"
    return new, ""


def _convert_mamba(m: nn.Module) -> tuple[nn.Module | None, str]:
    try:
        new = mknn.Mamba(
            m.d_model,
            d_state=m.d_state,
            d_conv=m.d_conv,
            expand=m.expand,
            dt_rank=m.dt_rank,
            conv_bias=m.conv1d.bias is not None,
            bias=m.in_proj.bias is not None,
            use_fast_path=getattr(m, "use_fast_path", True),
            layer_idx=getattr(m, "layer_idx", None),
            device=m.in_proj.weight.device,
            dtype=m.in_proj.weight.dtype,
        )
        new.load_state_dict(m.state_dict(), strict=True)
    except (AttributeError, TypeError, ValueError, RuntimeError) as exc:
        return None, f"not mamba_ssm's Mamba layout: {type(exc).__name__}: {exc}"
    return new, ""


def swap(
    model: nn.Module, *, natten: bool = True, mamba: bool = True, inplace: bool = False
) -> tuple[nn.Module, SwapReport]:
    """Replaces natten / mamba_ssm modules in ``model`` by medkernels modules with the same weights.

    Args:
        model: any ``nn.Module`` (the root itself may be swapped).
        natten: swap neighborhood attention modules in natten's layouts (0.14-0.21, incl. MedViTV2's).
        mamba: swap mamba_ssm ``Mamba`` (Mamba-1) blocks.
        inplace: modify ``model`` (default: a deep copy is swapped and ``model`` is left untouched).

    Returns:
        ``(swapped model, report)``; see :class:`SwapReport` (``print(report)`` lists both sides).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"swap: model must be a torch.nn.Module, got {type(model).__name__}")
    for name, flag in (("natten", natten), ("mamba", mamba), ("inplace", inplace)):
        if not isinstance(flag, bool):
            raise TypeError(f"swap: {name} must be a bool, got {type(flag).__name__}")
    root = model if inplace else copy.deepcopy(model)
    report = SwapReport()
    replaced: list[str] = []
    for name, module in list(root.named_modules()):
        if any(name.startswith(prefix + ".") for prefix in replaced):
            continue
        n = _natten_kind(module)
        kind = "natten" if n is not None else _is_mamba(module)
        if kind is None:
            continue
        cls = _qualname(module)
        if _from_medkernels(module):
            report.not_swapped.append((name, cls, "already a medkernels module"))
            continue
        if kind == "other":
            report.not_swapped.append((name, cls, "medkernels has no module for this mamba_ssm mixer (Mamba-1 only)"))
            continue
        if not (natten if kind == "natten" else mamba):
            report.not_swapped.append((name, cls, f"{'natten' if kind == 'natten' else 'mamba'}=False"))
            continue
        new, note = _convert_na(module, n) if kind == "natten" else _convert_mamba(module)
        if new is None:
            report.not_swapped.append((name, cls, note))
            continue
        new.train(module.training)
        if name == "":
            root = new
        else:
            parent_name, _, attr = name.rpartition(".")
            setattr(root.get_submodule(parent_name), attr, new)
        replaced.append(name)
        report.swapped.append((name, cls, _qualname(new) + (f" ({note})" if note else "")))
    return root, report
