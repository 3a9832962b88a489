"""PointMamba2 (pointmamba2_cls / pointmamba2_seg): parameter count and names as flemme at cde13ac, equal to an
independent restatement of the official forward (flemme's layers, KNN_CUDA's sorted kNN, the textbook FPS,
mamba_simple's Mamba on the reference scan) in float64, every backend against the reference ops, padded batches,
torch.compile, the official channel-attention behaviour, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kit import backends, close
from test_point_ssm import _official_forward as _official_group_block

from medkernels.models import create_model
from medkernels.models.pointmamba2 import PointMamba2Classifier, PointMamba2Segmenter
from medkernels.nn import PointSSMBlock, PointSSMGroupBlock
from medkernels.ops import selective_scan_ref

TINY = dict(num_points=(48, 24, 12, 8, 4), channels=(16, 16, 32, 32, 64), neighbors=(4, 8), d_state=8)


def _cls(**kw):
    torch.manual_seed(0)
    return PointMamba2Classifier(5, dense_channels=(64, 32), **{**TINY, **kw})


def _seg(**kw):
    torch.manual_seed(0)
    return PointMamba2Segmenter(5, fp_channels=(64, 32, 32, 16, 16), dense_channels=(64,), **{**TINY, **kw})


# --- an independent restatement of the official forward (flemme cde13ac) -------------------------------------


def _sub(sd, prefix):
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _lrelu(x):
    return F.leaky_relu(x, 0.01)


def _gn(x, sd, p):  # GroupNorm over the last (channel) dim of (..., L, C), as flemme's NormBlock
    return F.group_norm(x.transpose(1, 2), 8, sd[p + "norm.weight"], sd[p + "norm.bias"]).transpose(1, 2)


def _mamba(sd, p, x):
    """mamba_ssm.modules.mamba_simple.Mamba.forward (slow path), x (S, L, D)."""
    L = x.shape[1]
    Din = sd[p + "conv1d.weight"].shape[0]
    N = sd[p + "A_log"].shape[1]
    u, z = F.linear(x, sd[p + "in_proj.weight"]).transpose(1, 2).chunk(2, 1)
    w = sd[p + "conv1d.weight"]
    u = F.silu(F.conv1d(u, w, sd[p + "conv1d.bias"], padding=w.shape[-1] - 1, groups=Din)[..., :L])
    dt, B, C = F.linear(u.transpose(1, 2), sd[p + "x_proj.weight"]).split([sd[p + "dt_proj.weight"].shape[1], N, N], -1)
    dt = F.linear(dt, sd[p + "dt_proj.weight"]).transpose(1, 2)
    A = -torch.exp(sd[p + "A_log"])
    y = selective_scan_ref(u, dt, A, B.transpose(1, 2), C.transpose(1, 2), sd[p + "D"], z, sd[p + "dt_proj.bias"], True)
    return F.linear(y.transpose(1, 2), sd[p + "out_proj.weight"])


def _vanilla(sd, p, x):  # PointMambaNonFFNBlock
    res = x + _lrelu(_gn(_mamba(sd, p + "mamba.", x), sd, p))
    return F.linear(res, sd[p + "dense.weight"], sd[p + "dense.bias"]) if p + "dense.weight" in sd else res


def _dense(sd, p, x, act=True):  # DenseBlock
    x = F.linear(x, sd[p + "linear.weight"], sd[p + "linear.bias"])
    if not act:
        return x
    x = F.group_norm(x, 8, sd[p + "norm.weight"], sd[p + "norm.bias"]) if x.dim() == 2 else _gn(x, sd, p)
    return _lrelu(x)


def _gather_features(x, idx):  # flemme's gather_features on (B, N, C) at (B, M[, k])
    flat = idx.reshape(idx.shape[0], -1)
    out = torch.gather(x, 1, flat[..., None].expand(-1, -1, x.shape[-1]))
    return out.reshape(*idx.shape, x.shape[-1])


def _fps(xyz, M):  # the textbook loop from index 0 (pointnet2's kernel)
    B, N, _ = xyz.shape
    d = torch.full((B, N), float("inf"), dtype=xyz.dtype)
    out = torch.zeros(B, M, dtype=torch.long)
    for i in range(1, M):
        last = xyz[torch.arange(B), out[:, i - 1]]
        d = torch.minimum(d, ((xyz - last[:, None]) ** 2).sum(-1))
        out[:, i] = d.argmax(1)
    return out


def _knn(query, points, k):  # KNN_CUDA: sorted nearest first
    d = ((query[:, :, None] - points[:, None]) ** 2).sum(-1)
    return d.topk(k, dim=-1, largest=False, sorted=True)


def _official_encoder(sd, xyz, cfg):
    f = F.linear(xyz, sd["encoder.point_proj.weight"], sd["encoder.point_proj.bias"])
    e = F.linear(xyz, sd["encoder.pos_embed.weight"], sd["encoder.pos_embed.bias"])
    feats, ids, xyzs = [f], [], [xyz]
    for lvl, M in enumerate(cfg["num_points"]):
        sid = _fps(xyz, M)
        cxyz, ce, cf = _gather_features(xyz, sid), _gather_features(e, sid), _gather_features(f, sid)
        outs = []
        for s, k in enumerate(cfg["neighbors"]):
            idx = _knn(cf, f, k).indices
            g = torch.cat([_gather_features(e, idx) - ce[:, :, None], _gather_features(f, idx)], -1)
            B, M_, K, C = g.shape
            h = g.reshape(B * M_, K, C)
            for i in range(2):
                h = _vanilla(sd, f"encoder.msg.{lvl}.bb.{s}.building_blocks.{i}.bb.", h)
            outs.append(h.reshape(B, M_, K, -1).max(2).values)
        f = torch.cat(outs, -1)
        for i in range(2):
            f = _official_group_block(_sub(sd, f"encoder.lrm.{lvl}.building_blocks.{i}."), f, cxyz, False)
        xyz, e = cxyz, ce
        feats.append(f)
        ids.append(sid)
        xyzs.append(xyz)
    # SampledFeatureCatLayer
    fl, sl = feats[::-1], ids[::-1]
    got, sel = [fl[0]], None
    for i in range(len(sl)):
        sel = sl[0] if i == 0 else torch.gather(sl[i], -1, sel)
        got.append(_gather_features(fl[i + 1], sel))
    g = _dense(sd, "encoder.final_concat.mlp.mlp.0.", torch.cat(got[::-1], -1))
    g = _dense(sd, "encoder.final_concat.mlp.mlp.1.", g, act=False)
    g = torch.cat([g.max(1).values, g.mean(1)], -1)
    i = 0
    while f"encoder.dense.{i}.linear.weight" in sd:
        g = _dense(sd, f"encoder.dense.{i}.", g)
        i += 1
    return g, feats, xyzs


def _official_cls(sd, xyz, cfg):
    g, _, _ = _official_encoder(sd, xyz, cfg)
    return F.linear(g, sd["classifier.weight"], sd["classifier.bias"])


def _official_seg(sd, xyz, cfg):
    g, feats, xyzs = _official_encoder(sd, xyz, cfg)
    fl, xl = [g, *feats[::-1]], [None, *xyzs[::-1]]
    for i in range(1, len(fl)):
        unknown, known, uf, kf = xl[i], xl[i - 1], fl[i], fl[i - 1]
        if known is None:
            interp = kf[:, None].expand(-1, unknown.shape[1], -1)
        else:
            d2, idx = _knn(unknown, known, 3)
            rec = 1.0 / (d2.sqrt() + 1e-8)
            w = rec / rec.sum(2, keepdim=True)
            interp = (_gather_features(kf, idx) * w[..., None]).sum(2)
        h = torch.cat([interp, uf], -1)
        for j in range(2):
            h = _vanilla(sd, f"decoder.fp.{i - 1}.bb.building_blocks.{j}.", h)
        fl[i] = h
    return F.linear(fl[-1], sd["decoder.final.weight"], sd["decoder.final.bias"])


def _cloud(B=2, N=96, seed=3, dtype=torch.float64):
    return torch.randn(B, N, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- tests ---------------------------------------------------------------------------------------------------


def test_parameter_count_and_names_as_flemme():
    """19.59M parameters counted from flemme at cde13ac (ours 19,593,885: within 0.01%); the official names."""
    m = create_model("pointmamba2_cls")
    n = m.num_params()
    assert n == 19_593_885 and abs(n / 19.59e6 - 1) < 0.005
    sd = m.state_dict()
    shapes = {
        "encoder.point_proj.weight": (64, 3),
        "encoder.pos_embed.weight": (64, 3),
        "encoder.ca.4.conv.weight": (1, 1, 3),
        "encoder.msg.0.bb.0.building_blocks.0.bb.mamba.in_proj.weight": (512, 128),  # d_model 64 + 64
        "encoder.msg.0.bb.0.building_blocks.0.bb.mamba.A_log": (256, 64),
        "encoder.msg.0.bb.0.building_blocks.0.bb.dense.weight": (64, 128),  # get_middle_channel(128, 32)
        "encoder.msg.0.bb.1.building_blocks.1.bb.dense.weight": (32, 64),
        "encoder.msg.4.bb.1.building_blocks.0.bb.norm.weight": (320,),  # 256 + 64
        "encoder.lrm.4.building_blocks.1.x_proj_weight": (8, 32 + 128, 1024),
        "encoder.lrm.4.building_blocks.1.A_logs": (8 * 1024, 64),
        "encoder.final_concat.mlp.mlp.0.linear.weight": (544, 1088),
        "encoder.final_concat.mlp.mlp.1.linear.weight": (512, 544),
        "encoder.dense.0.linear.weight": (1024, 1024),
        "encoder.dense.2.norm.weight": (256,),
        "classifier.weight": (46, 256),
    }
    for k, s in shapes.items():
        assert tuple(sd[k].shape) == s, k
    assert "encoder.final_concat.mlp.mlp.1.norm.weight" not in sd  # the last MLP layer has no norm
    seg = create_model("pointmamba2_seg").state_dict()
    assert tuple(seg["decoder.fp.0.bb.building_blocks.0.mamba.in_proj.weight"].shape) == (4 * 1536, 1536)  # 1024 + 512
    assert tuple(seg["decoder.fp.5.bb.building_blocks.1.dense.weight"].shape) == (128, 160)  # 256 + 64 -> 160
    assert tuple(seg["decoder.final.weight"].shape) == (46, 128)
    assert len([k for k in seg if k.startswith("decoder.ca.")]) == 6


@pytest.mark.parametrize("kind", ["cls", "seg"])
def test_equals_the_official_forward_in_float64(kind):
    """Our model (CPU kernels) with the same weights as the restated official forward, outputs and every
    parameter's gradient, in float64 (no ties in the kNN/FPS choices)."""
    model = (_cls if kind == "cls" else _seg)().double()
    xyz = _cloud()
    out = model(xyz)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(".ca." in n for n, p in model.named_parameters() if not p.requires_grad)  # frozen while unused
    grads = torch.autograd.grad(out.square().sum(), [p for p in model.parameters() if p.requires_grad])
    sd = {k: v.detach().clone().requires_grad_(True) for k, v in model.state_dict().items()}
    want = (_official_cls if kind == "cls" else _official_seg)(sd, xyz, {**TINY})
    close(out, want, rtol=1e-10, atol=1e-10 * want.abs().max().item(), what="output")
    wgrads = torch.autograd.grad(want.square().sum(), [sd[n] for n in names], allow_unused=True)
    # the floor: pos_embed.bias cancels in e_j - e_centre, its gradient is 0 up to rounding (~1e-16)
    floor = 1e-13 * max(b.abs().max().item() for b in wgrads if b is not None)
    for n, a, b in zip(names, grads, wgrads):
        close(a, b, rtol=1e-9, atol=max(1e-9 * b.abs().max().item(), floor), what=f"d{n}")


