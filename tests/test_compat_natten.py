"""medkernels.compat: natten served in its three API generations (0.14-0.15, 0.17, 0.21, and "auto").

Small clients written in each generation's style run forward, backward and a few optimiser steps on CPU;
outputs are checked against the independent dense reference (tests/na_reference.py), in float64 math.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from compat_kit import compat_fixture  # noqa: F401  (the `compat` fixture)
from kit import gpu_test
from na_reference import dense_na
from torch import nn

pytestmark = pytest.mark.usefixtures("compat")
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _heads_last(t):  # [B, H, *spatial, D] -> [B, *spatial, H, D]
    return t.movedim(1, -2)


def _train(model, x, steps=4):
    """A few Adam steps on a regression target; the loss must fall and every parameter get a gradient."""
    torch.manual_seed(0)
    target = torch.randn_like(model(x))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(x), target)
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


class DinatStyleAttention(nn.Module):
    """The layout of HF transformers' NAT/DiNAT attention (4.46): heads-first q/k/v, query pre-scaled,
    ``natten2dqkrpb`` + softmax + ``natten2dav`` (natten 0.14 functional API)."""

    def __init__(self, dim, heads, kernel, dilation):
        super().__init__()
        self.heads, self.kernel, self.dilation = heads, kernel, dilation
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.rpb = nn.Parameter(torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1) * 0.1)

    def split(self, x):
        b, h, w, c = x.shape
        return x.view(b, h, w, self.heads, c // self.heads).permute(0, 3, 1, 2, 4)

    def forward(self, x):
        from natten.functional import natten2dav, natten2dqkrpb

        q = self.split(self.query(x)) / (x.shape[-1] // self.heads) ** 0.5
        k, v = self.split(self.key(x)), self.split(self.value(x))
        attn = natten2dqkrpb(q, k, self.rpb, self.kernel, self.dilation).softmax(dim=-1)
        out = natten2dav(attn, v, self.kernel, self.dilation)
        return out.permute(0, 2, 3, 1, 4).reshape(x.shape)


@pytest.mark.parametrize("generation", ["0.14", "0.17", None])
def test_dinat_style_legacy_functional_client(compat, generation):
    compat.install("natten", natten=generation, prefer="medkernels")
    torch.manual_seed(0)
    m = DinatStyleAttention(8, 2, 3, 2).double()
    x = torch.randn(2, 7, 6, 8, dtype=torch.float64)
    out = m(x)
    split = [m.split(p(x)) for p in (m.query, m.key, m.value)]
    ref, _ = dense_na(*(_heads_last(t) for t in split), (3, 3), (1, 1), (2, 2), (False, False), rpb=m.rpb)
    torch.testing.assert_close(out, ref.reshape(x.shape), rtol=1e-10, atol=1e-10)
    _train(m.float(), x.float())


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
def test_hf_transformers_dinat_runs_and_trains(compat):
    compat.install("natten", natten="0.14", prefer="medkernels")
    from transformers import DinatConfig, DinatModel
    from transformers.utils import is_natten_available

    assert is_natten_available()
    torch.manual_seed(0)
    cfg = DinatConfig(
        embed_dim=8, depths=[1, 1], num_heads=[2, 2], kernel_size=3, dilations=[[2], [1]], image_size=16, patch_size=4
    )
    model = DinatModel(cfg)
    x = torch.randn(1, 3, 16, 16)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = model

        def forward(self, x):
            return self.body(x).last_hidden_state

    _train(Head(), x, steps=3)


def medvit_style_block(natten, dim=8, heads=2, kernel=3, dilation=None):
    """MedViTV2's use of natten: the generation test, then the module with a relative positional bias
    (MedViTV2 passes ``dilation=None``, which natten reads as 1)."""
    is_natten_post_017 = hasattr(natten, "context")
    extra = {"rel_pos_bias": True} if is_natten_post_017 else {"bias": True}
    return natten.NeighborhoodAttention2D(
        dim, kernel_size=kernel, dilation=dilation, num_heads=heads, qkv_bias=True, qk_scale=None,
        attn_drop=0.0, proj_drop=0.0, **extra,
    )  # fmt: skip


def _module_reference(m, x):
    """natten's module math written out on the dense reference: qkv, NA with rpb, proj."""
    b, *spatial, c = x.shape
    qkv = m.qkv(x).reshape(b, *spatial, 3, m.num_heads, c // m.num_heads).movedim(-3, 0)
    out, _ = dense_na(qkv[0], qkv[1], qkv[2], m.kernel_size, m.stride, m.dilation, m.is_causal, m.scale, rpb=m.rpb)
    return m.proj(out.reshape(b, *spatial, c).to(x.dtype))


@pytest.mark.parametrize("generation", ["0.14", "0.15", "0.17", "0.17.3", None])
def test_medvit_style_module_client(compat, generation):
    compat.install("natten", natten=generation, prefer="medkernels")
    import natten

    assert hasattr(natten, "context") == (generation not in ("0.14", "0.15"))
    torch.manual_seed(1)
    assert medvit_style_block(natten).dilation == (1, 1)
    m = medvit_style_block(natten, dilation=2).double()
    assert m.rpb is not None and m.rpb.shape == (2, 5, 5)
    assert set(m.state_dict()) == {"rpb", "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    x = torch.randn(2, 6, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x), _module_reference(m, x), rtol=1e-10, atol=1e-10)
    _train(m.float(), x.float())


def test_legacy_module_pads_inputs_smaller_than_the_window(compat):
    compat.install("natten", natten="0.14", prefer="medkernels")
    import natten

    torch.manual_seed(2)
    m = natten.NeighborhoodAttention2D(8, 2, 3, 2).double()  # 0.14 positionals: dilation 2, rpb on
    assert m.dilation == (2, 2) and m.rpb is not None and natten.NeighborhoodAttention is natten.NeighborhoodAttention2D
    x = torch.randn(1, 4, 7, 8, dtype=torch.float64)  # 4 < kernel * dilation = 6 rows
    padded = F.pad(x, (0, 0, 0, 0, 0, 2))
    torch.testing.assert_close(m(x), _module_reference(m, padded)[:, :4], rtol=1e-10, atol=1e-10)


def test_017_functional(compat):
    compat.install("natten", natten="0.17", prefer="medkernels")
    import natten
    from natten.functional import na1d, na2d, na2d_av, na2d_qk

    assert importlib.metadata.version("natten") == natten.__version__ == "0.17.5"
    assert not hasattr(natten, "na2d") and not hasattr(natten, "HAS_LIBNATTEN")
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 2, 6, 6, 4, dtype=torch.float64) for _ in range(3))  # heads first
    ak, av = torch.randn(2, 2, 3, 4, dtype=torch.float64), torch.randn(2, 2, 3, 4, dtype=torch.float64)
    rpb = torch.randn(2, 5, 5, dtype=torch.float64)
    attn = na2d_qk(q * 0.5, k, 3, 1, ak, False, rpb)
    assert attn.shape == (2, 2, 6, 6, 9 + 3)
    out = na2d_av(attn.softmax(-1), v, 3, 1, av, False)
    ref, _ = dense_na(
        _heads_last(q), _heads_last(k), _heads_last(v), (3, 3), (1, 1), (1, 1), (False, False), 0.5,
        rpb=rpb, add_k=ak.transpose(1, 2), add_v=av.transpose(1, 2),
    )  # fmt: skip
    torch.testing.assert_close(_heads_last(out), ref, rtol=1e-10, atol=1e-10)
    ql, kl, vl = (_heads_last(t) for t in (q, k, v))
    fused = na2d(ql, kl, vl, 3, 2, True)  # 0.17 positionals: dilation 2, causal
    ref, _ = dense_na(ql, kl, vl, (3, 3), (1, 1), (2, 2), (True, True))
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-10)
    assert natten.context.is_fna_enabled() is False
    natten.use_fused_na(True)
    assert natten.context.is_fna_enabled() and natten.is_fused_na_enabled()
    with pytest.raises(ValueError, match="pref"):
        natten.set_memory_usage_preference("fast")
    x1 = torch.randn(1, 9, 2, 4)
    torch.testing.assert_close(na1d(x1, x1, x1, 3, rpb=torch.zeros(2, 5)), na1d(x1, x1, x1, 3), **TOL)


