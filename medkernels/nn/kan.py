"""FasterKAN: Kolmogorov-Arnold layers with the reflectional switch (RSWAF) basis, on the fused kernel.

FasterKAN (A. Delis, GitHub AthanasiosDelis/faster-kan) approximates KAN (Liu et al., arXiv 2404.19756)
with a LayerNorm, G bumps ``1 - tanh((u - grid_g) / denominator)^2`` per input channel on a fixed grid,
and a bias-free linear map of the ``in * G`` basis values. MedViTV2 (Manzari et al., arXiv 2502.13693)
uses ``FasterKAN([C, 2C, C])`` after every global block, where this layer is the model's hot spot.

These modules keep MedViTV2's vendored ``fasterkan.py`` constructor (argument names and defaults:
grid [-2, 2], 8 points, denominator 0.33) and state_dict names (``layernorm.weight``,
``layernorm.bias``, ``rbf.grid``, ``spline_linear.weight``; ``layers.<n>.`` in :class:`FasterKAN`), so
its checkpoints load with ``strict=True``. The grid is a frozen parameter and ``1 / denominator`` a
constant, as there; ``train_grid`` / ``train_inv_denominator`` make them trainable (the latter adds the
parameter ``rbf.inv_denominator``, as in the faster-kan repository's newer layer). Arguments the upstream
code accepts but ignores (``use_base_update``, ``base_activation``, ``spline_weight_init_scale``) are
accepted and ignored here too. Unlike upstream, inputs may have any leading dims ``(..., in)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medkernels import ops
from medkernels._typing import Device, DType

__all__ = ["FasterKAN", "FasterKANLayer", "ReflectionalSwitchFunction", "SplineLinear"]


class SplineLinear(nn.Linear):
    """Bias-free ``nn.Linear`` with Xavier-uniform initialisation (FasterKAN's ``SplineLinear``).

    Args:
        in_features: ``in * G``.
        out_features: outputs.
        init_scale: kept for compatibility; unused (upstream does not use it either).
        device, dtype: of the weight.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        init_scale: float = 0.1,
        *,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        self.init_scale = init_scale
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)


