"""The ``causal_conv1d`` package (causal-conv1d 1.7's Python API), served by medkernels.

Modules: ``causal_conv1d`` (``causal_conv1d_fn``, ``causal_conv1d_update``, ``__version__``),
``causal_conv1d.causal_conv1d_interface`` (those plus ``causal_conv1d_ref``, ``causal_conv1d_update_ref``)
and ``causal_conv1d.cpp_functions`` (``causal_conv1d_fwd_function``, ``causal_conv1d_bwd_function``,
``causal_conv1d_update_function``, which mamba_ssm 2.3 imports). All run on :mod:`medkernels.ops`.
"""

from __future__ import annotations

import torch

from medkernels import ops

from . import _extensions
from ._finder import TableProvider

__all__ = [
    "causal_conv1d_fn",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "causal_conv1d_update_ref",
    "causal_conv1d_fwd_function",
    "causal_conv1d_bwd_function",
    "causal_conv1d_update_function",
]

VERSION = "1.7.0"

causal_conv1d_fn = ops.causal_conv1d_fn
causal_conv1d_update = ops.causal_conv1d_update


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    final_states_out: torch.Tensor | None = None,
    activation: str | None = None,
):
    """causal-conv1d's ``causal_conv1d_ref`` (its argument order: no ``seq_idx``).

    Args:
        x: (batch, dim, seqlen).
        weight: (dim, width).
        bias: optional (dim,).
        initial_states: optional (batch, dim, width - 1).
        return_final_states: also return the last width - 1 inputs (batch, dim, width - 1).
        final_states_out: optional buffer for them.
        activation: None, "silu" or "swish".

    Returns:
        out (batch, dim, seqlen), or ``(out, final_states)``.
    """
    return ops.causal_conv1d_ref(
        x, weight, bias, None, initial_states, return_final_states, final_states_out, activation
    )


def causal_conv1d_update_ref(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    cache_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """causal-conv1d's ``causal_conv1d_update_ref``: as :func:`medkernels.ops.causal_conv1d_update`
    (x (batch, dim) or (batch, dim, seqlen); conv_state (batch, dim, state_len) updated in place)."""
    return ops.causal_conv1d_update(x, conv_state, weight, bias, activation, cache_seqlens)


def causal_conv1d_fwd_function(x, weight, bias, seq_idx, initial_states, final_states_out, silu_activation):
    """causal-conv1d 1.6+ ``cpp_functions.causal_conv1d_fwd_function``: returns out (batch, dim, seqlen)."""
    out = torch.empty_like(x)
    _extensions.causal_conv1d_fwd(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu_activation)
    return out


def causal_conv1d_bwd_function(
    x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, return_dinitial_states, silu_activation
):
    """causal-conv1d 1.6+ ``cpp_functions.causal_conv1d_bwd_function``: ``(dx, dweight, dbias, dinitial_states)``
    with dweight, dbias float32 (dbias None without bias; dinitial_states None unless asked for)."""
    if dx is None:
        dx = torch.empty_like(x)
    dweight = torch.zeros_like(weight, dtype=torch.float32)
    dbias = None if bias is None else torch.zeros_like(bias, dtype=torch.float32)
    dinit = None
    if return_dinitial_states:
        dinit = torch.empty(x.shape[0], x.shape[1], weight.shape[-1] - 1, device=x.device, dtype=x.dtype)
    _extensions.causal_conv1d_bwd(
        x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, dweight, dbias, dinit, silu_activation
    )
    return dx, dweight, dbias, dinit


def causal_conv1d_update_function(x, conv_state, weight, bias, silu_activation, cache_seqlens, conv_state_indices):
    """causal-conv1d 1.6+ ``cpp_functions.causal_conv1d_update_function``: returns out, shaped like x."""
    out = torch.empty_like(x)
    _extensions.causal_conv1d_update(
        x, conv_state, weight, bias, out, silu_activation, cache_seqlens, conv_state_indices
    )
    return out


_INTERFACE = ("causal_conv1d_fn", "causal_conv1d_ref", "causal_conv1d_update", "causal_conv1d_update_ref")
_CPP = ("causal_conv1d_fwd_function", "causal_conv1d_bwd_function", "causal_conv1d_update_function")
MODULES: dict[str, tuple[bool, tuple[str, ...]]] = {
    "causal_conv1d": (True, ("causal_conv1d_fn", "causal_conv1d_update")),
    "causal_conv1d.causal_conv1d_interface": (False, _INTERFACE),
    "causal_conv1d.cpp_functions": (False, _CPP),
}


# ---------------------------------------------------------------------------------------------------
# The provider interface (medkernels.compat._finder).


has_module, is_package, create_module, build = TableProvider(
    MODULES, globals(), "causal-conv1d's", "causal_conv1d", VERSION
).interface()
