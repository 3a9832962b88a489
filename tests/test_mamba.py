"""medkernels.nn.Mamba: mamba_ssm's parameters, initialisation, outputs and decoding."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from kit import close, close_as_pytorch, close_ulp, gpu_test

from medkernels import nn as mknn
from medkernels.ops import selective_scan_ref

# mamba_ssm.modules.mamba_simple.Mamba(d_model=64) state_dict: names and shapes.
UPSTREAM_SHAPES = {
    "A_log": (128, 16),
    "D": (128,),
    "in_proj.weight": (256, 64),
    "conv1d.weight": (128, 1, 4),
    "conv1d.bias": (128,),
    "x_proj.weight": (36, 128),
    "dt_proj.weight": (128, 4),
    "dt_proj.bias": (128,),
    "out_proj.weight": (64, 128),
}


def upstream_forward(m, h):
    """mamba_ssm's non-fused path, step by step: nn.Conv1d, x_proj, dt_proj, selective_scan_ref
    (its float32 parameters float64 for a float64 module)."""
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    batch, seqlen, _ = h.shape
    xz = m.in_proj(h).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)
    x = F.silu(m.conv1d(x)[..., :seqlen])
    x_dbl = m.x_proj(x.transpose(1, 2))
    dt, B, C = torch.split(x_dbl, [m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt = (dt @ m.dt_proj.weight.t()).transpose(1, 2)
    y = selective_scan_ref(
        x,
        dt,
        -torch.exp(m.A_log.to(acc)),
        B.transpose(1, 2),
        C.transpose(1, 2),
        m.D.to(acc),
        z=z,
        delta_bias=m.dt_proj.bias.to(acc),
        delta_softplus=True,
    )
    return m.out_proj(y.transpose(1, 2))


def test_parameters_and_initialisation_match_mamba_ssm():
    torch.manual_seed(0)
    m = mknn.Mamba(64)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == UPSTREAM_SHAPES
    assert m.d_inner == 128 and m.dt_rank == math.ceil(64 / 16)
    torch.testing.assert_close(
        m.A_log, torch.log(torch.arange(1, 17, dtype=torch.float32)).expand(128, -1), rtol=0, atol=0
    )
    assert m.A_log.dtype == torch.float32 and m.A_log._no_weight_decay and m.D._no_weight_decay
    torch.testing.assert_close(m.D, torch.ones(128), rtol=0, atol=0)
    assert m.dt_proj.bias._no_reinit
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    bound = m.dt_rank**-0.5
    assert m.dt_proj.weight.abs().max() <= bound
    mc = mknn.Mamba(64, dt_init="constant", dt_scale=2.0, bias=True, conv_bias=False)
    torch.testing.assert_close(mc.dt_proj.weight, torch.full_like(mc.dt_proj.weight, 2.0 * bound), rtol=0, atol=0)
    assert mc.in_proj.bias is not None and mc.conv1d.bias is None
    with pytest.raises(ValueError, match="dt_init must be"):
        mknn.Mamba(64, dt_init="zeros")


@pytest.mark.parametrize("backend", [None, "reference"])
def test_forward_and_backward_match_the_upstream_path(backend):
    torch.manual_seed(1)
    m = mknn.Mamba(32, d_state=8, backend=backend)
    h = torch.randn(2, 37, 32, requires_grad=True)
    out = m(h)
    up = upstream_forward(m, h)
    m64 = copy.deepcopy(m).double()  # the upstream path in float64: the truth
    h64 = h.detach().double().requires_grad_(True)
    ref = upstream_forward(m64, h64)
    # as accurate as the upstream path in float32 (flash-attention's rule): measured at most 1.3x its max
    # error for out, 2.6x for the gradients (plus 2 ulp of max|truth|: at most 0.53 of these over 30 seeds)
    close_as_pytorch(out, ref, up, "out", factor=3)
    params, params64 = [h, *m.parameters()], [h64, *m64.parameters()]
    grads = zip(
        [("h", None), *m.named_parameters()],
        torch.autograd.grad(out.square().sum(), params),
        torch.autograd.grad(up.square().sum(), params),
        torch.autograd.grad(ref.square().sum(), params64),
    )
    for (name, _), a, u, r in grads:
        close_as_pytorch(a, r, u, f"d{name}", factor=4)


def test_state_dict_loads_strictly_and_round_trips():
    torch.manual_seed(2)
    src = mknn.Mamba(64, layer_idx=3)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    dst = mknn.Mamba(64)
    dst.load_state_dict(sd, strict=True)
    h = torch.randn(1, 20, 64)
    torch.testing.assert_close(dst(h), src(h), rtol=0, atol=0)


def test_prefill_then_step_by_step_decoding_equals_full_forward():
    torch.manual_seed(3)
    m = mknn.Mamba(32, d_state=8, layer_idx=0).eval()
    h = torch.randn(2, 15, 32)
    with torch.no_grad():
        full = m(h)
        params = mknn.InferenceParams(max_seqlen=15, max_batch_size=2)
        outs = [m(h[:, :6], inference_params=params)]
        params.seqlen_offset = 6
        for t in range(6, 15):
            outs.append(m(h[:, t : t + 1], inference_params=params))
            params.seqlen_offset += 1
        up = upstream_forward(m, h)
        truth = upstream_forward(copy.deepcopy(m).double(), h.double())
    # decoding is as accurate as the upstream full forward in float32 (flash-attention's rule; measured
    # at most 1.3x: the kernels' forward and the recurrent steps both round like it)
    close_as_pytorch(torch.cat(outs, 1), truth, up, "decoded", factor=3)
    close_as_pytorch(full, truth, up, "full", factor=3)
    conv_state, ssm_state = m.allocate_inference_cache(2, 15)
    assert conv_state.shape == (2, 64, 4) and ssm_state.shape == (2, 64, 8)
    with torch.no_grad():
        steps = [m.step(h[:, t : t + 1], conv_state, ssm_state)[0] for t in range(15)]
    close_as_pytorch(torch.cat(steps, 1), truth, up, "steps", factor=3)


def test_bfloat16_block_is_close_to_float32():
    torch.manual_seed(4)
    m = mknn.Mamba(32, d_state=8)
    h = torch.randn(2, 21, 32)
    truth = upstream_forward(copy.deepcopy(m).double(), h.double())
    mb = mknn.Mamba(32, d_state=8).to(torch.bfloat16)
    mb.load_state_dict(m.state_dict())
    out = mb(h.bfloat16())
    assert out.dtype == torch.bfloat16
    # flash-attention's rule: at most 2x the error of the same block in bfloat16 on PyTorch's ops
    # (measured 1.0x over 16 seeds: the bfloat16 projections' rounding dominates both), no floor
    pt = mknn.Mamba(32, d_state=8, backend="reference").to(torch.bfloat16)
    pt.load_state_dict(m.state_dict())
    close_as_pytorch(out, truth, pt(h.bfloat16()), "bf16", factor=2, floor_ulps=0)


def test_torch_compile_fullgraph():
    torch.manual_seed(5)
    m = mknn.Mamba(16, d_state=4)
    h = torch.randn(2, 9, 16, requires_grad=True)
    f = lambda h: m(h).square().sum()  # noqa: E731
    lc = torch.compile(f, fullgraph=True)(h)
    le = f(h)
    # the same kernels; Inductor compiles the projections and activations around them (measured: dh
    # equal, the loss 0.7 ulp of its sum|terms|)
    close_ulp(lc, le, "loss", ulps=2, scale=le.item())
    close_ulp(torch.autograd.grad(lc, h)[0], torch.autograd.grad(le, h)[0], "dh", ulps=2)


def test_bad_shapes():
    m = mknn.Mamba(16)
    with pytest.raises(ValueError, match=r"hidden_states must be \(batch, seqlen, d_model=16\)"):
        m(torch.randn(2, 9, 8))
    with pytest.raises(ValueError, match="one token at a time"):
        m.step(torch.randn(2, 3, 16), *m.allocate_inference_cache(2, 3))
    with pytest.raises(ValueError, match="needs layer_idx"):
        m(torch.randn(1, 2, 16), inference_params=mknn.InferenceParams(2, 1))


# --- on a GPU (marked gpu: `pytest -m gpu`, scripts/gpu_check.sh; skipped without CUDA) ----------


@gpu_test
def test_mamba_block_on_gpu_matches_cpu_and_decodes():
    torch.manual_seed(0)
    m = mknn.Mamba(64, layer_idx=0)
    h = torch.randn(2, 300, 64)
    ref = m(h)
    mg = mknn.Mamba(64, layer_idx=0).cuda()
    mg.load_state_dict(m.state_dict())
    out = mg(h.cuda())
    close(out.cpu(), ref, 1e-3, 1e-3, "mamba gpu")
    with torch.no_grad():
        params = mknn.InferenceParams(max_seqlen=300, max_batch_size=2)
        pieces = [mg(h[:, :200].cuda(), inference_params=params)]
        params.seqlen_offset = 200
        for t in range(200, 300):
            pieces.append(mg(h[:, t : t + 1].cuda(), inference_params=params))
            params.seqlen_offset += 1
    close(torch.cat(pieces, 1).cpu(), ref.detach(), 1e-3, 1e-3, "decode")
