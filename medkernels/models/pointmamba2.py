"""PointMamba2: a hierarchical point-cloud state-space model for anatomical point clouds.

Zhang, Yang, Li, "PointMamba2" (hierarchical point-cloud SSM), MICCAI 2025, arXiv 2504.13015; official code
github.com/wlsdzyzl/flemme at commit cde13ac (building block ``pmamba_non_ffn``, "the original experimental
setting in MICCAI submission"): ``PointMamba2Encoder`` (``flemme/encoder/point/pointmamba2.py``) on
``Point2Encoder`` / ``Point2Decoder`` (``pointnet2.py``), the layers of ``flemme/block/pcd.py`` and the blocks of
``flemme/block/pmamba.py``, configured by the MedPointS files ``resources/pcd/medpoints/cls/
train_pointmamba2knn_clm.yaml`` (classification, 46 classes, 2048 points) and ``seg/train_pointmamba2knn_sem.yaml``
(segmentation, 4096 points).

Encoder (``(B, N, 3)`` points, optional ``(B, N, C)`` features concatenated to them):
    f = point_proj([xyz, feats])            Linear(3 + C -> 64)
    e = pos_embed(xyz)                      Linear(3 -> 64), computed once and carried to every level
    for each level l (FPS to 1024/512/256/128/64 points, 64/64/128/256/512 channels):
        centres = FPS(xyz, M_l) (start at index 0, as pointnet2's kernel)
        for each scale (k = 16 and 32, half the channels each):
            neighbours = the k nearest of each centre in FEATURE space (its own point first)
            sequences [e_j - e_centre || f_j] (B*M, k, 64 + C) -> 2 vanilla Point-SSM blocks
                (:class:`~medkernels.nn.PointSSMBlock`: C_in -> hidden -> C_l/2) -> max over k
        f = concat(scales); 2 group Point-SSM blocks (:class:`~medkernels.nn.PointSSMGroupBlock`, the 8
            coordinate / inside-out orderings of the M_l centres)
    final_concat: every level's features gathered at the last level's points (64+64+64+128+256+512 = 1088)
        -> Linear+GroupNorm+LeakyReLU (544) -> Linear (512)
    global = concat(max, mean over points) (1024) -> dense Linear+GroupNorm+LeakyReLU blocks

Classifier: the encoder with dense 1024 -> 1024 -> 512 -> 256, then ``classifier`` Linear(256 -> classes).
Segmenter: the encoder with dense 1024 -> 1024 (the global feature); the decoder propagates features back
level by level (``FeaturePropogatingLayer``: the known level's features at each point by inverse-distance
weights over its 3 nearest known points in xyz, ``1 / (d + 1e-8)`` normalised, d the Euclidean distance; the
first step broadcasts the global feature), concatenated with the level's own (skip) features, then 2 vanilla
Point-SSM blocks over the level's points in their sampling order (fp channels 1024/512/512/256/256/128), and
``final`` Linear(128 -> classes) per point.

Official-code behaviour kept, and where it is stated:
    - Channel attention: the configs set ``channel_attention: eca`` and the encoder builds an ECA per level, but
      its forward calls ``self.ca[lid](features)`` and discards the result (the decoder never calls its own):
      the ECA weights exist (3 per module, so checkpoints load), change nothing, and are frozen
      (``requires_grad=False``: DistributedDataParallel needs every trainable parameter to get a gradient).
      ``apply_channel_attention=True`` applies the encoder's ECA as the config intended (a different model from
      the published weights) and makes its weights trainable.
    - kNN ties: the official KNN_CUDA breaks distance ties by its own sort; ours by the lower index.
    - The orderings' argsort: stable here, unstable upstream (ties only).
    - Padded batches (``lengths``) are ours: upstream takes equal-size clouds only.

Parameter names are flemme's (``encoder.msg.{l}.bb.{s}.building_blocks.{i}.bb.mamba.in_proj.weight``,
``encoder.lrm.{l}.building_blocks.{i}.x_proj_weight``, ``encoder.final_concat.mlp.mlp.{i}.linear.weight``,
``encoder.dense.{i}.norm.weight``, ``classifier.weight``, ``decoder.fp.{i}.bb.building_blocks.{j}...``,
``decoder.final.weight``), so a flemme ``ClM``/``SeM`` checkpoint of this configuration loads with
``strict=True`` through :func:`medkernels.models.load_checkpoint`. The classifier has 19,593,885 parameters at
46 classes (flemme's count at cde13ac: 19.59M); the segmenter 68,134,767 at 46 classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medkernels import ops
from medkernels._typing import Backend
from medkernels.nn import Mamba, PointSSMBlock, PointSSMGroupBlock, point_scan_orders

from ._backend import KernelBackend
from ._flops import forward_flops
from ._registry import register_model

__all__ = ["PointMamba2Classifier", "PointMamba2Encoder", "PointMamba2Segmenter"]


def _middle(cin: int, cout: int, unit: int = 16) -> int:
    """flemme's ``get_middle_channel``: the hidden width of a two-block stack, a multiple of 16."""
    t = max(max(cin, cout) // 2, min(cin, cout))
    return -(-t // unit) * unit


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, C) at idx (B, *S) -> (B, *S, C), one index_select on the flattened batch."""
    B, N, C = x.shape
    flat = (idx + torch.arange(B, device=idx.device).view(B, *([1] * (idx.dim() - 1))) * N).reshape(-1)
    return x.reshape(B * N, C).index_select(0, flat).reshape(*idx.shape, C)


class _Dense(nn.Module):
    """flemme's DenseBlock: Linear, then GroupNorm over the channels and LeakyReLU (both optional)."""

    def __init__(self, cin: int, cout: int, norm: bool, groups: int, slope: float) -> None:
        super().__init__()
        self.linear = nn.Linear(cin, cout)
        self.norm = nn.GroupNorm(groups, cout) if norm else nn.Identity()
        self.slope = slope if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        if self.slope is None:
            return x
        if x.dim() == 2:
            return F.leaky_relu(self.norm(x), self.slope)
        return F.leaky_relu(self.norm(x.transpose(1, 2)).transpose(1, 2), self.slope)


class _MLP(nn.Module):
    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.mlp = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.mlp:
            x = m(x)
        return x


class _ECA(nn.Module):
    """ECA channel attention over (B, M, C): x * sigmoid(conv1d_3(mean over points))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x.mean(1)[:, None]))[:, 0, None]


class _Seq(nn.Module):
    """flemme's GroupSeqModelingLayer: the block over (B*M, k, C) neighbour sequences (the name ``bb``)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.bb = block


class _Blocks(nn.Module):
    """flemme's MultipleBuildingBlocks (the name ``building_blocks``)."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.building_blocks = nn.ModuleList(blocks)


class _Grouping(nn.Module):
    """flemme's SamplingAndGroupingLayer: per scale, the vanilla blocks over the neighbour sequences."""

    def __init__(self, cin: int, couts: Sequence[int], block) -> None:
        super().__init__()
        self.bb = nn.ModuleList(
            _Blocks([_Seq(block(cin, _middle(cin, c))), _Seq(block(_middle(cin, c), c))]) for c in couts
        )


class _Propagation(nn.Module):
    """flemme's FeaturePropogatingLayer: two vanilla blocks over the points of a level."""

    def __init__(self, cin: int, cout: int, block) -> None:
        super().__init__()
        self.bb = _Blocks([block(cin, _middle(cin, cout)), block(_middle(cin, cout), cout)])


def _check_points(name: str, xyz: torch.Tensor, features, lengths, in_features: int, min_points: int) -> None:
    if not isinstance(xyz, torch.Tensor) or xyz.dim() != 3 or xyz.shape[-1] != 3:
        shape = tuple(xyz.shape) if isinstance(xyz, torch.Tensor) else type(xyz).__name__
        raise ValueError(f"{name}: xyz must be a (B, N, 3) tensor, got {shape}")
    if xyz.shape[1] < min_points:
        raise ValueError(f"{name}: xyz has {xyz.shape[1]} points, the first level samples {min_points}")
    if (features is None) != (in_features == 0):
        raise ValueError(
            f"{name}: built with in_features={in_features}, so features must be "
            + ("None" if in_features == 0 else f"a (B, N, {in_features}) tensor")
        )
    if features is not None and (features.dim() != 3 or features.shape != (*xyz.shape[:2], in_features)):
        raise ValueError(
            f"{name}: features must have shape {(*xyz.shape[:2], in_features)}, got {tuple(features.shape)}"
        )
    if lengths is not None and (
        not isinstance(lengths, torch.Tensor) or lengths.shape != (xyz.shape[0],) or lengths.is_floating_point()
    ):
        raise ValueError(f"{name}: lengths must be a ({xyz.shape[0]},) integer tensor")


class PointMamba2Encoder(KernelBackend, nn.Module):
    """PointMamba2's encoder (see the module docstring).

    Args:
        in_features: extra per-point input channels besides xyz (0: coordinates only).
        num_points: points sampled at each level (FPS).
        channels: feature channels of each level (each split evenly over the scales).
        neighbors: k of each scale (nearest first in feature space), the same at every level.
        dense_channels: widths of the dense blocks after the global pooling.
        embed_dim: the point projection and positional-embedding width (64).
        d_state, d_conv, expand: of every Mamba (64, 4, 2).
        num_groups: GroupNorm groups (8).
        negative_slope: of every LeakyReLU (0.01).
        apply_channel_attention: apply the per-level ECA (False: the official forward, which discards it).
        backend: forced backend of the kernels (None: automatic); ``encoder.backend`` reads and sets it later.

    Shapes:
        forward(xyz (B, N, 3), features (B, N, in_features) or None, lengths (B,) or None) -> a dict with
        ``global`` (B, dense_channels[-1]), ``features`` (the per-level features [(B, N, embed_dim),
        (B, M_1, C_1), ...]) and ``xyz`` ([(B, N, 3), (B, M_1, 3), ...]). With ``lengths``, cloud b is
        ``xyz[b, :lengths[b]]`` (each at least ``num_points[0]``); the levels after the first have no padding.
    """

    _kernel_types = (Mamba, PointSSMGroupBlock)  # their backend is the model's, and FPS's and kNN's

    def __init__(
        self,
        in_features: int = 0,
        num_points: Sequence[int] = (1024, 512, 256, 128, 64),
        channels: Sequence[int] = (64, 64, 128, 256, 512),
        neighbors: Sequence[int] = (16, 32),
        dense_channels: Sequence[int] = (1024, 512, 256),
        embed_dim: int = 64,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        num_groups: int = 8,
        negative_slope: float = 0.01,
        apply_channel_attention: bool = False,
        backend: Backend = None,
    ) -> None:
        super().__init__()
        if len(num_points) != len(channels) or not num_points:
            raise ValueError(
                f"PointMamba2Encoder: num_points and channels need one entry per level, got {len(num_points)} "
                f"and {len(channels)}"
            )
        if any(b > a for a, b in zip(num_points, num_points[1:])) or min(num_points) < 1:
            raise ValueError(f"PointMamba2Encoder: num_points must be positive and non-increasing, got {num_points}")
        if not neighbors or min(neighbors) < 1:
            raise ValueError(f"PointMamba2Encoder: neighbors must be positive ints, got {neighbors}")
        S = len(neighbors)
        for c in channels:
            if c % (S * num_groups) != 0:
                raise ValueError(
                    f"PointMamba2Encoder: every channel count must be divisible by len(neighbors) * num_groups = "
                    f"{S * num_groups}, got {tuple(channels)}"
                )
        if not dense_channels:
            raise ValueError("PointMamba2Encoder: dense_channels must not be empty")
        self.in_features = in_features
        self.num_points, self.channels, self.neighbors = tuple(num_points), tuple(channels), tuple(neighbors)
        self.negative_slope = negative_slope

        def vanilla(cin: int, cout: int) -> PointSSMBlock:
            return PointSSMBlock(
                cin, cout, d_state, d_conv, expand, num_groups=num_groups, negative_slope=negative_slope,
                backend=backend,
            )  # fmt: skip

        self.point_proj = nn.Linear(3 + in_features, embed_dim)
        self.pos_embed = nn.Linear(3, embed_dim)
        path = [embed_dim, *channels]
        self.ca = nn.ModuleList(_ECA() for _ in channels)
        self.apply_channel_attention = apply_channel_attention  # freezes the ECA weights while they are unused
        # flemme's get_scale_channel: halves from the last scale down; the first takes the remainder
        self.msg = nn.ModuleList(
            _Grouping(path[i] + embed_dim, [c - (S - 1) * (c // S), *[c // S] * (S - 1)][::-1], vanilla)
            for i, c in enumerate(channels)
        )
        group = dict(d_state=d_state, d_conv=d_conv, expand=expand, num_groups=num_groups)
        self.lrm = nn.ModuleList(
            _Blocks([PointSSMGroupBlock(c, negative_slope=negative_slope, backend=backend, **group) for _ in range(2)])
            for c in channels
        )
        total = sum(path)
        self.final_concat = nn.Module()  # flemme's SampledFeatureCatLayer, its MultiLayerPerceptionBlock
        self.final_concat.mlp = _MLP(
            [
                _Dense(total, _middle(total, channels[-1]), True, num_groups, negative_slope),
                _Dense(_middle(total, channels[-1]), channels[-1], False, num_groups, negative_slope),
            ]
        )
        dims = [2 * channels[-1], *dense_channels]
        self.dense = nn.ModuleList(_Dense(a, b, True, num_groups, negative_slope) for a, b in zip(dims, dims[1:]))
        self.out_channels = dims[-1]

    @property
    def apply_channel_attention(self) -> bool:
        """Whether the per-level ECA is applied (settable). While it is not (the official forward), its weights have
        ``requires_grad=False``, so that optimizers and DistributedDataParallel see no parameter without a gradient."""
        return self._apply_ca

    @apply_channel_attention.setter
    def apply_channel_attention(self, value: bool) -> None:
        self._apply_ca = bool(value)
        self.ca.requires_grad_(self._apply_ca)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_points={self.num_points}, channels={self.channels}, "
            f"neighbors={self.neighbors}, apply_channel_attention={self.apply_channel_attention}"
        )

    def forward(
        self, xyz: torch.Tensor, features: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> dict:
        """See the class docstring."""
        _check_points("PointMamba2Encoder", xyz, features, lengths, self.in_features, self.num_points[0])
        bk = self.backend
        f = self.point_proj(xyz if features is None else torch.cat([xyz, features.to(xyz.dtype)], -1))
        e = self.pos_embed(xyz)
        xyzs, feats, ids = [xyz], [f], []
        for lvl, M in enumerate(self.num_points):
            lens = lengths if lvl == 0 else None
            sid = ops.furthest_point_sample(xyz.detach(), M, lengths=lens, backend=bk)
            cxyz, ce, cf = _gather(xyz, sid), _gather(e, sid), _gather(f, sid)
            B = xyz.shape[0]
            outs = []
            for scale, k in zip(self.msg[lvl].bb, self.neighbors):
                _, idx = ops.knn(cf.detach(), f.detach(), k, lengths=lens, backend=bk)
                h = torch.cat([_gather(e, idx) - ce[:, :, None], _gather(f, idx)], -1).reshape(B * M, k, -1)
                for blk in scale.building_blocks:
                    h = blk.bb(h)
                outs.append(h.reshape(B, M, k, -1).amax(2))
            f = torch.cat(outs, -1)
            orders = point_scan_orders(cxyz)
            for blk in self.lrm[lvl].building_blocks:
                f = blk(f, orders=orders)
            if self.apply_channel_attention:
                f = self.ca[lvl](f)
            xyz, e = cxyz, ce
            xyzs.append(xyz)
            feats.append(f)
            ids.append(sid)
        # every level's features at the last level's points
        gathered, sel = [feats[-1]], None
        for lvl in range(len(ids) - 1, -1, -1):
            sel = ids[lvl] if sel is None else torch.gather(ids[lvl], 1, sel)
            gathered.append(_gather(feats[lvl], sel))
        g = self.final_concat.mlp(torch.cat(gathered[::-1], -1))
        g = torch.cat([g.amax(1), g.mean(1)], -1)
        for m in self.dense:
            g = m(g)
        return {"global": g, "features": feats, "xyz": xyzs}


class _Model(KernelBackend, nn.Module):
    _kernel_types = (Mamba, PointSSMGroupBlock)  # the encoder's and the decoder's (KernelBackend)

    default_points = 2048

    def num_params(self, trainable_only: bool = False) -> int:
        """The number of parameters (all, or only those requiring gradients)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def flops(self, num_points: int | None = None, batch_size: int = 1) -> int:
        """Floating-point operations of one forward on ``batch_size`` clouds of ``num_points`` points.

        Rule (the paper gives no count): 2 x the multiply-accumulates of every linear layer (the Mambas' in_proj,
        x_proj, dt_proj and out_proj included) and depthwise conv, plus each selective scan as mamba_ssm's
        ``flops_selective_scan_ref`` counts it (9 L d_inner d_state, and L d_inner for the D skip); FPS, kNN,
        gathers, norms, activations, pooling and additions are not counted. Counted on the meta device (no
        arithmetic), so it follows any configuration and size.

        Args:
            num_points: points per cloud (default 2048 for the classifier, 4096 for the segmenter).
            batch_size: clouds.

        Returns:
            FLOPs (e.g. ``flops() / 1e9`` GFLOPs).
        """
        n = self.default_points if num_points is None else num_points

        def mamba(m, args, _out):
            S, L, D = args[0].shape
            E, N, R, W = m.d_inner, m.d_state, m.dt_rank, m.d_conv
            return S * L * (2 * (D * 2 * E + E * W + E * (R + 2 * N) + R * E + E * D) + 9 * E * N + E)

        def group(m, args, _out):
            S, L, D = args[0].shape
            E, N, R, W, K = m.d_inner, m.d_state, m.dt_rank, m.d_conv, m.num_scans
            return S * L * (2 * (D * 2 * E + E * W + K * (E * (R + 2 * N) + R * E) + E * D) + K * (9 * E * N + E))

        xyz = torch.empty(batch_size, n, 3, device="meta")
        c = self.encoder.in_features
        feats = torch.empty(batch_size, n, c, device="meta") if c else None
        rules = {Mamba: mamba, PointSSMGroupBlock: group}
        return forward_flops(self, [xyz, feats], rules, opaque=(Mamba, PointSSMGroupBlock))


class PointMamba2Classifier(_Model):
    """PointMamba2 classifier (flemme ``ClM`` with the ``PointMamba2`` encoder).

    Args:
        num_classes: output classes (46 for MedPointS).
        **kwargs: :class:`PointMamba2Encoder`'s arguments.

    Shapes:
        forward(xyz (B, N, 3), features (B, N, in_features) or None, lengths (B,) or None) -> logits
        (B, num_classes).
    """

    def __init__(self, num_classes: int = 46, **kwargs) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"PointMamba2Classifier: num_classes must be a positive int, got {num_classes!r}")
        self.encoder = PointMamba2Encoder(**kwargs)
        self.classifier = nn.Linear(self.encoder.out_channels, num_classes)

    def forward(
        self, xyz: torch.Tensor, features: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """See the class docstring."""
        return self.classifier(self.encoder(xyz, features, lengths)["global"])


class PointMamba2Segmenter(_Model):
    """PointMamba2 per-point segmentation (flemme ``SeM`` with the ``PointMamba2`` encoder and decoder).

    Args:
        num_classes: per-point classes (46 for MedPointS).
        fp_channels: widths of the feature-propagation levels after the first (which keeps the global width).
        **kwargs: :class:`PointMamba2Encoder`'s arguments (``num_points`` default 2048/1024/512/256/128,
            ``dense_channels`` default (1024,): the global feature).

    Shapes:
        forward(xyz (B, N, 3), features (B, N, in_features) or None, lengths (B,) or None) -> logits
        (B, N, num_classes); rows past ``lengths[b]`` are zero.
    """

    def __init__(self, num_classes: int = 46, fp_channels: Sequence[int] = (512, 512, 256, 256, 128), **kwargs) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"PointMamba2Segmenter: num_classes must be a positive int, got {num_classes!r}")
        self.default_points = 4096
        kwargs.setdefault("num_points", (2048, 1024, 512, 256, 128))
        kwargs.setdefault("dense_channels", (1024,))
        self.encoder = enc = PointMamba2Encoder(**kwargs)
        if len(fp_channels) != len(enc.channels):
            raise ValueError(
                f"PointMamba2Segmenter: fp_channels needs one entry per encoder level ({len(enc.channels)}), "
                f"got {len(fp_channels)}"
            )
        groups = enc.lrm[0].building_blocks[0].norm.num_groups
        slope = enc.negative_slope
        mamba = enc.msg[0].bb[0].building_blocks[0].bb.mamba
        skips = [*enc.channels[::-1][1:], enc.point_proj.out_features]  # the level features, last level first
        path = [enc.out_channels, enc.out_channels, *fp_channels]
        for c in path[1:]:
            if c % groups != 0:
                raise ValueError(f"PointMamba2Segmenter: fp_channels must be multiples of {groups}, got {fp_channels}")

        def vanilla(cin: int, cout: int) -> PointSSMBlock:
            return PointSSMBlock(
                cin, cout, mamba.d_state, mamba.d_conv, mamba.expand, num_groups=groups, negative_slope=slope,
                backend=enc.backend,
            )  # fmt: skip

        known = path[:-1]
        unknown = [enc.channels[-1], *skips]
        self.decoder = nn.Module()
        self.decoder.fp = nn.ModuleList(_Propagation(k + u, c, vanilla) for k, u, c in zip(known, unknown, path[1:]))
        self.decoder.ca = nn.ModuleList(_ECA() for _ in path[1:]).requires_grad_(False)  # built upstream, never used
        self.decoder.final = nn.Linear(path[-1], num_classes)

    def forward(
        self, xyz: torch.Tensor, features: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """See the class docstring."""
        out = self.encoder(xyz, features, lengths)
        feats, xyzs = out["features"][::-1], out["xyz"][::-1]
        bk = self.encoder.backend
        known = out["global"]
        for i, fp in enumerate(self.decoder.fp):
            unknown, n = feats[i], feats[i].shape[1]
            if i == 0:
                interp = known[:, None].expand(-1, n, -1)
            else:
                d2, idx = ops.knn(xyzs[i].detach(), xyzs[i - 1].detach(), 3, backend=bk)
                w = 1.0 / (d2.detach().sqrt() + 1e-8)
                w = w / w.sum(-1, keepdim=True)
                interp = (_gather(known, idx) * w[..., None]).sum(2)
            h = torch.cat([interp, unknown], -1)
            lens = lengths if i == len(self.decoder.fp) - 1 else None
            for blk in fp.bb.building_blocks:
                h = blk(h, lens)
            known = h
        logits = self.decoder.final(known)
        if lengths is not None:
            valid = torch.arange(logits.shape[1], device=logits.device) < lengths.to(logits.device)[:, None]
            logits = logits * valid[..., None]
        return logits


@register_model
def pointmamba2_cls(num_classes: int = 46, **kwargs) -> PointMamba2Classifier:
    """PointMamba2 classifier at the MedPointS setting (2048 points, FPS 1024/512/256/128/64, channels
    64/64/128/256/512, k 16/32): 19,593,885 parameters at 46 classes.

    Args:
        num_classes: classes (46).
        **kwargs: :class:`PointMamba2Encoder`'s arguments.
    """
    return PointMamba2Classifier(num_classes, **kwargs)


@register_model
def pointmamba2_seg(num_classes: int = 46, **kwargs) -> PointMamba2Segmenter:
    """PointMamba2 per-point segmentation at the MedPointS setting (4096 points, FPS 2048/1024/512/256/128,
    channels 64/64/128/256/512, fp channels 512/512/256/256/128, k 16/32).

    Args:
        num_classes: per-point classes (46).
        **kwargs: :class:`PointMamba2Segmenter`'s arguments.
    """
    return PointMamba2Segmenter(num_classes, **kwargs)
