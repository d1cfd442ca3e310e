"""The trainers' collectives: NCCL reduces CUDA tensors only, so every collective goes through
DistContext, which hands the process group tensors on the group's device."""

from __future__ import annotations

import ast
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import wsseg_fast
from wsseg_fast.pipelines.distributed import DistContext

COLLECTIVES = {"all_reduce", "all_gather", "all_gather_object", "broadcast", "reduce", "reduce_scatter", "gather"}


def test_an_nccl_group_takes_tensors_on_the_local_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # joined by the caller: setup only reads it
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    ctx = DistContext.setup()
    assert (ctx.rank, ctx.world, ctx.device, ctx.owned) == (1, 2, torch.device("cuda", 1), False)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    assert DistContext.setup().device == torch.device("cpu")


def test_no_collective_bypasses_distcontext():
    """A trainer calling torch.distributed itself would hand NCCL its CPU tensors."""
    package = Path(wsseg_fast.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "distributed.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in COLLECTIVES:
                if isinstance(node.value, ast.Name) and node.value.id in ("dist", "distributed"):
                    offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert not offenders, offenders


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_gpu_ranks(rank: int, port: int, out: str) -> None:
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.cuda.set_device(rank)
    ctx = DistContext(rank, 2, rank, True, torch.device("cuda", rank))
    total = ctx.all_sum(torch.tensor([rank + 1.0], dtype=torch.float64))  # a CPU tensor, as the trainers pass
    torch.save(total, f"{out}/{rank}.pt")
    ctx.close(finished=True)


@pytest.mark.cuda
def test_all_sum_over_two_gpus(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    torch.multiprocessing.spawn(_two_gpu_ranks, args=(_free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        total = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert total.device.type == "cpu" and total.item() == 3.0
