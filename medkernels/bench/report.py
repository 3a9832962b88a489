"""``medkernels-bench --report DIR``: how each op scales, as PNG plots and a Markdown report.

Each op module of :mod:`medkernels.bench.cases` declares its sweeps (``SWEEPS``: its existing case, with the same
backends, reference and peers, rebuilt along one axis: sequence length, resolution, kernel size, point count or
batch). The report runs every point of every sweep through the runner of ``medkernels-bench`` (median time and
peak memory, forward and forward+backward), then the models group's cases of :data:`REPORT_MODELS` (the
throughput table), and writes into ``DIR``:

* ``<op>-<axis>.png`` per sweep: median time against the axis (log-log where the axis spans decades) per backend
  and peer, and the peak memory against the axis;
* ``README.md``: the machine (CPU model, cores, the kernels' ISA), the versions (Python, torch, medkernels, each
  peer's package), the commit, one section per sweep (its plot and a table of every point), the throughput table;
* ``results.json``: every measured row, for scripts.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .cases import REPORT_MODELS, SWEEPS, Case, Sweep, sweeps_for
from .runner import PASSES, backends_for, run_case

__all__ = ["ReportError", "plan_report", "run_report", "write_report"]

_DPI = 80


class ReportError(ValueError):
    """A report that cannot run as asked (nothing selected, a directory that cannot be written)."""


def plan_report(profile: str, ops_filter: set[str] | None, match: str, out_dir: Path) -> tuple[list[Sweep], list[Case]]:
    """The sweeps and model cases a report runs, after checking that the selection is not empty and that
    ``out_dir`` can be written (before anything is measured).

    Raises:
        ReportError: an unknown op in ``ops_filter``, a ``match`` that selects nothing, or an unwritable directory.
    """
    known = sorted({s.op for s in SWEEPS} | {"models"})
    if ops_filter and (unknown := sorted(ops_filter - set(known))):
        raise ReportError(f"--ops: no sweep for {', '.join(unknown)}; the report's ops are {', '.join(known)}")
    sweeps = sweeps_for(ops_filter, match)
    models = [
        c
        for c in REPORT_MODELS.get(profile, REPORT_MODELS["default"])
        if (not ops_filter or "models" in ops_filter) and match.lower() in f"{c.op} {c.label}".lower()
    ]
    if not sweeps and not models:
        keys = ", ".join(s.key for s in SWEEPS)
        raise ReportError(
            f"--match {match!r} selects nothing to report: it must be part of a sweep ({keys}) or 'models'"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".medkernels-report-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ReportError(f"cannot write the report into {out_dir}: {exc.strerror or exc}") from exc
    return sweeps, models


def _measure(case: Case, device: torch.device, min_time: float, only_backends: set[str] | None) -> dict:
    """Every backend and available peer of one case (the runner's rows), or its setup failure."""
    from .cli import setup_failure

    dtype = case.dtypes[0]
    try:
        inputs = case.make_inputs(device, dtype)
        names = backends_for(case, device, dtype, only_backends, probe=inputs)
        rows = list(run_case(case, dtype, device, names, min_time, inputs=inputs))
    except Exception as exc:  # reported in the table, not fatal
        rows = [setup_failure(case, dtype, exc)]
    inputs = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "label": case.label,
        "params": case.params,
        "dtype": str(dtype).replace("torch.", ""),
        "results": [r.as_dict() for r in rows],
    }


def _peer_notes(case: Case, device: torch.device) -> tuple[dict, dict]:
    unavailable = {name: why for name, spec in case.peers.items() if (why := spec.unavailable(device))}
    calls = {n: how for n, spec in case.peers.items() if n not in unavailable and (how := spec.describe())}
    return unavailable, calls


