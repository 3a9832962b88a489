"""DCT-HistoTransformer (medkernels.models.dct_histoformer) and its DCT-Conv block (medkernels.nn.dct_conv):
an independent re-implementation of the block from the paper's description, sizes counted by hand, every backend
here against the reference ops, gradcheck, torch.compile, autocast, bad configurations.

There is no official code (arXiv 2410.19166 publishes none), so the "official" side is ``block_forward`` below:
plain torch in float64, the DCT from its cosine formula (not ``medkernels.ops``), attention over the kept
coefficients, the zero-filled inverse, the output projection on the spatial grid, MobileNetV2's inverted residual.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from kit import backends, close, close_ulp, requires_triton

from medkernels import models
from medkernels.models import create_model
from medkernels.models import dct_histoformer as dh
from medkernels.models.dct_histoformer import DCTHistoTransformer
from medkernels.nn import DCTConvBlock, MobileConv

# --- the block, re-implemented -------------------------------------------------------------------------


def dct_basis(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix from its formula: C[k, i] = a_k cos(pi k (2i + 1) / 2n), float64."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * k * (2 * i + 1) / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


def _bn(sd, p, x):
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"], False)


def mobile_forward(sd, p, x, stride=1):
    """MobileNetV2's inverted residual (eval), ReLU6, no residual."""
    if p + "conv_pw.weight" in sd:
        x = F.relu6(_bn(sd, p + "bn1.", F.conv2d(x, sd[p + "conv_pw.weight"])))
    w = sd[p + "conv_dw.weight"]
    x = F.relu6(_bn(sd, p + "bn2.", F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=w.shape[0])))
    return _bn(sd, p + "bn3.", F.conv2d(x, sd[p + "conv_pwl.weight"]))


def block_forward(sd, x, heads, kept, fusion):
    """DCT-Conv block (eval): x + fuse(DCT attention(BN(x)), MobileConv(x))."""
    B, C, H, W = x.shape
    kh, kw = kept
    u = _bn(sd, "norm1.", x)
    dh_, dw_ = dct_basis(H)[:kh], dct_basis(W)[:kw]
    coeff = dh_ @ u @ dw_.T  # [B, C, kh, kw]: the low-frequency corner of the 2D DCT-II
    t = coeff.reshape(B, C, kh * kw).transpose(1, 2)
    q, k, v = F.linear(t, sd["attn.qkv.weight"], sd["attn.qkv.bias"]).reshape(B, -1, 3, heads, C // heads).unbind(2)
    s = torch.einsum("bnhd,bmhd->bhnm", q, k) * (C // heads) ** -0.5
    o = torch.einsum("bhnm,bmhd->bnhd", s.softmax(-1), v).reshape(B, kh * kw, C)
    back = dh_.T @ o.transpose(1, 2).reshape(B, C, kh, kw) @ dw_  # zero-filled inverse (orthonormal: transpose)
    a = F.linear(back.permute(0, 2, 3, 1), sd["attn.proj.weight"], sd["attn.proj.bias"]).permute(0, 3, 1, 2)
    m = mobile_forward(sd, "mobile.", x)
    if fusion == "sum":
        y = a + m
    elif fusion == "concat":
        y = _bn(sd, "fuse.norm.", F.conv2d(torch.cat([a, m], 1), sd["fuse.conv.weight"]))
    else:
        g = torch.sigmoid(sd["gate"])[:, None, None]
        y = g * a + (1 - g) * m
    return x + y


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Trained-like values: norms around 1 with offsets, BatchNorm statistics not (0, 1), gates not 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith(("running_var",)):
                t.copy_(0.5 + torch.rand(t.shape, generator=g, dtype=t.dtype))
            elif name.endswith(("running_mean", "bias", "gate")):
                t.copy_(0.3 * torch.randn(t.shape, generator=g, dtype=t.dtype))
            elif t.dim() == 1:  # norm scales
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g, dtype=t.dtype))
            else:
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) / math.prod(t.shape[1:]) ** 0.5)


