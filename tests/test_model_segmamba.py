"""SegMamba: the official parameter counts (67,363,213 / 67,416,196), the state_dict of an independent
restatement of the official network on MONAI's real blocks, equal outputs and gradients to it, the restated
MONAI blocks against MONAI's, every backend, the FLOP count against hooks, the documented example, bad config."""

from __future__ import annotations

import functools
import math
import pathlib
import re

import pytest
import torch
import torch.nn.functional as F
from kit import backends, close, close_as_pytorch, close_ulp
from test_tri_oriented_mamba import official_forward, official_state_dict_shapes
from torch import nn

from medkernels.models import create_model, is_model, load_checkpoint
from medkernels.models.segmamba import SegMamba, UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from medkernels.nn import TriOrientedMamba

monai_blocks = pytest.importorskip("monai.networks.blocks")

# A tiny configuration of the official network; at a 16x32x32 input the stages have 2048, 256, 32, 4 tokens.
TINY = {"in_chans": 2, "out_chans": 3, "depths": (1, 2, 1, 1), "feat_size": (8, 16, 16, 24), "hidden_size": 32}
TINY_SLICES = (8, 4, 2, 1)


# ---------------------------------------------------------------------------------------------
# The official SegMamba (github.com/ge-xing/SegMamba at cff3597, model_segmamba/segmamba.py), restated on
# MONAI's UnetrBasicBlock / UnetrUpBlock / UnetOutBlock and the restated fork Mamba of
# tests/test_tri_oriented_mamba.py. Changes: `num_slices` is an argument (the official hard-codes
# [64, 32, 16, 8]) and `out` takes feat_size[0] channels (the official hard-codes 48).


class _OfficialMambaLayer(nn.Module):
    def __init__(self, dim: int, num_slices: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mamba = nn.Module()
        for name, shape in official_state_dict_shapes(dim).items():
            owner, _, pname = name.rpartition(".")
            holder = self.mamba
            if owner:
                if not hasattr(holder, owner):
                    holder.add_module(owner, nn.Module())
                holder = getattr(holder, owner)
            holder.register_parameter(pname, nn.Parameter(torch.zeros(shape)))
        self.num_slices = num_slices

    def forward(self, x):
        B, C = x.shape[:2]
        tokens = x.reshape(B, C, -1).transpose(-1, -2)
        out = official_forward(dict(self.mamba.named_parameters()), self.norm(tokens), self.num_slices)
        return out.transpose(-1, -2).reshape(x.shape) + x


class _OfficialGSC(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.proj, self.norm = nn.Conv3d(c, c, 3, 1, 1), nn.InstanceNorm3d(c)
        self.proj2, self.norm2 = nn.Conv3d(c, c, 3, 1, 1), nn.InstanceNorm3d(c)
        self.proj3, self.norm3 = nn.Conv3d(c, c, 1, 1, 0), nn.InstanceNorm3d(c)
        self.proj4, self.norm4 = nn.Conv3d(c, c, 1, 1, 0), nn.InstanceNorm3d(c)

    def forward(self, x):
        x1 = F.relu(self.norm2(self.proj2(F.relu(self.norm(self.proj(x))))))
        x2 = F.relu(self.norm3(self.proj3(x)))
        return F.relu(self.norm4(self.proj4(x1 + x2))) + x


class _OfficialMlp(nn.Module):
    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Conv3d(c, hidden, 1), nn.GELU(), nn.Conv3d(hidden, c, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _OfficialEncoder(nn.Module):
    def __init__(self, in_chans, depths, dims, num_slices) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv3d(in_chans, dims[0], 7, 2, 3))])
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(nn.InstanceNorm3d(dims[i]), nn.Conv3d(dims[i], dims[i + 1], 2, 2))
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*[_OfficialMambaLayer(dims[i], num_slices[i]) for _ in range(depths[i])]) for i in range(4)
        )
        self.gscs = nn.ModuleList(_OfficialGSC(d) for d in dims)
        self.norms = [nn.InstanceNorm3d(d) for d in dims]  # no parameters
        self.mlps = nn.ModuleList(_OfficialMlp(d, 2 * d) for d in dims)

    def forward(self, x):
        outs = []
        for i in range(4):
            x = self.stages[i](self.gscs[i](self.downsample_layers[i](x)))
            outs.append(self.mlps[i](self.norms[i](x)))
        return outs


