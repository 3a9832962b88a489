"""Train D-Former to segment grey and white matter in 3D patches of a real T1 MRI (the MNI152 template).

The volume ships inside ``nilearn`` (``pip install --no-deps nilearn`` and ``pip install nibabel``):
:class:`medkernels.data.BrainVolumePatches` cuts random patches from the front 75% of the brain for training and
tiles the back 25% (never seen) for validation; labels 0 background / CSF, 1 grey matter, 2 white matter. The
held-out metric is the mean Dice over grey and white matter, against the trivial baseline that predicts the most
frequent class everywhere.

    python examples/train_dformer_brain.py                         # 2 CPU cores: a few minutes
    torchrun --nproc_per_node 2 examples/train_dformer_brain.py    # DistributedDataParallel (gloo on CPU)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        examples/train_dformer_brain.py --config paper --patch 64,128,128 --fsdp

Outputs in ``--out`` (default ``runs/dformer_brain``), as every example (examples/_harness.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402  (the examples' shared loop, beside this file)

from medkernels.models import create_model  # noqa: E402

CONFIGS = {
    "small": dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)),  # learns in minutes on 2 cores
    "paper": dict(),  # embed_dim 96, depths (2, 2, 6, 2): 50.56M parameters
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="small")
    p.add_argument("--patch", default="32,32,32", help="D,H,W of the patches (D a multiple of 16, H, W of 32)")
    p.add_argument("--val-samples", type=int, default=None, help="validation tiles (default: all)")
    _harness.add_arguments(p, steps=150, batch_size=2, lr=1e-3, out="runs/dformer_brain")
    return p.parse_args(argv)


def dice(pred: torch.Tensor, label: torch.Tensor, classes) -> float:
    """Mean Dice over ``classes`` (1 where a class is absent from both)."""
    scores = []
    for c in classes:
        p, t = pred == c, label == c
        denom = p.sum().item() + t.sum().item()
        scores.append(1.0 if denom == 0 else 2 * (p & t).sum().item() / denom)
    return sum(scores) / len(scores)


def train(args: argparse.Namespace) -> tuple[dict, torch.nn.Module]:
    from medkernels.data import BrainVolumePatches

    patch = tuple(int(s) for s in args.patch.split(","))
    train_set = BrainVolumePatches("mni152", patch, "train", args.steps * args.batch_size, seed=args.seed)
    val_set = BrainVolumePatches("mni152", patch, "val", seed=args.seed)
    n_val = len(val_set) if args.val_samples is None else min(args.val_samples, len(val_set))
    val = [val_set[i] for i in range(n_val)]
    labels = torch.stack([v["label"] for v in val])
    majority = int(torch.bincount(labels.flatten(), minlength=3).argmax())
    torch.manual_seed(args.seed)
    model = create_model("dformer", num_classes=3, **CONFIGS[args.config])

    def evaluate(model, device):
        pred = torch.cat([model(v["image"][None].to(device)).argmax(1).cpu() for v in val])
        return {
            "dice": dice(pred, labels, (1, 2)),
            "accuracy": (pred == labels).float().mean().item(),
            "baseline_dice": dice(torch.full_like(labels, majority), labels, (1, 2)),
            "baseline_accuracy": (labels == majority).float().mean().item(),
        }

    def draw(model, device):
        v = val[len(val) // 2]
        pred = model(v["image"][None].to(device)).argmax(1)[0].cpu()
        mid = v["label"].shape[0] // 2

        def panels(fig, row, cols):
            for k, (title, img) in enumerate((("label", v["label"][mid]), ("prediction", pred[mid]))):
                ax = fig.add_subplot(row, cols, k + 2)
                ax.imshow(v["image"][0, mid].numpy(), cmap="gray")
                ax.imshow(img.numpy(), cmap="viridis", alpha=0.4, vmin=0, vmax=2)
                ax.set_title(f"{title} (middle slice)"), ax.set_axis_off()

        return panels

    pairs = _harness.Pairs(train_set, "image", "label")
    return _harness.run(args, model, pairs, F.cross_entropy, evaluate, "dice", draw)


if __name__ == "__main__":
    _harness.main(parse_args, train)
