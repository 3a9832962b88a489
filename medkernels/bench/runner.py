"""Measurement: median wall time and peak memory of each (case, dtype, backend, pass)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

from medkernels import ops

from .cases import Case
from .memory import peak_allocated_bytes, peak_rss_bytes

PASSES = ("fwd", "fwd+bwd")


@dataclass
class Result:
    op: str
    case: str
    dtype: str
    backend: str  # a medkernels backend, or "peer:<name>"
    passname: str
    median_ms: float
    times_ms: list[float]
    bytes_moved: int
    gbps: float
    peak_bytes: int
    speedup_vs_reference: float | None = None
    speedup_vs_best_peer: float | None = None
    memory_vs_reference: float | None = None
    error: str | None = None
    peak_rss_bytes: int | None = None  # the process's resident-set rise (every allocator's), None where unknown
    torch_memory: bool = True  # False: a numpy peer, whose peak_bytes (torch's allocator) does not count its buffers

    def as_dict(self) -> dict:
        return asdict(self)


def fastest_peer(case: Case, rows: list[Result], passname: str) -> Result | None:
    """The fastest peer row of ``passname`` a user could call instead (the case's ``comparable`` peers: not a
    partial measurement, not a different computation), or None: what "vs peer" and against="peer" divide by."""
    peers = [
        r
        for r in rows
        if r.backend.startswith("peer:")
        and r.passname == passname
        and r.error is None
        and (spec := case.peers.get(r.backend[5:])) is not None
        and spec.comparable
    ]
    return min(peers, key=lambda r: r.median_ms, default=None)


def memory_ratio(mine: Result, theirs: Result) -> float | None:
    """``mine``'s peak memory over ``theirs``: torch's allocator peaks when both rows allocate through torch,
    else the process's resident-set rises (a numpy peer's buffers are invisible to torch's allocator)."""
    if mine.torch_memory and theirs.torch_memory:
        return mine.peak_bytes / theirs.peak_bytes if theirs.peak_bytes else None
    if mine.peak_rss_bytes is None or not theirs.peak_rss_bytes:
        return None
    return mine.peak_rss_bytes / theirs.peak_rss_bytes


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(o) for o in obj.values())
    return 0


