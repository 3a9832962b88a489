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


def test_list_models_without_a_pattern_and_pretrained_is_refused(monkeypatch):
    monkeypatch.setattr(_registry, "_MODELS", {})

    @models.register_model
    def tiny_linear(width: int = 3) -> torch.nn.Module:
        return torch.nn.Linear(width, width)

    assert models.list_models() == models.list_models(None) == ["tiny_linear"]
    with pytest.raises(ValueError, match="pretrained=True is not available for 'tiny_linear'.*load_checkpoint"):
        models.create_model("tiny_linear", pretrained=True)


class _Filtered(torch.nn.Linear):
    def checkpoint_filter(self, state):
        return {k: v for k, v in state.items() if not k.startswith("unused.")}, ["dropped unused.* (never used)"]


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.module."])
def test_load_checkpoint_layouts(tmp_path, wrap, prefix):
    src = torch.nn.Linear(4, 3)
    state = {prefix + k: v for k, v in src.state_dict().items()}
    obj = state if wrap is None else {wrap: state, "epoch": 7}
    torch.save(obj, tmp_path / "ckpt.pth")
    dst = torch.nn.Linear(4, 3)
    assert models.load_checkpoint(dst, tmp_path / "ckpt.pth") == []
    assert torch.equal(dst.weight, src.weight) and torch.equal(dst.bias, src.bias)


def test_load_checkpoint_safetensors_and_filter(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    src = torch.nn.Linear(4, 3)
    state = {**src.state_dict(), "unused.weight": torch.zeros(2)}
    safetensors.save_file(state, str(tmp_path / "ckpt.safetensors"))
    dst = _Filtered(4, 3)
    assert models.load_checkpoint(dst, tmp_path / "ckpt.safetensors") == ["dropped unused.* (never used)"]
    assert torch.equal(dst.weight, src.weight)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        models.load_checkpoint(torch.nn.Linear(4, 3), tmp_path / "ckpt.safetensors")


def test_load_checkpoint_rejects_a_file_without_a_state_dict(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        models.load_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.pt")
