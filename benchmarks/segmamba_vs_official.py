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

from medkernels.nn import TriOrientedMamba
from medkernels.testing import tri_oriented_mamba_official


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    side = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    backend = sys.argv[3] if len(sys.argv) > 3 else None
    torch.manual_seed(0)
    m = TriOrientedMamba(48, nslices=64, backend=backend)
    h = torch.randn(1, side**3, 48)
    g = torch.randn_like(h)
    runs = {"ours": lambda: m(h), "official": lambda: tri_oriented_mamba_official(m, h, backend)}
    with torch.no_grad():
        a, b = runs["ours"](), runs["official"]()
    err = ((a - b).abs().max() / b.abs().max()).item()
    print(f"tokens {side}^3, threads {torch.get_num_threads()}: max|ours - official| / max|official| = {err:.2e}")

    def fwd(name: str) -> None:
        with torch.no_grad():
            runs[name]()

    def train(name: str) -> None:
        hh = h.detach().requires_grad_(True)
        out = m(hh) if name == "ours" else tri_oriented_mamba_official(m, hh, backend)
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