class Na021Client(nn.Module):
    """natten 0.21 style: the module with stride, plus the functional na2d with additional keys."""

    def __init__(self):
        super().__init__()
        import natten

        self.natten = natten
        self.attn = natten.NeighborhoodAttention2D(8, 2, 3, 2, 1)  # stride 2
        self.extra = nn.Parameter(torch.randn(1, 2, 2, 4))

    def forward(self, x):
        h = self.attn(x)
        q = h.reshape(*h.shape[:-1], 2, 4)
        kv = self.extra.expand(x.shape[0], -1, -1, -1)
        return self.natten.na2d(q, q, q, 3, dilation=2, additional_keys=kv, additional_values=kv).flatten(-2)


@pytest.mark.parametrize("generation", ["0.21", None])
def test_021_api(compat, generation):
    compat.install("natten", natten=generation, prefer="medkernels")
    import natten
    from natten.functional import na3d

    assert natten.__version__ == importlib.metadata.version("natten") == "0.21.7"
    assert isinstance(natten.HAS_LIBNATTEN, bool)
    torch.manual_seed(4)
    q, k, v = (torch.randn(2, 6, 7, 4, 8, dtype=torch.float64) for _ in range(3))
    out, lse = natten.na2d(q, k[..., :2, :], v[..., :2, :], (3, 4), 2, 1, (True, False), 0.3, return_lse=True)
    ref, ref_lse = dense_na(q, k[..., :2, :], v[..., :2, :], (3, 4), (2, 2), (1, 1), (True, False), 0.3)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-10)
    x3 = torch.randn(1, 4, 4, 4, 2, 4)
    assert na3d(x3, x3, x3, 2, backend="cutlass-fna", q_tile_shape=(4, 4, 4)).shape == x3.shape
    # attention + merge_attentions: two halves of the keys merged equal attention over all of them
    qa, ka, va = torch.randn(2, 5, 4, 8), torch.randn(2, 9, 2, 8), torch.randn(2, 9, 2, 6)
    full, full_lse = natten.attention(qa, ka, va, return_lse=True)
    sdpa = F.scaled_dot_product_attention(
        qa.transpose(1, 2), ka.transpose(1, 2), va.transpose(1, 2), enable_gqa=True
    ).transpose(1, 2)
    torch.testing.assert_close(full, sdpa, **TOL)
    parts = [natten.attention(qa, ka[:, s], va[:, s], return_lse=True) for s in (slice(0, 4), slice(4, 9))]
    merged, merged_lse = natten.merge_attentions([p[0] for p in parts], [p[1] for p in parts])
    torch.testing.assert_close(merged, full, **TOL)
    torch.testing.assert_close(merged_lse, full_lse, **TOL)
    causal = natten.attention(qa, ka[:, :5], va[:, :5], is_causal=True)
    torch.testing.assert_close(causal[:, 0], va[:, 0].repeat_interleave(2, 1), **TOL)
    with pytest.raises(NotImplementedError, match="seqlens_Q"):
        natten.attention(qa, ka, va, seqlens_Q=torch.tensor([5, 5]))
    natten.use_deterministic_algorithms(True)
    assert natten.are_deterministic_algorithms_enabled()
    natten.use_deterministic_algorithms(False)
    client = Na021Client()
    assert client.attn.stride == (2, 2) and client.attn.natten_api == "0.21"
    _train(client, torch.randn(2, 6, 6, 8))


