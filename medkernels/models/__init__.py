"""medkernels.models: reference architectures, built with :func:`create_model` (as timm), and
:func:`load_checkpoint` for the checkpoints the official code produces."""

from . import (
    medvitv2,  # noqa: F401  (registers medvitv2_tiny/small/base/large)
    segmamba,  # noqa: F401  (registers segmamba)
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
