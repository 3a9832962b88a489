"""Peak memory of a callable: exact allocator peaks, on CPU as on CUDA.

CPU: torch has no allocator statistics for host memory, so the profiler's allocation events are
replayed (each carries the allocator's running total). That counts every tensor allocation,
including those inside C++ kernels (workspaces allocated through torch), and nothing else.
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
