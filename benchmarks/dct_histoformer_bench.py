"""DCT-HistoTransformer whole-model measurement, interleaved in one process (fair on a shared machine).

Two configurations of ``dct_histoformer`` with the same weights, each with its own AdamW: ``kernels`` (the
DCTs on the medkernels kernels, automatic backend) and ``reference`` (the same model on the pure-PyTorch
reference ops: the two batched matmuls per transform). Per round each runs one training step (forward,
cross-entropy, backward, AdamW) and one inference batch (eval, no_grad), in alternating order; medians over
the rounds; peak memory from the allocator events (medkernels.bench.memory), once per configuration. The DCTs
are a small part of the step, so the script also times them alone, interleaved the same way: ``dct2d`` (kept
block) then ``idct2d`` (zero-filled) forward and backward at every DCT attention's shape of the model, summed
over the blocks (``dct_rows``).

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/dct_histoformer_bench.py --batch 8 --size 224 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from medkernels import ops
from medkernels.bench.memory import peak_allocated_bytes
from medkernels.models import create_model
from medkernels.nn import DCTAttention


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default="")
    a = p.parse_args()
    torch.manual_seed(0)
    dev = torch.device(a.device)
    base = create_model("dct_histoformer", num_classes=a.classes)
    configs = {"kernels": None, "reference": "reference"}
    models, opts = {}, {}
    for key, backend in configs.items():
        m = create_model("dct_histoformer", num_classes=a.classes)
        m.load_state_dict(base.state_dict())
        m.backend = backend
        models[key] = m.to(dev)
        opts[key] = torch.optim.AdamW(m.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, 3, a.size, a.size, generator=g).to(dev)
    y = torch.randint(0, a.classes, (a.batch,), generator=g).to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train(key):
        m = models[key].train()
        loss = F.cross_entropy(m(x), y)
        opts[key].zero_grad(set_to_none=True)
        loss.backward()
        opts[key].step()

    def infer(key):
        m = models[key].eval()
        with torch.no_grad():
            m(x)

    times = {(k, s): [] for k in configs for s in ("train", "infer")}
    keys = list(configs)
    for r in range(a.rounds + 1):  # round 0 warms up
        order = keys if r % 2 == 0 else keys[::-1]
        for key in order:
            for step, fn in (("train", train), ("infer", infer)):
                sync()
                t0 = time.perf_counter()
                fn(key)
                sync()
                dt = time.perf_counter() - t0
                if r > 0:
                    times[(key, step)].append(dt)
                print(f"round {r} {key:9s} {step}: {dt * 1e3:.0f} ms", flush=True)
    peaks = {}
    if dev.type == "cpu":
        peaks = {
            (k, s): peak_allocated_bytes(lambda k=k, fn=fn: fn(k))
            for k in keys
            for s, fn in (("train", train), ("infer", infer))
        }
    dct_times = {k: [] for k in keys}
    shapes = []  # (C, H, W, kh, kw) of every DCT attention, from one eval pass on one image
    hooks = [
        m.register_forward_hook(lambda m, i, o: shapes.append((*i[0].shape[1:], *m.kept(*i[0].shape[2:]))))
        for m in models["kernels"].modules()
        if isinstance(m, DCTAttention)
    ]
    with torch.no_grad():
        models["kernels"].eval()(x[:1])
    for h in hooks:
        h.remove()
    inputs = [torch.randn(a.batch, c, h, w, device=dev, requires_grad=True) for c, h, w, _, _ in shapes]

    def dcts(key):
        for t, (_, h, w, kh, kw) in zip(inputs, shapes):
            back = ops.idct2d(ops.dct2d(t, keep=(kh, kw), backend=configs[key]), s=(h, w), backend=configs[key])
            back.backward(t.detach())

    for r in range(a.rounds + 1):
        for key in keys if r % 2 == 0 else keys[::-1]:
            sync()
            t0 = time.perf_counter()
            dcts(key)
            sync()
            if r > 0:
                dct_times[key].append(time.perf_counter() - t0)
    model = models["kernels"]
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else ""),
        "torch": torch.__version__,
        "case": f"dct_histoformer B={a.batch} {a.size}x{a.size} fp32 on {dev.type}",
        "params": model.num_params(),
        "gflops_per_image": round(model.flops(a.size) / 1e9, 3),
        "rows": [],
    }
    for step in ("train", "infer"):
        ref_t = statistics.median(times[("reference", step)])
        for key in keys:
            med = statistics.median(times[(key, step)])
            row = {
                "config": key,
                "step": step,
                "median_ms": round(med * 1e3, 1),
                "times_ms": [round(t * 1e3) for t in times[(key, step)]],
                "images_per_s": round(a.batch / med, 2),
                "speedup_vs_reference": round(ref_t / med, 3),
            }
            if peaks:
                row["peak_mib"] = round(peaks[(key, step)] / 2**20, 1)
                row["memory_vs_reference"] = round(peaks[(key, step)] / peaks[("reference", step)], 3)
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    out["dct_rows"] = []
    for key in keys:
        med = statistics.median(dct_times[key])
        ref = statistics.median(dct_times["reference"])
        row = {"config": key, "step": "dct2d+idct2d fwd+bwd, all blocks", "median_ms": round(med * 1e3, 2)}
        row["speedup_vs_reference"] = round(ref / med, 2)
        out["dct_rows"].append(row)
        print(json.dumps(row), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
