"""Benchmark cases: what ``medkernels-bench`` times, per op and profile.

A case builds its inputs, calls the op on a named backend (or a peer library), and may state
targets (speed-up and memory ratios against the reference) that the report checks. One module per op
family builds its cases (``selective_scan``, ``multi_order_scan``, ``neighborhood_attention``,
``dilated_attention``, ``dct``, ``causal_conv1d``, ``blocks``, ``rswaf_kan``, ``point_cloud``; whole models
in ``models_<name>``; ``base`` has :class:`Case`, :class:`Peer`, :class:`Target` and the profiles);
:data:`CASES` below lists which shapes each profile runs, in the order they run. For ``--report``, each op module
also declares its scaling sweeps (``SWEEPS``: the op's case rebuilt along one axis), gathered in :data:`SWEEPS`, and
:data:`REPORT_MODELS` lists the model cases of the report's throughput table.
"""

from __future__ import annotations

import torch

from .base import PROFILES, Case, Peer, Sweep, Target
from .blocks import SWEEPS as _BLOCK_SWEEPS
from .blocks import mamba_case
from .causal_conv1d import SWEEPS as _CONV_SWEEPS
from .causal_conv1d import conv_case
from .dct import SWEEPS as _DCT_SWEEPS
from .dct import dct_attention_case, dct_case
from .dilated_attention import DA_TARGETS, da_case, dformer_block_case
from .dilated_attention import SWEEPS as _DA_SWEEPS
from .models_dformer import DFORMER_TRAIN_TARGETS, dformer_infer_case, dformer_train_case
from .models_medvit import MEDVIT_TRAIN_TARGETS, medvit_infer_case, medvit_train_case
from .models_ssm import POINTMAMBA2_TRAIN_TARGETS, SS2D_TARGETS, model_infer_case, model_train_case, scan_block_case
from .multi_order_scan import MULTI_SCAN_TARGETS, multi_scan_case
from .multi_order_scan import SWEEPS as _MULTI_SCAN_SWEEPS
from .neighborhood_attention import SWEEPS as _NA_SWEEPS
from .neighborhood_attention import na_case, na_targets
from .point_cloud import SWEEPS as _POINT_SWEEPS
from .point_cloud import fps_case, knn_case
from .rswaf_kan import KAN_TARGETS, kan_case
from .rswaf_kan import SWEEPS as _KAN_SWEEPS
from .selective_scan import ISSUE_TARGETS, MAMBA_FORM_TARGETS, scan_case
from .selective_scan import SWEEPS as _SCAN_SWEEPS

__all__ = ["CASES", "PROFILES", "REPORT_MODELS", "SWEEPS", "Case", "Peer", "Sweep", "Target", "cases_for", "sweeps_for"]


_FP32_BF16 = (torch.float32, torch.bfloat16)

