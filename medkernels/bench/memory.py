"""Peak memory of a callable: exact allocator peaks, on CPU as on CUDA, and the process's resident peak.

CPU: torch has no allocator statistics for host memory, so the profiler's allocation events are
replayed (each carries the allocator's running total). That counts every tensor allocation,
including those inside C++ kernels (workspaces allocated through torch), and nothing else: a numpy
library's buffers are invisible to it. For those, :func:`peak_rss_bytes` reads the process's resident-set
high-water mark around one more call (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``;
``ru_maxrss`` cannot be reset), which counts every allocation that touched memory, torch's or not.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

# libkineto prints two log lines per profiling session unless told otherwise (read at first use).
os.environ.setdefault("KINETO_LOG_LEVEL", "99")


def _walk(nodes, out):
    from torch._C._profiler import _EventType

    for node in nodes:
        if node.tag == _EventType.Allocation:
            fields = node.extra_fields
            if fields.device.type == "cpu":
                out.append((node.start_time_ns, fields.alloc_size, fields.total_allocated))
        _walk(node.children, out)


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _libc():
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def peak_rss_bytes(fn: Callable[[], object]) -> int | None:
    """How far the process's resident set rises above its size at the start while ``fn()`` runs: every
    allocator's memory (numpy's, a C library's, torch's), where :func:`peak_allocated_bytes` sees only torch's.

    Linux with glibc only (None elsewhere): the high-water mark ``VmHWM`` is reset through
    ``/proc/self/clear_refs``, and for the call glibc maps every block of 64 KiB or more on its own and trims
    its heap, so that memory freed by earlier calls is not reused unseen (its thresholds are left at their
    largest dynamic values, 32/64 MiB, afterwards).
    """
    libc = _libc()
    if libc is None:
        return None
    libc.mallopt(_M_MMAP_THRESHOLD, 64 << 10)
    libc.mallopt(_M_TRIM_THRESHOLD, 128 << 10)
    try:
        libc.malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        except OSError:
            return None
        start = _status_kb("VmRSS")
        fn()
        high = _status_kb("VmHWM")
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
    return None if start is None or high is None else max(0, high - start) * 1024


def peak_allocated_bytes(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Bytes allocated at the peak while ``fn()`` runs, above what was allocated when it started.

    Args:
        fn: the work to measure (called once).
        device: "cpu" or a CUDA device.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - start)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events: list[tuple[int, int, int]] = []
    _walk(prof.profiler.kineto_results.experimental_event_tree(), events)
    if not events:
        return 0
    events.sort()
    _, first_size, first_total = events[0]
    base = first_total - first_size
    return max(0, max(total for _, _, total in events) - base)