BLOCK_KEYS = {
    "norm1.weight", "norm1.bias", "norm1.running_mean", "norm1.running_var", "norm1.num_batches_tracked",
    "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "mobile.conv_pw.weight", "mobile.conv_dw.weight", "mobile.conv_pwl.weight",
}  # fmt: skip
BLOCK_KEYS |= {f"mobile.bn{i}.{n}" for i in (1, 2, 3) for n in ("weight", "bias", "running_mean", "running_var")}
BLOCK_KEYS |= {f"mobile.bn{i}.num_batches_tracked" for i in (1, 2, 3)}
FUSION_KEYS = {
    "sum": set(),
    "concat": {"fuse.conv.weight"} | {f"fuse.norm.{n}" for n in ("weight", "bias", "running_mean", "running_var")},
    "gate": {"gate"},
}
FUSION_KEYS["concat"].add("fuse.norm.num_batches_tracked")


@pytest.mark.parametrize("fusion", ["sum", "concat", "gate"])
def test_block_equals_the_paper_description(fusion):
    """float64, eval mode, a map with unequal sides and a non-square kept block."""
    torch.manual_seed(0)
    block = DCTConvBlock(16, 2, (3, 4), fusion=fusion, dtype=torch.float64).eval()
    assert set(block.state_dict()) == BLOCK_KEYS | FUSION_KEYS[fusion]
    randomize(block)
    x = torch.randn(2, 16, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        want = block_forward(block.state_dict(), x, 2, (3, 4), fusion)
        for backend in ("cpu", "reference"):
            block.backend = backend
            # float64: ulp of max(|want|, rms(want)); measured <= 3 over the fusions
            close_ulp(block(x), want, f"{fusion} {backend}", ulps=16, dtype=torch.float64)


def test_mobile_conv_is_the_inverted_residual():
    torch.manual_seed(0)
    m = MobileConv(8, 12, 4.0, stride=2, dtype=torch.float64).eval()
    randomize(m, 1)
    x = torch.randn(2, 8, 7, 6, dtype=torch.float64)
    with torch.no_grad():
        out = m(x)
        assert out.shape == (2, 12, 4, 3)
        close_ulp(out, mobile_forward(m.state_dict(), "", x, stride=2), "stride 2", ulps=4, dtype=torch.float64)
    # expand_ratio 1: no expansion (MobileNetV2's first block); residual adds the input
    r = MobileConv(8, expand_ratio=1.0, residual=True, dtype=torch.float64).eval()
    randomize(r, 2)
    assert not any(k.startswith(("conv_pw.", "bn1.")) for k in r.state_dict())
    with torch.no_grad():
        close_ulp(r(x), x + mobile_forward(r.state_dict(), "", x), "residual", ulps=4, dtype=torch.float64)
    assert MobileConv(8, act_layer="silu").act2.__class__ is torch.nn.SiLU
    assert MobileConv(8, norm_layer="layer").bn3.__class__.__name__ == "LayerNorm2d"


def test_layer_norm_choice():
    """norm_layer="layer": LayerNorm over each pixel's channels, everywhere in the block."""
    torch.manual_seed(0)
    block = DCTConvBlock(8, 2, fusion="concat", norm_layer="layer").eval()
    x = torch.randn(2, 8, 5, 5)
    ln = block.norm1
    want = F.layer_norm(x.permute(0, 2, 3, 1), (8,), ln.weight, ln.bias).permute(0, 3, 1, 2)
    close(ln(x), want, 0, 0, "LayerNorm2d")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in block.modules())
    assert block(x).shape == x.shape


# --- the block: backends, gradients, compile --------------------------------------------------------------


def _grads(module, x, backend, weights):
    module.backend = backend
    module.zero_grad(set_to_none=True)
    xx = x.detach().requires_grad_(True)
    out = module(xx)
    (out * weights).sum().backward()
    return out.detach(), torch.cat([xx.grad.flatten()] + [p.grad.flatten() for p in module.parameters()])


@pytest.mark.parametrize("fusion", ["sum", "concat", "gate"])
def test_block_gradcheck_float64(fusion):
    """Training mode (BatchNorm on batch statistics), every parameter's and the input's gradient."""
    torch.manual_seed(0)
    block = DCTConvBlock(4, 2, 0.5, expand_ratio=2.0, fusion=fusion, dtype=torch.float64, backend="cpu").train()
    randomize(block, 3)
    x = torch.randn(2, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    names, params = zip(*block.named_parameters())

    def f(x, *ps):
        return torch.func.functional_call(block, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *[p.detach().requires_grad_(True) for p in params]))


