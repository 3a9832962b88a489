"""medkernels.ops: the public kernels, each with a pure-PyTorch ``*_ref`` oracle.

This is the only layer that knows about kernels: every op validates its inputs, picks a backend
(cuda > triton > cpu > reference; see :func:`choose_backend`) and calls a registered
``torch.ops.medkernels`` operator, so it works under torch.compile(fullgraph=True).
:func:`can_run` / :func:`why_not` say whether (and why not) a backend can run an op on given inputs;
:mod:`medkernels.ops.checks` holds the argument checks modules share with the ops.
"""

from . import checks
from ._backend import BACKENDS, BackendUnavailableError, can_run, choose_backend, ops_with_backends, why_not
from ._library import cpu_isa, cpu_isas, set_cpu_isa
from .causal_conv1d import causal_conv1d_fn, causal_conv1d_ref, causal_conv1d_update
from .dct import dct2d, dct2d_ref, dct_matrix, idct2d, idct2d_ref
from .dilated_attention import (
    dilated_attention3d,
    dilated_attention3d_qkvpacked,
    dilated_attention3d_ref,
    dilated_groups,
)
from .multi_order_scan import multi_order_selective_scan, multi_order_selective_scan_ref
from .neighborhood_attention import (
    na1d,
    na1d_av,
    na1d_av_ref,
    na1d_qk,
    na1d_qk_ref,
    na1d_ref,
    na2d,
    na2d_av,
    na2d_av_ref,
    na2d_qk,
    na2d_qk_ref,
    na2d_ref,
    na3d,
    na3d_av,
    na3d_av_ref,
    na3d_qk,
    na3d_qk_ref,
    na3d_ref,
)
from .point_cloud import furthest_point_sample, furthest_point_sample_ref, knn, knn_ref
from .rswaf_kan import rswaf_basis, rswaf_kan, rswaf_kan_ref
from .selective_scan import selective_scan_fn, selective_scan_ref

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "can_run",
    "checks",
    "choose_backend",
    "ops_with_backends",
    "why_not",
    "cpu_isa",
    "cpu_isas",
    "set_cpu_isa",
    "selective_scan_fn",
    "selective_scan_ref",
    "causal_conv1d_fn",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "dct2d",
    "dct2d_ref",
    "idct2d",
    "idct2d_ref",
    "dct_matrix",
    "dilated_attention3d",
    "dilated_attention3d_qkvpacked",
    "dilated_attention3d_ref",
    "dilated_groups",
    "furthest_point_sample",
    "furthest_point_sample_ref",
    "knn",
    "knn_ref",
    "na1d",
    "na2d",
    "na3d",
    "na1d_ref",
    "na2d_ref",
    "na3d_ref",
    "na1d_qk",
    "na2d_qk",
    "na3d_qk",
    "na1d_av",
    "na2d_av",
    "na3d_av",
    "na1d_qk_ref",
    "na2d_qk_ref",
    "na3d_qk_ref",
    "na1d_av_ref",
    "na2d_av_ref",
    "na3d_av_ref",
    "multi_order_selective_scan",
    "multi_order_selective_scan_ref",
    "rswaf_kan",
    "rswaf_kan_ref",
    "rswaf_basis",
]
