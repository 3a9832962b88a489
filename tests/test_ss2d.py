"""SS2D / VSSBlock (VMamba's 2D selective scan) and the VM-UNet model: every backend against the reference ops,
equality with a restatement of the official computation (github.com/JCruan519/VM-UNet, commit 43c495b,
``models/vmunet/vmamba.py`` and ``vmunet.py``), gradients, torch.compile, official names, shapes and parameter
counts, bad input.

The official code needs mamba_ssm's CUDA kernels; the restatement here (``official_ss2d``, ``official_vssm``) is
plain PyTorch written from it, independently of medkernels.nn / medkernels.models: the four permuted copies
``xs (B, 4, d_inner, L)`` (row-major, column-major, their flips), the per-copy x_proj / dt_proj einsums, ONE
``selective_scan_ref`` call on the ``(B, 4 * d_inner, L)`` stack with grouped B/C ``(B, 4, N, L)`` (as the
official ``selective_scan_fn`` call), the official flips / transposes back and the sum; the encoder-decoder with
the official slicing patch merging and a loop-built "b h w (p1 p2 c) -> b (h p1) (w p2) c".
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kit import backends, close, close_as_pytorch

from medkernels.models import create_model, load_checkpoint
from medkernels.models.vm_unet import VMUNet
from medkernels.nn import SS2D, VSSBlock, cross_scan_orders
from medkernels.ops import selective_scan_ref

# --- the official computation, restated -----------------------------------------------------------------


def official_ss2d(sd: dict, x: torch.Tensor, p: str = "") -> torch.Tensor:
    """The official ``SS2D.forward`` with ``forward_corev0`` (no dropout) from a state_dict; x (B, H, W, C)."""
    B, H, W, _ = x.shape
    K, R2N, Din = sd[p + "x_proj_weight"].shape
    N = sd[p + "A_logs"].shape[1]
    R, L = R2N - 2 * N, H * W
    xz = F.linear(x, sd[p + "in_proj.weight"], sd.get(p + "in_proj.bias"))
    u, z = xz.chunk(2, dim=-1)
    w = sd[p + "conv2d.weight"]
    u = F.silu(
        F.conv2d(
            u.permute(0, 3, 1, 2).contiguous(), w, sd.get(p + "conv2d.bias"), padding=(w.shape[-1] - 1) // 2, groups=Din
        )
    )
    x_hwwh = torch.stack([u.view(B, -1, L), torch.transpose(u, 2, 3).contiguous().view(B, -1, L)], dim=1)
    xs = torch.cat([x_hwwh, torch.flip(x_hwwh, dims=[-1])], dim=1)  # (B, 4, Din, L)
    x_dbl = torch.einsum("b k d l, k c d -> b k c l", xs, sd[p + "x_proj_weight"])
    dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
    dts = torch.einsum("b k r l, k d r -> b k d l", dts, sd[p + "dt_projs_weight"])
    As = -torch.exp(sd[p + "A_logs"]).view(-1, N)
    out_y = selective_scan_ref(
        xs.reshape(B, -1, L),
        dts.contiguous().view(B, -1, L),
        As,
        Bs,
        Cs,
        sd[p + "Ds"].view(-1),
        None,
        sd[p + "dt_projs_bias"].view(-1),
        True,
    ).view(B, K, -1, L)
    inv_y = torch.flip(out_y[:, 2:4], dims=[-1])
    wh_y = torch.transpose(out_y[:, 1].view(B, -1, W, H), 2, 3).contiguous().view(B, -1, L)
    invwh_y = torch.transpose(inv_y[:, 1].view(B, -1, W, H), 2, 3).contiguous().view(B, -1, L)
    y = out_y[:, 0] + inv_y[:, 0] + wh_y + invwh_y
    y = torch.transpose(y, 1, 2).contiguous().view(B, H, W, -1)
    y = F.layer_norm(y, (Din,), sd[p + "out_norm.weight"], sd[p + "out_norm.bias"])
    return F.linear(y * F.silu(z), sd[p + "out_proj.weight"], sd.get(p + "out_proj.bias"))


def _ln(sd, p, x):
    return F.layer_norm(x, (x.shape[-1],), sd[p + "weight"], sd[p + "bias"], eps=1e-5)


def _shuffle(x, p):
    """'b h w (p1 p2 c) -> b (h p1) (w p2) c' by strided assignment."""
    B, H, W, C = x.shape
    c = C // (p * p)
    out = x.new_empty(B, H * p, W * p, c)
    for p1 in range(p):
        for p2 in range(p):
            out[:, p1::p, p2::p] = x[..., (p1 * p + p2) * c : (p1 * p + p2 + 1) * c]
    return out


def official_vssm(sd: dict, x: torch.Tensor, num_layers: int = 4) -> torch.Tensor:
    """The official ``VMUNet.forward`` (eval mode) from its state_dict (names under ``vmunet.``)."""
    n_classes = sd["vmunet.final_conv.weight"].shape[0]
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)

    def blocks(p, x):
        j = 0
        while f"{p}blocks.{j}.ln_1.weight" in sd:
            b = f"{p}blocks.{j}."
            x = x + official_ss2d(sd, _ln(sd, b + "ln_1.", x), b + "self_attention.")
            j += 1
        return x

    w = sd["vmunet.patch_embed.proj.weight"]
    x = F.conv2d(x, w, sd["vmunet.patch_embed.proj.bias"], stride=w.shape[-1]).permute(0, 2, 3, 1)
    x = _ln(sd, "vmunet.patch_embed.norm.", x)
    skips = []
    for i in range(num_layers):
        skips.append(x)
        p = f"vmunet.layers.{i}."
        x = blocks(p, x)
        if p + "downsample.reduction.weight" in sd:
            x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
            x = F.linear(_ln(sd, p + "downsample.norm.", x), sd[p + "downsample.reduction.weight"])
    for i in range(num_layers):
        p = f"vmunet.layers_up.{i}."
        if i > 0:
            x = x + skips[-i]
            x = _ln(sd, p + "upsample.norm.", _shuffle(F.linear(x, sd[p + "upsample.expand.weight"]), 2))
        x = blocks(p, x)
    x = _ln(sd, "vmunet.final_up.norm.", _shuffle(F.linear(x, sd["vmunet.final_up.expand.weight"]), 4))
    x = F.conv2d(x.permute(0, 3, 1, 2), sd["vmunet.final_conv.weight"], sd["vmunet.final_conv.bias"])
    return torch.sigmoid(x) if n_classes == 1 else x


def official_ss2d_shapes(C: int, N: int = 16, d_conv: int = 3, expand: int = 2, p: str = "") -> dict:
    """The official SS2D(d_model=C, d_state=N)'s state_dict shapes (bias=False, conv_bias=True)."""
    D, R = expand * C, -(-C // 16)
    return {
        p + "x_proj_weight": (4, R + 2 * N, D),
        p + "dt_projs_weight": (4, D, R),
        p + "dt_projs_bias": (4, D),
        p + "A_logs": (4 * D, N),
        p + "Ds": (4 * D,),
        p + "in_proj.weight": (2 * D, C),
        p + "conv2d.weight": (D, 1, d_conv, d_conv),
        p + "conv2d.bias": (D,),
        p + "out_norm.weight": (D,),
        p + "out_norm.bias": (D,),
        p + "out_proj.weight": (C, D),
    }


def official_vmunet_shapes(num_classes, depths, depths_decoder, dims=(96, 192, 384, 768), N=16) -> dict:
    """Every state_dict entry of the official ``VMUNet`` (read off VSSM.__init__ and its parts)."""
    s: dict = {}

    def ln(p, c):
        s.update({p + "weight": (c,), p + "bias": (c,)})

    def blocks(p, c, depth):
        for j in range(depth):
            ln(f"{p}blocks.{j}.ln_1.", c)
            s.update(official_ss2d_shapes(c, N, p=f"{p}blocks.{j}.self_attention."))

    v = "vmunet."
    s[v + "patch_embed.proj.weight"], s[v + "patch_embed.proj.bias"] = (dims[0], 3, 4, 4), (dims[0],)
    ln(v + "patch_embed.norm.", dims[0])
    for i, (c, d) in enumerate(zip(dims, depths)):
        blocks(f"{v}layers.{i}.", c, d)
        if i < len(dims) - 1:
            s[f"{v}layers.{i}.downsample.reduction.weight"] = (2 * c, 4 * c)
            ln(f"{v}layers.{i}.downsample.norm.", 4 * c)
    for i, (c, d) in enumerate(zip(dims[::-1], depths_decoder)):
        if i > 0:
            s[f"{v}layers_up.{i}.upsample.expand.weight"] = (4 * c, 2 * c)
            ln(f"{v}layers_up.{i}.upsample.norm.", c)
        blocks(f"{v}layers_up.{i}.", c, d)
    s[v + "final_up.expand.weight"] = (4 * dims[0], dims[0])
    ln(v + "final_up.norm.", dims[0] // 4)
    s[v + "final_conv.weight"], s[v + "final_conv.bias"] = (num_classes, dims[0] // 4, 1, 1), (num_classes,)
    return s


# --- SS2D -------------------------------------------------------------------------------------------------


def _ss2d(C=8, N=4, seed=0, **kw):
    torch.manual_seed(seed)
    m = SS2D(C, d_state=N, **kw)
    with torch.no_grad():  # away from the init (ones Ds, identical A rows) so every parameter matters
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def test_cross_scan_orders_of_a_2x3_map():
    # tokens h * 3 + w of [[0, 1, 2], [3, 4, 5]]: row-major, column-major, and their reverses
    want = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]])
    assert torch.equal(cross_scan_orders(2, 3), want)