def test_backend_property_reaches_every_kernel_module():
    from medkernels.nn import Mamba

    model = _seg()
    assert model.backend is None and model.encoder.backend is None
    model.backend = "reference"
    kernels = [m for m in model.modules() if isinstance(m, (Mamba, PointSSMGroupBlock))]
    assert kernels and all(m.backend == "reference" for m in kernels)
    assert model.encoder.backend == "reference"  # what its FPS and kNN run on


def test_cpu_kernels_match_the_reference_ops():
    """float32 on the CPU kernels against the same model on the reference ops (forward and input-feature
    gradients through the whole network)."""
    outs = []
    for bk in ("cpu", "reference"):
        model = _cls(backend=bk, in_features=2)
        xyz = _cloud(dtype=torch.float32)
        feats = torch.randn(2, 96, 2, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
        out = model(xyz, feats)
        (g,) = torch.autograd.grad(out.square().sum(), feats)
        outs.append((out, g))
    (a, ga), (b, gb) = outs
    # measured over 4 seeds: logits within 1.25e-6 of max|logits|, feature gradients within 8.2e-6 of their max
    close(a, b, rtol=3e-6, atol=3e-6 * b.abs().max().item(), what="logits")
    close(ga, gb, rtol=2e-5, atol=2e-5 * gb.abs().max().item(), what="feature gradients")


@pytest.mark.parametrize("backend", backends("cpu", "triton"))
def test_blocks_on_each_backend_match_the_reference_ops(backend):
    """The two Point-SSM blocks (what the model runs on the kernels, besides FPS and kNN) on each backend
    against the reference ops, forward and input gradient; tiny, for Triton's interpreter (the whole model
    there takes minutes)."""
    torch.manual_seed(0)
    x = torch.randn(3, 9, 16)
    xyz = torch.randn(3, 9, 3)
    for block, args in ((PointSSMBlock(16, 8, d_state=4), ()), (PointSSMGroupBlock(16, d_state=4), (xyz,))):
        res = []
        for bk in (backend, "reference"):
            (block.mamba if isinstance(block, PointSSMBlock) else block).backend = bk
            xi = x.clone().requires_grad_(True)
            out = block(xi, *args)
            res.append((out, torch.autograd.grad(out.square().sum(), xi)[0]))
        (a, ga), (b, gb) = res
        # measured on the CPU kernels over 4 seeds: within 2.2e-7 (out) and 3.9e-7 (grad) of the max
        close(a, b, rtol=1e-6, atol=1e-6 * b.abs().max().item(), what=f"{type(block).__name__} out")
        close(ga, gb, rtol=1e-6, atol=1e-6 * gb.abs().max().item(), what=f"{type(block).__name__} grad")


@pytest.mark.parametrize("kind", ["cls", "seg"])
def test_padded_batch_equals_each_cloud_alone(kind):
    """lengths: cloud b is xyz[b, :lengths[b]]; the padding never changes the real clouds' results."""
    model = (_cls if kind == "cls" else _seg)().double()
    xyz = _cloud(N=80)
    lengths = torch.tensor([80, 61])
    padded = xyz.clone()
    padded[1, 61:] = 1e3  # garbage far away: would win every FPS step if it were seen
    out = model(padded, lengths=lengths)
    for b in range(2):
        alone = model(xyz[b : b + 1, : lengths[b]])
        got = out[b : b + 1] if kind == "cls" else out[b : b + 1, : lengths[b]]
        close(got, alone, rtol=1e-10, atol=1e-10 * alone.abs().max().item(), what=f"cloud {b}")
    if kind == "seg":
        assert torch.all(out[1, 61:] == 0)


def test_channel_attention_official_and_applied():
    """The official forward builds the ECA and discards it: its weights change nothing; with
    apply_channel_attention=True they do."""
    xyz = _cloud(dtype=torch.float32)
    model = _cls()
    base = model(xyz)
    with torch.no_grad():
        for m in model.encoder.ca:
            m.conv.weight.mul_(3)
    assert torch.equal(model(xyz), base)
    assert not any(p.requires_grad for p in model.encoder.ca.parameters())
    model.encoder.apply_channel_attention = True
    assert all(p.requires_grad for p in model.encoder.ca.parameters())
    assert not torch.allclose(model(xyz), base)


def test_torch_compile_fullgraph():
    model = _cls()
    xyz = _cloud(dtype=torch.float32)
    want = model(xyz)
    got = torch.compile(model, backend="aot_eager", fullgraph=True)(xyz)
    close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item(), what="compiled logits")


