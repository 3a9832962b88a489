"""GPU backends (CUDA, Triton) against the references and the CPU kernels. Skipped without a GPU;
scripts/gpu_check.sh runs them on a lent H100/H200."""

from __future__ import annotations

import pytest
import torch
from kit import close, requires_cuda
from test_causal_conv1d import inputs as conv_inputs
from test_dilated_attention import check_against_oracle, random_case as da_case
from test_neighborhood_attention import check_case, random_case
from test_selective_scan import TOL, check_against_reference, make_inputs

from medkernels import nn as mknn
from medkernels import ops

pytestmark = requires_cuda

SCAN_BACKENDS = ["cuda", "triton"]


def _to(inputs, device):
    return {k: (None if v is None else v.to(device)) for k, v in inputs.items()}


@pytest.mark.parametrize("backend", SCAN_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("B_kind,C_kind", [("variable", "variable"), ("grouped", "fixed"), ("fixed", "grouped")])
def test_scan_matches_reference(backend, dtype, B_kind, C_kind):
    inputs = make_inputs(2, 8, 16, 2500, dtype, B_kind, C_kind, groups=2, has_init=True, seed=3)
    check_against_reference(_to(inputs, "cuda"), backend=backend)


@pytest.mark.parametrize("backend", SCAN_BACKENDS)
@pytest.mark.parametrize("seqlen,dstate", [(16384, 16), (4097, 64), (3000, 1)])
def test_scan_long_sequences_match_the_cpu_kernel(backend, seqlen, dstate):
    inputs = make_inputs(2, 24, dstate, seqlen, torch.float32, "variable", "grouped", groups=3, has_init=True, seed=4)
    leaves_cpu = {k: v.clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    leaves_gpu = {k: v.cuda().requires_grad_(True) for k, v in inputs.items() if v is not None}
    results = []
    for leaves, be in ((leaves_cpu, "cpu"), (leaves_gpu, backend)):
        args = {k: leaves.get(k) for k in inputs}
        init = args.pop("initial_state")
        out, last = ops.selective_scan_fn(**args, delta_softplus=True, return_last_state=True, initial_state=init,
                                          backend=be)
        g = torch.autograd.grad(out.square().sum() + last.sum(), list(leaves.values()))
        results.append([out, last, *g])
    for a, b in zip(results[1], results[0]):
        close(a.cpu(), b, 1e-3, 1e-3, f"{backend} vs cpu")


@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_backward_determinism(deterministic):
    """Everything is bit-reproducible; variable dB/dC too under torch.use_deterministic_algorithms."""
    inputs = make_inputs(2, 32, 16, 3000, torch.bfloat16, "variable", "grouped", groups=2, has_init=True, seed=5)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic, warn_only=True)  # warn_only: the reference uses cuBLAS
    try:
        runs = _two_backward_runs(inputs)
        if deterministic:  # the per-block partial sums must also be right
            check_against_reference(_to(inputs, "cuda"), backend="cuda")
    finally:
        torch.use_deterministic_algorithms(before)
    for name in runs[0]:
        if name in ("B", "C") and not deterministic:
            close(runs[0][name], runs[1][name], *TOL[torch.bfloat16], name)
        else:
            assert torch.equal(runs[0][name], runs[1][name]), name


def _two_backward_runs(inputs):
    runs = []
    for _ in range(2):
        leaves = {k: v.cuda().requires_grad_(True) for k, v in inputs.items() if v is not None}
        args = {k: leaves.get(k) for k in inputs}
        init = args.pop("initial_state")
        out = ops.selective_scan_fn(**args, delta_softplus=True, initial_state=init, backend="cuda")
        runs.append(dict(zip(leaves, torch.autograd.grad(out.float().square().sum(), list(leaves.values())))))
    return runs


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
            pieces.append(mg(h[:, t:t + 1].cuda(), inference_params=params))
            params.seqlen_offset += 1
    close(torch.cat(pieces, 1).cpu(), ref.detach(), 1e-3, 1e-3, "decode")


@pytest.mark.parametrize("seed,na_dim", [(500, 1), (501, 2), (502, 3), (503, 2)])
def test_neighborhood_attention_triton_on_gpu(seed, na_dim):
    check_case(random_case(seed, na_dim, max_size=12), "triton", device="cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_causal_conv_triton_on_gpu(dtype):
    x, w, b, init = conv_inputs(batch=2, dim=64, seqlen=3000, width=4, dtype=dtype)
    outs = []
    for device, backend in (("cpu", "cpu"), ("cuda", "triton")):
        leaves = [t.to(device).requires_grad_(True) for t in (x, w, b, init)]
        o, f = ops.causal_conv1d_fn(leaves[0], leaves[1], leaves[2], None, leaves[3], True, activation="silu",
                                    backend=backend)
        outs.append([o, f, *torch.autograd.grad(o.float().square().sum() + f.float().sum(), leaves)])
    for a, r in zip(outs[1], outs[0]):
        close(a.cpu(), r, 2e-2, 2e-2, "conv triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("seed", [600, 601, 602, 603])
def test_dilated_attention_triton_on_gpu(seed, dtype):
    check_against_oracle(da_case(seed, max_size=20, max_group=9), "triton", dtype, device="cuda")


@pytest.mark.parametrize("scope", ["local", "global"])
def test_dilated_attention_triton_stage1_shape_matches_cpu(scope):
    """D-Former's stage-1 shape: groups of 128 tokens span several key blocks."""
    q, k, v = (torch.randn(1, 32, 32, 32, 3, 32, generator=torch.Generator().manual_seed(i)) for i in range(3))
    outs = []
    for device, backend in (("cpu", "cpu"), ("cuda", "triton")):
        leaves = [t.to(device).requires_grad_(True) for t in (q, k, v)]
        o = ops.dilated_attention3d(*leaves, (2, 8, 8), scope, backend=backend)
        outs.append([o, *torch.autograd.grad(o.square().sum(), leaves)])
    for a, r in zip(outs[1], outs[0]):
        close(a.cpu(), r, 1e-3, 1e-3, f"dilated attention {scope}")


@pytest.mark.parametrize("norm", ["ortho", "backward"])
def test_dct_triton_on_gpu(norm):
    x = torch.randn(4, 64, 56, 56, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    outs = []
    for device, backend, dtype in (("cpu", "cpu", torch.float64), ("cuda", "triton", torch.float32)):
        xr = x.to(device=device, dtype=dtype).requires_grad_(True)
        low = ops.dct2d(xr, norm, keep=(28, 28), backend=backend)
        back = ops.idct2d(low, norm, s=(56, 56), backend=backend)
        outs.append([low, back, *torch.autograd.grad(back.square().sum() + low.sum(), xr)])
    for a, r in zip(outs[1], outs[0]):
        close(a.cpu().double(), r, 1e-4, 1e-4, f"dct {norm}")


def test_dct_attention_module_on_gpu_matches_cpu():
    torch.manual_seed(0)
    m = mknn.DCTAttention(64, 2, keep_ratio=0.25)
    x = torch.randn(2, 64, 56, 56)
    mg = mknn.DCTAttention(64, 2, keep_ratio=0.25).cuda()
    mg.load_state_dict(m.state_dict())
    close(mg(x.cuda()).cpu(), m(x), 1e-3, 1e-3, "dct attention")


@pytest.mark.parametrize("n,npoint,c", [(16384, 2048, 3), (5000, 700, 64)])
def test_fps_triton_on_gpu_equals_cpu(n, npoint, c):
    xyz = torch.randn(3, n, c, generator=torch.Generator().manual_seed(8))
    lengths = torch.tensor([n, n - 17, npoint + 5])
    want = ops.furthest_point_sample(xyz, npoint, lengths=lengths, start_idx=3, backend="cpu")
    got = ops.furthest_point_sample(xyz.cuda(), npoint, lengths=lengths.cuda(), start_idx=3, backend="triton")
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("m,n,k,c", [(2048, 16384, 32, 3), (1000, 3000, 16, 64), (100, 257, 3, 1)])
def test_knn_triton_on_gpu_equals_cpu(m, n, k, c):
    g = torch.Generator().manual_seed(9)
    q, p = torch.randn(2, m, c, generator=g), torch.randn(2, n, c, generator=g)
    lengths, qlen = torch.tensor([n, n - 5]), torch.tensor([m, m // 2])
    want_d, want_i = ops.knn(q, p, k, lengths=lengths, query_lengths=qlen, backend="cpu")
    qg, pg = q.cuda().requires_grad_(True), p.cuda().requires_grad_(True)
    d, i = ops.knn(qg, pg, k, lengths=lengths.cuda(), query_lengths=qlen.cuda(), backend="triton")
    assert torch.equal(i.cpu(), want_i)
    close(d.cpu(), want_d, 1e-6, 1e-6, "knn distances")
    gq, gp = torch.autograd.grad(d.square().sum(), [qg, pg])
    qc, pc = q.requires_grad_(True), p.requires_grad_(True)
    wq, wp = torch.autograd.grad(ops.knn(qc, pc, k, lengths=lengths, query_lengths=qlen, backend="cpu")[0].square()
                                 .sum(), [qc, pc])
    close(gq.cpu(), wq, 1e-4, 1e-4, "dquery")
    close(gp.cpu(), wp, 1e-4, 1e-4, "dpoints")


@pytest.mark.parametrize("dtype,G", [(torch.float32, 8), (torch.bfloat16, 8), (torch.float32, 5)], ids=str)
def test_rswaf_kan_triton_on_gpu_matches_cpu(dtype, G):
    from test_rswaf_kan import make, run

    x, grid, inv, w = make((3, 700), 96, 200, G, dtype=dtype, seed=11)
    cpu = run("cpu", x, grid, inv, w)
    gpu = run("triton", *(t.cuda() for t in (x, grid, inv, w)))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for name, a, b in zip(("out", "x", "grid", "inv", "w"), gpu, cpu):
        close(a.cpu(), b, tol, tol * max(1.0, b.abs().max().item()), f"rswaf_kan triton {name}")


def test_fasterkan_module_on_gpu():
    torch.manual_seed(0)
    m = mknn.FasterKAN([64, 128, 64])
    x = torch.randn(4, 49, 64)
    mg = mknn.FasterKAN([64, 128, 64]).cuda()
    mg.load_state_dict(m.state_dict())
    close(mg(x.cuda()).cpu(), m(x), 1e-4, 1e-4, "FasterKAN gpu")


# --- multi-order selective scan (PointMamba2) ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_multi_order_scan_triton_on_gpu_matches_cpu(dtype):
    from test_multi_order_scan import NAMES, TOL as MO_TOL
    from test_multi_order_scan import make_inputs as mo_inputs

    x = mo_inputs(2, 40, 64, 700, 8, dtype, seed=9)
    g = torch.randn(2, 40, 700).to(dtype)
    results = []
    for device, backend in (("cpu", "cpu"), ("cuda", "triton")):
        leaves = {k: x[k].to(device).requires_grad_(True) for k in NAMES}
        out = ops.multi_order_selective_scan(**leaves, orders=x["orders"].to(device), backend=backend)
        grads = torch.autograd.grad((out.float() * g.to(device).float()).sum(), list(leaves.values()))
        results.append([out.cpu()] + [t.cpu() for t in grads])
    rtol, atol = MO_TOL[dtype]
    for name, a, b in zip(["out", *NAMES], *results):
        close(b, a, max(rtol, 1e-3), max(atol, 1e-3) * (a.float().abs().max().item() + 1), name)


def test_point_ssm_group_block_on_gpu_matches_cpu():
    torch.manual_seed(0)
    block = mknn.PointSSMGroupBlock(32, d_state=16)
    x, xyz = torch.randn(2, 300, 32), torch.randn(2, 300, 3)
    want = block(x, xyz)
    got = block.cuda()(x.cuda(), xyz.cuda()).cpu()
    close(got, want, 1e-3, 1e-3, "out")
