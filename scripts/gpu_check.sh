#!/usr/bin/env bash
# The one prepared check for a lent GPU (H100/H200: torch 2.11+cu130, triton 3.6, nvcc 13.0, no network).
#
#   scripts/gpu_check.sh [OUTDIR]      (default: $OUT, else gpu-results/)
#
# 1. builds the extension with MEDKERNELS_CUDA=ON for this GPU's architecture (CMake + ninja, in place);
# 2. runs the GPU tests (tests/test_gpu.py: CUDA and Triton backends against the references and the CPU
#    kernels, fp32/bf16/fp16, sequences up to 16K, determinism, Mamba decoding; the Triton dilated attention,
#    DCT, FPS, kNN, rswaf_kan and multi-order scan kernels);
# 3. runs the GPU benchmark profile (medkernels-bench --profile gpu) with its targets;
# and writes env.txt, build.txt, tests.txt, tests.xml, bench.txt, bench.json and log.txt to OUTDIR.
# Each step has its own time limit (build 4, tests 3.5, benchmark 3.5 minutes; the build takes ~1.5 on 16 cores),
# so the whole check fits one 10-minute device command and still reports.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-gpu-results}}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-python3}"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUTDIR/log.txt"; }

{
  nvidia-smi
  nvcc --version
  "$PY" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); print(torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
  git log -1 --format='commit %H %s' 2>/dev/null || echo "commit unknown"
} > "$OUTDIR/env.txt" 2>&1
ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || { log "no GPU visible"; exit 2; }
log "GPU $("$PY" -c "import torch; print(torch.cuda.get_device_name())") (compute capability $ARCH)"

log "build: MEDKERNELS_CUDA=ON MEDKERNELS_CUDA_ARCH_LIST=$ARCH"
if ! { cmake -S . -B build/gpu -G Ninja -DMEDKERNELS_CUDA=ON -DMEDKERNELS_CUDA_ARCH_LIST="$ARCH" \
         -DPython_EXECUTABLE="$(command -v "$PY")" -DCMAKE_BUILD_TYPE=Release \
       && timeout 240 cmake --build build/gpu -j "$(nproc)"; } > "$OUTDIR/build.txt" 2>&1; then
  log "BUILD FAILED"; tail -40 "$OUTDIR/build.txt"; exit 1
fi
cp build/gpu/_C*.so medkernels/
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import medkernels.ops._library as L; assert L.WITH_CUDA and L.has_kernel('selective_scan_fwd', 'CUDA'), 'CUDA kernels missing'" \
  >> "$OUTDIR/build.txt" 2>&1 || { log "CUDA kernels did not load"; tail -20 "$OUTDIR/build.txt"; exit 1; }
log "built ($(grep -c 'Building' "$OUTDIR/build.txt") steps)"

log "GPU tests"
timeout 210 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py --junitxml="$OUTDIR/tests.xml" > "$OUTDIR/tests.txt" 2>&1
TESTS_RC=$?
tail -25 "$OUTDIR/tests.txt"
log "GPU tests exit code $TESTS_RC"

log "GPU benchmark"
timeout 210 "$PY" -m medkernels.bench --profile gpu --device cuda --min-time 0.5 --json "$OUTDIR/bench.json" \
  --no-progress > "$OUTDIR/bench.txt" 2>&1
BENCH_RC=$?
cat "$OUTDIR/bench.txt" | tail -70
log "benchmark exit code $BENCH_RC; results in $OUTDIR"
exit $(( TESTS_RC != 0 || BENCH_RC != 0 ))
