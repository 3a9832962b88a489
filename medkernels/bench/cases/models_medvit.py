"""Whole-model cases (the ``models`` group: ``medkernels-bench --ops models``): MedViTV2 training steps and
inference on the kernels, against the same model on the pure-PyTorch reference ops and against the official
code's computation.

The official MedViTV2 code needs natten 0.17, which does not install with current torch; its computation is
``official_layout=True`` here (plain neighborhood attention, the official NCHW reshapes), run on the
reference backend (a pure-PyTorch gather NA in natten's place): the peer ``official``.

A case's one timed call is a whole training step or a whole inference batch, so its rows carry the pass name
``fwd`` (the runner's single-call pass); the label says what the call is. Throughput is ``batch / median``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Case, Peer, Target


def _make(variant: str, batch: int, size: int, num_classes: int, train: bool):
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        from medkernels.models import create_model

        torch.manual_seed(0)
        model = create_model(f"medvitv2_{variant}", num_classes=num_classes, device=device, dtype=dtype)
        official = create_model(
            f"medvitv2_{variant}", num_classes=num_classes, official_layout=True, device=device, dtype=dtype
        )
        official.load_state_dict(model.state_dict())
        g = torch.Generator().manual_seed(1)
        x = {
            "images": torch.randn(batch, 3, size, size, generator=g)
            .to(device, dtype)
            .contiguous(memory_format=torch.channels_last),
            "labels": torch.randint(0, num_classes, (batch,), generator=g).to(device),
            "model": model,
            "official": official,
        }
        if train:
            x["opt"] = torch.optim.AdamW(model.parameters(), lr=1e-4)
            x["official_opt"] = torch.optim.AdamW(official.parameters(), lr=1e-4)
        return x

    return make


def _train_step(model, opt, x: dict, backend: str) -> torch.Tensor:
    model.backend = backend
    model.train()
    with torch.enable_grad():  # the runner times single calls under no_grad
        loss = F.cross_entropy(model(x["images"]), x["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.detach()


def _infer(model, x: dict, backend: str) -> torch.Tensor:
    model.backend = backend
    model.eval()
    with torch.no_grad():
        return model(x["images"])


def medvit_train_case(
    variant: str, batch: int, size: int, profiles, targets=(), num_classes: int = 1000, dtypes=(torch.float32,)
) -> Case:
    """One training step of ``medvitv2_<variant>`` (paper layout): forward, cross-entropy, backward, AdamW."""
    return Case(
        op="models",
        label=f"medvitv2_{variant} train step B={batch} {size}x{size} (fwd + cross-entropy + bwd + AdamW, one call)",
        params={"model": f"medvitv2_{variant}", "batch": batch, "size": size, "step": "train"},
        profiles=profiles,
        make_inputs=_make(variant, batch, size, num_classes, train=True),
        call=lambda backend, x: _train_step(x["model"], x["opt"], x, backend),
        differentiable=(),
        dtypes=dtypes,
        peers={
            "official": Peer(lambda x: _train_step(x["official"], x["official_opt"], x, "reference")),
        },
        targets=targets,
    )


def medvit_infer_case(
    variant: str, batch: int, size: int, profiles, targets=(), num_classes: int = 1000, dtypes=(torch.float32,)
) -> Case:
    """Inference on a batch with ``medvitv2_<variant>`` (paper layout, eval mode, no_grad)."""
    return Case(
        op="models",
        label=f"medvitv2_{variant} inference B={batch} {size}x{size} (eval, no_grad)",
        params={"model": f"medvitv2_{variant}", "batch": batch, "size": size, "step": "inference"},
        profiles=profiles,
        make_inputs=_make(variant, batch, size, num_classes, train=False),
        call=lambda backend, x: _infer(x["model"], x, backend),
        differentiable=(),
        dtypes=dtypes,
        peers={"official": Peer(lambda x: _infer(x["official"], x, "reference"))},
        targets=targets,
    )


MEDVIT_TRAIN_TARGETS = (
    Target("train step >= 2x the model on the reference ops", "cpu", "fwd", "speedup", 2.0),
    Target("train step peak memory <= 1/2 of the model on the reference ops", "cpu", "fwd", "memory", 0.5),
)
