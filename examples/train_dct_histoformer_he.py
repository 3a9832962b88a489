"""Train DCT-HistoTransformer to tell nuclei-rich H&E tiles from stroma, on a real H&E section.

The image ships inside ``stardist`` (``pip install --no-deps stardist``; read with pillow):
:class:`medkernels.data.HistologyTiles` cuts 64 x 64 tiles, labelled by their hematoxylin density (colour
deconvolution; the rule is in its docstring), training on the left 75% of the section and validating on the right
25% (never seen). The held-out metric is the balanced accuracy, against the trivial baseline that predicts the most
frequent class (1/2).

    python examples/train_dct_histoformer_he.py                        # 2 CPU cores: a few minutes
    torchrun --nproc_per_node 2 examples/train_dct_histoformer_he.py   # DistributedDataParallel (gloo on CPU)

Outputs in ``--out`` (default ``runs/dct_histoformer_he``), as every example (examples/_harness.py).
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
    p.add_argument("--size", type=int, default=64, help="tile side")
    p.add_argument("--val-samples", type=int, default=240)
    _harness.add_arguments(p, steps=200, batch_size=16, lr=1e-3, out="runs/dct_histoformer_he")
    return p.parse_args(argv)


def train(args: argparse.Namespace) -> tuple[dict, torch.nn.Module]:
    from medkernels.data import HistologyTiles

    train_set = HistologyTiles(args.size, "train")
    val_set = HistologyTiles(args.size, "val")
    torch.manual_seed(args.seed)
    model = create_model("dct_histoformer", num_classes=2)
    evaluate, draw = _harness.classification_callbacks(
        _harness.every_nth(val_set, args.val_samples),
        2,
        lambda x: (torch.cat(list(x.permute(0, 2, 3, 1)), 1).numpy(), None),
    )
    pairs = _harness.Pairs(train_set, "image", "label")
    return _harness.run(args, model, pairs, F.cross_entropy, evaluate, "balanced_accuracy", draw)


if __name__ == "__main__":
    _harness.main(parse_args, train)
