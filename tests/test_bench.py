"""The benchmark CLI: it runs, prints the table, checks targets and records the machine in JSON."""

import json

import torch

from medkernels.bench import cli
from medkernels.bench.cases import Target, cases_for
from medkernels.bench.memory import peak_allocated_bytes
from medkernels.bench.runner import Result, time_call


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
    rows = {(r["backend"], r["passname"]): r for r in data["results"]}
    assert set(rows) == {("reference", "fwd"), ("reference", "fwd+bwd"), ("cpu", "fwd"), ("cpu", "fwd+bwd")}
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
    case = next(c for c in cases_for("default") if c.targets)
    rows = [Result("selective_scan", case.label, "float32", "cpu", "fwd", 1.0, [1.0], 1, 1.0, 10,
                   speedup_vs_reference=25.0, memory_vs_reference=0.5),
            Result("selective_scan", case.label, "float32", "cpu", "fwd+bwd", 1.0, [1.0], 1, 1.0, 10,
                   speedup_vs_reference=50.0, memory_vs_reference=0.05)]
    checked = {c["target"]: c["met"] for c in cli.check_targets(case, rows)}
    assert list(checked.values()) == [True, False, True]
    assert Target("x", "cpu", "fwd", "memory", 0.1).met(0.1) and not Target("x", "cpu", "fwd", "memory", 0.1).met(0.2)


def test_time_call_repeats_and_peak_memory_counts_allocations():
    calls = []
    times = time_call(lambda: calls.append(1), torch.device("cpu"), min_time=0.0, min_reps=4)
    assert len(times) == 4 and len(calls) == 5  # one warm-up
    peak = peak_allocated_bytes(lambda: torch.empty(1 << 20).fill_(1.0))
    assert 4 * 2**20 <= peak < 5 * 2**20
    assert peak_allocated_bytes(lambda: None) == 0
