"""Point-cloud cases: exact furthest point sampling and kNN against the strongest peers a user would pick:
fpsample's exact kd-line FPS (QuickFPS, its recommended method; its plain ``fps_sampling`` loop is ~10x slower),
scipy's ``cKDTree`` for kNN in 3-D (faiss's flat index, a brute-force tool for high-dimensional vectors, only
where the features are), and plain PyTorch's cdist + topk."""

from __future__ import annotations

import importlib.util

import torch

from medkernels import ops

from .. import peers as _peers
from .base import Case, Peer, Sweep


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
            f"fpsample_kdline_h{h}": Peer(
                lambda x, h=h: _peers.fpsample_kdline_fps(x["xyz"], npoint, h),
                _installed_cpu("fpsample", "pip install fpsample"),
                forward_only=True,
                how=f"bucket_fps_kdline_sampling(xyz, {npoint}, h={h}) per cloud (exact; numpy)",
                package="fpsample",
                torch_memory=False,
            )
            for h in (5, 7)  # its docs: "for medium workload, h=5 or 7 is enough"
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
        peers=_knn_peers(k, c),
        targets=targets,
    )


def _with_trees(x: dict) -> list:
    if "_kdtrees" not in x:  # built once per inputs, outside the timed calls
        x["_kdtrees"] = _peers.ckdtree_build(x["points"])
    return x["_kdtrees"]


def _knn_peers(k: int, c: int) -> dict[str, Peer]:
    peers = {"cdist_topk": Peer(lambda x: _peers.cdist_topk_knn(x["query"], x["points"], k), how="torch.cdist + topk")}
    if c <= 3:
        scipy_missing = _installed_cpu("scipy", "pip install scipy")
        peers["ckdtree"] = Peer(
            lambda x: _peers.ckdtree_knn(x["query"], x["points"], k),
            scipy_missing,
            forward_only=True,
            how=f"cKDTree(points) then .query(query, k={k}, workers=threads) per cloud",
            package="scipy",
            torch_memory=False,
        )
        peers["ckdtree_query_only"] = Peer(
            lambda x: _peers.ckdtree_knn(x["query"], x["points"], k, trees=_with_trees(x)),
            scipy_missing,
            forward_only=True,
            how="the same query on trees built before timing (not a full peer: excluded from 'vs peer')",
            package="scipy",
            torch_memory=False,
            comparable=False,
        )
    else:
        peers["faiss_flat"] = Peer(
            lambda x: _peers.faiss_flat_knn(x["query"], x["points"], k),
            _installed_cpu("faiss", "pip install faiss-cpu"),
            forward_only=True,
            how="IndexFlatL2(C).add(points).search(query, k) per cloud",
            package="faiss-cpu",
            torch_memory=False,
        )
    return peers


# medkernels-bench --report: exact FPS (to 2048 points) and kNN (2048 queries, k=32) over the cloud's point count;
# the references (FPS: the textbook loop; kNN: a full sort per query row) up to 16384 and 4096 points.
SWEEPS = (
    Sweep(
        "furthest_point_sample",
        "points",
        "points N",
        {"quick": (500, 2000), "default": (4096, 16384, 65536)},
        lambda n, quick: fps_case(1, n, 100 if quick else 2048, 3, (), reference=n <= 16384),
    ),
    Sweep(
        "knn",
        "points",
        "points N",
        {"quick": (256, 1000), "default": (2048, 8192, 32768)},
        lambda n, quick: knn_case(1, 64 if quick else 2048, n, 8 if quick else 32, 3, (), reference=quick or n <= 4096),
    ),
)
