"""The training loop the examples share: one process or torchrun (DistributedDataParallel, or FSDP2 with ``--fsdp``),
a DistributedSampler over the data, tqdm progress, held-out evaluation against a trivial baseline, safetensors
checkpoints with ``--resume``, and a PNG. Only rank 0 logs and writes.

An example supplies the model, the datasets, the loss and two callbacks (see :func:`run`); everything else is here.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


class Pairs(Dataset):
    """A dataset of dict items (medkernels.data's) as ``(item[x], item[y])`` pairs for the loop."""

    def __init__(self, dataset: Dataset, x: str, y: str) -> None:
        self.dataset, self.x, self.y = dataset, x, y

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = self.dataset[i]
        return item[self.x], item[self.y]


def balanced_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean over the classes present in ``labels`` of the fraction of each class predicted as itself."""
    classes = labels.unique().tolist()
    return sum((pred[labels == c] == c).float().mean().item() for c in classes) / len(classes)


def classification_metrics(pred: torch.Tensor, labels: torch.Tensor, majority: int) -> dict:
    """Balanced accuracy and accuracy, with those of always predicting ``majority`` as the baselines."""
    base = torch.full_like(labels, majority)
    return {
        "balanced_accuracy": balanced_accuracy(pred, labels),
        "accuracy": (pred == labels).float().mean().item(),
        "baseline_balanced_accuracy": balanced_accuracy(base, labels),
        "baseline_accuracy": (labels == majority).float().mean().item(),
    }


def classification_callbacks(
    val: list[dict], num_classes: int, picture: Callable[[torch.Tensor], tuple]
) -> tuple[Callable, Callable]:
    """``evaluate`` and ``draw`` for :func:`run` of an image classifier on validation items ``{"image", "label"}``:
    balanced accuracy against the majority class, and a strip of 8 images (``picture(images) -> (array, cmap)``)
    titled with their labels and predictions."""
    images = torch.stack([v["image"] for v in val])
    labels = torch.stack([torch.as_tensor(v["label"]) for v in val])
    majority = int(torch.bincount(labels, minlength=num_classes).argmax())

    def evaluate(model, device):
        pred = torch.cat([model(images[i : i + 64].to(device)).argmax(1).cpu() for i in range(0, len(images), 64)])
        return classification_metrics(pred, labels, majority)

    def draw(model, device):
        pred = model(images[:8].to(device)).argmax(1).cpu()
        array, cmap = picture(images[:8])

        def panels(fig, row, cols):
            ax = fig.add_subplot(row, cols, 2)
            ax.imshow(array, cmap=cmap)
            ax.set_title(f"labels {' '.join(map(str, labels[:8].tolist()))} / predicted "
                         f"{' '.join(map(str, pred.tolist()))}", fontsize=8)  # fmt: skip
            ax.set_axis_off()

        return panels

    return evaluate, draw


def every_nth(dataset: Dataset, count: int) -> list:
    """About ``count`` items spread evenly over ``dataset`` (a fixed validation subset)."""
    step = max(1, len(dataset) // count)
    return [dataset[i] for i in range(0, len(dataset), step)][:count]


def main(parse_args: Callable, train: Callable, argv: list[str] | None = None) -> None:
    """An example's entry point: parse, train, and leave the process group."""
    args = parse_args(argv)
    try:
        train(args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def add_arguments(p: argparse.ArgumentParser, *, steps: int, batch_size: int, lr: float, out: str) -> None:
    """The options every example has."""
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=batch_size, help="global batch (split over the processes)")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--out", default=out)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (torch.distributed.fsdp.fully_shard)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


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


def optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, fsdp: bool) -> dict:
    """The optimizer's state to checkpoint: under FSDP2 the full (unsharded) state gathered onto rank 0 (a collective:
    every rank calls it; the others get an empty dict), else ``opt.state_dict()``."""
    if not fsdp:
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict, fsdp: bool) -> None:
    """Restores what :func:`optimizer_state` saved (under FSDP2 every rank reads the full state and keeps its
    shards)."""
    if not fsdp:
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