@pytest.mark.parametrize("backend", backends("cpu", "triton"))
def test_ss2d_backends_equal_the_reference_ops(backend):
    m = _ss2d()
    x = torch.randn(2, 5, 7, 8)
    res = []
    for b in (backend, "reference"):
        m.backend = b
        xi = x.clone().requires_grad_(True)
        out = m(xi)
        out.square().sum().backward()
        res.append([out, xi.grad] + [p.grad.clone() for p in m.parameters()])
        m.zero_grad()
    names = ["out", "x"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, *res):
        assert a is not None, name
        scale = b.abs().max().item()
        # measured at most 7.9e-7 (cpu, 12 seeds) and 1.1e-6 (triton, 4 seeds) of max|.| (float32 sums)
        close(a, b, rtol=0, atol=3e-6 * scale, what=name)


@pytest.mark.parametrize("hw", [(5, 7), (6, 4)])
def test_ss2d_equals_the_official_computation(hw):
    """Forward and every gradient against the official forward in float64, as accurate as the official forward
    in float32 (flash-attention's rule)."""
    m = _ss2d(C=16, N=4, seed=1, bias=True, backend="cpu")
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    x = torch.randn(2, *hw, 16)
    xi = x.clone().requires_grad_(True)
    out = m(xi)
    gw = torch.randn_like(out)
    (out * gw).sum().backward()
    ours = [xi.grad] + [p.grad for _, p in m.named_parameters()]
    names = ["x"] + [n for n, _ in m.named_parameters()]

    def official(dtype):
        s = {k: v.to(dtype).requires_grad_(True) for k, v in sd.items()}
        xo = x.to(dtype).requires_grad_(True)
        o = official_ss2d(s, xo)
        g = torch.autograd.grad((o * gw.to(dtype)).sum(), [xo] + [s[n] for n in names[1:]])
        return o, g

    truth, g64 = official(torch.float64)
    pt, g32 = official(torch.float32)
    # measured at most 2.0x (out) and 3.8x (gradients; small sums where PyTorch's error is lucky) PyTorch's own
    # float32 error over 12 seeds
    close_as_pytorch(out, truth, pt, "out", factor=3)
    for name, a, t, b in zip(names, ours, g64, g32):
        close_as_pytorch(a, t, b, f"d{name}", factor=6)


