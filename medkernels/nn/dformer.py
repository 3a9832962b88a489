"""D-Former's attention module and transformer block, on :func:`medkernels.ops.dilated_attention3d_qkvpacked`.

Wu et al., "D-Former: a U-shaped Dilated Transformer for 3D medical image segmentation", Neural Computing
and Applications 2023 (arXiv 2201.00462). Blocks alternate local-scope (LS-MSA) and global dilated-scope (GS-MSA) group
attention over ``[B, D, H, W, C]`` token grids. Parameter names follow the official code
(``attn.qkv``, ``attn.proj``, ``norm1``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), so its block weights load.

The global scope has two padding rules. By default (``interval=None``) each axis is padded to a multiple of
the group size g and the interval is ``padded size / g`` (:func:`medkernels.ops.dilated_attention3d`). The
official code pads each axis to a multiple of its stage's ``interval`` instead (8/4/2/1 from stage 1) and
takes ``I = padded size // g``: token p then belongs to group ``p mod I``. Both agree when g divides the
size; they differ on padded axes (at 12 rows with g = 8 and interval 4 the official rule makes one group of
all 12 rows, pad-to-group-size two groups of 6 (8 with padding)). ``interval=`` reproduces the official
rule exactly, with the padding masked on every axis (the official mask forgets depth-only padding). Where
the official rule would crash (``(padded // I) * I != padded``, e.g. 28 rows with interval 4 and g = 8) the
groups are still the residues mod I.
"""

from __future__ import annotations

import torch
from torch import nn

from medkernels import ops
from medkernels._typing import Device, DType, IntOrTuple
from medkernels.ops.checks import group_size3

from ._layers import DropPath, Mlp

__all__ = ["DilatedAttention3d", "DFormerBlock", "official_global_intervals"]


def _interval3(name: str, interval: IntOrTuple | None) -> tuple[int, int, int] | None:
    if interval is None:
        return None
    try:
        return group_size3(name, interval)
    except ValueError:
        raise ValueError(f"{name}: interval must be None, an int or 3 ints, each >= 1, got {interval!r}") from None


