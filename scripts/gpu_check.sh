#!/usr/bin/env bash
# The one prepared check for a lent GPU (H100/H200: torch 2.11+cu130, triton 3.6, nvcc 13.0, 16 cores, no network).
#
#   scripts/gpu_check.sh [OUTDIR]      (default: $OUT, else gpu-results/)
#
# Stages, each under its own time limit (seconds; GPU_CHECK_<STAGE>_S overrides one), all within 360 s:
#   env    20  nvidia-smi, nvcc, torch/triton versions, the GPU and its compute capability (no GPU: exit 2)
#   build 120  CMake configure + ninja -j$(nproc), MEDKERNELS_CUDA=ON for this GPU's architecture only, in place
#   load   15  the built extension imports and has its CUDA kernels
#   tests 105  `pytest -m gpu tests`: the tests marked gpu (tests/kit.py: gpu_test, backends(device="cuda")),
#              beside the CPU tests in each op's file (CUDA and Triton against the references and the CPU
#              kernels); across GPU_CHECK_TEST_WORKERS pytest-xdist workers (default 8) when pytest-xdist is
#              installed
#   bench  95  medkernels-bench --profile gpu --check (its JSON is rewritten after every case)
# A failed or timed-out env, build or load stage stops the check with the log's tail; the tests and the
# benchmark each run to the end of their limit and report whatever they finished. A timed-out tests or bench
# stage is interrupted (SIGINT: pytest still writes its report, the bench keeps the cases it finished), and
# killed 5-10 s later if it has not stopped. Writes env.txt, build.txt, tests.txt, tests.xml, bench.txt,
# bench.json and log.txt (the stage log and the summary) to OUTDIR and prints a one-screen summary last.
# Exit status: 0 when every stage passed (every test, every benchmark target met, no backend failed),
# 2 when no GPU is visible, 1 otherwise.
set -uo pipefail   # no -e: every exit status is read and reported below; no pipeline hides one
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-gpu-results}}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-python3}"
NPROC=$(nproc)
TOTAL_S=${GPU_CHECK_TOTAL_S:-360}
ENV_S=${GPU_CHECK_ENV_S:-20}
BUILD_S=${GPU_CHECK_BUILD_S:-120}
LOAD_S=${GPU_CHECK_LOAD_S:-15}
TESTS_S=${GPU_CHECK_TESTS_S:-105}
BENCH_S=${GPU_CHECK_BENCH_S:-95}
WORKERS=${GPU_CHECK_TEST_WORKERS:-8}
MIN_TIME=${GPU_CHECK_MIN_TIME:-0.2}   # seconds of timed calls per benchmark measurement
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
rm -f "$OUTDIR"/{env,build,tests,bench,log}.txt "$OUTDIR"/tests.xml "$OUTDIR"/bench.json

T0=$(date +%s)
DEADLINE=$((T0 + TOTAL_S - 3))   # 3 s kept for the summary
STAGES=()                        # name:status:seconds:limit, for the summary
log() { echo "[$(( $(date +%s) - T0 ))s] $*" >> "$OUTDIR/log.txt"; echo "[$(( $(date +%s) - T0 ))s] $*"; }

# stage NAME LIMIT SIGNAL GRACE LOGFILE COMMAND...: runs COMMAND under `timeout`, output appended to LOGFILE;
# SIGNAL at LIMIT - GRACE seconds, SIGKILL at LIMIT. Sets RC (124/137: timed out) and records the stage.
stage() {
  local name=$1 limit=$2 sig=$3 grace=$4 out=$5 start status secs
  shift 5
  start=$(date +%s)
  (( limit > DEADLINE - start )) && limit=$((DEADLINE - start))
  if (( limit < grace + 5 )); then
    RC=124; STATUS="skipped (no time left)"; STAGES+=("$name:$STATUS:0:$limit"); log "$name: $STATUS"; return
  fi
  log "$name: limit ${limit}s"
  # (in a subshell: when timeout has to SIGKILL, bash's "Killed" notice goes to /dev/null, the 137 still here)
  ( timeout -s "$sig" -k "$grace" "$((limit - grace))" "$@" >> "$out" 2>&1 ) 2>/dev/null
  RC=$?
  secs=$(( $(date +%s) - start ))
  case $RC in
    0) status=ok ;;
    124) status=timeout ;;
    137) if (( secs >= limit - grace )); then status="timeout (killed)"; else status="killed (exit 137)"; fi ;;
    *) status="failed (exit $RC)" ;;
  esac
  STAGES+=("$name:$status:$secs:$limit")
  STATUS=$status
  log "$name: $status after ${secs}s"
}

