#!/usr/bin/env python
"""Compile every GPU kernel for Hopper (sm_90) and Ampere (sm_80) without a GPU, and check its resources (issue 12).

Triton: every launch configuration the GPU path can choose (each ``medkernels.triton.<module>.configs()``,
the list the launchers' own ``launch_config`` functions return) is compiled with ``triton.compile`` for each
architecture. ptxas runs on the produced PTX as part of that compile, with the flags Triton uses at run time,
and ``-v``: its report gives registers, spills and stack per config; Triton's metadata the shared memory.
CUDA: the ptxas ``-v`` report of ``make cuda-build`` (its log, build/cuda-build.log) gives the same numbers.

Fails (exit 1) on a compile error, shared memory over a block's limit (227 KB on sm_90, 163 KB on sm_80),
more registers than a block can have, or spills over the kernel's budget in :data:`SPILL_BUDGET`.
Prints one table (a row per kernel and config, both architectures) and writes JSON beside it
(build/gpu-compile-check.json). Nothing is cached: every run compiles afresh in a temporary Triton cache.

What this does not cover: Triton specializes integer arguments at run time (a value of 1 becomes a constant,
a multiple of 16 gets a divisibility hint, values past 2**31 make it 64-bit); the check compiles the generic
32-bit variant with 16-byte-aligned pointers. Numerics, speed and determinism on a device are
scripts/gpu_check.sh's (README, GPU).

Usage: scripts/gpu_compile_check.py [--jobs 2] [--arch 90,80] [--only REGEX] [--json PATH] [--cuda-log PATH]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: Per block: the shared-memory limit (opt-in maximum) in bytes, registers, and the "sm_" name.
ARCHS = {
    90: {"name": "sm_90", "smem": 227 * 1024, "regs_per_block": 65536},
    80: {"name": "sm_80", "smem": 163 * 1024, "regs_per_block": 65536},
}
MAX_REGS_PER_THREAD = 255

#: Spill budget per kernel: bytes of spill stores + spill loads, the most any of its configs may have on either
#: architecture. A kernel not listed may not spill. Every allowance is a few words that ptxas chooses to spill
#: while it uses fewer than the 255 registers it may (on sm_80 it keeps 128 per thread for 8-warp blocks, to fit
#: two per SM): no tile is over its register budget. The tiles that did spill were changed instead (see each
#: module's launch_config; rswaf_kan spilled up to 24 KB, dilated attention up to 36 KB).
SPILL_BUDGET: dict[str, tuple[int, str]] = {
    "selective_scan._bwd_kernel": (
        32,
        "dstate 17-32 (32 x 32 tiles), fixed B with variable C, sm_90: 24 B at 255 "
        "registers; with 8 warps sm_80 spills instead",
    ),
    "multi_order_scan._bwd_kernel": (16, "one tile (8 channels x 64 states) on sm_90: 8 B at 80 registers"),
    "neighborhood_attention._fwd_kernel": (96, "sm_80 only, head dim 64 with a bias: 96 B at 128 registers"),
    "neighborhood_attention._bwd_dq_kernel": (64, "sm_80 only, no bias: up to 64 B at 128 registers"),
}

#: The same for the CUDA kernels, by function name (demangled, template arguments dropped).
CUDA_SPILL_BUDGET: dict[str, tuple[int, str]] = {
    "medkernels::cuda::fwd_kernel": (32, "sm_80 only: up to 28 B at 80-96 registers (sm_90: none)"),
    "medkernels::cuda::bwd_kernel": (64, "sm_80 only, fixed B with variable C: 64 B at 128 registers (sm_90: none)"),
}
#: CUDA kernels whose spills fail the check when over budget (the hot ones); others are reported only.
CUDA_HOT = ("medkernels::cuda::fwd_kernel", "medkernels::cuda::bwd_kernel")

_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(log: str) -> dict[str, int]:
    """Registers, stack frame and spill bytes from one kernel's ``ptxas -v`` report."""
    used = _PTXAS_USED.search(log)
    spill = _PTXAS_SPILL.search(log)
    if not used or not spill:
        raise ValueError(f"no ptxas -v report in:\n{log}")
    stack, stores, loads = (int(g) for g in spill.groups())
    return {"regs": int(used.group(1)), "stack": stack, "spill_stores": stores, "spill_loads": loads}