def _first_tensor(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def time_call(
    fn: Callable[[], object],
    device: torch.device,
    min_time: float,
    min_reps: int = 3,
    max_reps: int = 100,
    slow: float = 1.0,
) -> list[float]:
    """Seconds per call: one warm-up, then calls until ``min_reps`` and ``min_time`` are reached
    (two calls only for functions slower than ``slow`` seconds, such as the references; just
    ``min_reps`` when that many already take ``min_time``)."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    fn()
    sync()
    warm = time.perf_counter() - t0
    if warm > slow:
        min_reps = 2
    if warm * min_reps >= min_time:
        min_time = 0.0
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_reps:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_reps and time.perf_counter() - started >= min_time:
            break
    return times


def _work(case: Case, runner: Callable[[dict], object], inputs: dict, passname: str):
    """The callable timed for one pass, and the bytes that pass must move at least."""
    if passname == "fwd":

        def fwd():
            with torch.no_grad():
                return runner(inputs)

        with torch.no_grad():
            out = runner(inputs)
        return fwd, _nbytes(inputs) + _nbytes(out)

    leaves = {k: (v.detach().requires_grad_(True) if k in case.differentiable else v) for k, v in inputs.items()}
    diff = [leaves[k] for k in case.differentiable] + (case.parameters(inputs) if case.parameters else [])
    with torch.no_grad():
        out = _first_tensor(runner(inputs))
    grad_out = torch.randn_like(out)

    def fwd_bwd():
        return torch.autograd.grad(_first_tensor(runner(leaves)), diff, grad_out)

    # forward reads the inputs and writes the output; backward reads them again with grad_out
    # and writes one gradient per differentiable input.
    moved = 2 * _nbytes(inputs) + 2 * _nbytes(out) + _nbytes(diff)
    return fwd_bwd, moved


def backends_for(
    case: Case, device: torch.device, dtype: torch.dtype, only: set[str] | None, probe: dict | None = None
) -> list[str]:
    """The reference, then each medkernels backend that runs this case here (probed with one call, on
    ``probe`` when given, else on fresh inputs). A backend whose probe raises anything but
    BackendUnavailableError is kept: its measurement then reports the error."""
    names = list(case.reference_backends)
    if probe is None:
        probe = case.make_inputs(device, dtype)
    for name in ops.BACKENDS:
        # "reference" runs only where the case lists it (some are too slow for a profile)
        if name in names or name == "reference" or (only and name not in only):
            continue
        if name == "triton" and device.type != "cuda":
            continue  # on CPU tensors Triton only runs in its interpreter: not a timing worth printing
        try:
            with torch.no_grad():
                case.call(name, probe)
        except ops.BackendUnavailableError:
            continue
        except Exception:  # it should run here but broke: kept, so that the measurement reports the error
            pass
        names.append(name)
    return names


def run_case(
    case: Case,
    dtype: torch.dtype,
    device: torch.device,
    backends: list[str],
    min_time: float,
    on_step: Callable[[str], None] = lambda s: None,
    inputs: dict | None = None,
) -> Iterator[Result]:
    """Measures every backend and available peer of one case, both passes (on ``inputs`` when given,
    else on fresh ones)."""
    if inputs is None:
        inputs = case.make_inputs(device, dtype)
    runners: dict[str, Callable[[dict], object]] = {b: (lambda x, b=b: case.call(b, x)) for b in backends}
    forward_only, process_memory = set(), set()
    for peer, spec in case.peers.items():
        if spec.unavailable(device) is None:
            runners[f"peer:{peer}"] = spec.call
            if spec.forward_only:
                forward_only.add(f"peer:{peer}")
            if not spec.torch_memory:
                process_memory.add(f"peer:{peer}")
    passes = PASSES if case.differentiable or case.parameters else ("fwd",)
    for passname in passes:
        measured: list[Result] = []
        for name, runner in runners.items():
            if passname != "fwd" and name in forward_only:
                continue
            on_step(f"{case.op} {name} {passname}")
            dtype_s = str(dtype).replace("torch.", "")
            try:
                fn, moved = _work(case, runner, inputs, passname)
                times = time_call(fn, device, min_time)
                peak = peak_allocated_bytes(fn, device)
                # the process's peak too where a peer allocates outside torch (one more call, so only there, and
                # not for the slow references: what it compares is ours against that peer)
                rss = (
                    peak_rss_bytes(fn)
                    if process_memory and device.type == "cpu" and name not in case.reference_backends
                    else None
                )
            except Exception as exc:  # a peer or backend failing is reported, not fatal
                measured.append(
                    Result(
                        case.op,
                        case.label,
                        dtype_s,
                        name,
                        passname,
                        float("nan"),
                        [],
                        0,
                        float("nan"),
                        0,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                )
                continue
            med = statistics.median(times)
            measured.append(
                Result(
                    case.op,
                    case.label,
                    dtype_s,
                    name,
                    passname,
                    med * 1e3,
                    [round(t * 1e3, 4) for t in times],
                    moved,
                    moved / med / 1e9,
                    peak,
                    peak_rss_bytes=rss,
                    torch_memory=name not in process_memory,
                )
            )
        ref = next((r for r in measured if r.backend == "reference" and r.error is None), None)
        best_peer = fastest_peer(case, measured, passname)
        for r in measured:
            if r.error is not None:
                continue
            if ref is not None:
                r.speedup_vs_reference = ref.median_ms / r.median_ms
                r.memory_vs_reference = memory_ratio(r, ref)
            if best_peer is not None:
                r.speedup_vs_best_peer = best_peer.median_ms / r.median_ms
        yield from measured