def official_global_intervals(
    spatial: tuple[int, int, int], group_size: IntOrTuple, interval: IntOrTuple
) -> tuple[int, int, int]:
    """D-Former's global-scope interval per axis as its official code computes it: the axis padded to a
    multiple of ``interval``, then ``I = padded // group`` (at least 1); token p is in group ``p mod I``.

    Args:
        spatial: (D, H, W).
        group_size: int or (gD, gH, gW).
        interval: int or 3 ints (the stage's interval, 8/4/2/1 from stage 1 in D-Former).

    Returns:
        (I_D, I_H, I_W).
    """
    group = group_size3("official_global_intervals", group_size)
    iv = group_size3("official_global_intervals", interval)
    return tuple(max(-(-n // s) * s // g, 1) for n, g, s in zip(spatial, group, iv))


def _attend_residues(
    qkv: torch.Tensor,
    intervals: list[int],
    scale: float,
    dropout_p: float,
    backend: str | None,
) -> torch.Tensor:
    """Attention within the residue classes ``p mod I`` of every axis of a packed qkv ``[B, D, H, W, 3, heads,
    dim]``; returns ``[B, D, H, W, heads, dim]``.

    One op call when every axis' classes are the op's own global groups, i.e. ``ceil(n / g) == I`` for
    ``g = ceil(n / I)`` (the op pads the axis to ``g * I`` and masks the padding). An axis where they are
    not (few rows, much padding: 12 rows with I = 8 are classes of 2 and of 1 rows, which no g makes) is
    split into the classes holding ``rows + 1`` members and those holding ``rows`` (``n = rows * I + s``),
    each gathered member-major so that the op's global groups of it are exactly those classes."""
    group = []
    for a in range(3):
        n, I = qkv.shape[1 + a], intervals[a]
        g = -(-n // I)
        if -(-n // g) != I:
            break
        group.append(g)
    else:
        return ops.dilated_attention3d_qkvpacked(qkv, group, "global", scale, dropout_p=dropout_p, backend=backend)
    a = len(group)
    n, I = qkv.shape[1 + a], intervals[a]
    rows, s = divmod(n, I)  # s > 0 here: with s == 0, g = rows is exact
    r = torch.arange(I, device=qkv.device)
    m = torch.arange(rows + 1, device=qkv.device)[:, None] * I
    parts = [((m + r[:s]).flatten(), s), ((m[:rows] + r[s:]).flatten(), I - s)]  # (member-major index, classes)
    outs, order = [], []
    for idx, classes in parts:
        if idx.numel() == 0:  # rows == 0: the classes past s hold no token
            continue
        sub = list(intervals)
        sub[a] = classes
        outs.append(_attend_residues(qkv.index_select(1 + a, idx), sub, scale, dropout_p, backend))
        order.append(idx)
    out = torch.cat(outs, 1 + a) if len(outs) > 1 else outs[0]
    return out.index_select(1 + a, torch.argsort(torch.cat(order)))


class DilatedAttention3d(nn.Module):
    """Multi-head group self-attention on ``[B, D, H, W, C]`` (D-Former's ``Attention``).

    Args:
        dim: channels C.
        num_heads: heads; must divide C.
        group_size: int or ``(gD, gH, gW)``: tokens per group along each axis (clamped to the axis).
        scope: ``"local"`` (LS-MSA: windows of group_size tokens) or ``"global"`` (GS-MSA: the dilated
            partition, tokens ``padded size / group size`` apart).
        qkv_bias: bias in the qkv projection.
        qk_scale: softmax scale, default head_dim ** -0.5.
        attn_drop: dropout on the attention weights (training then runs the reference path, which
            forms the weights).
        proj_drop: dropout after the output projection.
        interval: global scope only: None pads each axis to a multiple of the group size; an int or 3 ints
            apply the official code's rule (pad to a multiple of the interval, ``I = padded // group``;
            see the module docstring). D-Former's stages use 8/4/2/1.
        backend: medkernels backend of the attention (None = automatic).
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        group_size: IntOrTuple = (2, 8, 8),
        scope: str = "local",
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        *,
        interval: IntOrTuple | None = None,
        backend: str | None = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if dim % num_heads != 0:
            raise ValueError(f"{name}: num_heads ({num_heads}) must divide dim ({dim})")
        if scope not in ("local", "global"):
            raise ValueError(f"{name}: scope must be 'local' or 'global', got {scope!r}")
        if not 0.0 <= attn_drop < 1.0 or not 0.0 <= proj_drop < 1.0:
            raise ValueError(f"{name}: attn_drop and proj_drop must be in [0, 1), got {attn_drop=}, {proj_drop=}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.group_size = group_size3(name, group_size)
        self.scope = scope
        self.interval = _interval3(name, interval)
        if self.interval is not None and scope != "global":
            raise ValueError(f"{name}: interval applies to the global scope only, got scope={scope!r}")
        self.scale = qk_scale or self.head_dim**-0.5
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **factory)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **factory)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, group_size: IntOrTuple | None = None) -> torch.Tensor:
        """Args: x ``[B, D, H, W, C]``; group_size: overrides the module's for this call (with the op's
        pad-to-group-size rule, whatever ``interval`` says; ``(D, H, W)`` is one group).
        Returns ``[B, D, H, W, C]``."""
        if x.dim() != 5 or x.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__}: expected [B, D, H, W, {self.dim}], got {tuple(x.shape)}")
        B, D, H, W, C = x.shape
        # q, k, v stay packed (read in place; the fused backward writes one packed gradient)
        qkv = self.qkv(x).reshape(B, D, H, W, 3, self.num_heads, self.head_dim)
        dropout_p = self.attn_drop.p if self.training else 0.0  # > 0: the reference runs (ops warns once)
        if group_size is None and self.interval is not None:
            iv = official_global_intervals((D, H, W), self.group_size, self.interval)
            out = _attend_residues(qkv, list(iv), self.scale, dropout_p, self.backend)
        else:
            group = self.group_size if group_size is None else group_size
            out = ops.dilated_attention3d_qkvpacked(
                qkv, group, self.scope, self.scale, dropout_p=dropout_p, backend=self.backend
            )
        return self.proj_drop(self.proj(out.reshape(B, D, H, W, C)))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, group_size={self.group_size}, scope={self.scope!r}, "
            + (f"interval={self.interval}, " if self.interval is not None else "")
            + f"attn_drop={self.attn_drop.p}"
        )


class DFormerBlock(nn.Module):
    """D-Former transformer block on ``[B, D, H, W, C]``: ``x + drop_path(attn(norm1(x)))`` then
    ``x + drop_path(mlp(norm2(x)))`` (pre-LN; MLP ratio 4 with GELU by default).

    As in D-Former, when the grid is smaller than the group in height or width the block attends over
    the whole volume (the deepest stage, 4^3 tokens for group (2, 8, 8), is full attention). It decides on
    every call: the official block switches itself to full attention for good after one small input.

    Args:
        dim: channels C.
        num_heads: heads; must divide C.
        group_size: ``(gD, gH, gW)``, D-Former's default (2, 8, 8).
        scope: ``"local"`` (LS-MSA, even blocks in D-Former) or ``"global"`` (GS-MSA, odd blocks).
        mlp_ratio: MLP hidden size over dim.
        qkv_bias: bias in the qkv projection.
        qk_scale: softmax scale, default head_dim ** -0.5.
        drop: dropout after each projection.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic depth rate of both residual branches.
        act_layer: MLP activation (nn.GELU).
        norm_layer: normalisation (nn.LayerNorm).
        interval: global scope: the official padding rule's interval (see :class:`DilatedAttention3d`);
            None pads to a multiple of the group size.
        backend: medkernels backend of the attention (None = automatic).
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        group_size: IntOrTuple = (2, 8, 8),
        scope: str = "local",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        *,
        interval: IntOrTuple | None = None,
        backend: str | None = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.norm1 = norm_layer(dim, **factory)
        self.attn = DilatedAttention3d(
            dim,
            num_heads,
            group_size,
            scope,
            qkv_bias,
            qk_scale,
            attn_drop,
            drop,
            interval=interval,
            backend=backend,
            **factory,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim, **factory)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, D, H, W, C]``. Returns the same shape."""
        if x.dim() != 5:
            raise ValueError(f"{type(self).__name__}: expected [B, D, H, W, C], got {tuple(x.shape)}")
        _, D, H, W, _ = x.shape
        g = self.attn.group_size
        group = (D, H, W) if H < g[1] or W < g[2] else None  # D-Former: no partition on a small map
        x = x + self.drop_path(self.attn(self.norm1(x), group))
        return x + self.drop_path(self.mlp(self.norm2(x)))