class ReflectionalSwitchFunction(nn.Module):
    """The RSWAF basis ``(..., in) -> (..., in, G)``: ``1 - tanh((x[..., None] - grid) * inv_denominator)^2``.

    Holds the grid (parameter ``grid``, frozen unless ``train_grid``) and ``inv_denominator = 1 /
    denominator`` (a float, or the parameter ``inv_denominator`` with ``train_inv_denominator``). Calling it
    materialises the basis (the unfused path); :class:`FasterKANLayer` never does.

    Args:
        grid_min, grid_max, num_grids: the grid ``linspace(grid_min, grid_max, num_grids)``.
        exponent: must be 2 (the squared tanh of the RSWAF basis).
        denominator: bump width; must be finite and nonzero.
        train_grid, train_inv_denominator: make the grid / inverse denominator trainable.
        device, dtype: of the grid (and trainable inv_denominator).
    """

    def __init__(
        self,
        grid_min: float = -2.0,
        grid_max: float = 2.0,
        num_grids: int = 8,
        exponent: int = 2,
        denominator: float = 0.33,
        *,
        train_grid: bool = False,
        train_inv_denominator: bool = False,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(num_grids, int) or isinstance(num_grids, bool) or num_grids < 1:
            raise ValueError(f"{name}: num_grids must be an int >= 1, got {num_grids!r}")
        if exponent != 2:
            raise ValueError(f"{name}: only exponent=2 (the RSWAF basis 1 - tanh^2) is implemented, got {exponent!r}")
        if not isinstance(denominator, (int, float)) or not math.isfinite(denominator) or denominator == 0:
            raise ValueError(f"{name}: denominator must be a finite nonzero number, got {denominator!r}")
        if not (math.isfinite(grid_min) and math.isfinite(grid_max)):
            raise ValueError(f"{name}: grid_min and grid_max must be finite, got {grid_min!r}, {grid_max!r}")
        self.grid_min, self.grid_max, self.num_grids = float(grid_min), float(grid_max), num_grids
        self.denominator = float(denominator)
        self.grid = nn.Parameter(
            torch.linspace(grid_min, grid_max, num_grids, device=device, dtype=dtype), requires_grad=train_grid
        )
        if train_inv_denominator:
            self.inv_denominator = nn.Parameter(torch.tensor(1.0 / denominator, device=device, dtype=dtype))
        else:
            self.inv_denominator = 1.0 / self.denominator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in) -> (..., in, G)`` (materialised)."""
        return ops.rswaf_basis(x, self.grid, self.inv_denominator).unflatten(-1, (x.shape[-1], self.num_grids))

    def extra_repr(self) -> str:
        return (
            f"grid=linspace({self.grid_min}, {self.grid_max}, {self.num_grids}), denominator={self.denominator}, "
            f"train_grid={self.grid.requires_grad}, "
            f"train_inv_denominator={isinstance(self.inv_denominator, nn.Parameter)}"
        )


class FasterKANLayer(nn.Module):
    """One FasterKAN layer: ``LayerNorm -> RSWAF basis -> bias-free linear``, the last two fused.

    Args:
        input_dim: input features (``in``).
        output_dim: output features.
        grid_min, grid_max, num_grids: the grid ``linspace(grid_min, grid_max, num_grids)`` (G points).
        exponent: must be 2.
        denominator: bump width (``inv_denominator = 1 / denominator``).
        use_base_update, base_activation, spline_weight_init_scale: accepted for compatibility with the
            upstream constructor, which ignores them too.
        train_grid, train_inv_denominator: make the grid / inverse denominator trainable.
        backend: medkernels backend of :func:`medkernels.ops.rswaf_kan` (None = automatic).
        device, dtype: of the parameters.

    Shapes:
        ``(..., input_dim) -> (..., output_dim)``.

    State dict: ``layernorm.weight``, ``layernorm.bias`` ``(input_dim,)``, ``rbf.grid`` ``(G,)``,
    ``spline_linear.weight`` ``(output_dim, input_dim * G)`` (and ``rbf.inv_denominator`` ``()`` with
    ``train_inv_denominator``).
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        grid_min: float = -2.0,
        grid_max: float = 2.0,
        num_grids: int = 8,
        exponent: int = 2,
        denominator: float = 0.33,
        use_base_update: bool = True,
        base_activation: Callable[[torch.Tensor], torch.Tensor] = F.silu,
        spline_weight_init_scale: float = 0.1,
        *,
        train_grid: bool = False,
        train_inv_denominator: bool = False,
        backend: str | None = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, v in (("input_dim", input_dim), ("output_dim", output_dim)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: {arg} must be an int >= 1, got {v!r}")
        self.input_dim, self.output_dim = input_dim, output_dim
        self.backend = backend
        self.layernorm = nn.LayerNorm(input_dim, device=device, dtype=dtype)
        self.rbf = ReflectionalSwitchFunction(
            grid_min,
            grid_max,
            num_grids,
            exponent,
            denominator,
            train_grid=train_grid,
            train_inv_denominator=train_inv_denominator,
            device=device,
            dtype=dtype,
        )
        self.spline_linear = SplineLinear(
            input_dim * num_grids, output_dim, spline_weight_init_scale, device=device, dtype=dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(..., input_dim)``. Returns ``(..., output_dim)``: LayerNorm, then the fused RSWAF basis
        and linear map (upstream has no base term either: ``use_base_update`` is ignored, as there)."""
        if x.dim() < 1 or x.shape[-1] != self.input_dim:
            raise ValueError(
                f"{type(self).__name__}: expected input (..., {self.input_dim}), got shape {tuple(x.shape)}"
            )
        u = self.layernorm(x)
        weight = self.spline_linear.weight
        device_type = u.device.type
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
            # A linear map: under autocast it runs in the autocast dtype, as nn.Linear (the kernel needs x and
            # weight in one dtype and accumulates in float32); the weight's gradient flows back in its dtype.
            dtype = torch.get_autocast_dtype(device_type)
            u, weight = u.to(dtype), weight.to(dtype)
        return ops.rswaf_kan(u, self.rbf.grid, self.rbf.inv_denominator, weight, backend=self.backend)

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, output_dim={self.output_dim}, num_grids={self.rbf.num_grids}"


class FasterKAN(nn.Module):
    """A stack of :class:`FasterKANLayer` (no activation in between, as upstream).

    Args:
        layers_hidden: widths ``[in, hidden..., out]`` (at least two); layer n maps
            ``layers_hidden[n] -> layers_hidden[n + 1]``.
        grid_min, grid_max, num_grids, exponent, denominator, use_base_update, base_activation,
        spline_weight_init_scale, train_grid, train_inv_denominator, backend, device, dtype: passed to
            every layer (see :class:`FasterKANLayer`; upstream's FasterKAN default init scale is 0.667, unused).

    Shapes:
        ``(..., layers_hidden[0]) -> (..., layers_hidden[-1])``.

    State dict: ``layers.<n>.`` + the layer's names.
    """

    def __init__(
        self,
        layers_hidden: Sequence[int],
        grid_min: float = -2.0,
        grid_max: float = 2.0,
        num_grids: int = 8,
        exponent: int = 2,
        denominator: float = 0.33,
        use_base_update: bool = True,
        base_activation: Callable[[torch.Tensor], torch.Tensor] = F.silu,
        spline_weight_init_scale: float = 0.667,
        *,
        train_grid: bool = False,
        train_inv_denominator: bool = False,
        backend: str | None = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        widths = list(layers_hidden) if isinstance(layers_hidden, (list, tuple)) else None
        if widths is None or len(widths) < 2:
            raise ValueError(
                f"{type(self).__name__}: layers_hidden must be a list of at least 2 widths, got {layers_hidden!r}"
            )
        self.layers_hidden = widths
        self.layers = nn.ModuleList(
            [
                FasterKANLayer(
                    i,
                    o,
                    grid_min,
                    grid_max,
                    num_grids,
                    exponent,
                    denominator,
                    use_base_update,
                    base_activation,
                    spline_weight_init_scale,
                    train_grid=train_grid,
                    train_inv_denominator=train_inv_denominator,
                    backend=backend,
                    device=device,
                    dtype=dtype,
                )
                for i, o in zip(widths[:-1], widths[1:])
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(..., layers_hidden[0])``. Returns ``(..., layers_hidden[-1])`` (the layers in turn)."""
        for layer in self.layers:
            x = layer(x)
        return x

    def extra_repr(self) -> str:
        return f"layers_hidden={self.layers_hidden}"
