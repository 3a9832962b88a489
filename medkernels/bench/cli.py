"""``medkernels-bench``: time every op on every backend available here against its reference.

Prints, per case, the median time, the speed-up over the reference (and over the best peer
library measured in the same run), the effective bandwidth and the peak memory of the forward
pass and of forward+backward, then checks the case's targets; writes everything as JSON with the
machine, torch and commit recorded.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import medkernels
from medkernels import ops

from .cases import PROFILES, cases_for
from .runner import PASSES, Result, backends_for, run_case, time_call


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": os.environ.get("MEDKERNELS_COMMIT", "unknown"), "dirty": None}


def machine_info(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_isa": ops.cpu_isa(),
        "torch": torch.__version__,
        "medkernels": medkernels.__version__,
        "device": str(device),
    }
    try:
        import triton  # type: ignore

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled
        self.tty = sys.stderr.isatty()
        self.started = time.perf_counter()

    def step(self, what: str) -> None:
        if not self.enabled:
            return
        self.done += 1
        width = 24
        filled = int(width * min(self.done, self.total) / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        line = f"[{bar}] {self.done}/{self.total} {time.perf_counter() - self.started:5.0f}s  {what}"
        if self.tty:
            sys.stderr.write("\r" + line[:110].ljust(110))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r" + " " * 110 + "\r")
            sys.stderr.flush()


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def format_case(title: str, results: list[Result], peer_notes: dict[str, str]) -> str:
    lines = [title]
    w = max([16, *(len(r.backend) for r in results)])
    header = f"  {'backend':<{w}} {'pass':<8} {'median ms':>11} {'vs ref':>9} {'vs peer':>9} {'GB/s':>7} {'peak MB':>9} {'mem/ref':>8}"
    lines.append(header)
    for passname in PASSES:
        for r in (r for r in results if r.passname == passname):
            if r.error:
                lines.append(f"  {r.backend:<{w}} {passname:<8} failed: {r.error}")
                continue
            lines.append(
                f"  {r.backend:<{w}} {passname:<8} {r.median_ms:>11.3f} {_fmt(r.speedup_vs_reference, '>8.1f', 'x'):>9} "
                f"{_fmt(r.speedup_vs_best_peer, '>8.2f', 'x'):>9} {r.gbps:>7.2f} {r.peak_bytes / 2**20:>9.2f} "
                f"{_fmt(r.memory_vs_reference, '>8.3f'):>8}")
    for peer, why in peer_notes.items():
        lines.append(f"  peer {peer}: not measured ({why})")
    return "\n".join(lines)


def copy_bandwidth_gbps(device: torch.device, nbytes: int = 1 << 30) -> float:
    """The device's measured copy bandwidth (bytes read plus written), the ceiling for memory-bound ops."""
    src = torch.empty(nbytes // 4, device=device).uniform_()
    dst = torch.empty_like(src)
    times = time_call(lambda: dst.copy_(src), device, min_time=0.5, min_reps=10)
    return 2 * nbytes / sorted(times)[len(times) // 2] / 1e9


def check_targets(case, results: list[Result], copy_gbps: float | None = None) -> list[dict]:
    def row(backend, passname):
        return next((r for r in results if r.backend == backend and r.passname == passname and not r.error), None)

    checked = []
    for t in case.targets:
        mine, theirs = row(t.backend, t.passname), row(t.against, t.passname)
        value = None
        if t.metric == "bandwidth":
            value = mine.gbps / copy_gbps if mine is not None and copy_gbps else None
        elif mine is not None and theirs is not None:
            if t.metric == "speedup":
                value = theirs.median_ms / mine.median_ms
            elif theirs.peak_bytes:
                value = mine.peak_bytes / theirs.peak_bytes
        checked.append({"target": t.description, "backend": t.backend, "pass": t.passname, "metric": t.metric,
                        "against": t.against, "bound": t.bound, "value": value,
                        "met": value is not None and t.met(value)})
    return checked


def _format_target(c: dict) -> str:
    if c["value"] is None:
        return f"  target  {c['target']}: not measured"
    shown = f"{c['value']:.2f}x" if c["metric"] == "speedup" else f"{c['value']:.3f}"
    return f"  target  {c['target']}: {shown}  {'met' if c['met'] else 'NOT MET'}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="medkernels-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=PROFILES, default=None,
                   help="quick (seconds), default (under 2 minutes on 2 cores), full, gpu; "
                        "default: 'gpu' on a CUDA device, else 'default'")
    p.add_argument("--ops", default="", help="comma-separated ops to run (default: all)")
    p.add_argument("--backends", default="", help="comma-separated medkernels backends (default: all that run here)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--min-time", type=float, default=0.75,
                   help="seconds of timed calls per measurement (default 0.75)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--json", default=None, help="where to write the JSON results "
                   "(default: bench-results/<profile>-<time>.json; '-' for none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--list", action="store_true", help="list the cases of the profile and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    profile = args.profile or ("gpu" if device.type == "cuda" else "default")
    only_ops = {o for o in args.ops.split(",") if o} or None
    only_backends = {b for b in args.backends.split(",") if b} or None
    cases = cases_for(profile, only_ops)
    if args.list:
        for c in cases:
            for dt in c.dtypes:
                print(c.title(dt))
        return 0

    info = machine_info(device)
    info.update(_git_commit())
    if device.type == "cuda":
        info["copy_gbps"] = copy_bandwidth_gbps(device)
    print(f"medkernels-bench {info['medkernels']} | profile {profile} | torch {info['torch']} | "
          f"{info.get('gpu') or info['cpu']} | {info['torch_threads']} threads | cpu isa {info['cpu_isa']} | "
          f"commit {info['commit'][:10]}{'+dirty' if info['dirty'] else ''}"
          + (f" | copy {info['copy_gbps']:.0f} GB/s" if "copy_gbps" in info else ""))

    plan = []
    for c in cases:
        for dt in c.dtypes:
            names = backends_for(c, device, dt, only_backends)
            plan.append((c, dt, names))
    def steps(c, names):
        peers = [p for p in c.peers.values() if p.unavailable(device) is None]
        if not (c.differentiable or c.parameters):
            return len(names) + len(peers)
        return 2 * len(names) + sum(1 if p.forward_only else 2 for p in peers)

    total = sum(steps(c, names) for c, _, names in plan)
    progress = Progress(total, not args.no_progress)

    all_results: list[Result] = []
    targets: list[dict] = []
    blocks: list[str] = []
    for c, dt, names in plan:
        results = list(run_case(c, dt, device, names, args.min_time, on_step=progress.step))
        all_results += results
        notes = {name: why for name, spec in c.peers.items() if (why := spec.unavailable(device))}
        checked = check_targets(c, results, info.get("copy_gbps")) if dt == c.dtypes[0] else []
        targets += [{"case": c.label, "dtype": str(dt).replace("torch.", ""), **t} for t in checked]
        progress.close()
        block = format_case(c.title(dt), results, notes)
        if checked:
            block += "\n" + "\n".join(_format_target(t) for t in checked)
        blocks.append(block)
        print("\n" + block, flush=True)
    progress.close()

    if args.json != "-":
        path = Path(args.json or f"bench-results/{profile}-{_dt.datetime.now():%Y%m%d-%H%M%S}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "profile": profile,
                   "machine": info, "results": [r.as_dict() for r in all_results], "targets": targets}
        path.write_text(json.dumps(payload, indent=1))
        print(f"\nresults: {path}")
    unmet = [t for t in targets if not t["met"]]
    if unmet:
        print(f"{len(unmet)} target(s) not met", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
