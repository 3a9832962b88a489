"""An independent dense reference for neighborhood attention: the per-axis rules of natten written
out token by token, then masked softmax attention over all tokens in float64."""

from __future__ import annotations

import torch


def axis_rules(L: int, K: int, s: int, d: int, causal: bool):
    """allowed[x, y] and bias index rel[x, y] for one axis (natten's semantics, scalar loops)."""
    allowed = torch.zeros(L, L, dtype=torch.bool)
    rel = torch.zeros(L, L, dtype=torch.long)
    for x in range(L):
        g, i = x % d, x // d
        Lg = L // d + (1 if g < L % d else 0)
        if not causal:
            leader = min((i // s) * s + s // 2, Lg - 1)
            start = min(max(leader - K // 2, 0), Lg - K)
            end = start + K
        else:
            leader = min((i // s) * s + s - 1, Lg - 1)
            start = max(leader - (K - 1), 0)
            end = min(i + 1, Lg)
        for j in range(start, end):
            allowed[x, j * d + g] = True
            rel[x, j * d + g] = K - 1 + j - i
    return allowed, rel


def dense_problem(kernel, stride, dilation, causal, scale=None):
    """build(query, key, value, rpb=None, additional_keys=None, additional_values=None) -> (logits
    [B, H, N, M] before masking, allowed [N, M], values [B, H, M, Dv], layout), the dense masked
    attention problem of neighborhood attention in float64; layout takes [B, H, N, X] back to the
    heads-last [B, *spatial, H, X]. Differentiable in every tensor (tests/kit.attention_terms)."""

    def build(query, key, value, rpb=None, additional_keys=None, additional_values=None):
        q, k, v = query, key, value
        nd = q.dim() - 3
        spatial = tuple(q.shape[1 : 1 + nd])
        B, H, D = q.shape[0], q.shape[-2], q.shape[-1]
        Hk = k.shape[-2]
        sc = D**-0.5 if scale is None else scale
        N = 1
        for L in spatial:
            N *= L
        allowed = torch.ones(N, N, dtype=torch.bool)
        rels = []
        for a in range(nd):
            al, rl = axis_rules(spatial[a], kernel[a], stride[a], dilation[a], causal[a])
            shape = [spatial[a] if i == a else 1 for i in range(nd)]
            allowed &= al.reshape(shape + shape).expand(*spatial, *spatial).reshape(N, N)
            rels.append(rl.reshape(shape + shape).expand(*spatial, *spatial).reshape(N, N))
        qf = q.double().reshape(B, N, H, D).transpose(1, 2)
        kf = k.double().reshape(B, N, Hk, D).transpose(1, 2).repeat_interleave(H // Hk, 1)
        vf = v.double().reshape(B, N, Hk, -1).transpose(1, 2).repeat_interleave(H // Hk, 1)
        logits = sc * qf @ kf.transpose(-1, -2)
        if rpb is not None:
            logits = logits + rpb.double()[(slice(None), *rels)]
        if additional_keys is not None:
            akf = additional_keys.double().transpose(1, 2).repeat_interleave(H // Hk, 1)
            avf = additional_values.double().transpose(1, 2).repeat_interleave(H // Hk, 1)
            logits = torch.cat([logits, sc * qf @ akf.transpose(-1, -2)], -1)
            vf = torch.cat([vf, avf], 2)
            allowed = torch.cat([allowed, torch.ones(N, akf.shape[2], dtype=torch.bool)], -1)

        def layout(t):
            return t.transpose(1, 2).reshape(B, *spatial, H, t.shape[-1])

        return logits, allowed, vf, layout

    return build


def dense_na(q, k, v, kernel, stride, dilation, causal, scale=None, rpb=None, add_k=None, add_v=None):
    """q [B, *spatial, H, D] heads-last. Returns (out [B, *spatial, H, Dv], lse [B, *spatial, H]) in float64."""
    logits, allowed, vf, layout = dense_problem(kernel, stride, dilation, causal, scale)(q, k, v, rpb, add_k, add_v)
    logits = logits.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(logits, -1)
    out = torch.softmax(logits, -1) @ vf
    return layout(out), layout(lse[..., None])[..., 0]
