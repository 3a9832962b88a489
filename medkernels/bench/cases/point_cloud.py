"""Point-cloud cases: exact furthest point sampling and kNN, against fpsample, faiss and cdist + topk."""

from __future__ import annotations

import importlib.util

import torch

from medkernels import ops

from .. import peers as _peers
from .base import Case, Peer


def _installed_cpu(module: str, why: str):
    def unavailable(device: torch.device) -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({why})"
        return None if device.type == "cpu" else f"{module} runs on the CPU only"

    return unavailable


def fps_case(batch, n, npoint, c, profiles, targets=(), reference=True) -> Case:
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        g = torch.Generator().manual_seed(0)
        return {"xyz": torch.randn(batch, n, c, generator=g).to(device, dtype)}

    return Case(
        op="furthest_point_sample",
        label=f"B={batch} N={n} -> {npoint} C={c} exact (reference: the textbook torch loop)",
        params={"batch": batch, "n": n, "npoint": npoint, "c": c},
        profiles=profiles,
        make_inputs=make,
        call=lambda backend, x: ops.furthest_point_sample(x["xyz"], npoint, backend=backend),
        differentiable=(),
        reference_backends=("reference",) if reference else (),
        peers={
            "fpsample": Peer(
                lambda x: _peers.fpsample_fps(x["xyz"], npoint),
                _installed_cpu("fpsample", "pip install fpsample"),
                forward_only=True,
            )
        },
        targets=targets,
    )


def knn_case(batch, m, n, k, c, profiles, targets=(), reference=True) -> Case:
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        g = torch.Generator().manual_seed(0)
        return {
            "query": torch.randn(batch, m, c, generator=g).to(device, dtype),
            "points": torch.randn(batch, n, c, generator=g).to(device, dtype),
        }

    return Case(
        op="knn",
        label=f"B={batch} {m} queries over {n} points k={k} C={c}",
        params={"batch": batch, "m": m, "n": n, "k": k, "c": c},
        profiles=profiles,
        make_inputs=make,
        call=lambda backend, x: ops.knn(x["query"], x["points"], k, backend=backend),
        differentiable=("query", "points"),
        reference_backends=("reference",) if reference else (),
        peers={
            "faiss_flat": Peer(
                lambda x: _peers.faiss_flat_knn(x["query"], x["points"], k),
                _installed_cpu("faiss", "pip install faiss-cpu"),
                forward_only=True,
            ),
            "cdist_topk": Peer(lambda x: _peers.cdist_topk_knn(x["query"], x["points"], k)),
        },
        targets=targets,
    )
