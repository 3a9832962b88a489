"""Whole modules: the Mamba block (``medkernels.nn.Mamba``) on the kernels against the block on the
reference ops."""

from __future__ import annotations

import torch

from .base import Case, Sweep


def _mamba_inputs(batch, seqlen, d_model, d_state):
    def make(device, dtype):
        from medkernels.nn import Mamba

        torch.manual_seed(0)
        module = Mamba(d_model, d_state=d_state, device=device, dtype=dtype)
        return {"hidden_states": torch.randn(batch, seqlen, d_model, device=device, dtype=dtype), "module": module}

    return make


def _mamba_call(backend, x):
    x["module"].backend = backend
    return x["module"](x["hidden_states"])


def mamba_case(batch, seqlen, d_model, d_state, profiles, targets=(), dtypes=(torch.float32,)) -> Case:
    return Case(
        op="mamba_block",
        label=f"B={batch} L={seqlen} d_model={d_model} d_state={d_state} (medkernels.nn.Mamba)",
        params={"batch": batch, "seqlen": seqlen, "d_model": d_model, "d_state": d_state},
        profiles=profiles,
        make_inputs=_mamba_inputs(batch, seqlen, d_model, d_state),
        call=_mamba_call,
        differentiable=("hidden_states",),
        dtypes=dtypes,
        parameters=lambda x: list(x["module"].parameters()),
        targets=targets,
    )


# medkernels-bench --report: the Mamba block (L=128, d_model=256, d_state=16) over the batch, against the block on
# the reference ops.
SWEEPS = (
    Sweep(
        "mamba_block",
        "batch",
        "batch B",
        {"quick": (1, 2), "default": (1, 2, 4)},
        lambda b, quick: mamba_case(b, 16 if quick else 128, 16 if quick else 256, 4 if quick else 16, ()),
    ),
)