def test_ss2d_gradcheck_float64():
    m = _ss2d(C=4, N=2, seed=2, backend="cpu").double()
    x = torch.randn(1, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    params = tuple(m.parameters())

    def f(x, *ps):
        out = torch.func.functional_call(m, dict(zip([n for n, _ in m.named_parameters()], ps)), (x,))
        return out

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_ss2d_torch_compile_fullgraph():
    m = _ss2d(backend="cpu")
    x = torch.randn(2, 4, 6, 8)
    want = m(x)
    gw = torch.autograd.grad(want.square().sum(), m.x_proj_weight)[0]
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    got = compiled(x)
    g = torch.autograd.grad(got.square().sum(), m.x_proj_weight)[0]
    close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item(), what="compiled out")
    close(g, gw, rtol=1e-6, atol=1e-6 * gw.abs().max().item(), what="compiled dx_proj_weight")


def test_ss2d_and_vss_block_state_dicts_are_the_official_ones():
    m = SS2D(96)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == official_ss2d_shapes(96)
    blk = VSSBlock(40, d_state=8)
    want = {"ln_1.weight": (40,), "ln_1.bias": (40,), **official_ss2d_shapes(40, 8, p="self_attention.")}
    assert {k: tuple(v.shape) for k, v in blk.state_dict().items()} == want
    # initialisation as the official dt_init / A_log_init / D_init
    assert torch.equal(m.A_logs, torch.log(torch.arange(1.0, 17.0)).expand(4 * 192, 16))
    assert torch.equal(m.Ds, torch.ones(4 * 192))
    dt = F.softplus(m.dt_projs_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert m.dt_projs_weight.abs().max() <= 6**-0.5 and m.x_proj_weight.abs().max() <= 192**-0.5
    assert "scans=4" in repr(m) and blk.ln_1.eps == 1e-6


def test_vss_block_equals_the_official_block():
    torch.manual_seed(3)
    blk = VSSBlock(8, d_state=4, backend="cpu")
    x = torch.randn(2, 4, 5, 8)
    sd = {k: v.double() for k, v in blk.state_dict().items()}
    xd = x.double()
    truth = xd + official_ss2d(
        sd, F.layer_norm(xd, (8,), sd["ln_1.weight"], sd["ln_1.bias"], eps=1e-6), "self_attention."
    )
    close(blk(x), truth, rtol=0, atol=1e-5 * truth.abs().max().item(), what="block out")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"d_model": 0}, r"d_model must be a positive int"),
        ({"d_model": 8, "d_state": 0}, r"d_state must be a positive int"),
        ({"d_model": 8, "dt_rank": 0}, r"dt_rank must be 'auto' or a positive int"),
        ({"d_model": 8, "dt_init": "zeros"}, r"dt_init must be 'random' or 'constant'"),
        ({"d_model": 8, "dt_min": 0.2}, r"need 0 < dt_min <= dt_max"),
        ({"d_model": 8, "dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"d_model": 8, "expand": 0}, r"expand must give at least one inner channel"),
    ],
)
def test_ss2d_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SS2D(**kwargs)


