"""Whole-model and scan-pattern cases of the state-space and DCT architectures (the ``models`` group):
PointMamba2 (``pointmamba2_cls`` / ``pointmamba2_seg``), VM-UNet (``vm_unet``) and its SS2D block, SegMamba
(``segmamba``) and its tri-orientated Mamba, and DCT-HistoTransformer (``dct_histoformer``).

Each model's training step (forward, loss, backward, AdamW, one timed call: rows named ``fwd``) runs on the
kernels against the same model on the pure-PyTorch reference ops, at sizes where the reference fits in memory and
a call takes seconds: the reference PointMamba2 at batch 8 and 2048 points needs more than the 24 GB of these
machines (its reference scans keep every step's state of 8 x 1024 neighbourhoods), so its case takes one cloud
of 512 points (FPS levels 256/128/64/32/16). The SS2D and tri-orientated blocks (forward and forward+backward) also
run against the official way, peer ``official``: the papers' permuted copies around medkernels' own
``selective_scan_fn`` (:func:`medkernels.testing.ss2d_official`,
:func:`medkernels.testing.tri_oriented_mamba_official`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .base import Case, Peer, Target


def _model_inputs(name: str, kwargs: dict, make_batch: Callable[[torch.Generator], tuple], train: bool):
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        from medkernels.models import create_model

        torch.manual_seed(0)
        model = create_model(name, **kwargs).to(device, dtype)
        inputs, target = make_batch(torch.Generator().manual_seed(1))
        x = {"model": model, "inputs": [t.to(device, dtype) for t in inputs], "target": target.to(device)}
        if train:
            x["opt"] = torch.optim.AdamW(model.parameters(), lr=1e-4)
        return x

    return make


def _train_step(backend: str, x: dict, loss: Callable) -> torch.Tensor:
    model = x["model"]
    model.backend = backend
    model.train()
    with torch.enable_grad():  # the runner times single calls under no_grad
        value = loss(model(*x["inputs"]), x["target"])
        x["opt"].zero_grad(set_to_none=True)
        value.backward()
        x["opt"].step()
    return value.detach()


def _infer(backend: str, x: dict) -> torch.Tensor:
    x["model"].backend = backend
    x["model"].eval()
    with torch.no_grad():
        return x["model"](*x["inputs"])


def _ce(out, target):
    return F.cross_entropy(out.flatten(0, -2) if out.dim() == 3 else out, target.flatten())


def _seg_ce(out, target):  # (B, C, *spatial) logits
    return F.cross_entropy(out, target)


def _bce(out, target):  # vm_unet at 1 class returns a sigmoid
    return F.binary_cross_entropy(out, target.to(out.dtype))


_MODELS = {
    # name: (label input, factory kwargs, batch maker (generator -> (inputs, target)), loss)
    "pointmamba2_cls": (
        "B=1 512 points (FPS 256/128/64/32/16)",
        {"num_points": (256, 128, 64, 32, 16)},
        lambda g: ((torch.randn(1, 512, 3, generator=g),), torch.randint(0, 46, (1,), generator=g)),
        _ce,
    ),
    "pointmamba2_seg": (
        "B=1 512 points (FPS 256/128/64/32/16)",
        {"num_points": (256, 128, 64, 32, 16)},
        lambda g: ((torch.randn(1, 512, 3, generator=g),), torch.randint(0, 46, (1, 512), generator=g)),
        _ce,
    ),
    "vm_unet": (
        "B=1 3x256x256, 1 class",
        {"num_classes": 1},
        lambda g: ((torch.randn(1, 3, 256, 256, generator=g),), torch.randint(0, 2, (1, 1, 256, 256), generator=g)),
        _bce,
    ),
    "segmamba": (
        "B=1 4x32x32x32, 4 classes",
        {"in_chans": 4, "out_chans": 4},
        lambda g: ((torch.randn(1, 4, 32, 32, 32, generator=g),), torch.randint(0, 4, (1, 32, 32, 32), generator=g)),
        _seg_ce,
    ),
    "dct_histoformer": (
        "B=8 3x224x224, 2 classes",
        {"num_classes": 2},
        lambda g: ((torch.randn(8, 3, 224, 224, generator=g),), torch.randint(0, 2, (8,), generator=g)),
        _ce,
    ),
}


def model_train_case(name: str, profiles, targets=()) -> Case:
    """One training step of a registered model (see :data:`_MODELS` for its input) on the kernels and on the
    reference ops."""
    what, kwargs, make_batch, loss = _MODELS[name]
    return Case(
        op="models",
        label=f"{name} train step {what} (fwd + loss + bwd + AdamW, one call)",
        params={"model": name, "input": what, "step": "train"},
        profiles=profiles,
        make_inputs=_model_inputs(name, kwargs, make_batch, train=True),
        call=lambda backend, x: _train_step(backend, x, loss),
        differentiable=(),
        targets=targets,
    )


def model_infer_case(name: str, profiles) -> Case:
    """Inference (eval mode, no_grad) on a batch with a registered model."""
    what, kwargs, make_batch, _ = _MODELS[name]
    return Case(
        op="models",
        label=f"{name} inference {what} (eval, no_grad)",
        params={"model": name, "input": what, "step": "inference"},
        profiles=profiles,
        make_inputs=_model_inputs(name, kwargs, make_batch, train=False),
        call=_infer,
        differentiable=(),
    )


POINTMAMBA2_TRAIN_TARGETS = (Target("train step >= 5x the model on the reference ops", "cpu", "fwd", "speedup", 5.0),)


# --- the scan-pattern blocks against the official permuted copies ---------------------------------------------


def _block_inputs(kind: str, batch: int, size: tuple, dim: int, d_state: int, nslices: int = 0):
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        from medkernels.nn import SS2D, TriOrientedMamba

        torch.manual_seed(0)
        if kind == "ss2d":
            module = SS2D(dim, d_state=d_state, device=device, dtype=dtype)
            x = torch.randn(batch, *size, dim, device=device, dtype=dtype)
        else:
            module = TriOrientedMamba(dim, d_state=d_state, nslices=nslices, device=device, dtype=dtype)
            x = torch.randn(batch, size[0] * size[1] * size[2], dim, device=device, dtype=dtype)
        return {"x": x, "module": module}

    return make


def _block_call(backend: str, x: dict) -> torch.Tensor:
    x["module"].backend = backend
    return x["module"](x["x"])


def _block_official(kind: str):
    def call(x: dict) -> torch.Tensor:
        from medkernels import testing

        fn = testing.ss2d_official if kind == "ss2d" else testing.tri_oriented_mamba_official
        return fn(x["module"], x["x"], None)

    return call


def scan_block_case(
    kind: str, batch: int, size: tuple, dim: int, d_state: int, profiles, targets=(), nslices: int = 0, reference=True
) -> Case:
    """``nn.SS2D`` (kind "ss2d", a ``(B, H, W, C)`` map) or ``nn.TriOrientedMamba`` (kind "tri", ``D x H x W``
    tokens), forward and forward+backward (input and parameter gradients)."""
    name = "SS2D" if kind == "ss2d" else f"TriOrientedMamba nslices={nslices}"
    how = (
        "VM-UNet's forward_corev0: 4 permuted copies, one selective_scan_fn on the stack"
        if kind == "ss2d"
        else "SegMamba's v3 Mamba: 3 permuted copies, conv + selective_scan_fn each"
    )
    return Case(
        op="models",
        label=f"{name} block B={batch} {'x'.join(map(str, size))} C={dim} d_state={d_state}",
        params={"block": kind, "batch": batch, "size": size, "dim": dim, "d_state": d_state},
        profiles=profiles,
        make_inputs=_block_inputs(kind, batch, size, dim, d_state, nslices),
        call=_block_call,
        differentiable=("x",),
        parameters=lambda x: list(x["module"].parameters()),
        reference_backends=("reference",) if reference else (),
        peers={"official": Peer(_block_official(kind), how=how + " (medkernels' scan)")},
        targets=targets,
    )


SS2D_TARGETS = (
    Target("forward+backward >= 1.5x the official permuted copies", "cpu", "fwd+bwd", "speedup", 1.5, "peer:official"),
    Target("peak memory <= 1/2 of the official permuted copies", "cpu", "fwd+bwd", "memory", 0.5, "peer:official"),
)
