"""The timm-style model registry."""

import pytest
import torch

from medkernels import models
from medkernels.models import _registry


def test_register_create_list(monkeypatch):
    monkeypatch.setattr(_registry, "_MODELS", {})

    @models.register_model
    def tiny_linear(width: int = 3) -> torch.nn.Module:
        return torch.nn.Linear(width, width)

    assert models.is_model("tiny_linear")
    assert models.list_models("tiny_*") == ["tiny_linear"]
    assert models.create_model("tiny_linear", width=5).in_features == 5
    with pytest.raises(ValueError, match="already registered"):
        models.register_model(tiny_linear)
    with pytest.raises(ValueError, match=r"unknown model 'tiny_conv'; did you mean one of \['tiny_linear'\]"):
        models.create_model("tiny_conv")