def test_ss2d_bad_input():
    m = SS2D(8, d_state=4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, H, W, 8\)"):
        m(torch.randn(2, 4, 4, 6))
    with pytest.raises(ValueError, match=r"x must have shape \(B, H, W, 8\)"):
        m(torch.randn(4, 4, 8))
    with pytest.raises(ValueError, match=r"height and width must be >= 1"):
        cross_scan_orders(0, 3)


# --- VM-UNet ----------------------------------------------------------------------------------------------

TINY = {"dims": (8, 16, 32, 64), "d_state": 4, "depths": (1, 1, 2, 1), "depths_decoder": (1, 2, 1, 1)}


def _tiny(num_classes=3, seed=0, **kw):
    torch.manual_seed(seed)
    return VMUNet(num_classes=num_classes, drop_path_rate=0.0, **TINY, **kw).eval()


@pytest.mark.parametrize(
    "num_classes,depths,depths_decoder,want",
    [
        (9, (2, 2, 2, 2), (2, 2, 2, 1), 27_427_761),  # the official Synapse config
        (1, (2, 2, 2, 2), (2, 2, 2, 1), 27_427_561),  # the official ISIC config
        (9, (2, 2, 9, 2), (2, 9, 2, 2), 44_274_033),  # the official class defaults
    ],
)
def test_vm_unet_parameter_counts_and_names(num_classes, depths, depths_decoder, want):
    m = create_model("vm_unet", num_classes=num_classes, depths=depths, depths_decoder=depths_decoder, device="meta")
    assert m.num_params() == want
    shapes = official_vmunet_shapes(num_classes, depths, depths_decoder)
    assert sum(torch.Size(s).numel() for s in shapes.values()) == want
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == shapes


