"""Train MedViTV2 to classify the tissue at the centre of 2D patches of a real T1 MRI (the MNI152 template).

The volume ships inside ``nilearn`` (``pip install --no-deps nilearn`` and ``pip install nibabel``):
:class:`medkernels.data.TissuePatches2D` cuts axial patches, class-balanced for training from the front 75% of the
brain, and a fixed grid of the back 25% (never seen) for validation; the label is the tissue at the patch centre
(0 CSF / other, 1 grey matter, 2 white matter). The held-out metric is the balanced accuracy (the mean over the
classes of the fraction found: the validation grid is two-thirds grey matter), against the trivial baseline that
predicts the most frequent class (1/3).

    python examples/train_medvitv2_tissue.py                        # 2 CPU cores: a few minutes
    torchrun --nproc_per_node 2 examples/train_medvitv2_tissue.py   # DistributedDataParallel (gloo on CPU)

Outputs in ``--out`` (default ``runs/medvitv2_tissue``), as every example (examples/_harness.py).
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=("tiny", "small", "base", "large"), default="tiny")
    p.add_argument("--size", type=int, default=32, help="patch side")
    p.add_argument("--val-samples", type=int, default=256)
    _harness.add_arguments(p, steps=600, batch_size=16, lr=5e-4, out="runs/medvitv2_tissue")
    return p.parse_args(argv)


def train(args: argparse.Namespace) -> tuple[dict, torch.nn.Module]:
    from medkernels.data import TissuePatches2D

    train_set = TissuePatches2D(args.size, "train", args.steps * args.batch_size, channels=3, seed=args.seed)
    val_set = TissuePatches2D(args.size, "val", channels=3, seed=args.seed)
    torch.manual_seed(args.seed)
    model = create_model(f"medvitv2_{args.variant}", num_classes=3)
    evaluate, draw = _harness.classification_callbacks(
        _harness.every_nth(val_set, args.val_samples), 3, lambda x: (torch.cat(list(x[:, 0]), 1).numpy(), "gray")
    )
    pairs = _harness.Pairs(train_set, "image", "label")
    return _harness.run(args, model, pairs, F.cross_entropy, evaluate, "balanced_accuracy", draw)


if __name__ == "__main__":
    _harness.main(parse_args, train)
