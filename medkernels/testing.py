"""Independent re-implementations of the official computations medkernels accelerates: test oracles and
benchmark peers.

Each follows the upstream code step by step in plain PyTorch (the papers' repositories: their padding,
reshapes and permutes, materialised intermediates), independent of the medkernels kernels and of their
``*_ref`` oracles in ``medkernels.ops``. The tests compare the ops against them; ``medkernels-bench``
times them as peers (``medkernels.bench.peers``).

- ``dformer_attention_official``: D-Former's dilated attention as its ``model.py`` computes it.
- ``dformer_attention_sdpa``: the same grouping around ``torch.nn.functional.scaled_dot_product_attention``.
- ``kan_unfused``: FasterKAN's RSWAF layer (after its LayerNorm), the basis materialised, then ``F.linear``.
- ``selective_scan_mamba_form``: mamba_ssm's ``selective_scan_ref`` as written there (every ``exp(delta A)`` and
  ``delta B u`` materialised as ``[B, D, L, N]``, then a Python loop indexing one step at a time): what mamba_ssm and
  the papers' code run without a CUDA build.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["dformer_attention_official", "dformer_attention_sdpa", "kan_unfused", "selective_scan_mamba_form"]


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
    return F.linear(basis.flatten(-2), weight)


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
