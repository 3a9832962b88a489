"""``medkernels-bench --report``: the quick sweep writes a plot per sweep, a README that embeds them with the
machine, versions and commit, a time and a peak memory for every backend at every point, and the models'
throughput table; bad arguments stop before anything is measured, with a message saying why."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from medkernels import ops
from medkernels.bench import cli, report
from medkernels.bench.cases import REPORT_MODELS, SWEEPS, Case

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    threads = torch.get_num_threads()
    try:
        argv = ["--report", str(out), "--profile", "quick", "--device", "cpu", "--threads", "1", "--no-progress"]
        rc = cli.main(argv)
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return out, json.loads((out / "results.json").read_text())


def test_every_sweep_has_a_valid_png_embedded_in_the_readme(quick):
    import matplotlib.image

    out, data = quick
    text = (out / "README.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(f"{s.key}.png" for s in SWEEPS)
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(embedded) == pngs
    for name in pngs:
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 600, (name, image.shape)
        assert image.std() > 0, f"{name} is blank"
        assert (out / name).stat().st_size < 100_000, name


def test_readme_records_the_machine_versions_and_commit(quick):
    out, data = quick
    text = (out / "README.md").read_text()
    machine = data["machine"]
    assert f"| kernels' ISA (`medkernels.ops.cpu_isa()`) | {ops.cpu_isa()} |" in text
    assert f"| CPU | {machine['cpu']} |" in text and f"| torch | {torch.__version__} |" in text
    assert "| medkernels |" in text and "| python |" in text and "| commit |" in text
    assert machine["commit"] and "cpu_count" in machine
    # every peer package measured in a sweep has its version (or 'not installed') in the table
    for package in ("scipy", "fpsample", "natten"):
        assert f"| {package} |" in text


def test_every_point_has_a_time_and_memory_for_each_backend(quick):
    out, data = quick
    assert [s["key"] for s in data["sweeps"]] == [s.key for s in SWEEPS]
    for sweep, spec in zip(data["sweeps"], SWEEPS):
        assert [p["value"] for p in sweep["points"]] == list(spec.points("quick"))
        pairs = {(r["backend"], r["passname"]) for p in sweep["points"] for r in p["results"]}
        assert {("reference", "fwd"), ("cpu", "fwd")} <= pairs, sweep["key"]
        case = spec.build(spec.points("quick")[0], True)
        available = {f"peer:{n}" for n, peer in case.peers.items() if peer.unavailable(torch.device("cpu")) is None}
        assert {b for b, _ in pairs if b.startswith("peer:")} == available, sweep["key"]  # every peer that runs here
        for point in sweep["points"]:
            rows = {(r["backend"], r["passname"]): r for r in point["results"]}
            assert set(rows) == pairs, (sweep["key"], point["value"])  # the same backends and passes at each point
            for key, r in rows.items():
                assert r["error"] is None, (sweep["key"], point["value"], key, r["error"])
                assert r["median_ms"] > 0 and len(r["times_ms"]) >= 1
                assert r["peak_bytes"] >= 0 and (r["torch_memory"] or r["peak_rss_bytes"] is not None)
    text = (out / "README.md").read_text()
    for sweep in data["sweeps"]:
        section = text.split(f"### {sweep['op']}: {sweep['axis']}", 1)[1].split("###", 1)[0]
        header = next(line for line in section.splitlines() if line.startswith(f"| {sweep['axis']} |"))
        assert "time / peak memory" in header
        body = [line for line in section.splitlines() if re.match(r"\| [0-9]", line)]
        assert len(body) == len(sweep["points"])
        assert all(" ms / " in line and " MB" in line and "failed" not in line for line in body), sweep["key"]


def test_models_throughput_table(quick):
    out, data = quick
    assert [m["label"] for m in data["models"]] == [c.label for c in REPORT_MODELS["quick"]]
    text = (out / "README.md").read_text()
    assert "## Models: throughput" in text and "samples/s" in text
    for m in data["models"]:
        ours = {r["backend"]: r for r in m["results"]}
        assert ours["cpu"]["error"] is None and ours["reference"]["error"] is None
        assert f"| {m['label']} | cpu |" in text


def test_sweeps_are_declared_with_their_ops_over_the_issue_axes():
    """Each sweep rebuilds its op's existing case (no new timing code): the built case is a plain Case of that op,
    at every point of both profiles, and together the sweeps cover the issue's axes."""
    assert {s.name for s in SWEEPS} >= {"seqlen", "resolution", "kernel", "points", "batch"}
    assert len({s.key for s in SWEEPS}) == len(SWEEPS)
    for sweep in SWEEPS:
        assert sweep.build.__module__.startswith("medkernels.bench.cases."), sweep.key
        for profile in ("quick", "default"):
            labels = set()
            for value in sweep.points(profile):
                case = sweep.build(value, profile == "quick")
                assert isinstance(case, Case) and case.op == sweep.op, sweep.key
                labels.add(case.label)
            assert len(labels) == len(sweep.points(profile)), f"{sweep.key}: the axis does not change the case"


def test_list_shows_the_sweeps(tmp_path, capsys):
    assert cli.main(["--report", str(tmp_path), "--list", "--match", "na2d"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed == [
        f"{s.key}: {s.axis} in {', '.join(map(str, s.points('default')))}" for s in SWEEPS if "na2d" in s.key
    ]


def test_unknown_op_or_match_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["--report", str(tmp_path / "a"), "--match", "no_such_op", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--match 'no_such_op' selects nothing to report" in err and "selective_scan-seqlen" in err
    assert cli.main(["--report", str(tmp_path / "b"), "--ops", "selective_scan,nope", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--ops: no sweep for nope" in err and "models" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_unwritable_directory_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert cli.main(["--report", str(blocker / "report"), "--profile", "quick", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write the report into {blocker / 'report'}" in err


def test_failed_rows_are_reported_not_plotted(quick, tmp_path):
    _, data = quick
    data = copy.deepcopy(data)
    sweep = data["sweeps"][0]
    broken = next(r for r in sweep["points"][-1]["results"] if r["backend"] == "cpu" and r["passname"] == "fwd")
    broken.update(error="RuntimeError: planted", median_ms=float("nan"))
    data["sweeps"], data["models"] = [sweep], []
    report.write_report(data, tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "| failed |" in text and "- failed: cpu fwd: RuntimeError: planted" in text
    assert (tmp_path / f"{sweep['key']}.png").exists() and "## Models" not in text
