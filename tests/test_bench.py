"""The benchmark CLI: it runs, prints the table, checks targets and records the machine in JSON."""

import dataclasses
import json

import torch

from medkernels import ops
from medkernels.bench import cli
from medkernels.bench.cases import Case, Target, cases_for
from medkernels.bench.memory import peak_allocated_bytes
from medkernels.bench.runner import Result, backends_for, time_call


def test_quick_profile_end_to_end(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli.main(["--profile", "quick", "--json", str(out), "--no-progress", "--min-time", "0.02"]) == 0
    text = capsys.readouterr().out
    assert "selective_scan" in text and "median ms" in text and "vs ref" in text
    data = json.loads(out.read_text())
    assert data["profile"] == "quick"
    assert data["machine"]["torch"] == torch.__version__
    assert data["machine"]["cpu_isa"] in ("avx512bf16", "avx512", "avx2", "base")
    assert "commit" in data["machine"]
    rows = {(r["backend"], r["passname"]): r for r in data["results"] if r["op"] == "selective_scan"}
    assert set(rows) == {("reference", "fwd"), ("reference", "fwd+bwd"), ("cpu", "fwd"), ("cpu", "fwd+bwd")}
    na_rows = {(r["backend"], r["passname"]) for r in data["results"] if r["op"] == "na2d"}
    assert ("peer:sdpa", "fwd") in na_rows and ("cpu", "fwd+bwd") in na_rows
    assert not any(b == "triton" for b, _ in na_rows), "interpreter timings are not benchmarks"
    for r in rows.values():
        assert r["error"] is None and r["median_ms"] > 0 and r["bytes_moved"] > 0 and r["peak_bytes"] > 0
        assert len(r["times_ms"]) >= 3
    assert rows[("reference", "fwd")]["speedup_vs_reference"] == 1.0
    assert rows[("cpu", "fwd+bwd")]["speedup_vs_reference"] > 0


def test_list_and_backend_filter(capsys):
    assert cli.main(["--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == sum(len(c.dtypes) for c in cases_for("default"))
    assert cli.main(["--list", "--profile", "full", "--match", "POINTMAMBA2"]) == 0
    matched = capsys.readouterr().out.splitlines()
    assert matched and all("pointmamba2" in line for line in matched)
    assert len(matched) < sum(len(c.dtypes) for c in cases_for("full"))


def test_targets_are_checked_against_the_right_row():
    case = next(c for c in cases_for("default") if c.op == "selective_scan" and c.targets)

    def row(backend, passname, ms, peak):
        return Result("selective_scan", case.label, "float32", backend, passname, ms, [ms], 1, 1.0, peak)

    rows = [
        row("reference", "fwd", 250.0, 100),
        row("cpu", "fwd", 10.0, 50),
        row("reference", "fwd+bwd", 500.0, 1000),
        row("cpu", "fwd+bwd", 20.0, 50),
    ]
    checked = cli.check_targets(case, rows)
    assert [c["met"] for c in checked] == [True, False, True]  # 25x < the 40x fwd+bwd bound
    assert [c["value"] for c in checked] == [25.0, 25.0, 0.05]
    na_case = next(c for c in cases_for("default") if c.op == "na2d")
    na_rows = [
        Result("na2d", na_case.label, "float32", b, "fwd", ms, [ms], 1, 1.0, 1)
        for b, ms in (("reference", 100.0), ("cpu", 5.0), ("peer:sdpa", 20.0))
    ]
    vs_sdpa = next(c for c in cli.check_targets(na_case, na_rows) if c["against"] == "peer:sdpa")
    assert vs_sdpa["value"] == 4.0 and not vs_sdpa["met"]
    assert Target("x", "cpu", "fwd", "memory", 0.1).met(0.1) and not Target("x", "cpu", "fwd", "memory", 0.1).met(0.2)


def test_time_call_repeats_and_peak_memory_counts_allocations():
    calls = []
    times = time_call(lambda: calls.append(1), torch.device("cpu"), min_time=0.0, min_reps=4)
    assert len(times) == 4 and len(calls) == 5  # one warm-up
    peak = peak_allocated_bytes(lambda: torch.empty(1 << 20).fill_(1.0))
    assert 4 * 2**20 <= peak < 5 * 2**20
    assert peak_allocated_bytes(lambda: None) == 0


def test_reference_runs_only_where_the_case_lists_it():
    # kNN's default case leaves its reference out (a full sort per query row takes seconds per call there)
    knn = next(c for c in cases_for("quick") if c.op == "knn")
    assert "reference" in backends_for(knn, torch.device("cpu"), torch.float32, None)
    no_ref = dataclasses.replace(knn, reference_backends=())
    names = backends_for(no_ref, torch.device("cpu"), torch.float32, None)
    assert "reference" not in names and "cpu" in names


# --- --check, and the JSON written case by case -----------------------------------------------------


def _tiny_case(label="n=64", targets=(), cpu_raises=None, interrupt=False) -> Case:
    """A case doubling 64 numbers on the reference and the CPU "backend" (no real kernel involved)."""

    def call(backend, x):
        if backend not in ("reference", "cpu"):
            raise ops.BackendUnavailableError(f"{backend}: not in this test")
        if interrupt:
            raise KeyboardInterrupt
        if backend == "cpu" and cpu_raises is not None:
            raise cpu_raises
        return x["x"] * 2

    return Case(
        op="tiny",
        label=label,
        params={},
        profiles=("quick",),
        make_inputs=lambda device, dtype: {"x": torch.ones(64, device=device, dtype=dtype)},
        call=call,
        differentiable=(),
        targets=targets,
    )


ALWAYS = Target("cpu at any speed", "cpu", "fwd", "speedup", 0.0)  # time ratios are >= 0: met whatever the timing
NEVER = Target("cpu peak memory below zero", "cpu", "fwd", "memory", -1.0)  # ratios of bytes are >= 0: never met


def _run(monkeypatch, tmp_path, cases, *extra):
    monkeypatch.setattr(cli, "cases_for", lambda profile, only=None: cases)
    out = tmp_path / "r.json"
    rc = cli.main(
        ["--profile", "quick", "--device", "cpu", "--min-time", "0", "--no-progress", "--json", str(out), *extra]
    )
    return rc, json.loads(out.read_text())


def test_check_passes_when_every_target_is_met(monkeypatch, tmp_path, capsys):
    rc, data = _run(monkeypatch, tmp_path, [_tiny_case(targets=(ALWAYS,))], "--check")
    assert rc == 0
    assert data["status"] == "complete" and data["cases_done"] == data["cases_planned"] == 1
    assert [t["met"] for t in data["targets"]] == [True] and data["targets"][0]["op"] == "tiny"
    assert "check passed" in capsys.readouterr().err


def test_check_fails_on_an_unmet_target_and_says_which(monkeypatch, tmp_path, capsys):
    rc, data = _run(monkeypatch, tmp_path, [_tiny_case(targets=(ALWAYS, NEVER))], "--check")
    assert rc == 1
    assert [t["met"] for t in data["targets"]] == [True, False]
    err = capsys.readouterr().err
    assert "check failed: 1 problem(s)" in err and "target not met: cpu peak memory below zero (n=64 float32)" in err
    # without --check the run still exits 0 (the documented default), saying how many targets were missed
    rc, _ = _run(monkeypatch, tmp_path, [_tiny_case(targets=(ALWAYS, NEVER))])
    assert rc == 0 and "1 target(s) not met" in capsys.readouterr().err


def test_check_fails_when_a_backend_raises_and_the_run_goes_on(monkeypatch, tmp_path, capsys):
    broken = _tiny_case("broken", targets=(ALWAYS,), cpu_raises=RuntimeError("planted kernel failure"))
    rc, data = _run(monkeypatch, tmp_path, [broken, _tiny_case("after")], "--check")
    assert rc == 1
    assert data["cases_done"] == 2, "the cases after the failure still run"
    rows = {(r["case"], r["backend"]): r for r in data["results"]}
    assert rows[("broken", "cpu")]["error"] == "RuntimeError: planted kernel failure"
    assert rows[("after", "cpu")]["error"] is None
    err = capsys.readouterr().err
    assert "check failed: 2 problem(s)" in err
    assert "failed: tiny [broken] float32 cpu fwd: RuntimeError: planted kernel failure" in err
    assert "target not measured: cpu at any speed" in err  # its row is missing, so it cannot count as met


def test_check_fails_when_a_case_cannot_start(monkeypatch, tmp_path, capsys):
    def no_inputs(device, dtype):
        raise RuntimeError("planted: out of memory")

    case = dataclasses.replace(_tiny_case("no inputs"), make_inputs=no_inputs)
    rc, data = _run(monkeypatch, tmp_path, [case, _tiny_case("after")], "--check")
    assert rc == 1 and data["cases_done"] == 2
    assert data["results"][0]["backend"] == "setup" and "planted: out of memory" in data["results"][0]["error"]


def test_interrupted_run_keeps_the_finished_cases(monkeypatch, tmp_path, capsys):
    rc, data = _run(monkeypatch, tmp_path, [_tiny_case("first"), _tiny_case("second", interrupt=True)], "--check")
    assert rc == 130
    assert data["status"] == "interrupted" and data["cases_done"] == 1 and data["cases_planned"] == 2
    assert {r["case"] for r in data["results"]} == {"first"}
    assert "interrupted after 1 of 2 cases" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.tmp")), "the JSON is replaced atomically"


def test_gpu_profile_times_references_only_at_small_shapes():
    """The GPU check's time budget: the references that loop over the sequence (selective scan, the
    Mamba block) run only where L <= 1024; the large scan is timed against CUDA and the copy bandwidth."""
    for case in cases_for("gpu"):
        if case.op in ("selective_scan", "mamba_block") and "reference" in case.reference_backends:
            assert case.params["seqlen"] <= 1024, case.label
    scan = [c for c in cases_for("gpu") if c.op == "selective_scan"]
    assert any(not c.reference_backends for c in scan) and any(c.reference_backends for c in scan)
