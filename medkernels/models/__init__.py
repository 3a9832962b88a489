"""medkernels.models: reference architectures, built with :func:`create_model` (as timm), and
:func:`load_checkpoint` for the checkpoints the official code produces."""

from . import (  # noqa: F401  (importing a model module registers its factories)
    dct_histoformer,
    medvitv2,
    pointmamba2,
    segmamba,
    vm_unet,
)
from ._registry import clean_state_dict, create_model, is_model, list_models, load_checkpoint, register_model
from .dformer import DFormer

__all__ = [
    "DFormer",
    "clean_state_dict",
    "create_model",
    "is_model",
    "list_models",
    "load_checkpoint",
    "register_model",
]