@pytest.mark.parametrize("backend", backends("cpu"))
def test_block_backends_equal_the_reference_ops(backend):
    """float32, training mode: outputs and every gradient (input and parameters) of the CPU kernels against the
    same block on the reference ops (the Triton kernels: test_model_on_triton_interpreter)."""
    torch.manual_seed(0)
    block = DCTConvBlock(16, 2, 0.25, fusion="gate").train()
    x = torch.randn(2, 16, 6, 10)
    w = torch.randn(2, 16, 6, 10)
    out_ref, g_ref = _grads(block, x, "reference", w)
    out, g = _grads(block, x, backend, w)
    # relative to the largest; measured (four seeds) outputs 6.3e-8, gradients 1.9e-8
    close(out, out_ref, rtol=0, atol=5e-7 * out_ref.abs().max().item(), what="block out")
    close(g, g_ref, rtol=0, atol=5e-7 * g_ref.abs().max().item(), what="block grads")


def test_block_torch_compile_fullgraph():
    """One graph (aot_eager: the DCT ops' fake and autograd registrations, no graph break) with eager's results."""
    torch.manual_seed(0)
    block = DCTConvBlock(16, 2, 0.25, fusion="concat").train()
    x, w = torch.randn(2, 16, 8, 6), torch.randn(2, 16, 8, 6)
    out_ref, g_ref = _grads(block, x, "cpu", w)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    out, g = _grads(compiled, x, "cpu", w)
    close(out, out_ref, rtol=1e-6, atol=1e-6 * out_ref.abs().max().item(), what="compiled out")
    close(g, g_ref, rtol=1e-6, atol=1e-6 * g_ref.abs().max().item(), what="compiled grads")


# --- the model ---------------------------------------------------------------------------------------------


def _mini(**kwargs) -> DCTHistoTransformer:
    """Every part at the least width: maps 16 / 8, 4, 2, 1 at a 32x32 input (kept 4x4, 2x2, 1x1, 1x1)."""
    kwargs.setdefault("num_classes", 3)
    return DCTHistoTransformer((8, 16, 16, 24), (1, 1, 1, 1), stem_channels=8, head_dim=8, **kwargs)


def _mobile_params(cin, cout, e, k=3):
    hidden = round(cin * e)
    expand = cin * hidden + 2 * hidden if hidden != cin else 0
    return expand + hidden * k * k + 2 * hidden + hidden * cout + 2 * cout


def expected_params(dims, depths, num_classes, stem=32, e=4.0, down_e=4.0, fusion="sum"):
    """Counted by hand from the architecture the module docstring describes (BatchNorm: 2 per channel)."""
    n = 3 * stem * 9 + 2 * stem
    cin = stem
    for dim, depth in zip(dims, depths):
        n += _mobile_params(cin, dim, down_e)
        block = 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + _mobile_params(dim, dim, e)
        block += {"sum": 0, "concat": 2 * dim * dim + 2 * dim, "gate": dim}[fusion]
        n += depth * block
        cin = dim
    return n + 2 * cin + cin * num_classes + num_classes


def test_registered_and_parameter_counts_are_the_documented_ones():
    assert models.list_models("dct_histo*") == ["dct_histoformer"]
    dims, depths = (64, 128, 192, 256), (2, 2, 4, 2)
    for num_classes in (2, 8):
        model = create_model("dct_histoformer", num_classes=num_classes, device="meta")
        assert model.num_params() == expected_params(dims, depths, num_classes)
        assert f"{model.num_params():,} parameters at {num_classes}" in dh.__doc__ or (
            f"({model.num_params():,} at {num_classes})" in dh.__doc__
        )
    assert create_model("dct_histoformer", device="meta").num_classes == 2
    for fusion in ("concat", "gate"):
        model = create_model("dct_histoformer", fusion=fusion, device="meta")
        assert model.num_params() == expected_params(dims, depths, 2, fusion=fusion)
    # the factory's docstring states the same count
    assert f"{create_model('dct_histoformer', device='meta').num_params() / 1e6:.2f}M" in dh.dct_histoformer.__doc__