def test_vm_unet_defaults_are_the_official_training_config():
    m = create_model("vm_unet", device="meta")
    assert m.vmunet.depths == (2, 2, 2, 2) and m.vmunet.depths_decoder == (2, 2, 2, 1) and m.num_classes == 1
    blocks = [b for b in m.modules() if isinstance(b, VSSBlock)]
    assert len(blocks) == 15 and all(b.ln_1.eps == 1e-5 for b in blocks)
    # stochastic depth 0 -> 0.2 over the encoder's 8 blocks, reversed over the decoder's 7
    dp = [b.drop_path.drop_prob for b in blocks]
    assert dp[7] == pytest.approx(0.2) and dp[8] == pytest.approx(0.2) and dp[0] == dp[-1] == 0.0


@pytest.mark.parametrize("num_classes,in_ch", [(3, 3), (1, 1)])
def test_vm_unet_equals_the_official_computation(num_classes, in_ch):
    m = _tiny(num_classes, seed=4, backend="cpu")
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, in_ch, 64, 32)
    sd = m.state_dict()
    with torch.no_grad():
        truth = official_vssm({k: v.double() for k, v in sd.items()}, x.double())
        pt = official_vssm(sd, x)
        out = m(x)
    assert out.shape == (2, num_classes, 64, 32)
    if num_classes == 1:
        assert 0 < out.min() and out.max() < 1
    # measured at most 1.5x PyTorch's own float32 error over 12 seeds
    close_as_pytorch(out, truth, pt, "out", factor=3)


@pytest.mark.parametrize("backend", backends("cpu"))  # Triton's interpreter: at the SS2D level only (45 s here)
def test_vm_unet_backends_forward_backward(backend):
    m = _tiny(seed=5).train()
    x = torch.randn(1, 3, 64, 32)  # the last stage at 2x1 (at 1x1, A_logs gets no gradient: h_0 = 0)
    res = []
    for b in (backend, "reference"):
        m.backend = b
        assert m.backend == b
        out = m(x)
        out.square().mean().backward()
        res.append([out] + [p.grad.clone() for p in m.parameters()])
        m.zero_grad()
    names = ["out"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, *res):
        # measured at most 1.3e-6 of max|.| over 6 seeds but one, 1.0e-5 (seed 2: the conv bias of the 4x2 stage, a
        # sum over tokens that cancels to 1/10 of its terms)
        close(a, b, rtol=0, atol=3e-5 * b.abs().max().item(), what=name)
    assert all(g.abs().sum() > 0 for g in res[0][1:]), "every parameter gets a gradient"