class _OfficialSegMamba(nn.Module):
    def __init__(self, in_chans, out_chans, depths, feat_size, hidden_size, num_slices=(64, 32, 16, 8)) -> None:
        super().__init__()
        f, h = feat_size, hidden_size
        self.vit = _OfficialEncoder(in_chans, depths, f, num_slices)
        basic, up = monai_blocks.UnetrBasicBlock, monai_blocks.UnetrUpBlock
        for i, (ci, co) in enumerate([(in_chans, f[0]), (f[0], f[1]), (f[1], f[2]), (f[2], f[3]), (f[3], h)]):
            self.add_module(f"encoder{i + 1}", basic(3, ci, co, 3, 1, "instance", res_block=True))
        for i, (ci, co) in zip((5, 4, 3, 2), [(h, f[3]), (f[3], f[2]), (f[2], f[1]), (f[1], f[0])]):
            self.add_module(f"decoder{i}", up(3, ci, co, 3, 2, "instance", res_block=True))
        self.decoder1 = basic(3, f[0], f[0], 3, 1, "instance", res_block=True)
        self.out = monai_blocks.UnetOutBlock(3, f[0], out_chans)

    def forward(self, x):
        outs = self.vit(x)
        enc = [self.encoder1(x), self.encoder2(outs[0]), self.encoder3(outs[1]), self.encoder4(outs[2])]
        d = self.decoder5(self.encoder5(outs[3]), enc[3])
        d = self.decoder2(self.decoder3(self.decoder4(d, enc[2]), enc[1]), enc[0])
        return self.out(self.decoder1(d))