def _versions(cases: list[Case], info: dict) -> dict:
    """Python, torch, medkernels, triton, numpy, matplotlib and every peer's package (None: not installed)."""
    out = {"python": platform.python_version(), "torch": info["torch"], "medkernels": info["medkernels"]}
    packages = {"triton", "numpy", "matplotlib"} | {p.package for c in cases for p in c.peers.values() if p.package}
    for pkg in sorted(packages - {"torch"}):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def run_report(
    sweeps: list[Sweep],
    models: list[Case],
    profile: str,
    device: torch.device,
    min_time: float,
    only_backends: set[str] | None = None,
    progress: bool = True,
    on_point: Callable[[dict], None] = lambda data: None,
) -> dict:
    """Measures every point of ``sweeps`` and every case of ``models``; returns the report's data (what
    :func:`write_report` writes). ``on_point(data)`` after each point (e.g. to save what is measured so far)."""
    from .cli import Progress, _git_commit, machine_info

    info = {**machine_info(device), **_git_commit()}
    quick = profile == "quick"
    built = [(s, v, s.build(v, quick)) for s in sweeps for v in s.points(profile)]
    bar = Progress(len(built) + len(models), progress)
    started = time.perf_counter()
    data = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "profile": profile,
        "min_time": min_time,
        "machine": info,
        "versions": _versions([c for *_, c in built] + models, info),
        "sweeps": [],
        "models": [],
    }
    for sweep in sweeps:
        entry = {"key": sweep.key, "op": sweep.op, "axis": sweep.axis, "loglog": sweep.loglog, "points": []}
        entry["peers_unavailable"], entry["peer_calls"] = {}, {}
        data["sweeps"].append(entry)
        for s, value, case in built:
            if s is not sweep:
                continue
            bar.step(f"{sweep.key} {value}")
            t0 = time.perf_counter()
            point = {"value": value, **_measure(case, device, min_time, only_backends)}
            point["seconds"] = round(time.perf_counter() - t0, 2)
            entry["points"].append(point)
            on_point(data)
            unavailable, calls = _peer_notes(case, device)
            entry["peers_unavailable"].update(unavailable)
            entry["peer_calls"].update(calls)
    for case in models:
        bar.step(f"models {case.label[:40]}")
        match = re.search(r"\bB=(\d+)", case.label)
        row = {"samples": int(case.params.get("batch") or (match.group(1) if match else 1))}
        t0 = time.perf_counter()
        row.update(_measure(case, device, min_time, only_backends))
        row["seconds"] = round(time.perf_counter() - t0, 2)
        row["peers_unavailable"], row["peer_calls"] = _peer_notes(case, device)
        data["models"].append(row)
        on_point(data)
    bar.close()
    data["seconds"] = round(time.perf_counter() - started, 1)
    return data


# --- writing -------------------------------------------------------------------------------------------------


def _runners(points: list[dict]) -> list[str]:
    """The backends and peers measured at any point: the reference first, medkernels' backends, then the peers."""
    seen = dict.fromkeys(r["backend"] for p in points for r in p["results"] if r["backend"] != "setup")
    return sorted(seen, key=lambda b: (b != "reference", b.startswith("peer:"), list(seen).index(b)))


def _row(point: dict, backend: str, passname: str) -> dict | None:
    return next((r for r in point["results"] if r["backend"] == backend and r["passname"] == passname), None)


def _memory_mb(r: dict) -> tuple[float | None, bool]:
    """(MB, by RSS): torch's allocator peak, or the process's resident-set rise for a numpy peer."""
    if r["torch_memory"]:
        return r["peak_bytes"] / 2**20, False
    return (None if r["peak_rss_bytes"] is None else r["peak_rss_bytes"] / 2**20), True


def _memory_pass(points: list[dict], backend: str) -> str | None:
    """The pass whose peak memory the plot shows for ``backend``: forward+backward where it was measured."""
    for passname in reversed(PASSES):
        if any((r := _row(p, backend, passname)) is not None and r["error"] is None for p in points):
            return passname
    return None


