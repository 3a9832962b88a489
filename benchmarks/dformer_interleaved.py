"""D-Former (Wu et al., Neural Computing and Applications 2023) at 1x1x64x128x128, float32, on CPU: ours
(``create_model("dformer")``, automatic backend) and the official computation
(:func:`medkernels.testing.dformer_segnetwork_official`, the official ``model.py`` forward restated, on a copy of
the same weights) interleaved in one process, with MONAI's SwinUNETR(feature_size=48) for two rounds.

On a shared machine only paired rounds are comparable: each round times ours and the official back to back
(alternating which goes first), and the ratios reported are medians of the per-round ratios (wall and process
CPU time). Then peak memory (the bench's allocator replay) and a torch.profiler table of our training step.

    PYTHONPATH=. python benchmarks/dformer_interleaved.py [rounds] [D H W]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from medkernels.bench.memory import peak_allocated_bytes
from medkernels.models import create_model
from medkernels.testing import dformer_segnetwork_official


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    size = tuple(int(s) for s in sys.argv[2:5]) if len(sys.argv) > 4 else (64, 128, 128)
    torch.manual_seed(0)
    ours = create_model("dformer", num_classes=14)
    off = create_model("dformer", num_classes=14)
    off.load_state_dict(ours.state_dict())
    params = dict(off.named_parameters())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, *size, generator=g)
    y = torch.randint(0, 14, (1, *size), generator=g)
    opts = {"ours": torch.optim.AdamW(ours.parameters(), lr=1e-4), "official": torch.optim.AdamW(off.parameters())}
    forwards = {"ours": lambda: ours(x), "official": lambda: dformer_segnetwork_official(params, x)}
    try:
        from monai.networks.nets import SwinUNETR

        swin = SwinUNETR(1, 14, feature_size=48)
        opts["swinunetr"] = torch.optim.AdamW(swin.parameters(), lr=1e-4)
        forwards["swinunetr"] = lambda: swin(x)
    except ImportError:
        swin = None

    def fwd(name: str):
        ours.eval()
        with torch.no_grad():
            return forwards[name]()

    def train(name: str) -> None:
        ours.train()
        loss = F.cross_entropy(forwards[name](), y)
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    with torch.no_grad():
        a, b = fwd("ours"), fwd("official")
    print("max|ours - official| / max|official| =", ((a - b).abs().max() / b.abs().max()).item(), flush=True)
    for name in forwards:
        train(name)  # warm-up, and the optimizers' state
    runs = {f"{p}_{n}": {"wall": [], "cpu": []} for p in ("fwd", "train") for n in ("ours", "official")}
    swin_pairs: dict[str, list[float]] = {"train_swinunetr": [], "train_ours": []}
    for r in range(rounds):
        for p, fn in (("fwd", fwd), ("train", train)):
            for n in ("ours", "official") if r % 2 == 0 else ("official", "ours"):
                w0, c0 = time.perf_counter(), time.process_time()
                fn(n)
                runs[f"{p}_{n}"]["wall"].append(time.perf_counter() - w0)
                runs[f"{p}_{n}"]["cpu"].append(time.process_time() - c0)
        if swin is not None and r < 2:
            for n in ("swinunetr", "ours") if r % 2 == 0 else ("ours", "swinunetr"):
                w0 = time.perf_counter()
                train(n)
                swin_pairs[f"train_{n}"].append(time.perf_counter() - w0)
        print(r, {k: round(v["wall"][-1], 3) for k, v in runs.items()}, swin_pairs, os.getloadavg(), flush=True)
    out: dict = {"load": os.getloadavg(), "threads": torch.get_num_threads(), "size": size}
    for k, v in runs.items():
        out[k] = {m: statistics.median(t) for m, t in v.items()}
    for p in ("fwd", "train"):
        o, f = runs[f"{p}_ours"], runs[f"{p}_official"]
        for m in ("wall", "cpu"):
            out[f"{p}_paired_speedup_{m}"] = statistics.median(b / a for a, b in zip(o[m], f[m]))
    if swin_pairs["train_swinunetr"]:
        out["swin"] = swin_pairs
        pairs = zip(swin_pairs["train_ours"], swin_pairs["train_swinunetr"])
        out["train_swinunetr_paired_speedup_wall"] = statistics.median(b / a for a, b in pairs)
    if swin is not None:
        del swin, forwards["swinunetr"], opts["swinunetr"]
    for p, fn in (("fwd", fwd), ("train", train)):
        for n in ("ours", "official"):
            out[f"peak_{p}_{n}_MB"] = peak_allocated_bytes(lambda fn=fn, n=n: fn(n)) / 2**20
    print(json.dumps(out, indent=1), flush=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train("ours")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
