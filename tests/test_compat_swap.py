"""medkernels.swap: natten / mamba_ssm modules of a built network replaced by medkernels modules, weights kept,
outputs equal before and after."""

from __future__ import annotations

import importlib.machinery
import warnings

import pytest
import torch
from compat_kit import compat_fixture  # noqa: F401  (the `compat` fixture)
from na_reference import dense_na
from torch import nn

import medkernels
from medkernels import nn as mknn

pytestmark = pytest.mark.usefixtures("compat")


class NeighborhoodAttention2D(nn.Module):
    """A vendored natten 0.17 module (MedViTV2's configuration: rpb, attention dropout rate), its math written
    out on the dense reference: what swap must reproduce."""

    def __init__(self, dim, num_heads, kernel_size, dilation=1, rel_pos_bias=True, attn_drop=0.1):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.kernel_size, self.dilation, self.is_causal = (kernel_size,) * 2, (dilation,) * 2, (False, False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rpb = (
            nn.Parameter(torch.randn(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1)) if rel_pos_bias else None
        )
        self.attn_drop_rate = attn_drop
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x):
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h, w, 3, self.num_heads, self.head_dim).movedim(3, 0)
        out, _ = dense_na(
            qkv[0], qkv[1], qkv[2], self.kernel_size, (1, 1), self.dilation, self.is_causal, self.scale, self.rpb
        )
        return self.proj(out.reshape(b, h, w, c).to(x.dtype))


class Mamba2(nn.Module):
    """Stands for a mamba_ssm mixer medkernels has no module for."""


Mamba2.__module__ = "mamba_ssm.modules.mamba2"


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([NeighborhoodAttention2D(8, 2, 3), NeighborhoodAttention2D(8, 2, 3, 2, False)])
        self.mixer = mknn.Mamba(8, d_state=4)
        self.other = Mamba2()

    def forward(self, x):
        x = self.stem(x)
        for blk in self.blocks:
            x = x + blk(x)
        b, h, w, c = x.shape
        return self.mixer(x.reshape(b, h * w, c)).reshape(x.shape)


def test_swap_vendored_natten_layout_keeps_weights_and_outputs():
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 7, 6, 4)
    before = net(x)
    swapped, report = medkernels.swap(net)
    assert [name for name, *_ in report.swapped] == ["blocks.0", "blocks.1"]
    reasons = {name: why for name, _, why in report.not_swapped}
    assert reasons == {"mixer": "already a medkernels module", "other": reasons["other"]}
    assert "Mamba-1 only" in reasons["other"]
    assert isinstance(swapped.blocks[0], mknn.NeighborhoodAttention2D) and not swapped.training
    assert swapped.blocks[0].attn_drop_rate == 0.1 and swapped.blocks[1].rpb is None
    assert type(net.blocks[0]) is NeighborhoodAttention2D  # inplace=False: the original is untouched
    torch.testing.assert_close(swapped(x), before, rtol=1e-5, atol=1e-5)
    assert "2 swapped" in str(report)
    again, report2 = medkernels.swap(swapped, inplace=True)
    assert again is swapped and not report2.swapped
    kept, report3 = medkernels.swap(net, natten=False)
    assert not report3.swapped and ("blocks.0", report3.not_swapped[0][1], "natten=False") in report3.not_swapped
    with pytest.raises(TypeError, match="model"):
        medkernels.swap("net")
    with pytest.raises(TypeError, match="natten"):
        medkernels.swap(net, natten="yes")


def test_swap_the_root_module():
    torch.manual_seed(1)
    m = NeighborhoodAttention2D(8, 2, 3).double().eval()
    x = torch.randn(1, 5, 5, 8, dtype=torch.float64)
    new, report = medkernels.swap(m)
    assert report.swapped[0][0] == "" and new.rpb.dtype == torch.float64
    torch.testing.assert_close(new(x), m(x), rtol=1e-12, atol=1e-12)


def _real(name: str) -> bool:
    return importlib.machinery.PathFinder.find_spec(name) is not None


@pytest.mark.skipif(not _real("natten"), reason="the real natten package is not installed")
def test_swap_real_natten_021_modules():
    """natten 0.21 from PyPI runs its CPU forward through flex_attention (no backward on CPU)."""
    import natten

    if not natten.__version__.startswith("0.2"):
        pytest.skip(f"natten {natten.__version__} is not 0.2x")
    torch.manual_seed(2)
    net = nn.Sequential(natten.NeighborhoodAttention2D(32, 2, (3, 5), (1, 2), (2, 1)), nn.GELU())
    net.append(natten.NeighborhoodAttention1D(32, 4, 3, is_causal=True))
    net = nn.Sequential(net[0], net[1], nn.Flatten(1, 2), net[2])
    x = torch.randn(2, 8, 7, 32)
    with torch.no_grad():
        before = net(x)
    swapped, report = medkernels.swap(net)
    assert [n for n, *_ in report.swapped] == ["0", "3"] and not report.not_swapped
    assert swapped[0].stride == (1, 2) and swapped[0].dilation == (2, 1) and swapped[3].is_causal == (True,)
    after = swapped(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    after.sum().backward()  # medkernels trains on CPU
    assert swapped[0].qkv.weight.grad is not None


@pytest.mark.skipif(not _real("mamba_ssm"), reason="the real mamba_ssm package is not installed")
def test_swap_real_mamba_ssm_blocks(compat):
    compat.install("mamba")  # the real package wins; medkernels serves its missing CUDA extensions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from mamba_ssm.modules.mamba_simple import Mamba
        except ImportError as exc:  # its own dependencies (transformers, einops) may be missing
            pytest.skip(f"mamba_ssm does not import here: {exc}")
    if getattr(Mamba, "__module__", "").startswith("medkernels"):
        pytest.skip("the real mamba_ssm failed to import; medkernels served it")
    torch.manual_seed(3)
    net = nn.Sequential(Mamba(8, d_state=4, bias=True), Mamba(8, d_state=4, conv_bias=False))
    x = torch.randn(2, 9, 8)
    before = net(x)
    swapped, report = medkernels.swap(net)
    assert len(report.swapped) == 2 and all(isinstance(m, mknn.Mamba) for m in swapped)
    torch.testing.assert_close(swapped(x), before, rtol=1e-5, atol=1e-6)