def plot_sweep(sweep: dict, path: Path) -> None:
    """``path``: median time (left) and peak memory (right) against the sweep's axis, one line per backend/peer and
    pass (forward solid, forward+backward dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

    points = sweep["points"]
    runners = _runners(points)
    colors = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(runners)}
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 3.6))
    for b in runners:
        for passname, style in zip(PASSES, ("-o", "--s")):
            xy = [(p["value"], r["median_ms"]) for p in points if (r := _row(p, b, passname)) and r["error"] is None]
            if xy:
                ax_t.plot(*zip(*xy), style, color=colors[b], ms=4, label=f"{b} {passname}")
        passname = _memory_pass(points, b)
        mem = [(p["value"], *_memory_mb(r)) for p in points if (r := _row(p, b, passname)) and r["error"] is None]
        xy = [(x, mb) for x, mb, _ in mem if mb]  # log axis: zero-byte peaks are left out
        if xy:
            rss = " (RSS)" if any(by_rss for *_, by_rss in mem) else ""
            ax_m.plot(*zip(*xy), "-o" if passname == "fwd" else "--s", color=colors[b], ms=4,
                      label=f"{b} {passname}{rss}")  # fmt: skip
    values = [p["value"] for p in points]
    for ax, ylabel in ((ax_t, "median time (ms)"), (ax_m, "peak memory (MB)")):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        if sweep["loglog"]:
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(values, [str(v) for v in values])
        ax.set_xlabel(sweep["axis"])
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=6.5, loc="best")
    ax_t.set_title(f"{sweep['op']}: time", fontsize=10)
    ax_m.set_title(f"{sweep['op']}: peak memory", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["error"] is not None:
        return "failed"
    mb, by_rss = _memory_mb(r)
    return f"{r['median_ms']:.3g} ms / " + ("n/c" if mb is None else f"{mb:.3g} MB" + (" RSS" if by_rss else ""))


def _sweep_section(sweep: dict, png: str) -> list[str]:
    points = sweep["points"]
    runners = _runners(points)
    lines = [f"### {sweep['op']}: {sweep['axis']}", "", f"The case at the first point: `{points[0]['label']}`.", ""]
    lines += [f"![{sweep['key']}]({png})", ""]
    columns = [(b, p) for b in runners for p in PASSES if any(_row(pt, b, p) for pt in points)]
    lines.append(f"| {sweep['axis']} | " + " | ".join(f"{b} {p}: time / peak memory" for b, p in columns) + " |")
    lines.append("|---:|" + "---:|" * len(columns))
    for pt in points:
        setup = next((r for r in pt["results"] if r["backend"] == "setup"), None)
        if setup is not None:
            lines.append(f"| {pt['value']} | could not start: {setup['error']} |" + " |" * (len(columns) - 1))
            continue
        lines.append(f"| {pt['value']} | " + " | ".join(_cell(_row(pt, b, p)) for b, p in columns) + " |")
    lines.append("")
    for name, how in sweep["peer_calls"].items():
        lines.append(f"- peer `{name}`: {how}")
    for name, why in sweep["peers_unavailable"].items():
        lines.append(f"- peer `{name}`: not measured ({why})")
    rows = [r for pt in points for r in pt["results"] if r["error"] is not None]
    failed = {f"{r['backend']} {r['passname']}: {r['error']}" for r in rows}
    lines += [f"- failed: {f}" for f in sorted(failed)]
    return [*lines, ""]


def _models_section(models: list[dict]) -> list[str]:
    lines = [
        "## Models: throughput",
        "",
        "One call is a whole training step (forward, loss, backward, AdamW) or a whole inference batch; samples/s is "
        "the batch over the median call.",
        "",
        "| case | backend / peer | median ms | samples/s | peak MB | vs reference |",
        "|---|---|---:|---:|---:|---:|",
    ]
    notes = []
    for m in models:
        for r in m["results"]:
            if r["error"] is not None:
                lines.append(f"| {m['label']} | {r['backend']} | failed: {r['error'][:80]} | | | |")
                continue
            mb, by_rss = _memory_mb(r)
            speedup = r["speedup_vs_reference"]
            lines.append(
                f"| {m['label']} | {r['backend']} | {r['median_ms']:.1f} | {m['samples'] / r['median_ms'] * 1e3:.2f} "
                f"| {'n/c' if mb is None else f'{mb:.3g}' + (' RSS' if by_rss else '')} "
                f"| {'-' if speedup is None else f'{speedup:.2f}x'} |"
            )
        notes += [f"- {m['label']}: peer `{n}` not measured ({why})" for n, why in m["peers_unavailable"].items()]
    return [*lines, "", *notes, ""]


def write_report(data: dict, out_dir: Path, note: str = "") -> list[Path]:
    """Writes the plots, ``README.md`` and ``results.json`` of ``data`` (from :func:`run_report`) into ``out_dir``;
    returns the files written. ``note``: a paragraph printed under the title (e.g. how noisy the machine was)."""
    from .cli import write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    m, v = data["machine"], data["versions"]
    commit = f"`{m['commit'][:12]}`" + (" (with uncommitted changes)" if m.get("dirty") else "")
    lines = [
        f"# medkernels benchmark report: {m['device']}",
        "",
        f"`medkernels-bench --report` (profile {data['profile']}, {data['min_time']} s of timed calls per "
        f"measurement), {data['created']}, {data['seconds']:.0f} s. Each op's case (the same backends, reference and "
        "peers as `medkernels-bench`) rebuilt along one axis; the median of the timed calls, and the peak memory of "
        "one call (torch's allocator; for a numpy peer, whose buffers torch does not see, the process's resident-set "
        "rise, marked RSS). Cells: median time / peak memory.",
        "",
    ]
    if note:
        lines += [note, ""]
    lines += [
        "## Machine and versions",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {m['cpu']} |",
        f"| cores (os.cpu_count) / torch threads | {m['cpu_count']} / {m['torch_threads']} |",
        f"| kernels' ISA (`medkernels.ops.cpu_isa()`) | {m['cpu_isa']} |",
        *([f"| GPU | {m['gpu']} (CUDA {m['cuda']}) |"] if m.get("gpu") else []),
        f"| platform | {m['platform']} |",
        f"| commit | {commit} |",
        *(f"| {pkg} | {ver or 'not installed'} |" for pkg, ver in v.items()),
        "",
    ]
    if data["sweeps"]:
        lines += ["## Scaling", ""]
        lines += [f"- [{s['op']}: {s['axis']}](#{_anchor(s)})" for s in data["sweeps"]]
        lines.append("")
    for sweep in data["sweeps"]:
        png = f"{sweep['key']}.png"
        plot_sweep(sweep, out_dir / png)
        written.append(out_dir / png)
        lines += _sweep_section(sweep, png)
    if data["models"]:
        lines += _models_section(data["models"])
    (out_dir / "README.md").write_text("\n".join(lines))
    write_json(out_dir / "results.json", data)
    return [*written, out_dir / "README.md", out_dir / "results.json"]


def _anchor(sweep: dict) -> str:
    """GitHub's anchor of the sweep's heading."""
    title = f"{sweep['op']}: {sweep['axis']}".lower()
    return re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-")


def main_report(args, device: torch.device, profile: str) -> int:
    """``medkernels-bench --report DIR``: plan, measure, write; 2 with a message when the arguments select nothing
    or DIR cannot be written."""
    out_dir = Path(args.report)
    only_ops = {o for o in args.ops.split(",") if o} or None
    only_backends = {b for b in args.backends.split(",") if b} or None
    try:
        sweeps, models = plan_report(profile, only_ops, args.match, out_dir)
    except ReportError as exc:
        print(f"medkernels-bench: error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for s in sweeps:
            print(f"{s.key}: {s.axis} in {', '.join(map(str, s.points(profile)))}")
        for c in models:
            print(f"models: {c.label}")
        return 0
    min_time = args.min_time if args.min_time is not None else (0.02 if profile == "quick" else 0.25)
    from .cli import write_json

    def save(data: dict) -> None:  # what is measured so far (an interrupted report keeps it)
        write_json(out_dir / "results.json", {**data, "status": "running"})

    data = run_report(
        sweeps, models, profile, device, min_time, only_backends, progress=not args.no_progress, on_point=save
    )
    data["status"] = "complete"
    files = write_report(data, out_dir, note=args.report_note)
    print(f"report: {out_dir / 'README.md'} ({len(files) - 2} plots, {data['seconds']:.0f} s)")
    return 0