def test_flops_rule_by_hand():
    """2 x MACs of the convolutions, linears, attention products and DCT matmuls, counted by hand at 224x224."""
    model = create_model("dct_histoformer", device="meta")
    dims, depths = (64, 128, 192, 256), (2, 2, 4, 2)
    macs = 112 * 112 * 32 * 3 * 9  # stem
    cin, side = 32, 112
    for dim, depth in zip(dims, depths):
        out_side = (side + 1) // 2
        hid = 4 * cin
        macs += side * side * cin * hid + out_side * out_side * hid * 9 + out_side * out_side * hid * dim
        side, cin = out_side, dim
        k = round(side * 0.5)
        n = k * k
        per_block = side * side * (dim * 4 * dim * 2 + 4 * dim * 9)  # MobileConv
        per_block += n * dim * 3 * dim + n * dim * dim + 2 * n * n * dim  # qkv, proj, q k^T, attn v
        per_block += dim * (k * side * side + k * side * k) * 2  # dct2d and idct2d (same count when square)
        macs += depth * per_block
    macs += 256 * 2
    assert model.flops(224) == 2 * macs
    assert f"{model.flops(224) / 1e9:.3f} GFLOPs" in dh.__doc__
    assert f"{model.flops(224) / 1e9:.2f} GFLOPs" in dh.dct_histoformer.__doc__
    assert model.flops(224, batch_size=2) == 2 * model.flops(224)


@pytest.mark.parametrize("num_classes", [2, 8], ids=["binary", "multiclass"])
def test_heads(num_classes):
    torch.manual_seed(0)
    model = create_model("dct_histoformer", num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, num_classes) and torch.isfinite(out).all()
    assert model.head.out_features == num_classes


