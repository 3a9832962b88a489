"""The benchmark CLI: it runs, prints the table, checks targets and records the machine in JSON."""

import dataclasses
import json

import torch

from medkernels.bench import cli
from medkernels.bench.cases import Target, cases_for
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
    assert data["machine"]["cpu_isa"] in ("avx2", "base")
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


def test_targets_are_checked_against_the_right_row():
    case = next(c for c in cases_for("default") if c.op == "selective_scan" and c.targets)

    def row(backend, passname, ms, peak):
        return Result("selective_scan", case.label, "float32", backend, passname, ms, [ms], 1, 1.0, peak)

    rows = [row("reference", "fwd", 250.0, 100), row("cpu", "fwd", 10.0, 50),
            row("reference", "fwd+bwd", 500.0, 1000), row("cpu", "fwd+bwd", 10.0, 50)]
    checked = cli.check_targets(case, rows)
    assert [c["met"] for c in checked] == [True, False, True]
    assert [c["value"] for c in checked] == [25.0, 50.0, 0.05]
    na_case = next(c for c in cases_for("default") if c.op == "na2d")
    na_rows = [Result("na2d", na_case.label, "float32", b, "fwd", ms, [ms], 1, 1.0, 1)
               for b, ms in (("reference", 100.0), ("cpu", 5.0), ("peer:sdpa", 20.0))]
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
