"""3D segmentation patches from real brain MRI volumes: an in-memory dataset and a lazy, sharded stream.

Sources (no download: the files ship inside installed packages):

- ``"mni152"``: the MNI ICBM152 2009a nonlinear symmetric template (Fonov et al., NeuroImage 54 (2011)) as
  shipped by ``nilearn`` (BSD-3-Clause package): ``datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted
  .nii.gz``, a skull-stripped T1 and grey / white matter probability maps, 197 x 233 x 189 uint8 voxels of 1 mm.
  Labels (3 classes) by the probability-map rule below.
- ``"colin27"``: the Colin27 single-subject T1 (``ch2.nii.gz``, Holmes et al., JCAT 22 (1998)) with the AAL atlas
  on the same grid (``aal.nii.gz``, 116 regions, Tzourio-Mazoyer et al., NeuroImage 15 (2002)) from Debian's
  ``mricron-data`` (BSD-3-Clause), 181 x 217 x 181 voxels of 1 mm. Labels: 0 outside, 1..116 the AAL regions
  (117 classes). Used only when installed (``apt-get install mricron-data``).

Layout (MONAI): image ``[C, D, H, W]`` float32, label ``[D, H, W]`` int64, where D, H, W are the file's voxel axes
0, 1, 2 (for both sources: x left->right, y posterior->anterior, z inferior->superior; nothing is reoriented).

Label rules:
    - integer label map (one path): the stored values (rounded when stored as floats), 0 = background.
    - probability maps (a tuple of K paths, e.g. ``(gm, wm)``): maps stored as integers are scaled to [0, 1] by
      their dtype's maximum (uint8 / 255); class ``k + 1`` where map ``k`` is the largest and strictly above
      ``threshold`` (default 0.5), else 0. Ties go to the earlier map. For mni152: 0 = background / CSF / other,
      1 = grey matter, 2 = white matter (about 80.3% / 12.4% / 7.3% of the volume at threshold 0.5).

Intensity: per channel, z-score over the volume's nonzero voxels (MONAI ``NormalizeIntensity(nonzero=True)``):
``(x - mean) / std`` where ``x != 0``, zero voxels stay 0. Mean and std are the whole volume's (the stream can
estimate them from a strided subsample, or normalise each patch on its own: ``normalize``).

Train / val split: the volume is cut along ``val_axis`` (default 1, y) at
``split_index = round(shape[val_axis] * (1 - val_fraction))`` (default ``val_fraction=0.25``: for mni152 the
anterior slab y >= 175, i.e. the frontal lobe). Train patches lie entirely in ``[0, split_index)``, validation
patches entirely in ``[split_index, shape[val_axis])``, so no train voxel is ever a validation voxel. Validation
patches are a fixed grid tiling the slab (stride = patch size, the last one flush with the volume's end), keeping
those with at least one foreground (label > 0) voxel.
"""

from __future__ import annotations

import functools
import itertools
import os
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.distributed
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from . import _sources

__all__ = ["BrainVolumePatches", "BrainVolumePatchStream"]

PathLike = Union[str, os.PathLike]
#: ``(image, label)``: image one path or a sequence of paths (channels); label one path (integer label map) or a
#: tuple of paths (probability maps).
VolumeSpec = tuple[Union[PathLike, Sequence[PathLike]], Union[PathLike, Sequence[PathLike]]]

MNI152_CLASSES = ["background", "grey_matter", "white_matter"]


# ----------------------------------------------------------------------------------------------- sources and reading
def _normalise_spec(spec: VolumeSpec) -> tuple[tuple[str, ...], str | tuple[str, ...]]:
    if not (isinstance(spec, (tuple, list)) and len(spec) == 2):
        raise ValueError(f"a volume must be an (image_path, label_path) pair, got {spec!r}")
    image, label = spec
    images = (os.fspath(image),) if isinstance(image, (str, os.PathLike)) else tuple(os.fspath(p) for p in image)
    labels = os.fspath(label) if isinstance(label, (str, os.PathLike)) else tuple(os.fspath(p) for p in label)
    if not images or (isinstance(labels, tuple) and not labels):
        raise ValueError(f"a volume needs at least one image and one label path, got {spec!r}")
    return images, labels


