"""``medkernels-bench``: time every op on every backend available here against its reference.

Prints, per case, the median time, the speed-up over the reference (and over the best peer
library measured in the same run), the effective bandwidth and the peak memory of the forward
pass and of forward+backward, then checks the case's targets; writes everything as JSON with the
machine, torch and commit recorded (rewritten after each case, so an interrupted run keeps what it measured).

With ``--report DIR``, sweeps each op along its axes and writes plots and a Markdown report instead
(:mod:`medkernels.bench.report`).

Exit status: 0 once the run completes, whatever it measured; with ``--check``, 1 when a target is not met
(or could not be measured) or a backend or peer raised, with the reasons printed. 130 when interrupted.
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
from .runner import PASSES, Result, backends_for, fastest_peer, memory_ratio, run_case, time_call


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


def format_case(
    title: str, results: list[Result], peer_notes: dict[str, str], peer_calls: dict[str, str] | None = None
) -> str:
    lines = [title]
    w = max([16, *(len(r.backend) for r in results)])
    header = (
        f"  {'backend':<{w}} {'pass':<8} {'median ms':>11} {'vs ref':>9} {'vs peer':>9} {'GB/s':>7} "
        f"{'peak MB':>9} {'RSS MB':>8} {'mem/ref':>8}"
    )
    lines.append(header)
    for passname in PASSES:
        for r in (r for r in results if r.passname == passname):
            if r.error:
                lines.append(f"  {r.backend:<{w}} {passname:<8} failed: {r.error}")
                continue
            lines.append(
                f"  {r.backend:<{w}} {passname:<8} {r.median_ms:>11.3f} "
                f"{_fmt(r.speedup_vs_reference, '>8.1f', 'x'):>9} "
                f"{_fmt(r.speedup_vs_best_peer, '>8.2f', 'x'):>9} {r.gbps:>7.2f} "
                f"{(f'{r.peak_bytes / 2**20:.2f}' if r.torch_memory else 'n/c'):>9} "
                f"{_fmt(None if r.peak_rss_bytes is None else r.peak_rss_bytes / 2**20, '>8.1f'):>8} "
                f"{_fmt(r.memory_vs_reference, '>8.3f'):>8}"
            )
    for peer, how in (peer_calls or {}).items():
        lines.append(f"  peer {peer} = {how}")
    for peer, why in peer_notes.items():
        lines.append(f"  peer {peer}: not measured ({why})")
    if any(not r.torch_memory for r in results):
        lines.append(
            "  peak MB: torch's allocator (n/c: a numpy peer's buffers are not torch's); RSS MB: the process's "
            "resident-set rise during one call (every allocator), what memory targets compare when a row is n/c"
        )
    return "\n".join(lines)


def copy_bandwidth_gbps(device: torch.device, nbytes: int = 1 << 30) -> float:
    """The device's measured copy bandwidth (bytes read plus written), the ceiling for memory-bound ops."""
    src = torch.empty(nbytes // 4, device=device).uniform_()
    dst = torch.empty_like(src)
    times = time_call(lambda: dst.copy_(src), device, min_time=0.5, min_reps=10)
    return 2 * nbytes / sorted(times)[len(times) // 2] / 1e9


def check_targets(case, results: list[Result], copy_gbps: float | None = None) -> list[dict]:
    def row(backend, passname):
        if backend == "peer":  # the fastest peer a user could call instead
            return fastest_peer(case, results, passname)
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
            else:
                value = memory_ratio(mine, theirs)
        checked.append(
            {
                "target": t.description,
                "backend": t.backend,
                "pass": t.passname,
                "metric": t.metric,
                "against": t.against,
                "bound": t.bound,
                "value": value,
                "met": value is not None and t.met(value),
            }
        )
    return checked


def _format_target(c: dict) -> str:
    if c["value"] is None:
        return f"  target  {c['target']}: not measured"
    shown = f"{c['value']:.2f}x" if c["metric"] == "speedup" else f"{c['value']:.3f}"
    return f"  target  {c['target']}: {shown}  {'met' if c['met'] else 'NOT MET'}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="medkernels-bench",
        description=__doc__.split("\n\n")[0],
        epilog="exit status: 0 once the run completes, whatever it measured; with --check,\n"
        "1 when a target is not met or a backend failed (the reasons are printed);\n"
        "130 when interrupted (the JSON keeps the cases it finished).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="quick (seconds), default (under 2 minutes on 2 cores), full, gpu; "
        "default: 'gpu' on a CUDA device, else 'default'",
    )
    p.add_argument("--ops", default="", help="comma-separated ops to run (default: all)")
    p.add_argument(
        "--match", default="", help="only the cases whose label contains this text, case-insensitive (e.g. 'ss2d')"
    )
    p.add_argument("--backends", default="", help="comma-separated medkernels backends (default: all that run here)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="seconds of timed calls per measurement (default 0.75; with --report 0.25, 0.02 in the quick profile)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument(
        "--json",
        default=None,
        help="where to write the JSON results (default: bench-results/<profile>-<time>.json; '-' for none)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a target is not met or not measured, or a backend or peer raised "
        "(default: exit 0 whatever was measured)",
    )
    p.add_argument(
        "--list", action="store_true", help="list the cases of the profile (or the report's sweeps) and exit"
    )
    p.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="sweep each op along its axes (sequence length, resolution, kernel size, points, batch) and write PNG "
        "plots, DIR/README.md and DIR/results.json, with the models' throughput table; --ops and --match select "
        "sweeps (e.g. --match na2d, --ops models)",
    )
    p.add_argument("--report-note", default="", help="a paragraph printed under the report's title")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    profile = args.profile or ("gpu" if device.type == "cuda" else "default")
    if args.report is not None:
        from .report import main_report

        return main_report(args, device, profile)
    if args.min_time is None:
        args.min_time = 0.75
    only_ops = {o for o in args.ops.split(",") if o} or None
    only_backends = {b for b in args.backends.split(",") if b} or None
    cases = [c for c in cases_for(profile, only_ops) if args.match.lower() in c.label.lower()]
    if args.list:
        for c in cases:
            for dt in c.dtypes:
                print(c.title(dt))
        return 0

    info = machine_info(device)
    info.update(_git_commit())
    if device.type == "cuda":
        info["copy_gbps"] = copy_bandwidth_gbps(device)
    print(
        f"medkernels-bench {info['medkernels']} | profile {profile} | torch {info['torch']} | "
        f"{info.get('gpu') or info['cpu']} | {info['torch_threads']} threads | cpu isa {info['cpu_isa']} | "
        f"commit {info['commit'][:10]}{'+dirty' if info['dirty'] else ''}"
        + (f" | copy {info['copy_gbps']:.0f} GB/s" if "copy_gbps" in info else "")
    )

    plan = [(c, dt) for c in cases for dt in c.dtypes]

    def steps(c, names):
        peers = [p for p in c.peers.values() if p.unavailable(device) is None]
        if not (c.differentiable or c.parameters):
            return len(names) + len(peers)
        return 2 * len(names) + sum(1 if p.forward_only else 2 for p in peers)

    def candidates(c):  # the backends a case may run here, before probing them
        return list(
            dict.fromkeys(
                [
                    *c.reference_backends,
                    *(
                        b
                        for b in ops.BACKENDS
                        if b != "reference"
                        and not (only_backends and b not in only_backends)
                        and not (b == "triton" and device.type != "cuda")
                    ),
                ]
            )
        )

    # Backends are probed case by case (just before the case runs), so results come in from the first case on;
    # the progress total starts from the candidates and shrinks as probes rule some out.
    progress = Progress(sum(steps(c, candidates(c)) for c, _ in plan), not args.no_progress)

    path = (
        None
        if args.json == "-"
        else Path(args.json or f"bench-results/{profile}-{_dt.datetime.now():%Y%m%d-%H%M%S}.json")
    )
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    all_results: list[Result] = []
    targets: list[dict] = []

    def save(status: str, partial: list[Result] = ()) -> None:
        if path is not None:
            write_json(
                path,
                {
                    "created": created,
                    "profile": profile,
                    "status": status,
                    "cases_done": done,
                    "cases_planned": len(plan),
                    "machine": info,
                    "results": [r.as_dict() for r in [*all_results, *partial]],
                    "targets": targets,
                },
            )

    done, current = 0, []  # current: the rows of the case under way
    save("running")
    try:
        for c, dt in plan:
            current = []
            try:
                inputs = c.make_inputs(device, dt)
                names = backends_for(c, device, dt, only_backends, probe=inputs)
            except Exception as exc:  # the case could not even start (e.g. out of memory): reported, not fatal
                progress.total -= steps(c, candidates(c))
                current.append(setup_failure(c, dt, exc))
            else:
                progress.total -= steps(c, candidates(c)) - steps(c, names)
                for r in run_case(c, dt, device, names, args.min_time, on_step=progress.step, inputs=inputs):
                    current.append(r)
                    save("running", current)  # each pass's rows as they come: a timeout loses the least
                del inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the next case starts from a clean allocator
            results, current = current, []
            all_results += results
            notes = {name: why for name, spec in c.peers.items() if (why := spec.unavailable(device))}
            checked = check_targets(c, results, info.get("copy_gbps")) if dt == c.dtypes[0] else []
            targets += [{"op": c.op, "case": c.label, "dtype": str(dt).replace("torch.", ""), **t} for t in checked]
            progress.close()
            calls = {name: how for name, spec in c.peers.items() if name not in notes and (how := spec.describe())}
            block = format_case(c.title(dt), results, notes, calls)
            if checked:
                block += "\n" + "\n".join(_format_target(t) for t in checked)
            print("\n" + block, flush=True)
            done += 1
            save("running")
    except KeyboardInterrupt:
        progress.close()
        save("interrupted", current)
        print(
            f"\ninterrupted after {done} of {len(plan)} cases" + (f"; results so far: {path}" if path else ""),
            file=sys.stderr,
            flush=True,
        )
        return 130
    progress.close()
    save("complete")
    if path is not None:
        print(f"\nresults: {path}")

    failures = check_failures(all_results, targets)
    if args.check:
        if failures:
            print(f"check failed: {len(failures)} problem(s)", file=sys.stderr)
            for f in failures:
                print(f"  {f}", file=sys.stderr)
            return 1
        print("check passed: every target met, no backend failed", file=sys.stderr)
    else:
        unmet = [t for t in targets if not t["met"]]
        if unmet:
            print(f"{len(unmet)} target(s) not met", file=sys.stderr)
    return 0


def setup_failure(case, dtype: torch.dtype, exc: Exception) -> Result:
    """The row that stands for a case whose inputs or backend probes raised."""
    return Result(
        case.op,
        case.label,
        str(dtype).replace("torch.", ""),
        "setup",
        "fwd",
        float("nan"),
        [],
        0,
        float("nan"),
        0,
        error=f"{type(exc).__name__}: {exc}",
    )


def write_json(path: Path, payload: dict) -> None:
    """Writes ``payload`` to ``path`` atomically (a reader or a kill never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def check_failures(results: list[Result], targets: list[dict]) -> list[str]:
    """Why ``--check`` fails: every measurement that raised, then every target not met or not measured."""
    out = [f"failed: {r.op} [{r.case}] {r.dtype} {r.backend} {r.passname}: {r.error}" for r in results if r.error]
    for t in targets:
        if t["met"]:
            continue
        where = f"{t['case']} {t['dtype']}"
        if t["value"] is None:
            out.append(
                f"target not measured: {t['target']} ({where}: no {t['backend']} or {t['against']} {t['pass']} row)"
            )
        else:
            out.append(
                f"target not met: {t['target']} ({where}): {t['value']:.3f}, "
                f"bound {'<=' if t['metric'] == 'memory' else '>='} {t['bound']:.3f}"
            )
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
