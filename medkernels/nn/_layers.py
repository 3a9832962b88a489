"""Small building blocks shared by the modules and models (timm's names and semantics)."""

from __future__ import annotations

import torch
from torch import nn

from medkernels._typing import Device, DType

__all__ = ["DropPath", "Mlp"]


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., arXiv 1603.09382): in training, zero the whole residual branch
    of a sample with probability ``drop_prob`` and scale the kept ones by ``1 / (1 - drop_prob)``
    (timm's ``DropPath``). Identity in eval mode or with ``drop_prob == 0``.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"DropPath: drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> Linear -> dropout on the last axis (timm's ``Mlp``; state_dict
    ``fc1``, ``fc2``)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        *,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, **factory)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, **factory)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