def _resolve_source(source: str | VolumeSpec) -> tuple[tuple[str, ...], str | tuple[str, ...], list[str] | None]:
    """``(image_paths, label, class_names)`` of a named source or an explicit ``(image, label)`` pair."""
    if isinstance(source, str):
        if source == "mni152":
            t1, maps = _sources.mni152_files()
            return (t1,), maps, list(MNI152_CLASSES)
        if source == "colin27":
            image, label = _sources.colin27_files()
            return (image,), label, _sources.aal_names()
        raise ValueError(f"source must be 'mni152', 'colin27' or an (image_path, label_path) pair, got {source!r}")
    images, label = _normalise_spec(source)
    return images, label, None


def _as_probability(a: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.float32) / np.float32(np.iinfo(a.dtype).max)
    return a.astype(np.float32)


def tissue_labels(maps: Sequence[np.ndarray], threshold: float) -> np.ndarray:
    """The probability-map label rule: class ``k + 1`` where map ``k`` is the largest and ``> threshold``, else 0.

    Args:
        maps: K arrays of one shape, probabilities in [0, 1] (integer dtypes are scaled by their maximum).
        threshold: the probability a voxel's best map must exceed to be labelled.

    Returns:
        int64 labels in ``[0, K]``, of the maps' shape.
    """
    p = np.stack([_as_probability(np.asarray(m)) for m in maps])
    return np.where(p.max(0) > threshold, p.argmax(0) + 1, 0).astype(np.int64)


class _Volume:
    """Lazy handles on one volume's files (nibabel proxies: reading a slice reads only that region's bytes of an
    uncompressed .nii; a .nii.gz is decompressed up to it)."""

    def __init__(self, images: tuple[str, ...], label: str | tuple[str, ...], threshold: float) -> None:
        nib = _sources.nibabel()
        self.image_paths, self.label_spec, self.threshold = images, label, threshold
        self.maps = isinstance(label, tuple)
        label_paths = label if self.maps else (label,)
        self.images = [nib.load(p) for p in images]
        self.labels = [nib.load(p) for p in label_paths]
        shapes = {}
        for p, im in zip((*images, *label_paths), (*self.images, *self.labels)):
            if len(im.shape) != 3:
                raise ValueError(f"{p}: a 3D volume is needed, got shape {im.shape}")
            shapes[p] = tuple(int(s) for s in im.shape)
        if len(set(shapes.values())) != 1:
            raise ValueError(f"the files of one volume must share a grid, got shapes {shapes}")
        self.shape: tuple[int, int, int] = next(iter(shapes.values()))

    def read_image(self, sl: tuple[slice, ...]) -> np.ndarray:
        return np.stack([np.asarray(im.dataobj[sl], dtype=np.float32) for im in self.images])

    def read_label(self, sl: tuple[slice, ...]) -> np.ndarray:
        if self.maps:
            return tissue_labels([np.asarray(m.dataobj[sl]) for m in self.labels], self.threshold)
        a = np.asarray(self.labels[0].dataobj[sl])
        if not np.issubdtype(a.dtype, np.integer):
            a = np.rint(a)
        if a.size and a.min() < 0:
            raise ValueError(f"{self.label_spec}: label maps must be >= 0, found {a.min()}")
        return a.astype(np.int64)

    def num_classes(self, label: np.ndarray | None = None) -> int:
        if self.maps:
            return len(self.labels) + 1
        return int(label.max()) + 1 if label is not None else 0


def _nonzero_stats(image: np.ndarray) -> np.ndarray:
    """``(C, 2)`` float64 mean and std of each channel's nonzero voxels (0 and 1 when there are none)."""
    out = np.zeros((image.shape[0], 2))
    for c, ch in enumerate(image):
        v = ch[ch != 0]
        mean = float(v.mean(dtype=np.float64)) if v.size else 0.0
        std = float(v.std(dtype=np.float64)) if v.size > 1 else 0.0
        out[c] = mean, (std if std > 0 else 1.0)
    return out


def _zscore(image: np.ndarray, stats: np.ndarray) -> np.ndarray:
    shape = (-1,) + (1,) * (image.ndim - 1)
    mean = stats[:, 0].astype(np.float32).reshape(shape)
    std = stats[:, 1].astype(np.float32).reshape(shape)
    return np.where(image != 0, (image - mean) / std, np.float32(0)).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _load(images: tuple[str, ...], label: str | tuple[str, ...], threshold: float):
    """The whole volume, normalised: ``(image [C, D, H, W] float32, label [D, H, W] (smallest uint), stats,
    num_classes)``; cached (read-only arrays) so train and val datasets share one copy."""
    vol = _Volume(images, label, threshold)
    full = (slice(None),) * 3
    raw = vol.read_image(full)
    lab = vol.read_label(full)
    stats = _nonzero_stats(raw)
    image = _zscore(raw, stats)
    num_classes = vol.num_classes(lab)
    lab = lab.astype(np.min_scalar_type(max(num_classes - 1, 0)))
    image.setflags(write=False)
    lab.setflags(write=False)
    return image, lab, stats, num_classes


