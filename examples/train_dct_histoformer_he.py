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
    step = max(1, len(val_set) // args.val_samples)
    val = [val_set[i] for i in range(0, len(val_set), step)][: args.val_samples]
    images = torch.stack([v["image"] for v in val])
    labels = torch.stack([v["label"] for v in val])
    majority = int(torch.bincount(labels, minlength=2).argmax())
    torch.manual_seed(args.seed)
    model = create_model("dct_histoformer", num_classes=2)

    def evaluate(model, device):
        pred = torch.cat([model(images[i : i + 64].to(device)).argmax(1).cpu() for i in range(0, len(images), 64)])
        return _harness.classification_metrics(pred, labels, majority)

    def draw(model, device):
        pred = model(images[:8].to(device)).argmax(1).cpu()

        def panels(fig, row, cols):
            ax = fig.add_subplot(row, cols, 2)
            ax.imshow(torch.cat(list(images[:8].permute(0, 2, 3, 1)), 1).numpy())
            ax.set_title("labels " + " ".join(map(str, labels[:8].tolist())) + " / predicted "
                         + " ".join(map(str, pred.tolist())), fontsize=8)  # fmt: skip
            ax.set_axis_off()

        return panels

    pairs = _harness.Pairs(train_set, "image", "label")
    return _harness.run(args, model, pairs, F.cross_entropy, evaluate, "balanced_accuracy", draw)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        train(args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