def _run(model, x, backend, weights):
    model.backend = backend
    model.zero_grad(set_to_none=True)
    xx = x.detach().requires_grad_(True)
    out = model(xx)
    (out * weights).sum().backward()
    grads = [xx.grad] + [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return out.detach(), torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_model_cpu_kernels_equal_the_reference_ops(dtype):
    """Every gradient (input and parameters): the model on the CPU kernels against the same model (same weights)
    on the reference ops. Eval mode with trained-like weights: in training mode BatchNorm over the 2 values of
    the last 1x1 maps turns rounding noise into O(1) differences (the blocks are compared in training mode)."""
    torch.manual_seed(0)
    model = _mini(fusion="gate", dtype=dtype).eval()
    randomize(model, 2)
    model.channels_last = dtype == torch.float32  # both memory formats (float64 convolutions: slow channels-last)
    x = torch.randn(2, 3, 32, 32, dtype=dtype)
    w = torch.randn(2, 3, dtype=dtype)
    out_ref, g_ref = _run(model, x, "reference", w)
    out, g = _run(model, x, "cpu", w)
    # relative to the largest logit / gradient; measured (four seeds) float64 6.5e-16 / 5.0e-16; float32 (six
    # seeds x three fusions) 8.3e-7 / 4.0e-6 (a BatchNorm weight's gradient sums every pixel)
    tol = (1e-14, 1e-14) if dtype == torch.float64 else (2e-6, 1e-5)
    close(out, out_ref, rtol=0, atol=tol[0] * out_ref.abs().max().item(), what="logits")
    close(g, g_ref, rtol=0, atol=tol[1] * g_ref.abs().max().item(), what="gradients")


@requires_triton
def test_model_on_triton_interpreter():
    """The whole (tiny) model on the Triton kernels, in Triton's interpreter on CPU (eval mode, trained-like
    weights, as above; the same errors as the CPU kernels' there)."""
    torch.manual_seed(0)
    model = _mini().eval()
    randomize(model, 2)
    x, w = torch.randn(2, 3, 16, 16), torch.randn(2, 3)  # maps 8 / 4, 2, 1, 1
    out_ref, g_ref = _run(model, x, "reference", w)
    out, g = _run(model, x, "triton", w)
    close(out, out_ref, rtol=0, atol=2e-6 * out_ref.abs().max().item(), what="logits")
    close(g, g_ref, rtol=0, atol=1e-5 * g_ref.abs().max().item(), what="gradients")


def test_channels_last_and_per_stage_keep():
    torch.manual_seed(0)
    model = _mini(keep=(0.25, (2, 1), 1.0, 1)).eval()
    assert model.keeps == (0.25, (2, 1), 1.0, 1) and not model.channels_last
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        b = model(x)
        model.channels_last = True
        a = model(x)
    close(a, b, rtol=1e-6, atol=1e-6 * b.abs().max().item(), what="channels_last vs contiguous")
    # odd sizes: maps ceil-halved (37 -> 19, 10, 5, 3, 2)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 37, 40)).shape == (2, 3)


def test_bf16_autocast():
    """CPU bfloat16 autocast runs forward and backward (float32 parameter gradients); the logits' error against
    float32 is within 2x that of the same model on the reference ops under autocast (flash-attention's rule)."""
    torch.manual_seed(0)
    model = _mini(num_classes=8).eval()
    randomize(model, 4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        errors = {}
        for backend in ("reference", "cpu"):
            model.backend = backend
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
            assert out.dtype == torch.bfloat16 and out.shape == (2, 8)
            errors[backend] = ((out.float() - ref).norm() / ref.norm()).item()
    assert errors["cpu"] <= 2 * errors["reference"] + 1e-2, errors
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
        for p in model.parameters()
    )


BAD = [
    ("dims", lambda: DCTHistoTransformer(dims=(8, 16, 16)), "dims and depths need 4 entries"),
    ("depths", lambda: DCTHistoTransformer(depths=(1, -1, 1, 1)), "depths >= 0"),
    ("head_dim", lambda: DCTHistoTransformer(head_dim=48), r"head_dim \(48\) must divide"),
    ("num_classes", lambda: DCTHistoTransformer(num_classes=0), "num_classes must be >= 1"),
    ("fusion", lambda: DCTHistoTransformer(fusion="max"), "fusion must be one of"),
    ("norm_layer", lambda: DCTHistoTransformer(norm_layer="instance"), "norm_layer must be one of"),
    ("act_layer", lambda: DCTHistoTransformer(act_layer="tanh"), "act_layer must be one of"),
    ("drop_path_rate", lambda: DCTHistoTransformer(drop_path_rate=1.0), r"drop_path_rate must be in \[0, 1\)"),
    ("keep", lambda: DCTHistoTransformer(keep=1.5), "stage 0: .*fractional keep must be in"),
    ("keep size", lambda: _mini(keep=(5, 5)).eval()(torch.randn(1, 3, 32, 32)), r"keep \(5, 5\) is larger"),
    ("input", lambda: _mini()(torch.randn(1, 1, 32, 32)), r"expected \[B, 3, H, W\]"),
    ("block fusion", lambda: DCTConvBlock(8, fusion="add"), "fusion must be one of"),
    ("block num_heads", lambda: DCTConvBlock(8, 3), r"num_heads \(3\) must be >= 1 and divide dim \(8\)"),
    ("block drop_path", lambda: DCTConvBlock(8, drop_path=-0.1), "drop_path must be in"),
    ("block input", lambda: DCTConvBlock(8)(torch.randn(1, 4, 5, 5)), r"expected \[B, 8, H, W\]"),
    ("mobile stride", lambda: MobileConv(8, stride=3), "stride must be 1 or 2"),
    ("mobile kernel_size", lambda: MobileConv(8, kernel_size=4), "kernel_size must be an odd int"),
    ("mobile expand_ratio", lambda: MobileConv(8, expand_ratio=0.5), "expand_ratio must be >= 1"),
    ("mobile residual", lambda: MobileConv(8, 16, residual=True), "residual needs stride 1"),
    ("mobile act_layer", lambda: MobileConv(8, act_layer=torch.tanh), "act_layer must be one of"),
]


@pytest.mark.parametrize("case,call,match", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_a_value_error_naming_the_argument(case, call, match):
    with pytest.raises(ValueError, match=match):
        call()