def test_auto_reads_each_call_as_the_newest_generation_it_fits(compat):
    compat.install("natten", prefer="medkernels")
    import natten
    from natten.functional import na2d, natten2dqkrpb  # noqa: F401  (0.14 names too)

    torch.manual_seed(5)
    q = torch.randn(1, 6, 6, 2, 4, dtype=torch.float64)
    as_021 = na2d(q, q, q, 3, 2)  # stride 2
    torch.testing.assert_close(as_021, dense_na(q, q, q, (3, 3), (2, 2), (1, 1), (False, False))[0])
    as_017 = na2d(q, q, q, 3, 2, rpb=None)  # an 0.17-only keyword: dilation 2
    torch.testing.assert_close(as_017, dense_na(q, q, q, (3, 3), (1, 1), (2, 2), (False, False))[0])
    assert natten.NeighborhoodAttention2D(8, 2, 3, 2).stride == (2, 2)
    assert natten.NeighborhoodAttention2D(8, 2, 3, 2, attn_drop=0.1).dilation == (2, 2)
    from natten.na2d import NeighborhoodAttention2D  # a 0.17 module file that is 0.21's function too

    assert NeighborhoodAttention2D is natten.NeighborhoodAttention2D
    torch.testing.assert_close(natten.na2d(q, q, q, 3, 2), as_021)
    legacy = natten.NeighborhoodAttention2D(8, 2, 3, bias=True)
    assert legacy.natten_api == "0.14" and legacy.rpb is not None
    with pytest.raises(TypeError, match="NeighborhoodAttention2D"):
        natten.NeighborhoodAttention2D(8, 2, 3, bogus=1)