def test_vm_unet_torch_compile_fullgraph():
    m = _tiny(seed=6, backend="cpu")
    x = torch.randn(1, 3, 32, 32)
    want = m(x)
    got = torch.compile(m, backend="aot_eager", fullgraph=True)(x)
    close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item(), what="compiled out")


def test_vm_unet_flops_rule():
    m = create_model("vm_unet", device="meta")
    full, convs = m.flops(256), m.flops(256, include_scan=False)
    # the scans: per block, 4 scans x tokens x d_inner x (x_proj R + 2N, dt_proj R, recurrence 4N + 1), N = 16
    scan = 0
    for c, tokens, n in ((96, 64 * 64, 2 + 1), (192, 32 * 32, 2 + 2), (384, 16 * 16, 2 + 2), (768, 8 * 8, 2 + 2)):
        R = -(-c // 16)
        scan += n * 4 * tokens * 2 * c * (R + 32 + R + 65)  # encoder + decoder blocks at this width
    assert full - convs == 2 * scan
    # convolutions and linear layers, counted by hand: patch embedding, per block in_proj + depthwise conv +
    # out_proj, patch merging, patch expanding, final expand and conv
    macs = 64 * 64 * 96 * 3 * 16 + 256 * 256 * 24 * 1 + 64 * 64 * 96 * 384
    for i, (c, tokens) in enumerate(((96, 4096), (192, 1024), (384, 256), (768, 64))):
        blocks = (2, 2, 2, 2)[i] + (1, 2, 2, 2)[i]  # encoder + decoder blocks at this width
        macs += blocks * tokens * (c * 4 * c + 2 * c * 9 + 2 * c * c)
        if i < 3:
            macs += tokens // 4 * 4 * c * 2 * c  # merging to the next stage
            macs += tokens // 4 * 2 * c * 4 * c  # expanding back from it
    assert convs == 2 * macs and m.flops(512, include_scan=False) == 4 * convs


def test_vm_unet_loads_official_state_dicts(tmp_path):
    src = _tiny(seed=7)
    m = _tiny(seed=8)
    sd = src.state_dict()
    torch.save({"model": sd}, tmp_path / "vmunet.pth")
    assert load_checkpoint(m, tmp_path / "vmunet.pth") == []
    bare = {k.removeprefix("vmunet."): v for k, v in sd.items()}
    torch.save(bare, tmp_path / "vssm.pth")
    assert load_checkpoint(_tiny(seed=9), tmp_path / "vssm.pth") == [
        "added the 'vmunet.' prefix (a bare VSSM state_dict)"
    ]
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(m(x), src(x))


def test_vm_unet_bad_input_and_config():
    m = _tiny()
    with pytest.raises(ValueError, match=r"multiples of 32"):
        m(torch.randn(1, 3, 48, 32))
    with pytest.raises(ValueError, match=r"must have 3 channels \(or 1, repeated to 3\)"):
        m(torch.randn(1, 2, 32, 32))
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\)"):
        m(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"same \(>= 1\) number of stages"):
        VMUNet(depths=(2, 2, 2), device="meta")
    with pytest.raises(ValueError, match=r"dims must double per stage"):
        VMUNet(dims=(96, 192, 384, 700), device="meta")
    with pytest.raises(ValueError, match=r"num_classes must be a positive int"):
        VMUNet(num_classes=0, device="meta")


def test_testing_ss2d_official_is_the_official_computation():
    """medkernels.testing.ss2d_official (the benchmark's peer: the official copies around our selective_scan_fn)
    equals the official computation restated here, in float64."""
    from medkernels.testing import ss2d_official

    m = _ss2d().double()
    x = torch.randn(2, 5, 7, m.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    want = official_ss2d({k: v for k, v in m.state_dict().items()}, x)
    close(ss2d_official(m, x, "cpu"), want, rtol=1e-12, atol=1e-12 * want.abs().max().item(), what="peer")