# ----------------------------------------------------------------------------------------------- patch geometry
def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    t = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(t) != 3 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in t):
        raise ValueError(f"{name} must be a positive int or three positive ints, got {value!r}")
    return tuple(int(v) for v in t)


def _check_split(split: str, val_axis: int, val_fraction: float) -> None:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if val_axis not in (0, 1, 2):
        raise ValueError(f"val_axis must be 0, 1 or 2, got {val_axis!r}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")


def split_index(shape: Sequence[int], val_axis: int, val_fraction: float) -> int:
    """The first validation index along ``val_axis``: ``round(shape[val_axis] * (1 - val_fraction))``."""
    return int(round(shape[val_axis] * (1.0 - val_fraction)))


def _region(shape: Sequence[int], extent: Sequence[int], split: str, axis: int, cut: int, where: str) -> list:
    """Per axis ``(lo, hi)``: the range a patch of ``extent`` must stay in for ``split``; checks it fits."""
    bounds = []
    for a in range(3):
        lo, hi = (0, cut) if (a == axis and split == "train") else ((cut, shape[a]) if a == axis else (0, shape[a]))
        if hi - lo < extent[a]:
            raise ValueError(
                f"{where}: the {split} region spans {hi - lo} voxels along axis {a} (volume {tuple(shape)}, "
                f"split at {cut} on val_axis={axis}), fewer than the patch's {extent[a]}: use a smaller patch "
                f"or another val_fraction / val_axis"
            )
        bounds.append((lo, hi))
    return bounds


def _grid(bounds: Sequence[tuple[int, int]], patch: Sequence[int]) -> list[tuple[int, int, int]]:
    """Starts of patches tiling the box (stride = patch size; the last flush with the box's end)."""
    axes = []
    for (lo, hi), p in zip(bounds, patch):
        starts = list(range(lo, hi - p + 1, p))
        if starts[-1] + p < hi:
            starts.append(hi - p)
        axes.append(starts)
    return list(itertools.product(*axes))


def _slices(start: Sequence[int], patch: Sequence[int]) -> tuple[slice, slice, slice]:
    return tuple(slice(int(s), int(s) + p) for s, p in zip(start, patch))


