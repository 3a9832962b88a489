"""medkernels.ops: the public kernels, each with a pure-PyTorch ``*_ref`` oracle.

This is the only layer that knows about kernels: every op validates its inputs, picks a backend
(cuda > triton > cpu > reference; see :func:`choose_backend`) and calls a registered
``torch.ops.medkernels`` operator, so it works under torch.compile(fullgraph=True).
"""

from ._backend import BACKENDS, BackendUnavailableError, choose_backend
from ._library import cpu_isa, cpu_isas, set_cpu_isa
from .selective_scan import selective_scan_fn, selective_scan_ref

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "choose_backend",
    "cpu_isa",
    "cpu_isas",
    "set_cpu_isa",
    "selective_scan_fn",
    "selective_scan_ref",
]