CASES: list[Case] = [
    scan_case(1, 16, 4, 64, "variable", ("quick",)),
    scan_case(2, 768, 16, 1024, "variable", ("default", "full"), (torch.float32,), ISSUE_TARGETS),
    # bf16 rows (issue 17): the scan's bf16 reference takes 8.5 s a call, so the default profile times the
    # kernel alone in bf16 (its fp32 row above has the reference) and the full one with the reference
    scan_case(2, 768, 16, 1024, "variable", ("default",), (torch.bfloat16,), reference=False),
    scan_case(2, 768, 16, 1024, "variable", ("full",), (torch.bfloat16,)),
    scan_case(1, 256, 16, 4096, "variable", ("full",)),
    scan_case(2, 768, 16, 256, "variable", ("full",), targets=MAMBA_FORM_TARGETS, mamba_form=True),
    scan_case(2, 768, 16, 1024, "fixed", ("full",)),
    scan_case(1, 1536, 64, 2048, "variable", ("full",)),
    # The GPU profile times the pure-PyTorch references (a Python loop over the sequence, or whole-tensor
    # gathers) only at shapes where a call takes well under a second, so that the profile fits
    # scripts/gpu_check.sh's time budget; the large shapes are timed against each other and the copy bandwidth.
    scan_case(
        8,
        1536,
        16,
        4096,
        "variable",
        ("gpu",),
        (torch.bfloat16, torch.float32),
        (
            Target("CUDA forward moves its bytes at >= 60% of the copy bandwidth", "cuda", "fwd", "bandwidth", 0.6),
            Target(
                "Triton forward within 1.5x of the CUDA forward", "triton", "fwd", "speedup", 1 / 1.5, against="cuda"
            ),
        ),
        reference=False,
    ),
    scan_case(
        2,
        768,
        16,
        1024,
        "variable",
        ("gpu",),
        (torch.float32,),
        (Target("CUDA forward+backward >= 30x the reference", "cuda", "fwd+bwd", "speedup", 30.0),),
    ),
    na_case((12, 12), 3, 2, ("quick",), heads=2, dim=8, flex=False),
    conv_case(2, 1536, 4096, 4, ("default", "full")),
    conv_case(8, 3072, 8192, 4, ("gpu",)),
    mamba_case(
        2,
        1024,
        256,
        16,
        ("default", "full"),
        (Target("forward+backward >= 10x the block on reference ops", "cpu", "fwd+bwd", "speedup", 10.0),),
    ),
    mamba_case(4, 1024, 768, 16, ("gpu",), dtypes=(torch.bfloat16,)),  # the reference block loops over L
    na_case((64, 64), 7, 1, ("default", "full"), na_targets(False)),
    # natten 0.21's CPU forward takes 1.2-1.6 s a call: the default profile times it at 64x64 d=1 only
    na_case((64, 64), 7, 1, ("full",), dtypes=(torch.bfloat16,)),
    na_case((64, 64), 7, 2, ("default",), na_targets(False), natten=False),
    na_case((64, 64), 7, 2, ("full",), na_targets(False)),
    na_case((16, 16, 16), 5, 1, ("default",), na_targets(True), natten=False),
    na_case((16, 16, 16), 5, 1, ("full",), na_targets(True)),
    da_case((8, 16, 16), (2, 8, 8), "global", ("quick",), heads=2, dim=16),
    # bf16 rows after the fp32 ones (targets are checked on a case's first dtype only): the avx512bf16 kernels;
    # the default profile times bf16 at the global scope (D-Former's GS-MSA) only
    da_case((32, 32, 32), (2, 8, 8), "local", ("default",), DA_TARGETS),
    da_case((32, 32, 32), (2, 8, 8), "local", ("full",), DA_TARGETS, dtypes=_FP32_BF16),
    da_case((32, 32, 32), (2, 8, 8), "global", ("default", "full"), DA_TARGETS, dtypes=_FP32_BF16),
    # block level (issue 17): D-Former's stage-1 block at the paper's token grid, local and global scope
    dformer_block_case((32, 32, 32), 96, 3, (2, 8, 8), "local", 1, ("full",)),
    dformer_block_case((32, 32, 32), 96, 3, (2, 8, 8), "global", 8, ("default", "full")),
    da_case((64, 64, 64), (2, 8, 8), "global", ("gpu",), heads=3, dim=32, dtypes=(torch.bfloat16, torch.float32)),
    dct_case(8, 64, 56, 28, ("default", "full")),
    dct_attention_case(
        2,
        64,
        56,
        2,
        0.25,
        ("default", "full"),
        (
            Target(
                "forward >= 4x full spatial attention", "cpu", "fwd", "speedup", 4.0, against="peer:spatial_attention"
            ),
        ),
    ),
    dct_attention_case(8, 64, 56, 2, 0.25, ("gpu",)),
    # no compiled-flex peer in the GPU profile: its compilation would take a good part of gpu_check.sh's window
    na_case((128, 128), 7, 1, ("gpu",), heads=4, dim=32, dtypes=(torch.bfloat16,), flex=False),
    na_case((32, 32, 32), 7, 1, ("gpu",), heads=4, dim=32, dtypes=(torch.bfloat16,), flex=False),
    fps_case(1, 2000, 200, 3, ("quick",)),
    fps_case(
        1,
        16384,
        2048,
        3,
        ("default", "full"),
        (
            Target("exact FPS >= 10x the torch loop", "cpu", "fwd", "speedup", 10.0),
            Target("exact FPS >= 2x fpsample's exact kd-line FPS", "cpu", "fwd", "speedup", 2.0, against="peer"),
        ),
    ),
    fps_case(
        8,
        16384,
        2048,
        3,
        ("full",),
        (Target("exact FPS of 8 clouds >= 3x fpsample's kd-line FPS", "cpu", "fwd", "speedup", 3.0, against="peer"),),
        reference=False,
    ),
    fps_case(8, 131072, 4096, 3, ("gpu",), reference=False),  # the textbook loop: one sync per step
    knn_case(1, 64, 1000, 8, 3, ("quick",)),
    knn_case(
        1,
        2048,
        16384,
        32,
        3,
        ("default", "full"),
        (
            Target("kNN >= 2x scipy cKDTree build+query", "cpu", "fwd", "speedup", 2.0, against="peer:ckdtree"),
            Target(
                "kNN >= 1.5x cKDTree's query alone", "cpu", "fwd", "speedup", 1.5, against="peer:ckdtree_query_only"
            ),
        ),
        reference=False,
    ),
    knn_case(8, 1024, 2048, 32, 64, ("full",), reference=False),
    knn_case(8, 8192, 16384, 32, 3, ("gpu",), reference=False),
    kan_case(49 * 64, 512, 1024, 8, ("default",), KAN_TARGETS),
    kan_case(49 * 64, 512, 1024, 8, ("full",), KAN_TARGETS, dtypes=_FP32_BF16),
    kan_case(64 * 196, 512, 1024, 8, ("gpu",), dtypes=(torch.bfloat16, torch.float32)),
    # PointMamba2's level-1 group Point-SSM (8 orderings of 1024 points, 128 channels): the full profile
    # runs the issue's batch of 8 and the reference; the default one cloud of it (seconds).
    multi_scan_case(1, 128, 64, 1024, 8, ("default",), MULTI_SCAN_TARGETS),
    multi_scan_case(8, 128, 64, 1024, 8, ("full",), MULTI_SCAN_TARGETS, with_reference=True),
    multi_scan_case(8, 128, 64, 1024, 8, ("gpu",)),
    multi_scan_case(1, 128, 64, 256, 8, ("full",), MULTI_SCAN_TARGETS, official=True),  # the official path, reduced
    # The models group (--ops models): D-Former at the paper's crop (seconds per step; SwinUNETR's tens).
    dformer_train_case(1, (64, 128, 128), ("full", "gpu"), DFORMER_TRAIN_TARGETS),
    dformer_infer_case(1, (64, 128, 128), ("full", "gpu")),
    # MedViTV2-small at 224x224, batch 8 (seconds per reference step).
    medvit_train_case("small", 8, 224, ("full", "gpu"), MEDVIT_TRAIN_TARGETS),
    medvit_infer_case("small", 8, 224, ("full", "gpu")),
    # PointMamba2 at one cloud of 512 points: the reference at the paper's batch 8 x 2048 exceeds 24 GB.
    model_train_case("pointmamba2_cls", ("full",), POINTMAMBA2_TRAIN_TARGETS),
    model_infer_case("pointmamba2_cls", ("full",)),
    model_train_case("pointmamba2_seg", ("full",)),
    # The scan patterns against the papers' permuted copies (the issue's SS2D shape), then their U-Nets.
    scan_block_case("ss2d", 2, (64, 64), 96, 16, ("full",), SS2D_TARGETS),
    scan_block_case("tri", 1, (32, 32, 32), 48, 16, ("full",), nslices=32, reference=False),
    model_train_case("vm_unet", ("full",)),
    model_train_case("segmamba", ("full",)),
    model_train_case("dct_histoformer", ("full",)),
    model_infer_case("dct_histoformer", ("full",)),
]


