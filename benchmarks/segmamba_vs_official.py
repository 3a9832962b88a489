"""SegMamba's tri-orientated Mamba at the stage-1 size of a 128^3 input (B 1, C 48, 64^3 = 262,144 tokens,
nslices 64, d_state 16), float32, forward and forward+backward: ours (:class:`medkernels.nn.TriOrientedMamba`:
three K = 1 multi-order scans, the reverse one through the orders index, one run-interleaved copy of x) against
the official way (the forked mamba_ssm's v3 forward: xz flipped and slice-regrouped into permuted copies, each
direction through ``medkernels.ops.causal_conv1d_fn`` and ``medkernels.ops.selective_scan_fn`` with the gate,
outputs flipped / permuted back), on the same weights and the same backend.

On a shared machine only paired rounds are comparable: each round times both back to back (alternating which
goes first); the ratios reported are medians of the per-round ratios.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/segmamba_vs_official.py [rounds] [side] [backend]
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from medkernels import ops
from medkernels.nn import TriOrientedMamba


def official_forward(m: TriOrientedMamba, h: torch.Tensor, backend: str | None) -> torch.Tensor:
    """The fork's ``Mamba.forward`` (bimamba_type "v3", ``mamba_inner_fn_no_out_proj`` per direction) on medkernels'
    conv and scan ops: three permuted copies of xz, three gated scans, outputs permuted back and summed."""
    batch, L, _ = h.shape
    E, N, R, n = m.d_inner, m.d_state, m.dt_rank, m.nslices

    def inner(xz: torch.Tensor, s: str) -> torch.Tensor:
        x, z = xz.chunk(2, dim=1)
        conv = getattr(m, "conv1d" + s)
        u = ops.causal_conv1d_fn(x, conv.weight[:, 0], conv.bias, activation="silu", backend=backend)
        x_dbl = F.linear(u.transpose(1, 2).reshape(batch * L, E), getattr(m, "x_proj" + s).weight)
        dt_proj = getattr(m, "dt_proj" + s)
        delta = (dt_proj.weight @ x_dbl[:, :R].t()).view(E, batch, L).permute(1, 0, 2)
        Bm = x_dbl[:, R : R + N].view(batch, L, N).transpose(1, 2).contiguous()
        Cm = x_dbl[:, R + N :].view(batch, L, N).transpose(1, 2).contiguous()
        A = -torch.exp(getattr(m, "A" + s + "_log").float())
        D = getattr(m, "D" + s).float()
        return ops.selective_scan_fn(u, delta, A, Bm, Cm, D, z, dt_proj.bias.float(), True, backend=backend)

    xz = (m.in_proj.weight @ h.reshape(batch * L, -1).t()).view(2 * E, batch, L).permute(1, 0, 2)
    out = inner(xz, "")
    out_b = inner(xz.flip([-1]), "_b")
    xz_s = torch.stack(xz.chunk(n, dim=-1), dim=-1).flatten(-2)
    out_s = inner(xz_s, "_s").reshape(batch, E, L // n, n).permute(0, 1, 3, 2).flatten(-2)
    return F.linear((out + out_b.flip([-1]) + out_s).transpose(1, 2), m.out_proj.weight)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    side = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    backend = sys.argv[3] if len(sys.argv) > 3 else None
    torch.manual_seed(0)
    m = TriOrientedMamba(48, nslices=64, backend=backend)
    h = torch.randn(1, side**3, 48)
    g = torch.randn_like(h)
    runs = {"ours": lambda: m(h), "official": lambda: official_forward(m, h, backend)}
    with torch.no_grad():
        a, b = runs["ours"](), runs["official"]()
    err = ((a - b).abs().max() / b.abs().max()).item()
    print(f"tokens {side}^3, threads {torch.get_num_threads()}: max|ours - official| / max|official| = {err:.2e}")

    def fwd(name: str) -> None:
        with torch.no_grad():
            runs[name]()

    def train(name: str) -> None:
        hh = h.detach().requires_grad_(True)
        out = m(hh) if name == "ours" else official_forward(m, hh, backend)
        out.backward(g)
        m.zero_grad(set_to_none=True)

    for name in runs:
        train(name)  # warm-up
    times: dict[str, list[float]] = {f"{p}_{n}": [] for p in ("fwd", "train") for n in runs}
    for r in range(rounds):
        for p, fn in (("fwd", fwd), ("train", train)):
            for n in ("ours", "official") if r % 2 == 0 else ("official", "ours"):
                t0 = time.perf_counter()
                fn(n)
                times[f"{p}_{n}"].append(time.perf_counter() - t0)
    result = {k: round(statistics.median(v), 4) for k, v in times.items()}
    for p in ("fwd", "train"):
        ratios = [o / u for u, o in zip(times[f"{p}_ours"], times[f"{p}_official"])]
        result[f"{p}_speedup_median"] = round(statistics.median(ratios), 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