def _shapes(model: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --- parameters and names ---------------------------------------------------------------------------------------


def test_parameter_counts_and_names_are_the_officials():
    """The counts of ../shared/reference/models.md, and the official network's state_dict names and shapes."""
    for kwargs, count in (({}, 67_363_213), ({"in_chans": 4, "out_chans": 4}, 67_416_196)):
        model = create_model("segmamba", device="meta", **kwargs)
        assert model.num_params() == count
        with torch.device("meta"):
            official = _OfficialSegMamba(
                kwargs.get("in_chans", 1), kwargs.get("out_chans", 13), (2, 2, 2, 2), (48, 96, 192, 384), 768
            )
        assert _shapes(model) == _shapes(official)
        assert sum(p.numel() for p in official.parameters()) == count
    assert is_model("segmamba") and isinstance(model, SegMamba)
    assert model.vit.stages[0][0].mamba.nslices == 64 and model.vit.stages[3][1].mamba.nslices == 8


def _tiny_pair(seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = create_model("segmamba", **TINY, num_slices=TINY_SLICES, **kw)
    with torch.no_grad():  # off the special initial values (D = 1, LayerNorm = identity, ...)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    official = _OfficialSegMamba(
        TINY["in_chans"], TINY["out_chans"], TINY["depths"], TINY["feat_size"], TINY["hidden_size"], TINY_SLICES
    )
    official.load_state_dict(model.state_dict(), strict=True)
    return model, official


def test_official_checkpoint_loads(tmp_path):
    """A state_dict saved from the official network (DataParallel's "module." prefix) loads strictly."""
    model, official = _tiny_pair()
    path = tmp_path / "segmamba.pt"
    torch.save({"module." + k: v.clone() + 1 for k, v in official.state_dict().items()}, path)
    assert load_checkpoint(model, path) == []
    assert torch.equal(model.out.conv.conv.bias, official.out.conv.conv.bias + 1)


def _run(net: nn.Module, dtype: torch.dtype, names: list) -> tuple:
    """Logits and the gradients of x and of the parameters ``names`` at the seeded 1x2x16x32x32 input."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 16, 32, 32, generator=gen, dtype=dtype, requires_grad=True)
    g = torch.randn(1, 3, 16, 32, 32, generator=gen, dtype=dtype)
    net = net.to(dtype)
    params = dict(net.named_parameters())
    out = net(x)
    grads = torch.autograd.grad((out * g).sum(), [x] + [params[n] for n in names])
    return out.detach(), grads


@functools.cache
def _official_results(seed: int = 0) -> tuple:
    """The official network's results in float32 and float64 (computed once: the float64 scans are slow)."""
    model, official = _tiny_pair(seed)
    names = [n for n, _ in model.named_parameters()]
    return _run(official, torch.float32, names), _run(official, torch.float64, names)


@pytest.mark.parametrize("backend", backends("cpu", "reference"))
def test_equals_the_official_network_forward_and_backward(backend):
    """Logits and every gradient against the official network in float64, as accurate as the official network
    in float32 (flash-attention's rule), on every backend."""
    model, _ = _tiny_pair(backend=backend)
    names = [n for n, _ in model.named_parameters()]
    got, got_g = _run(model, torch.float32, names)
    (off32, off32_g), (truth, truth_g) = _official_results()
    grads = dict(zip(["x"] + names, zip(got_g, truth_g, off32_g)))
    # measured over 10 seeds (4 on the reference ops): logits and gradients within 1.01x (beyond 2 ulp of
    # max|truth|): the float32 error is the convolutions' and norms', the same as the official network's
    close_as_pytorch(got, truth, off32, "logits", factor=3)
    for name, (a, t, p) in grads.items():
        if re.fullmatch(r"vit\.gscs\.\d\.proj\d?\.bias", name):
            # a bias right before an InstanceNorm: 0 in exact arithmetic (|truth| ~ 1e-14); the float32
            # results are rounding noise, measured at most 8.1 ulp of the same conv's largest weight gradient
            close_ulp(a, t, f"d{name}", ulps=24, scale=grads[name[:-4] + "weight"][1].abs().max().item())
        else:
            close_as_pytorch(a, t, p, f"d{name}", factor=3)


def test_paper_slices_forward_backward():
    """The official num_slices (64, 32, 16, 8) at the smallest cube they allow (32^3). (torch.compile of the
    Mamba layers: tests/test_tri_oriented_mamba.py; the whole network takes 20 s to trace on one core.)"""
    torch.manual_seed(0)
    model = create_model(
        "segmamba", in_chans=1, out_chans=2, depths=(1, 1, 1, 1), feat_size=(4, 8, 8, 8), hidden_size=8
    )
    x = torch.randn(1, 1, 32, 32, 32, requires_grad=True)
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *model.parameters()])
    assert out.shape == (1, 2, 32, 32, 32) and all(torch.isfinite(t).all() for t in (out, *grads))
    assert all(g.abs().sum() > 0 for g in grads)


# --- the MONAI blocks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("res_block", [True, False])
def test_monai_blocks_are_monais(res_block):
    torch.manual_seed(0)
    x, skip = torch.randn(2, 6, 4, 6, 4), torch.randn(2, 3, 8, 12, 8)
    cases = [
        (UnetrBasicBlock(6, 3, res_block), monai_blocks.UnetrBasicBlock(3, 6, 3, 3, 1, "instance", res_block), (x,)),
        (UnetrBasicBlock(6, 6, res_block), monai_blocks.UnetrBasicBlock(3, 6, 6, 3, 1, "instance", res_block), (x,)),
        (UnetrUpBlock(6, 3, res_block), monai_blocks.UnetrUpBlock(3, 6, 3, 3, 2, "instance", res_block), (x, skip)),
        (UnetOutBlock(6, 5), monai_blocks.UnetOutBlock(3, 6, 5), (x,)),
    ]
    for ours, theirs, args in cases:
        assert _shapes(ours) == _shapes(theirs)
        ours.load_state_dict(theirs.state_dict(), strict=True)
        want = theirs(*[a.clone() for a in args])
        close(ours(*args), want, 1e-6, 1e-6 * want.abs().max().item(), type(ours).__name__)


