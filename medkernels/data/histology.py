"""H&E histology tiles from the image the ``stardist`` package ships (``stardist/data/images/histo.jpg``, an H&E
stained section, 500 x 300 RGB), labelled by their hematoxylin (nuclear stain) density.

The image has no annotation, so the label is a stated rule on the stain itself: colour deconvolution (Ruifrok &
Johnston, Anal Quant Cytol Histol 2001, with their H&E-DAB stain vectors: hematoxylin (0.650, 0.704, 0.286), eosin
(0.072, 0.990, 0.105), DAB (0.268, 0.570, 0.776)) of the optical density ``-log10((I + 1) / 256)`` gives a
hematoxylin density per pixel; a tile is class 1 ("nuclei-rich") when its mean hematoxylin density is above the
median of that mean over every tile of the whole image at stride 8, else class 0 ("stroma / background"). The
classes are therefore balanced over the image, and the rule is the same for both splits.

Split: tiles lying entirely in the left 75% of the image's width are ``"train"``; those entirely in the right 25%
are ``"val"`` (never overlapping the training tiles). Train tiles are taken at ``stride`` (default 8), val tiles at
stride 8, in row-major order. Images are ``[3, size, size]`` float32 in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from . import _sources

_STAINS = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]])


def stardist_histology_file() -> str:
    """The path of stardist's H&E image (``stardist/data/images/histo.jpg``), found without importing stardist.

    Raises:
        ModuleNotFoundError: stardist is not installed (the message has its install line).
    """
    root = _sources.package_dir("stardist", "The H&E image of medkernels.data.HistologyTiles")
    return _sources._existing(root / "data" / "images" / "histo.jpg", "stardist")


def hematoxylin_density(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel hematoxylin density of an ``(H, W, 3)`` uint8 RGB image by Ruifrok-Johnston colour deconvolution."""
    od = -np.log10((rgb.astype(np.float64) + 1.0) / 256.0)
    stains = _STAINS / np.linalg.norm(_STAINS, axis=1, keepdims=True)
    return (od.reshape(-1, 3) @ np.linalg.inv(stains))[:, 0].reshape(rgb.shape[:2])


def _tile_starts(lo: int, hi: int, size: int, stride: int) -> list[int]:
    return list(range(lo, hi - size + 1, stride))


class HistologyTiles(Dataset):
    """``size`` x ``size`` tiles of stardist's H&E image, labelled nuclei-rich (1) or not (0) by their hematoxylin
    density (the rule in the module docstring).

    Args:
        size: tile side in pixels (at most 300, the image height).
        split: ``"train"`` (the left 75% of the width) or ``"val"`` (the right 25%).
        stride: step between training tiles (val tiles: 8).
        transform: applied to each item dict.

    Items:
        ``{"image": [3, size, size] float32 in [0, 1], "label": int64 scalar, "density": float (the tile's mean
        hematoxylin density)}``.

    Raises:
        ValueError: a bad size, split or stride. ModuleNotFoundError: stardist or pillow missing.
    """

    num_classes = 2

    def __init__(
        self, size: int = 64, split: str = "train", stride: int = 8, transform: Callable[[dict], dict] | None = None
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not isinstance(size, int) or not 1 <= size <= 300:
            raise ValueError(f"size must be an int in [1, 300] (the image is 300 pixels high), got {size!r}")
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        try:
            from PIL import Image
        except ImportError as e:
            raise ModuleNotFoundError(f"HistologyTiles reads a JPEG with pillow: {_sources.INSTALL['pillow']}") from e
        rgb = np.asarray(Image.open(stardist_histology_file()).convert("RGB"))
        H, W, _ = rgb.shape
        cut = round(W * 0.75)
        if size > min(cut, W - cut):
            raise ValueError(f"size must be at most {min(cut, W - cut)} (the validation strip's width), got {size}")
        dens = hematoxylin_density(rgb)
        # the threshold: the median tile density over the whole image at stride 8 (both splits, one rule)
        csum = np.pad(dens, ((1, 0), (1, 0))).cumsum(0).cumsum(1)

        def mean_density(y: int, x: int) -> float:
            s = csum[y + size, x + size] - csum[y, x + size] - csum[y + size, x] + csum[y, x]
            return float(s) / (size * size)

        every = [mean_density(y, x) for y in _tile_starts(0, H, size, 8) for x in _tile_starts(0, W, size, 8)]
        self.threshold = float(np.median(every))
        lo, hi, step = (0, cut, stride) if split == "train" else (cut, W, 8)
        self.starts = [(y, x) for y in _tile_starts(0, H, size, step) for x in _tile_starts(lo, hi, size, step)]
        self.rgb, self.size, self.split, self.transform = rgb, size, split, transform
        self.densities = [mean_density(y, x) for y, x in self.starts]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"HistologyTiles: index {i} out of range for {len(self)} tiles")
        y, x = self.starts[i]
        tile = self.rgb[y : y + self.size, x : x + self.size]
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1))).float() / 255.0,
            "label": torch.tensor(int(self.densities[i] > self.threshold)),
            "density": self.densities[i],
        }
        return self.transform(item) if self.transform is not None else item

    def class_counts(self) -> list[int]:
        """Tiles per class in this split."""
        ones = sum(d > self.threshold for d in self.densities)
        return [len(self) - ones, ones]
