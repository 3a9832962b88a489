"""MedViTV2 (medkernels.models.medvitv2): official names and shapes, equality with the official computation,
sizes, backends, torch.compile, autocast and the benchmark case.

The official code (github.com/Omid-Nejati/MedViTV2, ``MedViT.py``) needs natten 0.17, which does not install
with current torch; so this file re-creates, independently of medkernels (plain torch, written from the
official code and natten 0.17's ``NeighborhoodAttention2D`` / ``na2d_qk`` / ``na2d_av``):
- ``official_shapes``: the official constructor's state_dict names and shapes;
- ``official_forward``: its eval-mode forward, functionally, from such a state_dict (BatchNorm on running
  statistics, natten 0.17's non-dilated NA with its legacy relative-position-bias indexing, the two NCHW
  ``reshape``s without a permute, FasterKAN's ``1 - tanh^2`` basis).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from kit import LONG, backends, close, requires_triton

from medkernels import models, ops
from medkernels.models import create_model, load_checkpoint
from medkernels.models.medvitv2 import MedViTV2
from medkernels.nn import FasterKAN, GFPBlock, LFPBlock

VARIANTS = {  # the official MedViT_<variant> factories: dims, depths
    "tiny": ((64, 128, 192, 384), (2, 2, 6, 1)),
    "small": ((64, 128, 256, 512), (2, 2, 6, 2)),
    "base": ((96, 192, 384, 768), (2, 2, 6, 2)),
    "large": ((96, 256, 512, 1024), (2, 2, 6, 2)),
}
SR_RATIOS = (8, 4, 2, 1)


# --- the official model, re-created -------------------------------------------------------------------


def _mhsa_channels(c: int) -> int:
    # _make_divisible(int(0.75 * c), 32) of the official code
    v = int(c * 0.75)
    new_v = max(32, int(v + 16) // 32 * 32)
    return new_v + 32 if new_v < 0.9 * v else new_v


def official_plan(dims, depths):
    """The official block list: (kind, in, out, stride, stage) per block of ``features``."""
    kinds = [
        ["LFP"] * depths[0],
        ["LFP"] * (depths[1] - 1) + ["GFP"],
        ["LFP", "LFP", "GFP"] * (depths[2] // 3),
        ["GFP"] * depths[3],
    ]
    plan, cin = [], 64
    for stage in range(4):
        for j, kind in enumerate(kinds[stage]):
            plan.append((kind, cin, dims[stage], 2 if stage > 0 and j == 0 else 1, stage))
            cin = dims[stage]
    return plan


def official_shapes(dims, depths, num_classes=1000) -> dict[str, tuple]:
    """Every state_dict entry of the official ``MedViT`` (its GFP's unused ``conv`` included)."""
    s: dict[str, tuple] = {}

    def bn(p, c):
        s.update({p + "weight": (c,), p + "bias": (c,), p + "running_mean": (c,), p + "running_var": (c,)})
        s[p + "num_batches_tracked"] = ()

    def patch_embed(p, cin, cout, stride):
        if stride == 2 or cin != cout:
            s[p + "conv.weight"] = (cout, cin, 1, 1)
            bn(p + "norm.", cout)

    def lffn(p, c, ratio, k):  # LocalityFeedForward(c, c, k, 1, ratio, reduction=c): conv.<index>
        h = int(c * ratio)
        s[p + "conv.0.weight"] = (h, c, 1, 1)
        bn(p + "conv.1.", h)
        s[p + "conv.3.weight"] = (h, 1, k, k)
        bn(p + "conv.4.", h)
        s.update({p + "conv.6.fc.0.weight": (h // c, h), p + "conv.6.fc.0.bias": (h // c,)})
        s.update({p + "conv.6.fc.2.weight": (h, h // c), p + "conv.6.fc.2.bias": (h,)})
        s[p + "conv.7.weight"] = (c, h, 1, 1)
        bn(p + "conv.8.", c)

    for i, (cin, cout) in enumerate(((3, 64), (64, 32), (32, 64), (64, 64))):
        s[f"stem.{i}.conv.weight"] = (cout, cin, 3, 3)
        bn(f"stem.{i}.norm.", cout)
    for i, (kind, cin, c, stride, stage) in enumerate(official_plan(dims, depths)):
        p = f"features.{i}."
        if kind == "LFP":
            patch_embed(p + "patch_embed.", cin, c, stride)
            bn(p + "norm1.", c)
            s.update({p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,)})
            s[p + "attn.rpb"] = (c // 32, 13, 13)
            s.update({p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,)})
            lffn(p + "conv.", c, 3, 7 if stage == 0 else 3)
            bn(p + "norm2.", c)
        else:
            m = _mhsa_channels(c)
            patch_embed(p + "patch_embed.", cin, m, stride)
            bn(p + "norm1.", m)
            for n in ("q", "k", "v", "proj"):
                s.update({p + f"e_mhsa.{n}.weight": (m, m), p + f"e_mhsa.{n}.bias": (m,)})
            if SR_RATIOS[stage] > 1:
                bn(p + "e_mhsa.norm.", m)
            patch_embed(p + "projection.", m, c - m, 1)
            s[p + "mhca.group_conv3x3.weight"] = (c - m, 32, 3, 3)
            bn(p + "mhca.norm.", c - m)
            s[p + "mhca.projection.weight"] = (c - m, c - m, 1, 1)
            bn(p + "norm2.", c)
            lffn(p + "conv.", c, 2, 3)  # built, never called
            for n, (a, b) in enumerate(((c, 2 * c), (2 * c, c))):
                s.update({p + f"kan.layers.{n}.layernorm.weight": (a,), p + f"kan.layers.{n}.layernorm.bias": (a,)})
                s[p + f"kan.layers.{n}.rbf.grid"] = (8,)
                s[p + f"kan.layers.{n}.spline_linear.weight"] = (b, 8 * a)
    bn("norm.", dims[3])
    s.update({"proj_head.0.weight": (num_classes, dims[3]), "proj_head.0.bias": (num_classes,)})
    return s


def official_params(dims, depths, num_classes=1000) -> int:
    """The official ``sum(p.numel() for p in model.parameters())`` (BatchNorm statistics are buffers)."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(math.prod(v) for k, v in official_shapes(dims, depths, num_classes).items() if not k.endswith(buffers))


def random_official_state(dims, depths, num_classes=10, seed=0) -> dict[str, torch.Tensor]:
    """An official-layout state_dict with random values of trained-like scale, its BatchNorm statistics
    calibrated on random images (so that the eval-mode network is well conditioned, as a trained one)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in official_shapes(dims, depths, num_classes).items():
        if k.endswith("num_batches_tracked"):
            t = torch.tensor(100)
        elif k.endswith("rbf.grid"):
            t = torch.linspace(-2, 2, 8)
        elif len(shape) == 1 and k.endswith("weight"):  # BatchNorm and LayerNorm scales
            t = 1 + 0.2 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            t = 0.1 * torch.randn(shape, generator=g)
        elif k.endswith("rpb"):
            t = 0.5 * torch.randn(shape, generator=g)
        else:  # conv / linear weights: unit gain
            t = torch.randn(shape, generator=g) / math.prod(shape[1:]) ** 0.5
        out[k] = t
    calib = torch.randn(4, 3, 112, 112, generator=g)
    wide = dict(out)  # float32: the statistics need no more
    _CALIBRATE.append(True)
    try:
        official_forward(wide, calib, dims, depths)
    finally:
        _CALIBRATE.clear()
    return {k: v.float() if v.is_floating_point() else v for k, v in wide.items()}


_CALIBRATE = []  # non-empty while official_forward sets the BatchNorm statistics from its batch


def _bn(sd, p, x):
    if _CALIBRATE:  # the batch's own statistics become the running ones (a trained network's BN is calibrated)
        dims = [0] + list(range(2, x.dim()))
        sd[p + "running_mean"], sd[p + "running_var"] = x.mean(dims), x.var(dims, unbiased=False)
    return F.batch_norm(
        x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"], False, 0.0, 1e-5
    )


def _patch_embed(sd, p, x, stride):
    if stride == 2:
        x = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
    if p + "conv.weight" in sd:
        x = _bn(sd, p + "norm.", F.conv2d(x, sd[p + "conv.weight"]))
    return x


def _hswish(x):
    return x * (F.relu6(x + 3) / 6)


def _lffn(sd, p, x, k):
    y = _hswish(_bn(sd, p + "conv.1.", F.conv2d(x, sd[p + "conv.0.weight"])))
    y = F.conv2d(y, sd[p + "conv.3.weight"], padding=k // 2, groups=y.shape[1])
    y = _hswish(_bn(sd, p + "conv.4.", y))
    s = F.relu(F.linear(y.mean((2, 3)), sd[p + "conv.6.fc.0.weight"], sd[p + "conv.6.fc.0.bias"]))
    s = F.relu6(F.linear(s, sd[p + "conv.6.fc.2.weight"], sd[p + "conv.6.fc.2.bias"]) + 3) / 6
    y = _bn(sd, p + "conv.8.", F.conv2d(y * s[:, :, None, None], sd[p + "conv.7.weight"]))
    return x + y


def natten017_na2d(sd, p, x, heads, kernel=7):
    """natten 0.17's ``NeighborhoodAttention2D`` (dilation 1, rel_pos_bias) on ``[b, h, w, c]``: unfused
    ``na2d_qk`` with the legacy rpb indexing, softmax, ``na2d_av``. Raises where natten does (map < kernel)."""
    b, h, w, c = x.shape
    if h < kernel or w < kernel:
        raise ValueError("natten: kernel size larger than the input")
    hd, ns = c // heads, kernel // 2
    qkv = F.linear(x, sd[p + "qkv.weight"], sd[p + "qkv.bias"]).reshape(b, h, w, 3, heads, hd)
    q, k, v = qkv.permute(3, 0, 4, 1, 2, 5)  # [b, heads, h, w, hd]
    q = q * hd**-0.5

    def window(L):  # per coordinate: the window's first key and the rpb index of key 0 (natten's formulas)
        start, pb = [], []
        for i in range(L):
            start.append(0 if i < ns else (L - kernel if i + ns >= L else i - ns))
            pb.append(ns + (i < ns) * (ns - i) + (i + ns >= L) * (L - i - 1 - ns))
        return torch.tensor(start), torch.tensor(pb)

    (sr, pr), (sc, pc) = window(h), window(w)
    m = torch.arange(kernel)
    rows, cols = (sr[:, None] + m)[:, None, :, None], (sc[:, None] + m)[None, :, None, :]  # [h,1,K,1],[1,w,1,K]
    kg, vg = k[:, :, rows, cols], v[:, :, rows, cols]  # [b, heads, h, w, K, K, hd]
    logits = (q[:, :, :, :, None, None, :] * kg).sum(-1)
    bias = sd[p + "rpb"][:, (pr[:, None] + m)[:, None, :, None], (pc[:, None] + m)[None, :, None, :]]
    attn = (logits + bias).reshape(b, heads, h, w, kernel * kernel).softmax(-1)
    out = (attn.reshape(b, heads, h, w, kernel, kernel, 1) * vg).sum((4, 5))
    out = out.permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
    return F.linear(out, sd[p + "proj.weight"], sd[p + "proj.bias"])


def _e_mhsa(sd, p, x, sr):
    B, N, C = x.shape
    heads = C // 32
    q = F.linear(x, sd[p + "q.weight"], sd[p + "q.bias"]).reshape(B, N, heads, 32).permute(0, 2, 1, 3)
    kv = x
    if sr > 1:
        kv = F.avg_pool1d(x.transpose(1, 2), sr**2, sr**2)
        kv = _bn(sd, p + "norm.", kv).transpose(1, 2)
    k = F.linear(kv, sd[p + "k.weight"], sd[p + "k.bias"]).reshape(B, -1, heads, 32).permute(0, 2, 3, 1)
    v = F.linear(kv, sd[p + "v.weight"], sd[p + "v.bias"]).reshape(B, -1, heads, 32).permute(0, 2, 1, 3)
    attn = ((q @ k) * 32**-0.5).softmax(-1)
    return F.linear((attn @ v).transpose(1, 2).reshape(B, N, C), sd[p + "proj.weight"], sd[p + "proj.bias"])


def _faster_kan(sd, p, x):
    for n in range(2):
        q = f"{p}layers.{n}."
        u = F.layer_norm(x, (x.shape[-1],), sd[q + "layernorm.weight"], sd[q + "layernorm.bias"], 1e-5)
        t = torch.tanh((u[..., None] - sd[q + "rbf.grid"]) * (1 / 0.33))
        x = F.linear((1 - t * t).reshape(x.shape[0], -1), sd[q + "spline_linear.weight"])
    return x


def official_forward(sd, x, dims, depths):
    """The official ``MedViT.forward`` in eval mode, from an official state_dict."""
    for i, stride in enumerate((2, 1, 1, 2)):
        x = F.relu(_bn(sd, f"stem.{i}.norm.", F.conv2d(x, sd[f"stem.{i}.conv.weight"], stride=stride, padding=1)))
    for i, (kind, _, c, stride, stage) in enumerate(official_plan(dims, depths)):
        p = f"features.{i}."
        x = _patch_embed(sd, p + "patch_embed.", x, stride)
        b, c, h, w = x.shape
        if kind == "LFP":
            a = natten017_na2d(sd, p + "attn.", _bn(sd, p + "norm1.", x).reshape(b, h, w, c), c // 32)
            x = x + a.reshape(b, c, h, w)
            x = x + _lffn(sd, p + "conv.", _bn(sd, p + "norm2.", x), 7 if stage == 0 else 3)
        else:
            t = _bn(sd, p + "norm1.", x).flatten(2).transpose(1, 2)  # rearrange "b c h w -> b (h w) c"
            x = x + _e_mhsa(sd, p + "e_mhsa.", t, SR_RATIOS[stage]).transpose(1, 2).reshape(b, c, h, w)
            o = _patch_embed(sd, p + "projection.", x, 1)
            q = p + "mhca."
            m = F.conv2d(o, sd[q + "group_conv3x3.weight"], padding=1, groups=o.shape[1] // 32)
            o = o + F.conv2d(F.relu(_bn(sd, q + "norm.", m)), sd[q + "projection.weight"])
            x = torch.cat([x, o], 1)
            out = _bn(sd, p + "norm2.", x)
            b, d, t_, _ = out.shape
            x = x + _faster_kan(sd, p + "kan.", out.reshape(-1, out.shape[1])).reshape(b, d, t_, t_)
    x = _bn(sd, "norm.", x).mean((2, 3))
    return F.linear(x, sd["proj_head.0.weight"], sd["proj_head.0.bias"])


# --- names, shapes, sizes --------------------------------------------------------------------------------


def test_registered():
    assert models.list_models("medvitv2_*") == [f"medvitv2_{v}" for v in ("base", "large", "small", "tiny")]
    # the official dropout wiring: MedViT(drop=...) reaches the LFP attention's weights and E-MHSA's projection,
    # MedViT(attn_drop=...) E-MHSA's weights
    model = create_model("medvitv2_tiny", drop_rate=0.1, attn_drop_rate=0.2, device="meta")
    lfp, gfp = model.features[0], model.features[3]
    assert lfp.attn.attn_drop_rate == 0.1 and gfp.e_mhsa.proj_drop.p == 0.1 and gfp.e_mhsa.attn_drop == 0.2


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_names_and_shapes_are_the_official_ones_without_the_unused_conv(variant):
    dims, depths = VARIANTS[variant]
    official = official_shapes(dims, depths, 7)
    plan = official_plan(dims, depths)
    gfp_conv = tuple(f"features.{i}.conv." for i, block in enumerate(plan) if block[0] == "GFP")
    unused = {k for k in official if k.startswith(gfp_conv)}
    assert len(unused) == len(gfp_conv) * 22  # 3 conv weights, 3 BatchNorms x 5 entries, the SE: 2 Linear x 2
    for layout in (False, True):
        model = create_model(f"medvitv2_{variant}", num_classes=7, official_layout=layout, device="meta")
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert ours == {k: v for k, v in official.items() if k not in unused}


@pytest.mark.parametrize(
    "variant, ours_m, official_m",
    [("tiny", 10.74, 11.72), ("small", 27.34, 30.09), ("base", 60.86, 67.00), ("large", 107.42, 118.29)],
)
def test_parameter_counts(variant, ours_m, official_m):
    dims, depths = VARIANTS[variant]
    model = create_model(f"medvitv2_{variant}", device="meta")
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert abs(model.num_params() / 1e6 - ours_m) <= 0.005 * ours_m
    assert abs(official_params(dims, depths) / 1e6 - official_m) <= 0.005 * official_m  # with the unused conv


def test_flops_the_papers_way():
    model = create_model("medvitv2_small", device="meta")
    gflops = model.flops(224) / 1e9
    assert abs(gflops - 7.6) <= 0.03 * 7.6, gflops  # paper Table 2: 7.6 GFLOPs
    # the rule by hand on one block type: the classifier head alone is 2 * 512 * 1000 FLOPs per image
    assert model.flops(224, batch_size=2) == 2 * model.flops(224)
    head_only = 2 * 512 * 1000
    assert model.flops(224) > 1000 * head_only
    # NA's products are not counted, the KAN's are: a layout change moves nothing
    assert create_model("medvitv2_small", official_layout=True, device="meta").flops(224) == model.flops(224)
    # doubling the side scales the count by ~4 (attention with pooled keys; exactly 4x for convs/linears)
    assert 3.9 < model.flops(448) / model.flops(224) < 4.6


# --- the official computation --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_small() -> dict[str, torch.Tensor]:
    """A random, calibrated official ``MedViT_small(num_classes=10)`` state_dict (with the unused GFP.conv)."""
    return random_official_state(*VARIANTS["small"], num_classes=10, seed=1)


def test_official_layout_equals_the_official_forward(tmp_path, official_small):
    """medvitv2_small(official_layout=True) loaded from an official state_dict (with the unused GFP.conv)
    gives the official forward's logits: checked against the re-creation above in float64 (the truth) and
    float32; our float32 error must stay within a small factor of the official float32 code's own."""
    dims, depths = VARIANTS["small"]
    sd = official_small
    torch.save({"model": sd}, tmp_path / "MedViT_small.pth")
    model = create_model("medvitv2_small", num_classes=10, official_layout=True).eval()
    notes = load_checkpoint(model, tmp_path / "MedViT_small.pth")  # strict=True
    assert len(notes) == 1 and "features.<GFP>.conv" in notes[0] and "never uses" in notes[0]
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(2))  # the smallest natten 0.17 runs
    with torch.no_grad():
        ours = model(x)
        truth = official_forward(
            {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}, x.double(), dims, depths
        )
        off32 = official_forward(sd, x, dims, depths)
    scale = truth.abs().max().item()
    assert truth.std().item() > 0.1  # logits of trained-like scale, not a vanishing signal
    err_ours = (ours.double() - truth).abs().max().item()
    err_off = (off32.double() - truth).abs().max().item()
    assert err_ours <= max(4 * err_off, 1e-6 * scale), (err_ours, err_off, scale)
    close(ours, off32, rtol=1e-5, atol=2e-5 * scale, what="official_layout vs official float32")
    # the quirks matter: the paper's layout on the same weights (plain NA) gives other logits
    paper = create_model("medvitv2_small", num_classes=10, dilations=(1, 1, 1, 1)).eval()
    paper.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (paper(x) - ours).abs().max().item() > 100 * err_ours + 1e-3 * scale


def test_natten017_reference_raises_where_natten_does(official_small):
    dims, depths = VARIANTS["small"]
    with pytest.raises(ValueError, match="kernel size larger"):
        official_forward(official_small, torch.randn(1, 3, 64, 64), dims, depths)  # stage 3 is 4x4 < 7


@pytest.mark.parametrize("official_layout", [False, True], ids=["paper", "official"])
def test_what_the_attention_and_the_kan_see(official_layout):
    """Why the official layout is wrong: its NCHW ``reshape`` hands the attention and the KAN runs of the
    flattened buffer: with 64 channels at 8x8, its "token" (0, 0) is channel 0's whole map, not a pixel;
    the paper's layout gives them each pixel's channel vector."""
    torch.manual_seed(0)
    lfp = LFPBlock(64, 64, official_layout=official_layout).eval()
    gfp = GFPBlock(64, 64, mix_block_ratio=0.5, official_layout=official_layout).eval()
    seen = {}
    lfp.norm1.register_forward_hook(lambda m, a, out: seen.__setitem__("u_attn", out))
    lfp.attn.register_forward_pre_hook(lambda m, a: seen.__setitem__("attn", a[0]))
    gfp.norm2.register_forward_hook(lambda m, a, out: seen.__setitem__("u_kan", out))
    gfp.kan.register_forward_pre_hook(lambda m, a: seen.__setitem__("kan", a[0]))
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        lfp(x)
        gfp(x)
    for u, got in ((seen["u_attn"], seen["attn"]), (seen["u_kan"], seen["kan"])):
        if official_layout:
            assert torch.equal(got.reshape(-1), u.reshape(-1))  # the NCHW buffer in its own order
            assert torch.equal(got.reshape(-1, 64)[0], u[0, 0].flatten())  # token 0: channel 0, all 64 pixels
            assert not torch.equal(got.reshape(-1, 64)[0], u[0, :, 0, 0])
        else:
            assert torch.equal(got, u.permute(0, 2, 3, 1))  # [B, H, W, C]: pixel (h, w)'s channels
            assert torch.equal(got[0, 0, 0], u[0, :, 0, 0])


# --- every model, every backend here --------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant_model(request) -> MedViTV2:
    """One model per variant (built once: initialising base and large takes seconds), 3 classes."""
    torch.manual_seed(0)
    return create_model(f"medvitv2_{request.param}", num_classes=3)


@pytest.mark.parametrize("backend", backends("cpu", "reference"))
def test_forward_backward(variant_model, backend):
    """Training forward and backward of every variant at the smallest input (32x32: the last attention
    stage at 2x2, the last stage at 1x1): logits, and a finite gradient for every trainable parameter."""
    torch.manual_seed(0)
    model = variant_model.train()
    model.backend = backend
    model.zero_grad(set_to_none=True)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    (out * torch.randn(2, 3)).sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert name.endswith("rbf.grid"), name  # FasterKAN's frozen grid, as upstream
    assert any(p.grad.abs().max() > 0 for n, p in model.named_parameters() if ".attn." in n)
    assert any(p.grad.abs().max() > 0 for n, p in model.named_parameters() if ".kan." in n)


def _mini(**kwargs) -> MedViTV2:
    # every block kind at the least depth and width (GFP needs 2 x 32 channels at mix 0.5)
    return MedViTV2((32, 64, 64, 64), (1, 1, 3, 1), num_classes=3, mix_block_ratio=0.5, **kwargs)


def _run(model: MedViTV2, x: torch.Tensor, backend: str, weights: torch.Tensor):
    model.backend = backend
    model.zero_grad(set_to_none=True)
    xx = x.detach().requires_grad_(True)
    out = model(xx)
    (out * weights).sum().backward()
    grads = torch.cat([xx.grad.flatten()] + [p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return out.detach(), grads


@pytest.mark.parametrize("official_layout", [False, True], ids=["paper", "official"])
def test_kernels_equal_the_reference_ops_float64(official_layout):
    """Every block kind in training mode at 32x32 with a 3x3 window (the paper's dilation fitted to 2 in
    stage 1, the window shrunk to the 2x2 map in stage 3): the CPU kernels' logits and every gradient equal
    the reference ops' in float64, relative to the largest gradient."""
    torch.manual_seed(0)
    # contiguous format: CPU float64 convolutions have no fast channels-last path (10x slower)
    model = _mini(drop_path_rate=0.0, na_kernel_size=3, official_layout=official_layout, dtype=torch.float64)
    model.channels_last = False
    model.train()
    assert [b.attn.fitted((8 >> i, 8 >> i)) for i, b in ((0, model.features[0]), (2, model.features[2]))] == [
        ((3, 3), ((2, 2) if not official_layout else (1, 1))),
        ((2, 2), (1, 1)),
    ]
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    w = torch.randn(2, 3, dtype=torch.float64)
    out_ref, g_ref = _run(model, x, "reference", w)
    out, g = _run(model, x, "cpu", w)
    close(out, out_ref, rtol=0, atol=1e-12 * out_ref.abs().max().item(), what="logits")
    close(g, g_ref, rtol=0, atol=1e-11 * g_ref.abs().max().item(), what="gradients")


@requires_triton
def test_blocks_on_triton_interpreter():
    """The Triton kernels (in Triton's interpreter on CPU: minutes for a whole model, so one block of each
    kind at tiny sizes) give the reference ops' outputs and gradients in float32."""
    torch.manual_seed(0)
    lfp = LFPBlock(32, 32, na_kernel_size=3, dilation=2).eval()  # dilated NA with rpb on a 6x6 map
    gfp = GFPBlock(32, 64, mix_block_ratio=0.5, sr_ratio=2).eval()  # KAN [64, 128, 64] on 3x3 pixels
    x = torch.randn(1, 32, 6, 6)
    for block, inp in ((lfp, x), (gfp, x[:, :, :3, :3])):
        results = {}
        for backend in ("reference", "triton"):
            for m in block.modules():
                if hasattr(m, "backend"):
                    m.backend = backend
            block.zero_grad(set_to_none=True)
            xx = inp.detach().requires_grad_(True)
            out = block(xx)
            (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
            grads = [xx.grad] + [p.grad for p in block.parameters() if p.grad is not None]
            results[backend] = (out.detach(), torch.cat([t.flatten() for t in grads]))
        (out, g), (out_ref, g_ref) = results["triton"], results["reference"]
        close(out, out_ref, rtol=0, atol=1e-5 * out_ref.abs().max().item(), what=f"{type(block).__name__} out")
        close(g, g_ref, rtol=0, atol=1e-5 * g_ref.abs().max().item(), what=f"{type(block).__name__} grads")


@pytest.mark.parametrize("backend", backends("cuda", "triton", device="cuda"))
def test_gpu_backends_equal_the_reference_ops(backend):
    """On a GPU (marked gpu, skipped here): the CUDA and Triton kernels give the reference ops' logits and
    gradients (float32; BatchNorm over few values amplifies rounding, hence the margins)."""
    torch.manual_seed(0)
    model = create_model("medvitv2_small", num_classes=5, drop_path_rate=0.0, device="cuda").train()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    w = torch.randn(2, 5, device="cuda")
    out_ref, g_ref = _run(model, x, "reference", w)
    out, g = _run(model, x, backend, w)
    close(out, out_ref, rtol=0, atol=1e-3 * out_ref.abs().max().item(), what="logits")
    close(g, g_ref, rtol=0, atol=1e-2 * g_ref.abs().max().item(), what="gradients")


def test_torch_compile_fullgraph():
    """The whole model traces into one graph, forward and backward (aot_eager: the kernels' fake and
    autograd registrations, no graph breaks), with the eager results."""
    torch.manual_seed(0)
    model = _mini(drop_path_rate=0.0).eval()
    x = torch.randn(2, 3, 32, 32)
    w = torch.randn(2, 3)
    out_ref, g_ref = _run(model, x, "cpu", w)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out, g = _run(compiled, x, "cpu", w)
    close(out, out_ref, rtol=1e-6, atol=1e-6 * out_ref.abs().max().item(), what="compiled logits")
    close(g, g_ref, rtol=1e-6, atol=1e-6 * g_ref.abs().max().item(), what="compiled gradients")


@pytest.mark.skipif(not LONG, reason="inductor compiles for minutes on CPU (MEDKERNELS_LONG_TESTS=1)")
def test_torch_compile_inductor():
    torch.manual_seed(0)
    model = _mini(drop_path_rate=0.0).eval()
    x, w = torch.randn(2, 3, 32, 32), torch.randn(2, 3)
    out_ref, g_ref = _run(model, x, "cpu", w)
    out, g = _run(torch.compile(model, fullgraph=True), x, "cpu", w)
    close(out, out_ref, rtol=1e-5, atol=1e-5 * out_ref.abs().max().item(), what="inductor logits")
    # inductor fuses and reorders the norms: float32 rounding, amplified by the untrained network's LayerNorms
    # (measured: 2.2e-5 of the largest gradient)
    close(g, g_ref, rtol=1e-5, atol=1e-4 * g_ref.abs().max().item(), what="inductor gradients")


def test_bf16_autocast(official_small):
    """Under CPU bfloat16 autocast the model runs end to end (the KAN and attention kernels in bfloat16,
    the parameters and their gradients float32). Its logits follow the float32 ones as closely as the
    same model's on the reference ops under autocast do (flash-attention's rule: the kernels' low-precision
    error within 2x PyTorch's own); a random network amplifies rounding, so the error itself is no measure."""
    model = create_model("medvitv2_small", num_classes=10, official_layout=True).eval()
    model.load_state_dict(model.checkpoint_filter(official_small)[0])
    x = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)
        errors = {}
        for backend in ("reference", "cpu"):
            model.backend = backend
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
            assert out.dtype == torch.bfloat16
            errors[backend] = ((out.float() - ref).norm() / ref.norm()).item()
    assert errors["cpu"] <= 2 * errors["reference"] + 1e-2, errors
    model.backend = "cpu"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("backend", backends("cpu", "reference"))
def test_faster_kan_under_autocast(backend):
    """FasterKAN under autocast runs its linear map in the autocast dtype, as nn.Linear would (the fused
    op needs x and weight in one dtype): bfloat16 out, equal to the op on the bfloat16-cast LayerNorm output
    and weight; the float32 weight gets a float32 gradient through the cast."""
    torch.manual_seed(0)
    kan = FasterKAN([16, 32, 8], backend=backend)
    x = torch.randn(5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kan(x)
    assert out.dtype == torch.bfloat16
    with torch.no_grad():
        h = x
        for layer in kan.layers:
            u = layer.layernorm(h).bfloat16()
            h = ops.rswaf_kan_ref(u, layer.rbf.grid, layer.rbf.inv_denominator, layer.spline_linear.weight.bfloat16())
    close(out, h, rtol=1e-2, atol=1e-2 * h.abs().max().item(), what="autocast KAN")
    out.float().sum().backward()
    w = kan.layers[0].spline_linear.weight
    assert w.grad is not None and w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()