def _compile_env() -> None:
    # the kernels must be the real @triton.jit functions, not the interpreter's: set before triton is imported
    os.environ.pop("TRITON_INTERPRET", None)


def _quiet_extension_warning() -> None:
    """The launch configurations are read from this source tree, which need not hold a built extension: the ops
    layer's warning that its CPU kernels did not load does not concern a compile check."""
    import warnings

    warnings.filterwarnings("ignore", message="medkernels: the compiled kernels", category=RuntimeWarning)


def _worker_init(cache_dir: str) -> None:
    _quiet_extension_warning()
    _compile_env()
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # every config sets enable_fp_fusion itself


def compile_one(config, cap: int) -> dict:
    """Compiles one LaunchConfig for compute capability ``cap``; returns its resources or its error."""
    import importlib

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    knobs.nvidia.dump_ptxas_log = True  # make_cubin prints ptxas -v's report (the flags it runs with)
    knobs.compilation.always_compile = True
    kernel = getattr(importlib.import_module(config.module), config.kernel)
    names = [n for n in kernel.arg_names]
    signature = dict(config.signature)
    signature.update({name: "constexpr" for name, _ in config.constexprs})
    signature = {n: signature[n] for n in names}
    # pointers 16-byte aligned, as Triton specializes every tensor from PyTorch's allocator
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in config.signature if t.startswith("*")}
    src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=dict(config.constexprs), attrs=attrs)
    row = {
        "module": config.module.rsplit(".", 1)[-1],
        "kernel": config.kernel,
        "config": config.label(),
        "arch": ARCHS[cap]["name"],
        "num_warps": config.num_warps,
        "num_stages": config.num_stages,
    }
    start = time.perf_counter()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            compiled = triton.compile(src, target=GPUTarget("cuda", cap, 32), options=config.options())
        row.update(parse_ptxas(out.getvalue()))
        row["smem"] = int(compiled.metadata.shared)
        row["error"] = None
    except Exception as e:  # a compile error is a result: reported and failed, not raised
        row["error"] = f"{type(e).__name__}: {e}".strip()[:2000]
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def triton_configs(only: str | None):
    import importlib

    _quiet_extension_warning()
    from medkernels import triton as mt

    out = []
    for name in mt.MODULES:
        mod = importlib.import_module(f"medkernels.triton.{name}")
        for config in mod.configs():
            key = f"{name}.{config.kernel} {config.label()}"
            if only is None or re.search(only, key):
                out.append(config)
    return out


def check_row(row: dict, budget: dict[str, tuple[int, str]], key: str, enforce_spills: bool = True) -> list[str]:
    """The reasons a compiled kernel fails (empty when it passes)."""
    if row.get("error"):
        return ["compile error"]
    why = []
    arch = next(a for a in ARCHS.values() if a["name"] == row["arch"])
    if row["smem"] > arch["smem"]:
        why.append(f"shared memory {row['smem']} B > {arch['smem']} B")
    threads = 32 * row.get("num_warps", 4) if "num_warps" in row else row.get("threads", 0)
    if row["regs"] > MAX_REGS_PER_THREAD or row["regs"] * threads > arch["regs_per_block"]:
        why.append(f"{row['regs']} registers x {threads} threads")
    spills = row["spill_stores"] + row["spill_loads"]
    allowed = budget.get(key, (0, ""))[0]
    if enforce_spills and spills > allowed:
        why.append(f"spills {spills} B > budget {allowed} B")
    return why


# --- CUDA: the ptxas -v report in the build log ------------------------------------------------

_CUDA_ENTRY = re.compile(r"ptxas info\s*: Compiling entry function '([^']+)' for '(sm_\d+a?)'")


