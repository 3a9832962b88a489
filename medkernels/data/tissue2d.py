"""2D tissue classification patches cut from the axial slices of a real brain MRI volume.

The volume, its labels and its intensity normalisation are :class:`~medkernels.data.BrainVolumePatches`' (default
the MNI ICBM152 T1 with 3 tissue classes from nilearn; see ``medkernels/data/volume.py`` for sources and rules).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .volume import VolumeSpec, _check_split, _load, _region, _resolve_source, split_index

__all__ = ["TissuePatches2D"]


class TissuePatches2D(Dataset):
    """Square 2D patches of axial slices, each labelled by the tissue class of its centre voxel.

    An axial slice is the plane of fixed voxel index z (axis 2) of the volume; a patch of item ``i`` with centre
    voxel ``(x, y, z)`` is ``image[x - size // 2 : x - size // 2 + size, y - size // 2 : ..., z]`` (the slice's
    axes kept as the volume stores them: H = x, W = y), and its label is ``label[x, y, z]`` (for mni152:
    0 background / CSF / other, 1 grey matter, 2 white matter by the probability-map rule).

    Centres are restricted to voxels where the image is nonzero (inside the skull-stripped MNI brain mask, or the
    head for Colin27), so class 0 means CSF / other tissue next to the brain rather than empty air (mni152: about
    9% / 57% / 34% of those voxels are background / grey / white matter); every patch lies inside the volume and
    inside its split's region (its pixels may reach outside the mask). Train / val follow the volume's cut
    (``val_axis`` / ``val_fraction``, module docstring of ``volume.py``): a train patch never contains a
    validation voxel.

    Sampling:
        - train, ``balanced=True`` (default): item ``i`` has class ``i % num_classes`` and a centre drawn
          uniformly among that class's admissible voxels with ``numpy.random.default_rng([seed, epoch, i])`` (a
          class without admissible voxels falls back to all of them). ``balanced=False``: uniform over all
          admissible centres.
        - val: a fixed grid of centres: every ``slice_step``-th axial slice of the bounding box, and in each slice
          every ``val_stride``-th voxel (default ``size // 4``) on both in-plane axes, the nonzero ones; the natural
          class mix.
        :meth:`class_counts` / :meth:`class_balance` report the classes of the dataset's items.

    MedViTV2 and other 3-channel backbones: pass ``channels=3`` (the grey slice repeated, as
    ``image.repeat(3, 1, 1)`` would).

    Args:
        size: patch side in voxels (H = W = size).
        split: ``"train"`` or ``"val"``.
        samples_per_epoch: ``len()`` of the train split (default 1024); must be None for val.
        channels: 1 or 3 (the slice repeated).
        balanced: class-balanced train sampling.
        source: the volume (``"mni152"``, ``"colin27"`` or an ``(image, label)`` pair).
        val_axis: voxel axis cut into train / val (2 holds out whole axial slices).
        val_fraction: the fraction of that axis (at its end) held out for validation.
        slice_step: val: every how many axial slices.
        val_stride: val: centre spacing within a slice (default ``size // 4``).
        threshold: the probability-map label threshold.
        seed: base seed.
        transform: optional callable applied to each item dict before it is returned.

    Items:
        A dict: ``"image"`` ``[channels, size, size]`` float32, ``"label"`` int64 scalar in
        ``[0, num_classes)``, ``"centre"`` ``(3,)`` int64 voxel ``(x, y, z)``.

    Raises:
        ModuleNotFoundError: nilearn (``pip install --no-deps nilearn``) or nibabel (``pip install nibabel``) is
            missing.
        ValueError: a bad argument (named in the message).
    """

    def __init__(
        self,
        size: int = 32,
        split: str = "train",
        samples_per_epoch: int | None = None,
        channels: int = 1,
        balanced: bool = True,
        source: str | VolumeSpec = "mni152",
        val_axis: int = 1,
        val_fraction: float = 0.25,
        slice_step: int = 2,
        val_stride: int | None = None,
        threshold: float = 0.5,
        seed: int = 0,
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        _check_split(split, val_axis, val_fraction)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        for name, v in (("slice_step", slice_step), ("val_stride", val_stride if val_stride is not None else 1)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if samples_per_epoch is not None:
            if split == "val":
                raise ValueError("samples_per_epoch must be None for split='val' (its length is the fixed grid's)")
            if not isinstance(samples_per_epoch, int) or samples_per_epoch < 1:
                raise ValueError(f"samples_per_epoch must be a positive int or None, got {samples_per_epoch!r}")
        self.size, self.split, self.channels, self.balanced = size, split, channels, bool(balanced)
        self.val_axis, self.val_fraction, self.seed = int(val_axis), float(val_fraction), int(seed)
        self.transform, self.epoch = transform, 0
        self.samples_per_epoch = samples_per_epoch or 1024
        images, label, names = _resolve_source(source)
        image, self.label, _, self.num_classes = _load(images, label, float(threshold))
        if image.shape[0] != 1:
            raise ValueError(f"TissuePatches2D needs a single-channel volume, got {image.shape[0]} channels")
        self.image = image[0]
        self.class_names = names if names is not None else [f"class_{i}" for i in range(self.num_classes)]
        shape = self.label.shape
        self.split_index = split_index(shape, val_axis, val_fraction)
        extent = (size, size, 1)
        bounds = _region(shape, extent, split, val_axis, self.split_index, type(self).__name__)
        # Admissible centres: the patch [c - size // 2, c - size // 2 + size) inside the split's region, and the
        # centre voxel nonzero in the image (inside the head).
        lims = [(lo + e // 2, hi - e + e // 2 + 1) for (lo, hi), e in zip(bounds, extent)]
        self._lims = lims
        box = tuple(slice(lo, hi) for lo, hi in lims)
        inside = (self.image[box] != 0).reshape(-1)
        if split == "train":
            flat = self.label[box].reshape(-1)
            self._box_shape = self.label[box].shape
            self._all = np.flatnonzero(inside)
            self._by_class = [np.flatnonzero(inside & (flat == k)) for k in range(self.num_classes)]
            self._centres: np.ndarray | None = None
        else:
            step = val_stride or max(size // 4, 1)
            axes = [np.arange(lims[0][0], lims[0][1], step), np.arange(lims[1][0], lims[1][1], step)]
            axes.append(np.arange(lims[2][0], lims[2][1], slice_step))
            grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.int64)
            self._centres = grid[self.image[grid[:, 0], grid[:, 1], grid[:, 2]] != 0]
        if (self._all.size if split == "train" else self._centres.shape[0]) == 0:
            raise ValueError(f"TissuePatches2D: no admissible {split} centre: use a smaller size or slice_step")

    def __len__(self) -> int:
        return self.samples_per_epoch if self.split == "train" else len(self._centres)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose train patches ``__getitem__`` draws (val ignores it)."""
        self.epoch = int(epoch)

    def centre(self, index: int) -> tuple[int, int, int]:
        """The ``(x, y, z)`` centre voxel of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        if self._centres is not None:
            return tuple(int(c) for c in self._centres[index])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        pool = self._by_class[index % self.num_classes] if self.balanced else self._all
        if pool.size == 0:
            pool = self._all
        local = np.unravel_index(pool[rng.integers(pool.size)], self._box_shape)
        return tuple(int(c + lo) for c, (lo, _) in zip(local, self._lims))

    def __getitem__(self, index: int) -> dict:
        x, y, z = self.centre(index)
        h = self.size // 2
        patch = self.image[x - h : x - h + self.size, y - h : y - h + self.size, z]
        image = torch.from_numpy(np.ascontiguousarray(patch))[None]
        item = {
            "image": image.repeat(self.channels, 1, 1) if self.channels > 1 else image,
            "label": torch.tensor(int(self.label[x, y, z]), dtype=torch.int64),
            "centre": torch.tensor((x, y, z), dtype=torch.int64),
        }
        return self.transform(item) if self.transform is not None else item

    def class_counts(self) -> torch.Tensor:
        """``(num_classes,)`` int64: how many of the dataset's items (this epoch's, for train) have each class."""
        labels = [int(self.label[self.centre(i)]) for i in range(len(self))]
        return torch.bincount(torch.tensor(labels, dtype=torch.int64), minlength=self.num_classes)

    def class_balance(self) -> torch.Tensor:
        """``(num_classes,)`` float64: :meth:`class_counts` as fractions (e.g. for loss weights)."""
        counts = self.class_counts().double()
        return counts / counts.sum()

    def extra_repr(self) -> str:
        """The configuration, as in ``repr(dataset)``."""
        return (
            f"size={self.size}, split={self.split!r}, len={len(self)}, channels={self.channels}, "
            f"balanced={self.balanced}, num_classes={self.num_classes}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
