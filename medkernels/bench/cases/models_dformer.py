"""Whole-model cases (the ``models`` group: ``medkernels-bench --ops models``): D-Former (Wu et al., "D-Former: a
U-shaped Dilated Transformer for 3D medical image segmentation", Neural Computing and Applications 2023) training
steps and inference at the paper's 1x1x64x128x128 crop, against

* the same model on the pure-PyTorch reference ops (the ``reference`` backend);
* the official computation, peer ``official``: :func:`medkernels.testing.dformer_segnetwork_official`, the
  official ``model.py`` forward restated step by step in plain PyTorch (its pad-reshape-permute groups, dense
  masked softmax, layout flips and all three heads), on a copy of the same weights with its own optimizer;
* MONAI's SwinUNETR (feature_size=48, the usual 3D transformer U-Net baseline), peer ``swinunetr``, skipped
  when monai is not installed.

A case's one timed call is a whole training step (forward, cross-entropy, backward, AdamW) or a whole inference
batch, so its rows carry the runner's single-call pass name ``fwd``; the label says what the call is.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import Case, Peer, Target


def _swinunetr_unavailable(device: torch.device) -> str | None:
    missing = [m for m in ("monai", "einops") if importlib.util.find_spec(m) is None]  # SwinUNETR needs einops
    return f"{' and '.join(missing)} not installed (pip install monai einops)" if missing else None


def _make(batch: int, size: Sequence[int], num_classes: int, train: bool, model_kwargs: dict, swin_features: int):
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        from medkernels.models import create_model

        torch.manual_seed(0)
        model = create_model("dformer", num_classes=num_classes, device=device, dtype=dtype, **model_kwargs)
        official = create_model("dformer", num_classes=num_classes, device=device, dtype=dtype, **model_kwargs)
        official.load_state_dict(model.state_dict())  # a copy of the weights: the official step trains its own
        g = torch.Generator().manual_seed(1)
        x = {
            "image": torch.randn(batch, model.in_channels, *size, generator=g).to(device, dtype),
            "label": torch.randint(0, num_classes, (batch, *size), generator=g).to(device),
            "model": model,
            "official": official,
            "official_params": dict(official.named_parameters()),
            "official_config": {k: getattr(model, k) for k in ("depths", "num_heads", "patch_size", "group_size")},
        }
        x["official_config"]["intervals"] = model.intervals
        if _swinunetr_unavailable(device) is None:
            from monai.networks.nets import SwinUNETR

            x["swinunetr"] = SwinUNETR(model.in_channels, num_classes, feature_size=swin_features).to(device, dtype)
        if train:
            x["opt"] = torch.optim.AdamW(model.parameters(), lr=1e-4)
            x["official_opt"] = torch.optim.AdamW(official.parameters(), lr=1e-4)
            if "swinunetr" in x:
                x["swinunetr_opt"] = torch.optim.AdamW(x["swinunetr"].parameters(), lr=1e-4)
        return x

    return make


def _ours(backend: str):
    def forward(x: dict) -> torch.Tensor:
        model = x["model"]
        model.backend = backend
        return model(x["image"])

    return forward


def _official(x: dict) -> torch.Tensor:
    from medkernels.testing import dformer_segnetwork_official

    return dformer_segnetwork_official(x["official_params"], x["image"], **x["official_config"])


def _swinunetr(x: dict) -> torch.Tensor:
    return x["swinunetr"](x["image"])


def _train_step(forward, net: torch.nn.Module, opt: torch.optim.Optimizer, x: dict) -> torch.Tensor:
    net.train()
    with torch.enable_grad():  # the runner times single calls under no_grad
        loss = F.cross_entropy(forward(x), x["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.detach()


def _infer(forward, net: torch.nn.Module, x: dict) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return forward(x)


def dformer_train_case(
    batch: int,
    size: Sequence[int],
    profiles: tuple[str, ...],
    targets: tuple[Target, ...] = (),
    num_classes: int = 14,
    dtypes: tuple[torch.dtype, ...] = (torch.float32,),
    model_kwargs: dict | None = None,
    swin_features: int = 48,
) -> Case:
    """One training step of ``dformer`` (forward, cross-entropy, backward, AdamW) on ``[batch, 1, *size]``.

    Args:
        batch: volumes per step.
        size: ``(D, H, W)`` of each volume (the official computation needs D by 16, H and W by 32; SwinUNETR
            every axis by 32).
        profiles: the profiles that run the case.
        targets: ratios the report checks (e.g. :data:`DFORMER_TRAIN_TARGETS`).
        num_classes: the models' output channels.
        dtypes: parameter and input dtypes timed.
        model_kwargs: more :class:`medkernels.models.dformer.DFormer` arguments (a smaller model for tests).
        swin_features: SwinUNETR's ``feature_size`` (48 as in the issue; a multiple of 12).

    Returns:
        The :class:`Case`: backends ``reference`` and the automatic ones, peers ``official`` and ``swinunetr``.
    """
    kw = dict(model_kwargs or {})
    spatial = "x".join(map(str, size))
    return Case(
        op="models",
        label=f"dformer train step B={batch} {spatial} (fwd + cross-entropy + bwd + AdamW, one call)",
        params={"model": "dformer", "batch": batch, "size": list(size), "step": "train", **kw},
        profiles=profiles,
        make_inputs=_make(batch, size, num_classes, True, kw, swin_features),
        call=lambda backend, x: _train_step(_ours(backend), x["model"], x["opt"], x),
        differentiable=(),
        dtypes=dtypes,
        peers={
            "official": Peer(lambda x: _train_step(_official, x["official"], x["official_opt"], x)),
            "swinunetr": Peer(
                lambda x: _train_step(_swinunetr, x["swinunetr"], x["swinunetr_opt"], x), _swinunetr_unavailable
            ),
        },
        targets=targets,
    )


def dformer_infer_case(
    batch: int,
    size: Sequence[int],
    profiles: tuple[str, ...],
    targets: tuple[Target, ...] = (),
    num_classes: int = 14,
    dtypes: tuple[torch.dtype, ...] = (torch.float32,),
    model_kwargs: dict | None = None,
    swin_features: int = 48,
) -> Case:
    """Inference (eval, no_grad) of ``dformer`` on ``[batch, 1, *size]``; arguments as :func:`dformer_train_case`."""
    kw = dict(model_kwargs or {})
    spatial = "x".join(map(str, size))
    return Case(
        op="models",
        label=f"dformer inference B={batch} {spatial} (eval, no_grad)",
        params={"model": "dformer", "batch": batch, "size": list(size), "step": "inference", **kw},
        profiles=profiles,
        make_inputs=_make(batch, size, num_classes, False, kw, swin_features),
        call=lambda backend, x: _infer(_ours(backend), x["model"], x),
        differentiable=(),
        dtypes=dtypes,
        peers={
            "official": Peer(lambda x: _infer(_official, x["official"], x)),
            "swinunetr": Peer(lambda x: _infer(_swinunetr, x["swinunetr"], x), _swinunetr_unavailable),
        },
        targets=targets,
    )


# Issue 14's targets; its anchors on 2 CPU cores, float32: official 1.88 s forward, 7.31 s forward+backward;
# SwinUNETR 11.67 s / 36.59 s.
DFORMER_TRAIN_TARGETS = (
    Target("train step >= 1.5x the official computation", "cpu", "fwd", "speedup", 1.5, against="peer:official"),
    Target("train step >= 6x MONAI SwinUNETR", "cpu", "fwd", "speedup", 6.0, against="peer:swinunetr"),
    Target(
        "train step peak memory <= 0.7x the official computation", "cpu", "fwd", "memory", 0.7, against="peer:official"
    ),
)