def _demangle(names: list[str]) -> dict[str, str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return dict(zip(names, out.splitlines()))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


def cuda_rows(log_path: Path) -> list[dict]:
    """One row per (kernel, architecture) from nvcc's ``-Xptxas -v`` output in the build log."""
    lines = log_path.read_text(errors="replace").splitlines()
    found: dict[tuple[str, str], dict] = {}
    for i, line in enumerate(lines):
        m = _CUDA_ENTRY.search(line)
        if not m:
            continue
        block = "\n".join(lines[i : i + 6])
        found[(m.group(1), m.group(2))] = {
            "mangled": m.group(1),
            "arch": m.group(2),
            **parse_ptxas(block),
            "smem": _smem(block),
        }
    names = _demangle(sorted({k[0] for k in found}))
    rows = []
    for (mangled, _arch), r in sorted(found.items(), key=lambda kv: (names[kv[0][0]], kv[0][1])):
        kernel, targs = split_cuda_name(names[mangled])
        r.update(kernel=kernel, config=targs, threads=_cuda_threads())
        rows.append(r)
    return rows


def split_cuda_name(full: str) -> tuple[str, str]:
    """``void ns::(anonymous namespace)::k<float, true>(P)`` -> ``("ns::k", "float, true")``."""
    full = full.removeprefix("void ").replace("(anonymous namespace)::", "")
    if "<" in full:
        name, rest = full.split("<", 1)
        return name, rest[: rest.rindex(">")]
    return full.split("(", 1)[0], ""


def _smem(block: str) -> int:
    m = re.search(r"(\d+) bytes smem", block)
    return int(m.group(1)) if m else 0


def _cuda_threads() -> int:
    header = (ROOT / "csrc/include/medkernels/cuda/selective_scan.h").read_text()
    return int(re.search(r"kScanThreads = (\d+)", header).group(1))


# --- report ------------------------------------------------------------------------------------


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if r.get("error"):
        return "ERROR"
    spills = r["spill_stores"] + r["spill_loads"]
    return f"{r['regs']:>3} {spills:>6} {r['smem'] / 1024:>6.1f}"


def table(rows: list[dict], archs: list[str], failures: dict[int, list[str]]) -> str:
    """The per-config table: registers, spill bytes (stores + loads) and shared KB on each architecture."""
    by: dict[tuple[str, str], dict[str, dict]] = {}
    index: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        key = (f"{r['module']}.{r['kernel']}" if r.get("module") else r["kernel"], r["config"])
        by.setdefault(key, {})[r["arch"]] = r
        index.setdefault(key, []).append(i)
    kw = max([len(k[0]) for k in by] + [6])
    cw = max([len(k[1]) for k in by] + [6])
    head = f"{'kernel':<{kw}}  {'config':<{cw}}  " + "  ".join(f"{a + ' regs spill smemKB':<20}" for a in archs)
    out = [head, "-" * len(head)]
    for key in sorted(by):
        cells = "  ".join(f"{_cell(by[key].get(a)):<20}" for a in archs)
        why = sorted({w for i in index[key] for w in failures.get(i, [])})
        out.append(f"{key[0]:<{kw}}  {key[1]:<{cw}}  {cells}" + ("  FAIL: " + "; ".join(why) if why else ""))
    return "\n".join(out)


def summary(rows: list[dict], archs: list[str]) -> str:
    """Per kernel and architecture: configs, the most registers, spill bytes and shared memory."""
    agg: dict[str, dict[str, dict]] = {}
    for r in rows:
        name = f"{r['module']}.{r['kernel']}" if r.get("module") else r["kernel"]
        a = agg.setdefault(name, {}).setdefault(r["arch"], {"n": 0, "regs": 0, "spills": 0, "smem": 0, "err": 0})
        a["n"] += 1
        if r.get("error"):
            a["err"] += 1
            continue
        a["regs"] = max(a["regs"], r["regs"])
        a["spills"] = max(a["spills"], r["spill_stores"] + r["spill_loads"])
        a["smem"] = max(a["smem"], r["smem"])
    kw = max([len(k) for k in agg] + [6])
    head = f"{'kernel (max over configs)':<{kw}}  " + "  ".join(f"{a + ' n regs spill smemKB':<26}" for a in archs)
    out = [head, "-" * len(head)]
    for name in sorted(agg):
        cells = []
        for arch in archs:
            a = agg[name].get(arch)
            cells.append(
                "-"
                if a is None
                else f"{a['n']:>3} {a['regs']:>4} {a['spills']:>6} {a['smem'] / 1024:>6.1f}"
                + (f" {a['err']} errors" if a["err"] else "")
            )
        out.append(f"{name:<{kw}}  " + "  ".join(f"{c:<26}" for c in cells))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2, help="compile processes (default 2)")
    p.add_argument("--arch", default="90,80", help="compute capabilities (default 90,80)")
    p.add_argument("--only", default=None, help="regex on 'module.kernel config' to compile a subset")
    p.add_argument("--json", type=Path, default=ROOT / "build/gpu-compile-check.json")
    p.add_argument(
        "--cuda-log",
        type=Path,
        default=ROOT / "build/cuda-build.log",
        help="make cuda-build's log (nvcc -Xptxas -v); missing: the CUDA part fails",
    )
    p.add_argument("--no-cuda", action="store_true", help="skip the CUDA kernels (no make cuda-build)")
    args = p.parse_args(argv)
    _compile_env()
    caps = [int(c) for c in args.arch.split(",")]
    archs = [ARCHS[c]["name"] for c in caps]
    start = time.perf_counter()

    configs = triton_configs(args.only)
    jobs = [(c, cap) for c in configs for cap in caps]
    print(
        f"gpu_compile_check: {len(configs)} Triton configs x {len(caps)} architectures = {len(jobs)} compiles, "
        f"{args.jobs} processes",
        flush=True,
    )
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="triton-cache-") as cache:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(args.jobs, mp_context=ctx, initializer=_worker_init, initargs=(cache,)) as pool:
            futures = [pool.submit(compile_one, c, cap) for c, cap in jobs]
            for n, f in enumerate(cf.as_completed(futures), 1):
                rows.append(f.result())
                if n % 50 == 0 or n == len(futures):
                    print(f"  {n}/{len(futures)} compiled, {time.perf_counter() - start:.0f} s", flush=True)
    rows.sort(key=lambda r: (r["module"], r["kernel"], r["config"], r["arch"]))
    failures = {
        i: why for i, r in enumerate(rows) if (why := check_row(r, SPILL_BUDGET, f"{r['module']}.{r['kernel']}"))
    }

    cuda: list[dict] = []
    cuda_failures: dict[int, list[str]] = {}
    cuda_error = None
    if not args.no_cuda:
        if args.cuda_log.exists():
            cuda = cuda_rows(args.cuda_log)
            if not cuda:
                cuda_error = f"no ptxas -v report in {args.cuda_log} (nvcc without -Xptxas -v?)"
            cuda_failures = {
                i: why
                for i, r in enumerate(cuda)
                if (why := check_row(r, CUDA_SPILL_BUDGET, r["kernel"], r["kernel"] in CUDA_HOT))
            }
        else:
            cuda_error = f"{args.cuda_log} is missing: run make cuda-build first (or pass --no-cuda)"

    print("\nTriton kernels, per config: registers, spill bytes (stores + loads), shared memory (KB)")
    print(table(rows, archs, failures))
    if cuda:
        cuda_archs = sorted({r["arch"] for r in cuda})
        print("\nCUDA kernels (ptxas -v from the build log), per template instance")
        print(table(cuda, cuda_archs, cuda_failures))
    print("\nSummary per kernel")
    print(summary(rows + cuda, archs + sorted({r["arch"] for r in cuda} - set(archs))))
    print("\nSpill budgets (bytes, stores + loads; kernels not listed: 0)")
    for name, (limit, reason) in sorted({**SPILL_BUDGET, **CUDA_SPILL_BUDGET}.items()):
        print(f"  {name}: {limit} - {reason}")

    elapsed = time.perf_counter() - start
    n_fail = len(failures) + len(cuda_failures) + (1 if cuda_error else 0)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "triton": rows,
                "cuda": cuda,
                "cuda_error": cuda_error,
                "limits": {ARCHS[c]["name"]: ARCHS[c] for c in caps},
                "spill_budget": {
                    k: {"bytes": v[0], "reason": v[1]} for k, v in {**SPILL_BUDGET, **CUDA_SPILL_BUDGET}.items()
                },
                "failures": [{**rows[i], "why": w} for i, w in failures.items()]
                + [{**cuda[i], "why": w} for i, w in cuda_failures.items()],
                "seconds": round(elapsed, 1),
                "ok": n_fail == 0,
            },
            indent=1,
        )
    )
    if cuda_error:
        print(f"\nCUDA: {cuda_error}")
    busy = sum(r["seconds"] for r in rows)
    print(
        f"\n{len(rows)} Triton compiles ({busy:.0f} s of compiling in {args.jobs} processes), {len(cuda)} CUDA "
        f"kernels, {n_fail} failing, {elapsed:.0f} s; JSON: {args.json}"
    )
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
