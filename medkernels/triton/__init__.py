"""medkernels.triton: Triton kernels (the GPU path) and their launch configurations; used only by medkernels.ops.

On CPU tensors the kernels run only in Triton's interpreter (``TRITON_INTERPRET=1``, set before
import), and only when ``backend="triton"`` is forced: that is how CI tests them without a GPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

AVAILABLE = importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_force_gpu_configs = False


def gpu_configs() -> bool:
    """Whether launches take the GPU launch configuration (block sizes, chunk lengths). Always on a GPU; in
    the interpreter only inside :func:`force_gpu_configs`: it runs every program slowly, so by default it
    uses small tiles, and tests run each kernel once with the GPU's tiles there (issue 11)."""
    return _force_gpu_configs or not interpreting()


@contextlib.contextmanager
def force_gpu_configs():
    """Within the block, interpreted launches use the GPU launch configuration (see :func:`gpu_configs`)."""
    global _force_gpu_configs
    before, _force_gpu_configs = _force_gpu_configs, True
    try:
        yield
    finally:
        _force_gpu_configs = before


def interpreter_or_gpu(x, forced: bool = False) -> str | None:
    """Why the Triton backend cannot run on tensors like ``x`` (None when it can)."""
    if not AVAILABLE:
        return "triton is not installed"
    if x.device.type == "cuda":
        return None
    if x.device.type == "cpu" and interpreting():
        return None if forced else "CPU tensors run the Triton interpreter only when backend='triton' is forced"
    return f"inputs are on {x.device.type}, not cuda"