summary() {  # summary EXIT_CODE: the one-screen summary (stdout and log.txt), then exit
  "$PY" -I - "$OUTDIR" "$(( $(date +%s) - T0 ))" "$TOTAL_S" "$1" "${STAGES[@]}" <<'EOF' 2>&1 | tee -a "$OUTDIR/log.txt"
import json, os, re, sys, xml.etree.ElementTree as ET

outdir, elapsed, total, code, stages = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]


def read(name):
    try:
        with open(os.path.join(outdir, name), errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def speedup(v):
    return f"{v:.0f}x" if v >= 10 else f"{v:.2g}x"


def short_dtype(d):
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}.get(d, d)


env = read("env.txt")
gpu = re.search(r"^gpu: (.*)$", env, re.M)
commit = re.search(r"^commit: (\S+)", env, re.M)
print(f"==== gpu_check summary: {gpu.group(1) if gpu else 'no GPU'} | commit "
      f"{commit.group(1)[:12] if commit else 'unknown'} | {elapsed} s of {total} s ====")
print(f"{'stage':<7} {'status':<24} {'seconds':>7} {'limit':>6}")
for s in stages:
    name, status, secs, limit = s.split(":")
    print(f"{name:<7} {status:<24} {secs:>7} {limit:>6}")

# tests: from the JUnit report, else (pytest killed before writing it) from the verbose log
def tests_summary():
    counts, failed = None, []
    try:
        root = ET.parse(os.path.join(outdir, "tests.xml")).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        total_n, fails, errs, skips = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        counts = (total_n - fails - errs - skips, fails, skips, errs)
        for tc in suite.iter("testcase"):
            if tc.find("failure") is not None or tc.find("error") is not None:
                failed.append(tc.get("name"))
        source = "tests.xml"
    except (OSError, ET.ParseError, AttributeError):
        text = read("tests.txt")
        # "[gw0] [ 5%] PASSED tests/x.py::t" (pytest-xdist) or "tests/x.py::t PASSED [ 5%]"
        got = re.findall(r"^(?:\[gw\d+\]\s*(?:\[\s*\d+%\]\s*)?(PASSED|FAILED|SKIPPED|ERROR) \S+::"
                         r"|\S+::\S+ (PASSED|FAILED|SKIPPED|ERROR)\b)", text, re.M)
        res = [a or b for a, b in got]
        counts = tuple(res.count(k) for k in ("PASSED", "FAILED", "SKIPPED", "ERROR"))
        failed = re.findall(r"^\S+::(\S+) (?:FAILED|ERROR)\b|^\[gw\d+\].*?(?:FAILED|ERROR) \S+::(\S+)", text, re.M)
        failed = [a or b for a, b in failed]
        source = "tests.txt (no tests.xml)"
    print(f"tests: {counts[0]} passed, {counts[1]} failed, {counts[2]} skipped, {counts[3]} errors  [{source}]")
    if not any(counts):  # pytest itself failed: say how
        for line in read("tests.txt").strip().splitlines()[-4:]:
            print(f"  | {line[:150]}")
    for name in failed[:8]:
        print(f"  FAILED {name}")
    if len(failed) > 8:
        print(f"  ... {len(failed) - 8} more in tests.txt")

