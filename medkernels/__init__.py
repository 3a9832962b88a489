"""medkernels: fast CPU and GPU kernels for medical-imaging backbones, as drop-in torch ops and modules.

Layers: ``medkernels.ops`` (kernels with pure-PyTorch references), ``medkernels.nn`` (drop-in
modules), ``medkernels.models`` (reference architectures), ``medkernels.bench`` (the
``medkernels-bench`` command), ``medkernels.swap`` (natten / mamba_ssm layers of a built network
swapped for medkernels modules) and ``medkernels.compat`` (natten / mamba_ssm / causal_conv1d clients
run unchanged).
"""

from importlib.metadata import PackageNotFoundError, version

import torch  # noqa: F401  (before the extension, which links torch's libraries)

from . import models, nn, ops
from .swap import SwapReport, swap

try:
    __version__ = version("medkernels")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled source tree
    __version__ = "0.0.0+unknown"

__all__ = ["ops", "nn", "models", "swap", "SwapReport", "__version__"]