# ----------------------------------------------------------------------------------------------- in-memory dataset
class BrainVolumePatches(Dataset):
    """3D segmentation patches of one real brain MRI volume, held in memory (MONAI ``[C, D, H, W]`` layout).

    The volume (``source``) is read once (cached across instances: a train and a val dataset share it),
    intensity-normalised and labelled as the module docstring says (sources, label rules, z-score, train / val
    split). For many or large volumes use :class:`BrainVolumePatchStream`.

    Patch positions:
        - train: item ``index`` draws from ``numpy.random.default_rng([seed, epoch, index])``: with probability
          ``foreground_prob`` the patch is centred on a random foreground voxel (label > 0) of the train region
          (shifted to stay inside it), otherwise its start is uniform over the train region (MONAI's
          ``RandCropByPosNegLabel`` with ``pos / (pos + neg) = foreground_prob``). Never overlaps validation.
        - val: the fixed grid of the module docstring; ``len()`` is its size.

    Args:
        source: ``"mni152"`` (nilearn; 3 classes), ``"colin27"`` (mricron-data; 117 classes) or an
            ``(image_path, label_path)`` pair (see :class:`BrainVolumePatchStream` for the forms).
        patch_size: ``(D, H, W)`` voxels (or one int for a cube).
        split: ``"train"`` or ``"val"``.
        samples_per_epoch: ``len()`` of the train split (default 256); must be None for val.
        foreground_prob: train patches centred on foreground with this probability.
        val_axis: voxel axis (0, 1, 2) cut into train / val.
        val_fraction: the fraction of that axis (at its end) held out for validation.
        threshold: the probability-map label threshold.
        seed: base seed of the per-item generators.
        transform: optional callable applied to each item dict before it is returned.

    Items:
        A dict: ``"image"`` ``[C, D, H, W]`` float32 (C = 1 for both named sources), ``"label"`` ``[D, H, W]``
        int64 in ``[0, num_classes)``, ``"start"`` ``(3,)`` int64 voxel index of the patch's first corner.

    Raises:
        ModuleNotFoundError: the source's package (``pip install --no-deps nilearn``, ``apt-get install
            mricron-data``) or nibabel (``pip install nibabel``) is missing.
        ValueError: a bad argument (named), or a patch larger than its split's region.
    """

    def __init__(
        self,
        source: str | VolumeSpec = "mni152",
        patch_size: int | Sequence[int] = (32, 32, 32),
        split: str = "train",
        samples_per_epoch: int | None = None,
        foreground_prob: float = 0.5,
        val_axis: int = 1,
        val_fraction: float = 0.25,
        threshold: float = 0.5,
        seed: int = 0,
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        self.patch_size = _triple(patch_size, "patch_size")
        _check_split(split, val_axis, val_fraction)
        if not 0.0 <= float(foreground_prob) <= 1.0:
            raise ValueError(f"foreground_prob must be in [0, 1], got {foreground_prob!r}")
        if samples_per_epoch is not None:
            if split == "val":
                raise ValueError("samples_per_epoch must be None for split='val' (its length is the fixed grid's)")
            if not isinstance(samples_per_epoch, int) or samples_per_epoch < 1:
                raise ValueError(f"samples_per_epoch must be a positive int or None, got {samples_per_epoch!r}")
        self.source = source if isinstance(source, str) else "custom"
        self.split, self.val_axis, self.val_fraction = split, int(val_axis), float(val_fraction)
        self.foreground_prob, self.threshold = float(foreground_prob), float(threshold)
        self.seed, self.transform, self.epoch = int(seed), transform, 0
        self.samples_per_epoch = samples_per_epoch or 256

        images, label, names = _resolve_source(source)
        self.image, self.label, self.intensity_stats, self.num_classes = _load(images, label, self.threshold)
        self.class_names = names if names is not None else [f"class_{i}" for i in range(self.num_classes)]
        self.in_channels = self.image.shape[0]
        self.shape = tuple(self.label.shape)
        self.split_index = split_index(self.shape, self.val_axis, self.val_fraction)
        self.bounds = _region(self.shape, self.patch_size, split, self.val_axis, self.split_index, type(self).__name__)
        if split == "train":
            region = tuple(slice(lo, hi) for lo, hi in self.bounds)
            self._fg_shape = tuple(hi - lo for lo, hi in self.bounds)
            self._fg = np.flatnonzero(self.label[region] > 0)  # region starts at 0 on every axis for train
            self._starts: list[tuple[int, int, int]] = []
        else:
            grid = _grid(self.bounds, self.patch_size)
            self._starts = [s for s in grid if self.label[_slices(s, self.patch_size)].any()]

    def __len__(self) -> int:
        return self.samples_per_epoch if self.split == "train" else len(self._starts)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose train patches ``__getitem__`` draws (val ignores it)."""
        self.epoch = int(epoch)

    def start(self, index: int) -> tuple[int, int, int]:
        """The ``(d, h, w)`` start voxel of item ``index``'s patch."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        if self.split == "val":
            return self._starts[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        highs = [hi - p for (_, hi), p in zip(self.bounds, self.patch_size)]
        if self._fg.size and rng.random() < self.foreground_prob:
            centre = np.unravel_index(self._fg[rng.integers(self._fg.size)], self._fg_shape)
            return tuple(int(np.clip(c - p // 2, 0, h)) for c, p, h in zip(centre, self.patch_size, highs))
        return tuple(int(rng.integers(0, h + 1)) for h in highs)

    def __getitem__(self, index: int) -> dict:
        start = self.start(index)
        sl = _slices(start, self.patch_size)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(self.image[(slice(None), *sl)])),
            "label": torch.from_numpy(self.label[sl].astype(np.int64)),
            "start": torch.tensor(start, dtype=torch.int64),
        }
        return self.transform(item) if self.transform is not None else item

    def label_fractions(self) -> torch.Tensor:
        """``(num_classes,)`` float64: the fraction of the whole volume's voxels in each class."""
        counts = np.bincount(self.label.reshape(-1), minlength=self.num_classes)
        return torch.from_numpy(counts / counts.sum())

    def extra_repr(self) -> str:
        """The configuration, as in ``repr(dataset)``."""
        return (
            f"source={self.source!r}, patch_size={self.patch_size}, split={self.split!r}, len={len(self)}, "
            f"shape={self.shape}, split_index={self.split_index} (val_axis={self.val_axis}), "
            f"num_classes={self.num_classes}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


# ----------------------------------------------------------------------------------------------- streaming dataset
def shard_info() -> tuple[int, int]:
    """``(shard, num_shards)`` of the calling process: DataLoader worker and torch.distributed rank combined.

    ``shard = rank * num_workers + worker_id`` and ``num_shards = world_size * num_workers``, with rank 0 of 1
    when torch.distributed is not initialised and worker 0 of 1 outside a DataLoader worker.
    """
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return rank * workers + worker, world * workers


class BrainVolumePatchStream(IterableDataset):
    """3D segmentation patches read lazily from a list of volumes, sharded over DataLoader workers and ranks.

    The same code serves the bundled template (``volumes=None``: ``source``) and a large archive of volumes:
    pass ``volumes=[(image_path, label_path), ...]``. No volume is ever loaded whole: each patch is read from
    nibabel's ``dataobj`` proxy by slicing (keep the archive as uncompressed ``.nii`` for true random access; a
    ``.nii.gz`` is decompressed up to the patch on every read). Labels, intensity normalisation, layout and the
    train / val cut follow the module docstring, per volume.

    Volume forms: ``image`` is one path or a sequence of paths (one channel each, e.g. ``(t1, t2, flair)``);
    ``label`` is one path (an integer label map) or a tuple of paths (probability maps, labelled by the
    threshold rule). All files of a volume must share their 3D grid (same voxel axes; nothing is reoriented or
    resampled). :func:`medkernels.data.mni152_files` and :func:`medkernels.data.colin27_files` return the
    bundled pairs.

    Work list and sharding: the items of an epoch are, volume by volume, ``patches_per_volume`` train patches
    (or, for val, the volume's fixed validation grid), numbered globally; the shard of :func:`shard_info`
    (``rank * num_workers + worker_id`` of ``world_size * num_workers``) takes the items whose number is
    ``shard`` modulo ``num_shards``. Shards are therefore disjoint and together cover the epoch exactly once;
    in train they differ in size by at most one item. A shard opens only the volumes it has items in.
    With ``shuffle`` the volume order of each train epoch is a permutation drawn from ``(seed, epoch)``, the
    same on every shard. Call :meth:`set_epoch` before each epoch (with ``persistent_workers=True`` the workers
    keep the epoch they started with).

    Patches: train patch ``j`` of volume ``v`` starts uniformly in the train region, drawn from
    ``numpy.random.default_rng([seed, epoch, v, j])`` (independent of the sharding); a draw whose label patch
    has no foreground is redrawn, at most ``max_tries`` draws in all (the last is kept). Validation grid patches
    with no foreground are skipped (so val shards may differ in size: evaluate with a per-rank sum and an
    all-reduce).

    Args:
        volumes: ``[(image, label), ...]`` (see Volume forms); None for ``source`` alone.
        source: ``"mni152"`` or ``"colin27"`` when ``volumes`` is None.
        patch_size: ``(D, H, W)`` voxels (or one int).
        split: ``"train"`` or ``"val"``.
        patches_per_volume: train patches per volume per epoch.
        val_axis: voxel axis cut into train / val.
        val_fraction: the fraction of that axis (at its end) held out for validation.
        threshold: the probability-map label threshold.
        normalize: ``"volume"`` (z-score with each volume's nonzero-voxel mean / std, estimated from the voxels
            at ``[::stats_stride]`` on every axis, computed once per volume and process), ``"patch"`` (each
            patch's own nonzero voxels) or ``"none"`` (raw intensities as float32).
        stats_stride: subsampling of the ``"volume"`` statistics (1 = exact, equal to :class:`BrainVolumePatches`).
        max_tries: train draws per patch while looking for foreground.
        shuffle: shuffle the volume order of each train epoch.
        seed: base seed.
        transform: optional callable applied to each item dict before it is yielded.

    Items:
        A dict: ``"image"`` ``[C, D, H, W]`` float32, ``"label"`` ``[D, H, W]`` int64, ``"start"`` ``(3,)``
        int64 and ``"volume"`` (int64 scalar: the index in ``volumes``).

    Raises:
        ModuleNotFoundError: nibabel or the source's package is missing (the message has the install line).
        ValueError: a bad argument (named), or a patch larger than its split's region in some volume.
    """

    def __init__(
        self,
        volumes: Sequence[VolumeSpec] | None = None,
        source: str = "mni152",
        patch_size: int | Sequence[int] = (32, 32, 32),
        split: str = "train",
        patches_per_volume: int = 8,
        val_axis: int = 1,
        val_fraction: float = 0.25,
        threshold: float = 0.5,
        normalize: str = "volume",
        stats_stride: int = 2,
        max_tries: int = 8,
        shuffle: bool = True,
        seed: int = 0,
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        super().__init__()
        self.patch_size = _triple(patch_size, "patch_size")
        _check_split(split, val_axis, val_fraction)
        if normalize not in ("volume", "patch", "none"):
            raise ValueError(f"normalize must be 'volume', 'patch' or 'none', got {normalize!r}")
        for name, v in (("patches_per_volume", patches_per_volume), ("stats_stride", stats_stride)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(max_tries, int) or max_tries < 1:
            raise ValueError(f"max_tries must be a positive int, got {max_tries!r}")
        if volumes is None:
            images, label, _ = _resolve_source(source)
            self.volumes = [(images, label)]
        else:
            self.volumes = [_normalise_spec(v) for v in volumes]
            if not self.volumes:
                raise ValueError("volumes must not be empty")
        self.split, self.val_axis, self.val_fraction = split, int(val_axis), float(val_fraction)
        self.patches_per_volume, self.threshold, self.normalize = patches_per_volume, float(threshold), normalize
        self.stats_stride, self.max_tries, self.shuffle = stats_stride, max_tries, bool(shuffle)
        self.seed, self.transform, self.epoch = int(seed), transform, 0
        self._stats: dict[int, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch (train patch draws and volume order); call before iterating each epoch."""
        self.epoch = int(epoch)

    def _open(self, v: int) -> _Volume:
        images, label = self.volumes[v]
        return _Volume(images, label, self.threshold)

    def _volume_order(self) -> list[int]:
        order = list(range(len(self.volumes)))
        if self.shuffle and self.split == "train":
            order = [int(i) for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(order))]
        return order

    def _val_starts(self, vol: _Volume) -> list[tuple[int, int, int]]:
        cut = split_index(vol.shape, self.val_axis, self.val_fraction)
        return _grid(
            _region(vol.shape, self.patch_size, "val", self.val_axis, cut, str(vol.image_paths[0])), self.patch_size
        )

    def _train_start(self, vol: _Volume, rng: np.random.Generator) -> tuple[int, int, int]:
        cut = split_index(vol.shape, self.val_axis, self.val_fraction)
        bounds = _region(vol.shape, self.patch_size, "train", self.val_axis, cut, str(vol.image_paths[0]))
        return tuple(int(rng.integers(lo, hi - p + 1)) for (lo, hi), p in zip(bounds, self.patch_size))

    def _image(self, v: int, vol: _Volume, sl: tuple[slice, ...]) -> np.ndarray:
        raw = vol.read_image(sl)
        if self.normalize == "none":
            return raw
        if self.normalize == "patch":
            return _zscore(raw, _nonzero_stats(raw))
        if v not in self._stats:
            s = self.stats_stride
            self._stats[v] = _nonzero_stats(vol.read_image((slice(None, None, s),) * 3))
        return _zscore(raw, self._stats[v])

    def __iter__(self):
        shard, num_shards = shard_info()
        counter = 0
        for v in self._volume_order():
            if self.split == "train":
                n, vol = self.patches_per_volume, None
            else:
                vol = self._open(v)
                starts = self._val_starts(vol)
                n = len(starts)
            mine = [j for j in range(n) if (counter + j) % num_shards == shard]
            counter += n
            if not mine:
                continue
            vol = vol or self._open(v)
            for j in mine:
                if self.split == "train":
                    rng = np.random.default_rng([self.seed, self.epoch, v, j])
                    for _ in range(self.max_tries):
                        start = self._train_start(vol, rng)
                        label = vol.read_label(_slices(start, self.patch_size))
                        if label.any():
                            break
                else:
                    start = starts[j]
                    label = vol.read_label(_slices(start, self.patch_size))
                    if not label.any():
                        continue
                item = {
                    "image": torch.from_numpy(self._image(v, vol, _slices(start, self.patch_size))),
                    "label": torch.from_numpy(label),
                    "start": torch.tensor(start, dtype=torch.int64),
                    "volume": torch.tensor(v, dtype=torch.int64),
                }
                yield self.transform(item) if self.transform is not None else item

    def extra_repr(self) -> str:
        """The configuration, as in ``repr(dataset)``."""
        return (
            f"volumes={len(self.volumes)}, patch_size={self.patch_size}, split={self.split!r}, "
            f"patches_per_volume={self.patches_per_volume}, val_axis={self.val_axis}, "
            f"val_fraction={self.val_fraction}, normalize={self.normalize!r}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