def bench_summary():
    try:
        data = json.loads(read("bench.json"))
    except ValueError:
        data = None
    if data is None:
        print("bench: no bench.json")
    else:
        results, targets = data["results"], data["targets"]
        errors = [r for r in results if r["error"]]
        met = sum(t["met"] for t in targets)
        print(f"bench: {data.get('cases_done', '?')} of {data.get('cases_planned', '?')} cases ({data.get('status')}), "
              f"{len(errors)} measurement(s) failed, {met} of {len(targets)} targets met"
              + (f", copy {data['machine']['copy_gbps']:.0f} GB/s" if data["machine"].get("copy_gbps") else ""))
        print("  ms fwd/fwd+bwd per backend, (speed-up over the reference, fwd/fwd+bwd); best peer last")
        cases = {}
        for r in results:
            cases.setdefault((r["op"], r["case"], r["dtype"]), []).append(r)

        def fmt(rows, key):
            vals = []
            for p in ("fwd", "fwd+bwd"):
                r = next((r for r in rows if r["passname"] == p), None)
                if r is not None:
                    vals.append("ERR" if r["error"] else
                                "-" if key == "ref" and r["speedup_vs_reference"] is None else
                                speedup(r["speedup_vs_reference"]) if key == "ref" else f"{r['median_ms']:.3g}")
            return "/".join(vals)

        for i, ((op, label, dtype), rows) in enumerate(cases.items()):
            parts = []
            by_backend = {}
            for r in rows:
                by_backend.setdefault(r["backend"], []).append(r)
            peers = {b: rs for b, rs in by_backend.items() if b.startswith("peer:")}
            for b, rs in by_backend.items():
                if b.startswith("peer:") or b == "reference":
                    continue
                ref = fmt(rs, "ref")
                parts.append(f"{b} {fmt(rs, 'ms')}" + (f" ({ref})" if "x" in ref else ""))
            if "reference" in by_backend:
                parts.append(f"ref {fmt(by_backend['reference'], 'ms')}")
            ok_peers = {b: rs for b, rs in peers.items() if not any(r["error"] for r in rs)}
            if ok_peers:
                b = min(ok_peers, key=lambda b: ok_peers[b][0]["median_ms"])
                parts.append(f"{b[5:]} {fmt(ok_peers[b], 'ms')}")
            parts += [f"{b[5:]} ERR" for b, rs in peers.items() if b not in ok_peers]
            short = " ".join(label.split()[:5])
            if i >= data.get("cases_done", len(cases)):
                parts.append("[unfinished]")
            print(f"  {op[:20]:<20} {short_dtype(dtype):<4} {short[:30]:<30} " + "  ".join(parts))
        for t in targets:
            shown = "not measured" if t["value"] is None else f"{t['value']:.3g} (bound {t['bound']:.3g})"
            print(f"  {'met    ' if t['met'] else 'NOT MET'} {t.get('op', '')} {short_dtype(t['dtype'])}: "
                  f"{t['target']}: {shown}")
        for r in errors[:5]:
            print(f"  failed: {r['op']} {short_dtype(r['dtype'])} {r['backend']} {r['passname']}: {r['error'][:90]}")
        if len(errors) > 5:
            print(f"  ... {len(errors) - 5} more failures in bench.txt")

names = [s.split(":")[0] for s in stages]
for section, show in (("tests", tests_summary), ("bench", bench_summary)):
    if section in names:
        try:
            show()
        except Exception as e:  # a summary that breaks must not hide the rest: the files have it all
            print(f"{section}: could not summarise ({type(e).__name__}: {e}); see {section}.txt")

print(f"files in {outdir}: " + " ".join(sorted(f for f in os.listdir(outdir) if not f.endswith('.tmp'))))
print(f"exit {code}")
EOF
  exit "$1"
}

fail_with_tail() {  # fail_with_tail FILE LINES MESSAGE: stop at a failed prerequisite stage
  log "$3; last $2 lines of $1:"
  tail -n "$2" "$1" | tee -a "$OUTDIR/log.txt"
  summary "${4:-1}"
}

# --- env: what the machine has, and the GPU's architecture -----------------------------------------
stage env "$ENV_S" TERM 3 "$OUTDIR/env.txt" bash -c '
  nvidia-smi || echo "nvidia-smi failed (exit $?)"
  nvcc --version || echo "nvcc not found"
  cmake --version | head -1; ninja --version
  echo "cores: $(nproc)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo "${MEDKERNELS_COMMIT:-unknown}")"
  "$0" -c "
