"""MedViTV2 whole-model measurement, interleaved in one process (fair on a shared machine).

Three configurations of ``medvitv2_<variant>`` with the same weights, each with its own AdamW:
``kernels`` (the paper layout on the medkernels kernels, automatic backend), ``reference`` (the same model on
the pure-PyTorch reference ops) and ``official`` (``official_layout=True`` -- the official code's computation,
plain NA -- on the reference ops: a pure-PyTorch gather NA in natten 0.17's place, which does not install with
current torch). Per round every configuration runs one training step (forward, cross-entropy, backward,
AdamW) and one inference batch (eval, no_grad), in rotating order; medians over the rounds; peak memory from
the allocator events (medkernels.bench.memory), once per configuration.

    PYTHONPATH=. python benchmarks/medvitv2_interleaved.py --variant small --batch 8 --size 224 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from medkernels.bench.memory import peak_allocated_bytes
from medkernels.models import create_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--json", default="")
    a = p.parse_args()
    torch.manual_seed(0)
    name = f"medvitv2_{a.variant}"
    base = create_model(name, num_classes=a.classes)
    configs = {
        "kernels": (create_model(name, num_classes=a.classes), None),
        "reference": (create_model(name, num_classes=a.classes), "reference"),
        "official": (create_model(name, num_classes=a.classes, official_layout=True), "reference"),
    }
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, 3, a.size, a.size, generator=g)
    y = torch.randint(0, a.classes, (a.batch,), generator=g)
    opts = {}
    for key, (m, backend) in configs.items():
        m.load_state_dict(base.state_dict())
        m.backend = backend
        opts[key] = torch.optim.AdamW(m.parameters(), lr=1e-4)

    def train(key):
        m = configs[key][0].train()
        loss = F.cross_entropy(m(x), y)
        opts[key].zero_grad(set_to_none=True)
        loss.backward()
        opts[key].step()

    def infer(key):
        m = configs[key][0].eval()
        with torch.no_grad():
            m(x)

    times = {(k, s): [] for k in configs for s in ("train", "infer")}
    keys = list(configs)
    for r in range(a.rounds + 1):  # round 0 warms up
        order = keys[r % 3 :] + keys[: r % 3]
        for key in order:
            for step, fn in (("train", train), ("infer", infer)):
                t0 = time.perf_counter()
                fn(key)
                dt = time.perf_counter() - t0
                if r > 0:
                    times[(key, step)].append(dt)
                print(f"round {r} {key:9s} {step}: {dt * 1e3:.0f} ms", flush=True)
    peaks = {
        (k, s): peak_allocated_bytes(lambda k=k, fn=fn: fn(k))
        for k in keys
        for s, fn in (("train", train), ("infer", infer))
    }
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "case": f"{name} B={a.batch} {a.size}x{a.size} fp32",
        "rows": [],
    }
    for step in ("train", "infer"):
        ref_t = statistics.median(times[("reference", step)])
        ref_m = peaks[("reference", step)]
        for key in keys:
            med = statistics.median(times[(key, step)])
            row = {
                "config": key,
                "step": step,
                "median_ms": round(med * 1e3, 1),
                "times_ms": [round(t * 1e3) for t in times[(key, step)]],
                "images_per_s": round(a.batch / med, 2),
                "peak_mib": round(peaks[(key, step)] / 2**20, 1),
                "speedup_vs_reference": round(ref_t / med, 2),
                "memory_vs_reference": round(peaks[(key, step)] / ref_m, 3),
            }
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