def test_metadata_availability_checks(compat):
    """transformers' is_natten_available: importlib.util.find_spec plus importlib.metadata.version."""
    if importlib.machinery.PathFinder.find_spec("natten") is None:  # no real natten on sys.path
        assert importlib.util.find_spec("natten") is None
    compat.install("natten", natten="0.15", prefer="medkernels")
    assert importlib.util.find_spec("natten") is not None
    assert importlib.metadata.version("natten") == "0.15.1"
    dist = importlib.metadata.distribution("natten")
    assert "medkernels" in dist.metadata["Summary"]
    compat.uninstall()
    assert all("medkernels" not in (d.metadata["Summary"] or "") for d in importlib.metadata.distributions())


@gpu_test
def test_natten_generations_on_gpu(compat):
    compat.install("natten", prefer="medkernels")
    import natten
    from natten.functional import natten2dav, natten2dqkrpb

    torch.manual_seed(7)
    q, k, v = (torch.randn(2, 9, 8, 4, 16, device="cuda") for _ in range(3))
    out = natten.na2d(q, k, v, 3, 1, 2)
    ref, _ = dense_na(q.cpu(), k.cpu(), v.cpu(), (3, 3), (1, 1), (2, 2), (False, False))
    torch.testing.assert_close(out.cpu(), ref.float(), rtol=1e-3, atol=1e-3)
    rpb = torch.randn(4, 5, 5, device="cuda")
    qh, kh, vh = (t.movedim(-2, 1) for t in (q, k, v))
    attn = natten2dqkrpb(qh * 0.25, kh, rpb, 3, 2).softmax(-1)
    legacy = natten2dav(attn, vh, 3, 2)
    ref, _ = dense_na(q.cpu(), k.cpu(), v.cpu(), (3, 3), (1, 1), (2, 2), (False, False), 0.25, rpb=rpb.cpu())
    torch.testing.assert_close(_heads_last(legacy).cpu(), ref.float(), rtol=1e-3, atol=1e-3)
    m = medvit_style_block(natten, dim=16, heads=2).cuda()
    x = torch.randn(2, 8, 8, 16, device="cuda", requires_grad=True)
    m(x).sum().backward()
    assert m.rpb.grad is not None and torch.isfinite(x.grad).all()