import importlib.util, sys, torch
print(sys.version)
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda)
print(\"triton\", importlib.util.find_spec(\"triton\") and __import__(\"triton\").__version__)
print(\"pytest-xdist:\", \"yes\" if importlib.util.find_spec(\"xdist\") else \"no\")
name, cc = torch.cuda.get_device_name(), torch.cuda.get_device_capability()
print(\"gpu: %s (compute capability %d.%d)\" % (name, *cc))
print(\"arch: %d.%d\" % cc)
"' "$PY"
ENV_RC=$RC
ARCH=$(sed -n 's/^arch: //p' "$OUTDIR/env.txt")
if (( ENV_RC != 0 )) || [[ -z "$ARCH" ]]; then
  fail_with_tail "$OUTDIR/env.txt" 15 "no GPU visible (or torch failed): $STATUS" 2
fi
log "$(grep '^gpu: ' "$OUTDIR/env.txt")"

# --- build: for this GPU's architecture only, configure included in the limit ------------------------
log "build: MEDKERNELS_CUDA=ON MEDKERNELS_CUDA_ARCH_LIST=$ARCH, ninja -j$NPROC"
stage build "$BUILD_S" TERM 5 "$OUTDIR/build.txt" bash -c '
  cmake -S . -B build/gpu -G Ninja -DMEDKERNELS_CUDA=ON -DMEDKERNELS_CUDA_ARCH_LIST="$1" \
    -DPython_EXECUTABLE="$(command -v "$2")" -DCMAKE_BUILD_TYPE=Release &&
  cmake --build build/gpu -j "$3" &&
  cp build/gpu/_C*.so medkernels/' _ "$ARCH" "$PY" "$NPROC"
(( RC == 0 )) || fail_with_tail "$OUTDIR/build.txt" 40 "BUILD FAILED: $STATUS"
log "built ($(grep -c 'Building' "$OUTDIR/build.txt") steps)"

# --- load: the CUDA kernels are there --------------------------------------------------------------
stage load "$LOAD_S" TERM 3 "$OUTDIR/build.txt" "$PY" -c "
import medkernels.ops._library as L
assert L.WITH_CUDA and L.has_kernel('selective_scan_fwd', 'CUDA'), 'CUDA kernels missing'
print('CUDA kernels loaded')"
(( RC == 0 )) || fail_with_tail "$OUTDIR/build.txt" 20 "CUDA kernels did not load: $STATUS"

# --- tests ----------------------------------------------------------------------------------------
# Most of the tests' time is Triton compiling kernels and Python-bound reference loops, one core each:
# pytest-xdist workers (when installed) run them side by side, with the CPU threads shared out among them.
XDIST=()
THREADS=()
if grep -q '^pytest-xdist: yes' "$OUTDIR/env.txt" && (( WORKERS > 1 )); then
  XDIST=(-n "$WORKERS")
  THREADS=(OMP_NUM_THREADS=$(( NPROC / WORKERS > 0 ? NPROC / WORKERS : 1 )))
fi
TESTS_START=$(date +%s)
stage tests "$TESTS_S" INT 10 "$OUTDIR/tests.txt" env "${THREADS[@]}" \
  "$PY" -m pytest -v -rfE -p no:cacheprovider "${XDIST[@]}" -m gpu tests --junitxml="$OUTDIR/tests.xml"
if (( ${#XDIST[@]} && (RC == 3 || RC == 4) )); then   # pytest-xdist broke before any test: once more without it
  log "tests: pytest-xdist did not start (exit $RC); again in one process"
  stage tests "$(( TESTS_S - ($(date +%s) - TESTS_START) ))" INT 10 "$OUTDIR/tests.txt" \
    "$PY" -m pytest -v -rfE -p no:cacheprovider -m gpu tests --junitxml="$OUTDIR/tests.xml"
fi
TESTS_RC=$RC

# --- benchmark: every case runs and is reported; --check makes unmet targets and failures the exit status --
stage bench "$BENCH_S" INT 5 "$OUTDIR/bench.txt" "$PY" -m medkernels.bench --profile gpu --device cuda \
  --min-time "$MIN_TIME" --json "$OUTDIR/bench.json" --no-progress --check
BENCH_RC=$RC

summary $(( TESTS_RC != 0 || BENCH_RC != 0 ))