def save_checkpoint(out: Path, state: dict, opt_state: dict, step: int, history: dict) -> None:
    """The weights as safetensors, the optimizer state (:func:`optimizer_state`) and step beside them (for
    --resume), the history as JSON."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / "model.safetensors"))
    torch.save({"optimizer": opt_state, "step": step}, out / "trainer.pt")
    (out / "history.json").write_text(json.dumps(history))


def save_plot(out: Path, history: dict, metric: str, draw: Callable | None) -> None:
    """curves.png: the training loss and the validation metric, then the example's own panels (``draw(fig, 1, 3)``
    adds them at subplot positions 2 and 3)."""
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
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.legend(loc="upper left")
    ax2 = ax.twinx()
    ax2.plot(history["val_step"], [v[metric] for v in history["val"]], "r.-", label=f"val {metric}")
    ax2.plot(history["val_step"], [v[f"baseline_{metric}"] for v in history["val"]], "k--", label="baseline")
    ax2.set_ylabel(metric), ax2.legend(loc="upper right")
    if draw is not None:
        draw(fig, 1, 3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


def run(
    args: argparse.Namespace,
    model: torch.nn.Module,
    train_set: Dataset,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    evaluate: Callable[[torch.nn.Module, torch.device], dict],
    metric: str,
    draw: Callable[[torch.nn.Module, torch.device], Callable | None] | None = None,
) -> tuple[dict, torch.nn.Module]:
    """Trains ``model`` on ``train_set`` (items ``(input, target)``) for ``args.steps`` steps of ``args.batch_size``
    (global) and returns the history and the model.

    ``evaluate(model, device)`` runs on every rank (a collective under FSDP) and returns a dict with ``metric`` and
    ``baseline_<metric>``; ``draw(model, device)`` (every rank) returns the figure callback for :func:`save_plot`.
    """
    rank, world, device = setup_distributed()
    torch.manual_seed(args.seed)
    model = model.to(device)
    out = Path(args.out)
    step, history, trainer = 0, {"step": [], "loss": [], "val_step": [], "val": []}, None
    if args.resume and (out / "trainer.pt").exists():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(out / "model.safetensors"), device=str(device)))
        trainer = torch.load(out / "trainer.pt", map_location=device, weights_only=True)
        step = int(trainer["step"])
        history = json.loads((out / "history.json").read_text())
    wrapped, fsdp = model, args.fsdp and world > 1
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)  # replaces the parameters by sharded DTensors: the optimizer must be built after it
    elif world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr) if args.optimizer == "adamw" else torch.optim.SGD(params, lr=args.lr)
    if trainer is not None:
        load_optimizer_state(model, opt, trainer["optimizer"], fsdp)
    if args.compile:
        wrapped = torch.compile(wrapped)
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must be a multiple of the {world} processes")
    if len(train_set) == 0:
        raise ValueError("the training set is empty")
    sampler = DistributedSampler(train_set, world, rank, shuffle=False) if world > 1 else None
    loader = DataLoader(train_set, batch_size=args.batch_size // world, sampler=sampler, shuffle=False)
    progress = None
    if rank == 0 and not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=args.steps, initial=step, desc="train", unit="step")
    t0 = time.time()
    model.train()
    while step < args.steps:
        for x, y in loader:
            if step >= args.steps:
                break
            loss = loss_fn(wrapped(x.to(device)), y.to(device))
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
                model.eval()
                with torch.no_grad():
                    metrics = evaluate(model, device)
                model.train()
                state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
                opt_state = optimizer_state(model, opt, fsdp)  # a collective under FSDP too
                if rank == 0:
                    history["val_step"].append(step)
                    history["val"].append(metrics)
                    print(
                        f"\nstep {step}: loss {value.item():.3f}, val {metric} {metrics[metric]:.3f} (baseline "
                        f"{metrics[f'baseline_{metric}']:.3f}), {time.time() - t0:.0f} s"
                    )
                    save_checkpoint(out, state, opt_state, step, history)
                if world > 1:
                    dist.barrier()
    if progress is not None:
        progress.close()
    model.eval()
    with torch.no_grad():
        panels = draw(model, device) if draw is not None else None
    model.train()
    if rank == 0:
        save_plot(out, history, metric, panels)
    return history, model