def cases_for(profile: str, ops_filter: set[str] | None = None) -> list[Case]:
    """The cases of a profile, optionally only those of some ops."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    return [c for c in CASES if profile in c.profiles and (not ops_filter or c.op in ops_filter)]


# medkernels-bench --report: every op's sweeps (declared beside its cases), in the order the report runs them.
SWEEPS: list[Sweep] = [
    *_SCAN_SWEEPS,
    *_MULTI_SCAN_SWEEPS,
    *_CONV_SWEEPS,
    *_BLOCK_SWEEPS,
    *_NA_SWEEPS,
    *_DA_SWEEPS,
    *_DCT_SWEEPS,
    *_KAN_SWEEPS,
    *_POINT_SWEEPS,
]

_TINY_DFORMER = dict(model_kwargs=dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2)), swin_features=12)

# The report's throughput table: the models group's cases at sizes where a profile's budget allows the reference
# ("default": not yet measured as a whole; PointMamba2's reference training step took over 4 minutes on a loaded
# machine, so it is left to the full profile with the paper-size cases).
REPORT_MODELS: dict[str, tuple[Case, ...]] = {
    "quick": (dformer_infer_case(1, (32, 32, 32), (), num_classes=3, **_TINY_DFORMER),),
    "default": (
        model_infer_case("dct_histoformer", ()),
        medvit_infer_case("small", 1, 224, ()),
        dformer_infer_case(1, (32, 64, 64), ()),
    ),
}


def sweeps_for(ops_filter: set[str] | None = None, match: str = "") -> list[Sweep]:
    """The report's sweeps of some ops (``ops_filter``), whose key (``<op>-<axis>``) contains ``match``."""
    return [s for s in SWEEPS if (not ops_filter or s.op in ops_filter) and match.lower() in s.key.lower()]