def test_bad_input():
    model = _cls()
    with pytest.raises(ValueError, match=r"xyz must be a \(B, N, 3\) tensor"):
        model(torch.randn(2, 96, 4))
    with pytest.raises(ValueError, match="the first level samples 48"):
        model(torch.randn(2, 40, 3))
    with pytest.raises(ValueError, match="features must be None"):
        model(torch.randn(2, 96, 3), torch.randn(2, 96, 2))
    with pytest.raises(ValueError, match=r"lengths must be a \(2,\) integer tensor"):
        model(torch.randn(2, 96, 3), lengths=torch.tensor([96.0, 50.0]))
    with pytest.raises(ValueError, match="divisible by len"):
        PointMamba2Classifier(channels=(12, 16, 32, 32, 64), num_points=TINY["num_points"])
    with pytest.raises(ValueError, match="non-increasing"):
        PointMamba2Classifier(num_points=(8, 16, 4, 2, 1))
    with pytest.raises(ValueError, match="num_classes"):
        PointMamba2Classifier(0)
    with pytest.raises(ValueError, match="fp_channels needs one entry per encoder level"):
        PointMamba2Segmenter(fp_channels=(64, 32))


@pytest.mark.parametrize("kind", ["cls", "seg"])
def test_flops_rule(kind):
    """flops(): every matmul as torch's FlopCounterMode counts it on the CPU kernels (2 x MACs), plus what that
    cannot see: inside the custom ops, the depthwise convs (2 x MACs) and the scans (9 L E N + L E each)."""
    from torch.utils.flop_counter import FlopCounterMode

    from medkernels.nn import Mamba

    model = (_cls if kind == "cls" else _seg)()
    extra = [0]

    def hook(m, args, _out):
        S, L, _ = args[0].shape
        E, N, W = m.d_inner, m.d_state, m.d_conv
        K = getattr(m, "num_scans", 1)
        extra[0] += S * L * (2 * E * W + K * (9 * E * N + E))
        if K > 1 and m.dt_rank == 1:  # the group block's dt_proj einsum over rank 1 runs as a product, no matmul
            extra[0] += S * L * 2 * K * E

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (Mamba, PointSSMGroupBlock))]
    xyz = torch.randn(2, 96, 3, generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(xyz)
    for h in hooks:
        h.remove()
    assert model.flops(96, batch_size=2) == fc.get_total_flops() + extra[0]
