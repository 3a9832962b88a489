"""medkernels.models: reference architectures, built with :func:`create_model` (as timm)."""

from ._registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "is_model", "list_models", "register_model"]
