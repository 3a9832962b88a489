"""SS2D (VMamba's 2D selective scan) block: medkernels.nn.SS2D against the official computation, interleaved.

Both run the same parameters, forward + backward (gradients to the input and every parameter):

- ``ours``: :class:`medkernels.nn.SS2D`, the four cross-scan orderings in one
  ``medkernels.ops.multi_order_selective_scan`` call that reads the tokens through the orderings' index
  (projections once per scan in the original token order, no permuted copies);
- ``official``: the official ``SS2D.forward`` / ``forward_corev0`` (github.com/JCruan519/VM-UNet,
  ``models/vmunet/vmamba.py``): four permuted copies ``xs (B, 4, d_inner, L)``, per-copy x_proj / dt_proj einsums,
  one ``selective_scan_fn`` call on the ``(B, 4 * d_inner, L)`` stack with grouped B/C -- here medkernels' own
  ``medkernels.ops.selective_scan_fn`` (same backend) in mamba_ssm's place -- flips / transposes back and the sum.

Per round each runs once in alternating order; medians over the rounds. Peak memory: the allocator's peak
above the start during one forward + backward (medkernels.bench.memory.peak_allocated_bytes: torch's
allocation events, CPU and CUDA), inputs and parameters excluded.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/ss2d_vs_official.py --batch 2 --size 64 --dim 96 --rounds 7
    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/ss2d_vs_official.py --profile   # where the time goes
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from medkernels.bench.memory import peak_allocated_bytes
from medkernels.nn import SS2D
from medkernels.testing import ss2d_official


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=64, help="H = W of the map")
    p.add_argument("--dim", type=int, default=96, help="channels C (d_inner = 2C)")
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default=None, help="scan backend of both (None: automatic)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables of one step of each")
    a = p.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    m = SS2D(a.dim, d_state=a.d_state, backend=a.backend, device=dev)
    x = torch.randn(a.batch, a.size, a.size, a.dim, device=dev, requires_grad=True)
    gw = torch.randn(a.batch, a.size, a.size, a.dim, device=dev)
    runs = {"ours": lambda: m(x), "official": lambda: ss2d_official(m, x, a.backend)}

    def step(name):
        m.zero_grad(set_to_none=True)
        x.grad = None
        runs[name]().backward(gw)

    def timed(name):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        step(name)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0

    # same results (float32 rounding)
    with torch.no_grad():
        o1, o2 = runs["ours"](), runs["official"]()
    rel = ((o1 - o2).abs().max() / o2.abs().max()).item()

    for name in runs:  # warm-up
        step(name)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(a.rounds):
        for name in runs if r % 2 == 0 else list(runs)[::-1]:
            times[name].append(timed(name))
    peaks = {name: peak_allocated_bytes(lambda n=name: step(n), dev) for name in runs}

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {load[0]:.2f}, ", end="")
    print(f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, device {dev}")
    print(
        f"# SS2D block: B={a.batch}, {a.size}x{a.size} map, C={a.dim}, d_inner={m.d_inner}, d_state={a.d_state}, "
        f"forward+backward, {a.rounds} rounds; max|ours - official| / max|official| = {rel:.2e}"
    )
    med = {name: statistics.median(t) for name, t in times.items()}
    for name in runs:
        t = sorted(times[name])
        print(
            f"{name:9s} median {med[name] * 1e3:8.1f} ms (min {t[0] * 1e3:7.1f}, max {t[-1] * 1e3:7.1f})   "
            f"peak {peaks[name] / 2**20:7.1f} MiB"
        )
    print(
        f"ours vs official: {med['official'] / med['ours']:.2f}x faster, "
        f"{peaks['ours'] / peaks['official']:.2f}x the peak memory"
    )
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        for name in runs:
            with profile(activities=acts) as prof:
                step(name)
            print(f"\n## {name}\n" + prof.key_averages().table(sort_by=sort, row_limit=14))


if __name__ == "__main__":
    main()