# --- FLOPs --------------------------------------------------------------------------------------------------------


def test_flops_count_every_convolution_linear_and_scan():
    """flops() against a count taken while the model runs: hooks on every Conv3d / ConvTranspose3d, and per
    Mamba the token count times every linear and depthwise conv weight plus mamba_ssm's scan rule."""
    torch.manual_seed(0)
    model = create_model("segmamba", **TINY, num_slices=TINY_SLICES)
    macs, scans = [0], [0]

    def conv(m, inputs, out):
        if isinstance(m, nn.ConvTranspose3d):
            macs[0] += inputs[0].numel() * m.out_channels * math.prod(m.kernel_size)
        else:
            macs[0] += out.numel() * m.in_channels * math.prod(m.kernel_size)

    def mamba(m, inputs, out):
        tokens = inputs[0].shape[0] * inputs[0].shape[1]
        for name, p in m.named_parameters():
            if name.endswith("weight"):  # in/x/dt/out projections, the three depthwise convs
                macs[0] += tokens * p.numel()
        scans[0] += 3 * (9 * tokens * m.d_inner * m.d_state + tokens * m.d_inner)

    for m in model.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            m.register_forward_hook(conv)
        elif isinstance(m, TriOrientedMamba):
            m.register_forward_hook(mamba)
    with torch.no_grad():
        model(torch.randn(2, 2, 16, 32, 32))
    assert model.flops((2, 2, 16, 32, 32)) == 2 * macs[0] + scans[0]


# --- the documented example -------------------------------------------------------------------------------------

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "segmamba.md"
PAPER_MODEL = 'create_model("segmamba", in_chans=4, out_chans=4)'


def test_documented_example_runs():
    """docs/segmamba.md's example, run as written but for a smaller model and input."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    assert PAPER_MODEL in code and "128, 128, 128" in code
    tiny = (
        'create_model("segmamba", in_chans=4, out_chans=4, depths=(1, 1, 1, 1), feat_size=(4, 8, 8, 8), hidden_size=8)'
    )
    namespace: dict = {}
    exec(compile(code.replace(PAPER_MODEL, tiny).replace("128, 128, 128", "32, 32, 32"), str(DOC), "exec"), namespace)
    assert namespace["logits"].shape == (1, 4, 32, 32, 32)


# --- configuration ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"depths": (2, 2, 2)}, r"depths must be 4 positive ints"),
        ({"feat_size": (48, 96, 192, 0)}, r"feat_size must be 4 positive ints"),
        ({"num_slices": (64, 32, 16)}, r"num_slices must be 4 positive ints"),
        ({"norm_name": "batch"}, r"norm_name must be 'instance'"),
        ({"spatial_dims": 2}, r"spatial_dims must be 3"),
        ({"out_chans": 0}, r"out_chans must be a positive int"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("segmamba", device="meta", **kwargs)


def test_bad_input():
    model = create_model("segmamba", **TINY)  # the official num_slices: 32^3 is the smallest cube
    with pytest.raises(ValueError, match=r"x must be \[B, 2, D, H, W\]"):
        model(torch.randn(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match=r"3 multiples of 16"):
        model(torch.randn(1, 2, 32, 32, 24))
    with pytest.raises(ValueError, match=r"stage 3 has 8 voxels .* num_slices\[2\]=16"):
        model(torch.randn(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match=r"input_size must be \(B, 2, D, H, W\)"):
        model.flops((1, 1, 32, 32, 32))
