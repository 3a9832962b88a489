"""Independent re-implementations of the official computations medkernels accelerates: test oracles and
benchmark peers.

Each follows the upstream code step by step in plain PyTorch (the papers' repositories: their padding,
reshapes and permutes, materialised intermediates), independent of the medkernels kernels and of their
``*_ref`` oracles in ``medkernels.ops``. The tests compare the ops against them; ``medkernels-bench``
times them as peers (``medkernels.bench.peers``).

- ``dformer_attention_official``: D-Former's dilated attention as its ``model.py`` computes it.
- ``dformer_attention_sdpa``: the same grouping around ``torch.nn.functional.scaled_dot_product_attention``.
- ``dformer_block_official``: one ``DFormerBlock3D`` (norm, grouping once, attention, MLP) as ``model.py`` runs it.
- ``dformer_segnetwork_official``: D-Former's whole ``SegNetwork`` forward as its ``model.py`` computes it.
- ``kan_unfused``: FasterKAN's RSWAF layer (after its LayerNorm), the basis materialised, then ``F.linear``.
- ``ss2d_official``: VM-UNet's SS2D (four permuted copies around ``selective_scan_fn``), the SS2D peer.
- ``tri_oriented_mamba_official``: SegMamba's v3 Mamba (three permuted copies), the TriOrientedMamba peer.
- ``selective_scan_mamba_form``: mamba_ssm's ``selective_scan_ref`` as written there (every ``exp(delta A)`` and
  ``delta B u`` materialised as ``[B, D, L, N]``, then a Python loop indexing one step at a time): what mamba_ssm and
  the papers' code run without a CUDA build.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from medkernels import ops

__all__ = [
    "dformer_attention_official",
    "dformer_attention_sdpa",
    "dformer_block_official",
    "dformer_segnetwork_official",
    "kan_unfused",
    "selective_scan_mamba_form",
    "ss2d_official",
    "tri_oriented_mamba_official",
]


# --- D-Former dilated attention -------------------------------------------------------------------------


class _Groups:
    """D-Former's pad-reshape-permute grouping of a ``[B, D, H, W, heads, dim]`` tensor (the official
    code's ``view``/``permute`` chains), with group sizes clamped to the axes."""

    def __init__(self, shape: Sequence[int], group_size: Sequence[int], scope: str) -> None:
        B, D, H, W, self.heads, self.dim = shape
        self.size = (D, H, W)
        self.g = [min(g, n) for g, n in zip(group_size, self.size)]
        self.pad = [(g - n % g) % g for g, n in zip(self.g, self.size)]
        self.padded = [n + p for n, p in zip(self.size, self.pad)]
        if scope == "local":  # B, Dp/g, g, Hp/g, g, Wp/g, g: windows outer, members inner
            self.view = (
                B,
                self.padded[0] // self.g[0],
                self.g[0],
                self.padded[1] // self.g[1],
                self.g[1],
                self.padded[2] // self.g[2],
                self.g[2],
            )
            self.perm = (0, 1, 3, 5, 2, 4, 6)
        else:  # B, g, I, g, I, g, I with I = padded / g: members outer, groups inner
            self.view = (
                B,
                self.g[0],
                self.padded[0] // self.g[0],
                self.g[1],
                self.padded[1] // self.g[1],
                self.g[2],
                self.padded[2] // self.g[2],
            )
            self.perm = (0, 2, 4, 6, 1, 3, 5)
        self.tokens = self.g[0] * self.g[1] * self.g[2]
        self.inverse = tuple(self.perm.index(i) for i in range(7))

    def group(self, t: torch.Tensor) -> torch.Tensor:
        """``[B, D, H, W, heads, dim]`` -> ``[B * groups, heads, tokens, dim]`` (padded with zeros)."""
        t = F.pad(t, (0, 0, 0, 0, 0, self.pad[2], 0, self.pad[1], 0, self.pad[0]))
        t = t.reshape(*self.view, self.heads, self.dim).permute(*self.perm, 7, 8)
        return t.reshape(-1, self.tokens, self.heads, self.dim).transpose(1, 2)

    def ungroup(self, t: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`group`, cropping the padding."""
        shape = [self.view[p] for p in self.perm]
        t = t.transpose(1, 2).reshape(*shape, self.heads, self.dim).permute(*self.inverse, 7, 8)
        D, H, W = self.size
        return t.reshape(self.view[0], *self.padded, self.heads, self.dim)[:, :D, :H, :W]

    def key_padding(self, device: torch.device) -> torch.Tensor | None:
        """``[groups, tokens]`` True where a member is padding, or None without padding."""
        if not any(self.pad):
            return None
        mask = torch.zeros(1, *self.padded, dtype=torch.bool, device=device)
        D, H, W = self.size
        mask[:, D:] = True
        mask[:, :, H:] = True
        mask[:, :, :, W:] = True  # every axis: the official global-scope mask forgets depth
        m = mask.reshape(1, *self.view[1:]).permute(*self.perm)
        return m.reshape(-1, self.tokens)


def dformer_attention_official(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    group_size: Sequence[int],
    scope: str,
    scale: float | None = None,
) -> torch.Tensor:
    """D-Former's own way (kkk55596/D-Former ``model.py``): pad, reshape and permute q/k/v into
    groups, dense ``q @ k^T`` with an additive -1e6 on padded keys, softmax, ``@ v``, then permute,
    reshape and crop back.

    Args:
        query, key, value: ``[B, D, H, W, heads, dim]``.
        group_size: the (depth, height, width) group, clamped to the axes.
        scope: "local" (contiguous windows) or "global" (members a stride apart).
        scale: the logits' scale; default ``dim ** -0.5``.

    Returns:
        ``[B, D, H, W, heads, dim]``.
    """
    layout = _Groups(query.shape, group_size, scope)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    q, k, v = (layout.group(t) for t in (query, key, value))
    attn = (q * scale) @ k.transpose(-2, -1)
    pad = layout.key_padding(query.device)
    if pad is not None:
        groups = pad.shape[0]
        attn = attn.view(-1, groups, layout.heads, layout.tokens, layout.tokens) + (pad.to(attn.dtype) * -1e6).view(
            1, groups, 1, 1, layout.tokens
        )
        attn = attn.view(-1, layout.heads, layout.tokens, layout.tokens)
    return layout.ungroup(attn.softmax(dim=-1) @ v)


def dformer_attention_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    group_size: Sequence[int],
    scope: str,
    scale: float | None = None,
) -> torch.Tensor:
    """The same grouping, with torch's ``scaled_dot_product_attention`` on the permuted tokens (what a
    user would write today); padded keys masked out. Arguments and result as
    :func:`dformer_attention_official`."""
    layout = _Groups(query.shape, group_size, scope)
    q, k, v = (layout.group(t) for t in (query, key, value))
    pad = layout.key_padding(query.device)
    mask = None
    if pad is not None:
        groups = pad.shape[0]
        mask = (~pad).view(1, groups, 1, 1, layout.tokens).expand(q.shape[0] // groups, -1, -1, -1, -1)
        mask = mask.reshape(q.shape[0], 1, 1, layout.tokens)
    return layout.ungroup(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale))


# --- D-Former SegNetwork ---------------------------------------------------------------------------------

_NEG = -1000000.0  # the official NEG_INF


def _off_ln(p: Mapping[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], p[name + ".weight"], p[name + ".bias"])


def _off_linear(p: Mapping[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, p[name + ".weight"], p.get(name + ".bias"))


def _off_block(
    p: Mapping[str, torch.Tensor], name: str, x: torch.Tensor, heads: int, group: Sequence[int], interval: int, gsm: int
) -> torch.Tensor:
    """``DFormerBlock3D.forward`` of a freshly built block (its full-attention switch kept for this call only)."""
    B, D, H, W, C = x.shape
    shortcut = x
    x = _off_ln(p, name + ".norm1", x)
    if H < group[1]:  # the official switch: one group over the whole map, local scope
        gsm, group = 0, (D, H, W)
    div = (interval,) * 3 if gsm == 1 else tuple(group)
    pad_d, pad_b, pad_r = ((s - n % s) % s for s, n in zip(div, (D, H, W)))
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b, 0, pad_d))
    _, Dp, Hp, Wp, _ = x.shape
    mask = torch.zeros((1, Dp, Hp, Wp, 1), device=x.device)
    if pad_d > 0:
        mask[:, -pad_d:] = -1
    if pad_b > 0:
        mask[:, :, -pad_b:] = -1
    if pad_r > 0:
        mask[:, :, :, -pad_r:] = -1
    if gsm == 0:  # LS-MSA: contiguous windows
        Gd, Gh, Gw = div
        x = x.view(B, Dp // Gd, Gd, Hp // Gh, Gh, Wp // Gw, Gw, C).permute(0, 1, 3, 5, 2, 4, 6, 7).contiguous()
        x = x.reshape(-1, Gd * Gh * Gw, C)
        nG = (Dp * Hp * Wp) // (Gd * Gh * Gw)
        use_mask = pad_d > 0 or pad_b > 0 or pad_r > 0
        grouped = (1, Dp // Gd, Gd, Hp // Gh, Gh, Wp // Gw, Gw, 1), (0, 1, 3, 5, 2, 4, 6, 7)
    else:  # GS-MSA: members an interval apart; the official mask forgets depth-only padding
        Id, Ih, Iw = Dp // group[0], Hp // group[1], Wp // group[2]
        Gd, Gh, Gw = Dp // Id, Hp // Ih, Wp // Iw
        x = x.reshape(B, Gd, Id, Gh, Ih, Gw, Iw, C).permute(0, 2, 4, 6, 1, 3, 5, 7).contiguous()
        x = x.reshape(B * Id * Ih * Iw, Gd * Gh * Gw, C)
        nG = Id * Ih * Iw
        use_mask = pad_r > 0 or pad_b > 0
        grouped = (1, Gd, Id, Gh, Ih, Gw, Iw, 1), (0, 2, 4, 6, 1, 3, 5, 7)
    N = Gd * Gh * Gw
    attn_mask = None
    if use_mask:
        m = mask.reshape(grouped[0]).permute(grouped[1]).contiguous().reshape(nG, 1, N)
        attn_mask = torch.zeros((nG, N, N), device=x.device).masked_fill(m < 0, _NEG)
    # Attention
    B_ = x.shape[0]
    qkv = _off_linear(p, name + ".attn.qkv", x).reshape(B_, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (C // heads) ** -0.5
    attn = q @ k.transpose(-2, -1)
    if attn_mask is not None:
        attn = attn.view(B_ // nG, nG, heads, N, N) + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, N, N)
    attn = attn.softmax(dim=-1)
    x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
    x = _off_linear(p, name + ".attn.proj", x)
    if gsm == 0:
        x = x.reshape(B, Dp // Gd, Hp // Gh, Wp // Gw, Gd, Gh, Gw, C).permute(0, 1, 4, 2, 5, 3, 6, 7).contiguous()
    else:
        x = x.reshape(B, Id, Ih, Iw, Gd, Gh, Gw, C).permute(0, 4, 1, 5, 2, 6, 3, 7).contiguous()
    x = x.view(B, Dp, Hp, Wp, -1)
    if pad_d > 0 or pad_r > 0 or pad_b > 0:
        x = x[:, :D, :H, :W, :].contiguous()
    x = shortcut + x
    h = _off_linear(p, name + ".mlp.fc1", _off_ln(p, name + ".norm2", x))
    return x + _off_linear(p, name + ".mlp.fc2", F.gelu(h))


def dformer_block_official(
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    num_heads: int,
    group_size: Sequence[int] = (2, 8, 8),
    scope: str = "local",
    interval: int = 1,
) -> torch.Tensor:
    """D-Former's ``DFormerBlock3D.forward`` as its ``model.py`` computes it: LayerNorm, the block input padded,
    reshaped and permuted into groups ONCE (local windows, or for ``scope="global"`` members ``interval``-padded
    apart), the qkv projection on the grouped tokens, dense attention with the official mask, the projection,
    the inverse permute and crop, the residual and the MLP. ``params`` are a block's parameters under the
    official names (``norm1.*``, ``attn.qkv.*``, ``attn.proj.*``, ``norm2.*``, ``mlp.fc1.*``, ``mlp.fc2.*``, as
    ``medkernels.nn.DFormerBlock`` names them); ``x`` is ``[B, D, H, W, C]``; returns the same shape."""
    if scope not in ("local", "global"):
        raise ValueError(f"dformer_block_official: scope must be 'local' or 'global', got {scope!r}")
    p = {f"blk.{k}": v for k, v in params.items()}
    return _off_block(p, "blk", x, num_heads, tuple(group_size), interval, 1 if scope == "global" else 0)


def _off_pos(p: Mapping[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    """``PosCNN``: channels-last in and out, a depthwise 3x3x3 convolution on the channels-first view."""
    feat = x.permute(0, 4, 1, 2, 3)
    w = p[name + ".proj.0.weight"]
    y = F.conv3d(feat, w, p[name + ".proj.0.bias"], 1, 1, 1, w.shape[0]) + feat
    return y.permute(0, 2, 3, 4, 1)


def _off_expand(p: Mapping[str, torch.Tensor], name: str, x: torch.Tensor, parts: Sequence[int]) -> torch.Tensor:
    """``PatchExpand3D`` / ``FinalPatchExpand_X4``: Linear, ``b d h w (p0 p1 p2 c) -> b (d p0) (h p1) (w p2) c``,
    LayerNorm."""
    x = _off_linear(p, name + ".expand", x)
    B, D, H, W, C = x.shape
    c = C // (parts[0] * parts[1] * parts[2])
    x = x.reshape(B, D, H, W, *parts, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    x = x.reshape(B, D * parts[0], H * parts[1], W * parts[2], c)
    return _off_ln(p, name + ".norm", x)


def dformer_segnetwork_official(
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    *,
    depths: Sequence[int] = (2, 2, 6, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    patch_size: Sequence[int] = (2, 4, 4),
    group_size: Sequence[int] = (2, 8, 8),
    intervals: Sequence[int] = (8, 4, 2, 1),
    deep_supervision: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """D-Former's ``SegNetwork`` forward as its ``model.py`` computes it (kkk55596/D-Former), on the
    official state-dict names: channels-first stages around channels-last blocks (a ``.contiguous()``
    copy entering each encoder stage, permuted views in and out of the position encoding), per block a
    zero pad, reshape-permute-copy grouping, dense ``q @ k^T`` with an additive -1e6 mask, softmax,
    ``@ v`` and the copies back; patch merging by eight strided slices and a concatenation; every
    decoder head computed (the official code computes all three and returns one or two).

    It is stateless: each call behaves as a freshly built ``SegNetwork`` (the official block keeps the
    full-attention switch it makes on a small map for its later calls). Its global-scope mask forgets
    depth-only padding, as the official code does. Like the official code it needs the token grid
    divisible by 8 on every axis (input D by 16, H and W by 32 with the default patch).

    Args:
        params: the official state dict (``model_down.*``, ``final.*``), e.g. ``model.state_dict()`` of
            ``medkernels.models.create_model("dformer")``, or its named parameters for gradients.
        x: ``[B, C_in, D, H, W]``.
        depths, num_heads, patch_size, group_size, intervals: the configuration the weights were built with.
        deep_supervision: return ``(full, half)`` resolution logits instead of the full-resolution ones.

    Returns:
        ``[B, classes, D', H', W']`` logits at the patch-padded input size, or the deep-supervision tuple.
    """
    p = params
    L = len(depths)
    # PatchEmbed3D: pad W, H, D to the patch, strided convolution, LayerNorm on the flattened tokens
    _, _, D, H, W = x.shape
    if W % patch_size[2] != 0:
        x = F.pad(x, (0, patch_size[2] - W % patch_size[2]))
    if H % patch_size[1] != 0:
        x = F.pad(x, (0, 0, 0, patch_size[1] - H % patch_size[1]))
    if D % patch_size[0] != 0:
        x = F.pad(x, (0, 0, 0, 0, 0, patch_size[0] - D % patch_size[0]))
    x = F.conv3d(x, p["model_down.patch_embed.proj.weight"], p["model_down.patch_embed.proj.bias"], patch_size)
    B, C, D, H, W = x.shape
    x = _off_ln(p, "model_down.patch_embed.norm", x.flatten(2).transpose(1, 2))
    x = x.transpose(1, 2).view(-1, C, D, H, W)
    skips = []
    for i in range(L):  # BasicLayer
        skips.append(x.permute(0, 2, 3, 4, 1))
        x = x.contiguous()
        B, C, D, H, W = x.shape
        name = f"model_down.layers.{i}"
        x = _off_pos(p, name + ".pos_block", x.permute(0, 2, 3, 4, 1))
        for j in range(depths[i]):
            x = _off_block(p, f"{name}.blocks.{j}", x, num_heads[i], group_size, intervals[i], j % 2)
        x = x.view(B, D, H, W, -1)
        if i < L - 1:  # PatchMerging
            if H % 2 == 1 or W % 2 == 1:
                x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
            parts = [x[:, a::2, b::2, c::2, :] for a in (0, 1) for b in (0, 1) for c in (0, 1)]
            x = _off_linear(
                p, name + ".downsample.reduction", _off_ln(p, name + ".downsample.norm", torch.cat(parts, -1))
            )
        x = x.permute(0, 4, 1, 2, 3)
    x = _off_ln(p, "model_down.norm", x.permute(0, 2, 3, 4, 1))
    ups = []
    for inx in range(L):  # forward_up_features
        if inx == 0:
            x = _off_expand(p, "model_down.layers_up.0", x, (2, 2, 2))
        else:
            i = L - 1 - inx
            x = _off_linear(p, f"model_down.concat_back_dim.{inx}", torch.cat([x, skips[i]], -1))
            name = f"model_down.layers_up.{inx}"
            x = _off_pos(p, name + ".pos_block", x)
            for j in range(depths[i]):
                x = _off_block(p, f"{name}.blocks.{j}", x, num_heads[i], group_size, intervals[i], j % 2)
            if inx < L - 1:
                x = _off_expand(p, name + ".upsample", x, (2, 2, 2))
        if inx < 2:
            ups.append(x)
    ups.append(_off_ln(p, "model_down.norm_up", x))
    segs = []
    for i, feat in enumerate(ups):  # every head runs (final[-(i + 1)]): FinalPatchExpand_X4, 1x1x1 convolution
        k = L - 2 - i
        y = _off_expand(p, f"final.{k}.0", feat, patch_size)
        segs.append(F.conv3d(y.permute(0, 4, 1, 2, 3), p[f"final.{k}.1.weight"]))
    return (segs[-1], segs[-2]) if deep_supervision else segs[-1]


# --- FasterKAN -----------------------------------------------------------------------------------------


def kan_unfused(
    x: torch.Tensor, grid: torch.Tensor, inv_denominator: torch.Tensor | float, weight: torch.Tensor
) -> torch.Tensor:
    """FasterKAN's own layer after its LayerNorm (AthanasiosDelis/faster-kan, MedViTV2's ``fasterkan.py``):
    the RSWAF basis ``1 - tanh((x[..., None] - grid) * inv_denominator)^2`` materialised as
    ``(..., in * G)``, then ``F.linear`` without bias.

    Args:
        x: ``(..., in)``.
        grid: ``(G,)``, the basis centres.
        inv_denominator: a scalar (tensor or float), the basis' inverse width.
        weight: ``(out, in * G)``.

    Returns:
        ``(..., out)``.
    """
    diff = (x[..., None] - grid).mul(inv_denominator)
    t = torch.tanh(diff)
    basis = 1 - t * t
    return F.linear(basis.flatten(-2).to(weight.dtype), weight)  # the basis in the layer's dtype (float32 grid)


# --- mamba_ssm's selective-scan reference ---------------------------------------------------------------


def selective_scan_mamba_form(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """mamba_ssm's ``selective_scan_ref`` computation (real ``A``), restated: the same arguments and layouts as
    :func:`medkernels.ops.selective_scan_fn` (``u``/``delta``/``z`` ``[B, D, L]``, ``A`` ``[D, N]``, ``B``/``C``
    ``[D, N]`` or ``[B, N, L]`` or ``[B, G, N, L]``), float32 inside, the output in ``u``'s dtype."""
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim = u.shape[:2]
    A = A.float()

    def per_channel(M):  # [B, G, N, L] -> [B, D, N, L]; [B, N, L] and [D, N] kept
        M = M.float()
        return M.repeat_interleave(dim // M.shape[1], dim=1) if M.dim() == 4 else M

    B, C = per_channel(B), per_channel(C)
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if B.dim() == 2:
        delta_b_u = torch.einsum("bdl,dn,bdl->bdln", delta, B, u)
    elif B.dim() == 3:
        delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    else:
        delta_b_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    x = A.new_zeros((batch, dim, A.shape[1]))
    ys = []
    for i in range(u.shape[2]):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        if C.dim() == 2:
            ys.append(torch.einsum("bdn,dn->bd", x, C))
        elif C.dim() == 3:
            ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
        else:
            ys.append(torch.einsum("bdn,bdn->bd", x, C[:, :, :, i]))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out


# --- the official scan patterns (their data movement around medkernels' own scan) ---------------------------


def ss2d_official(m, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """VM-UNet's ``SS2D.forward`` / ``forward_corev0`` (JCruan519/VM-UNet ``models/vmunet/vmamba.py``) on the
    parameters of ``m`` (a :class:`medkernels.nn.SS2D`): four permuted copies ``xs (B, 4, d_inner, L)``, per-copy
    x_proj / dt_proj einsums, one ``selective_scan_fn`` on the ``(B, 4 * d_inner, L)`` stack -- medkernels' own
    (``backend``) in mamba_ssm's place -- flips / transposes back and the sum. ``x (B, H, W, C) -> (B, H, W, C)``."""
    B, H, W, _ = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32  # the official .float(), kept for float64
    L, K, N, R = H * W, 4, m.d_state, m.dt_rank
    u, z = m.in_proj(x).chunk(2, dim=-1)
    u = F.silu(m.conv2d(u.permute(0, 3, 1, 2).contiguous()))
    x_hwwh = torch.stack([u.view(B, -1, L), torch.transpose(u, 2, 3).contiguous().view(B, -1, L)], dim=1)
    xs = torch.cat([x_hwwh, torch.flip(x_hwwh, dims=[-1])], dim=1)  # (B, 4, d_inner, L): four copies
    x_dbl = torch.einsum("b k d l, k c d -> b k c l", xs, m.x_proj_weight)
    dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
    dts = torch.einsum("b k r l, k d r -> b k d l", dts, m.dt_projs_weight)
    out_y = ops.selective_scan_fn(
        xs.to(acc).view(B, -1, L),
        dts.contiguous().to(acc).view(B, -1, L),
        -torch.exp(m.A_logs.to(acc)),
        Bs.to(acc),
        Cs.to(acc),
        m.Ds.to(acc),
        None,
        m.dt_projs_bias.to(acc).view(-1),
        True,
        backend=backend,
    ).view(B, K, -1, L)
    inv_y = torch.flip(out_y[:, 2:4], dims=[-1])
    wh_y = torch.transpose(out_y[:, 1].view(B, -1, W, H), 2, 3).contiguous().view(B, -1, L)
    invwh_y = torch.transpose(inv_y[:, 1].view(B, -1, W, H), 2, 3).contiguous().view(B, -1, L)
    y = out_y[:, 0] + inv_y[:, 0] + wh_y + invwh_y
    y = m.out_norm(torch.transpose(y, 1, 2).contiguous().view(B, H, W, -1))
    return m.out_proj(y * F.silu(z))


def tri_oriented_mamba_official(m, h: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """SegMamba's forked ``Mamba.forward`` (ge-xing/SegMamba, ``bimamba_type="v3"``, ``mamba_inner_fn_no_out_proj``
    per direction) on the parameters of ``m`` (a :class:`medkernels.nn.TriOrientedMamba`), with medkernels' own
    ``causal_conv1d_fn`` and ``selective_scan_fn`` (``backend``) in mamba_ssm's place: three permuted copies of xz
    (as is, flipped, slice-regrouped), three gated scans, outputs permuted back and summed.
    ``h (B, L, C) -> (B, L, C)``."""
    batch, L, _ = h.shape
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32  # the official .to(acc), kept for float64
    E, N, R, n = m.d_inner, m.d_state, m.dt_rank, m.nslices

    def inner(xz: torch.Tensor, s: str) -> torch.Tensor:
        x, z = xz.chunk(2, dim=1)
        conv = getattr(m, "conv1d" + s)
        u = ops.causal_conv1d_fn(x, conv.weight[:, 0], conv.bias, activation="silu", backend=backend)
        x_dbl = F.linear(u.transpose(1, 2).reshape(batch * L, E), getattr(m, "x_proj" + s).weight)
        dt_proj = getattr(m, "dt_proj" + s)
        delta = (dt_proj.weight @ x_dbl[:, :R].t()).view(E, batch, L).permute(1, 0, 2)
        Bm = x_dbl[:, R : R + N].view(batch, L, N).transpose(1, 2).contiguous()
        Cm = x_dbl[:, R + N :].view(batch, L, N).transpose(1, 2).contiguous()
        A = -torch.exp(getattr(m, "A" + s + "_log").to(acc))
        D = getattr(m, "D" + s).to(acc)
        return ops.selective_scan_fn(u, delta, A, Bm, Cm, D, z, dt_proj.bias.to(acc), True, backend=backend)

    xz = (m.in_proj.weight @ h.reshape(batch * L, -1).t()).view(2 * E, batch, L).permute(1, 0, 2)
    out = inner(xz, "")
    out_b = inner(xz.flip([-1]), "_b")
    xz_s = torch.stack(xz.chunk(n, dim=-1), dim=-1).flatten(-2)
    out_s = inner(xz_s, "_s").reshape(batch, E, L // n, n).permute(0, 1, 3, 2).flatten(-2)
    return F.linear((out + out_b.flip([-1]) + out_s).transpose(1, 2), m.out_proj.weight)
