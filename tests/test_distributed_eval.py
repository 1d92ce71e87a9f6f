"""Sharded evaluation: a real 2-process gloo run gives the single-process per-example rows."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sinkhorn_attacks.attacks import from_preset
from sinkhorn_attacks.eval import attack_sharded, shard_indices


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(11, 1, 8, 8, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    y = model(x).argmax(1)
    return model, x, y


def _attack(model):
    return from_preset("linf-pgd", model, radius=0.05, steps=5, step_size=0.02, meter_cost=None)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, x, y = _data()
        rows = attack_sharded(_attack(model), x, y)
        if rank == 0:
            torch.save(rows, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_shard_indices_partition():
    parts = [shard_indices(11, r, 3) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(11))
    assert [len(p) for p in parts] == [4, 4, 3]
    with pytest.raises(ValueError):
        shard_indices(5, 2, 2)


def test_two_process_gloo_matches_single_process(tmp_path):
    model, x, y = _data()
    single = attack_sharded(_attack(model), x, y)  # no process group: one process
    out = str(tmp_path / "rows.pt")
    mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="spawn")
    sharded = torch.load(out, weights_only=False)
    assert [r["index"] for r in sharded] == list(range(11))
    for a, b in zip(single, sharded, strict=True):
        assert a["success"] == b["success"] and a["iterations"] == b["iterations"]
        assert a["linf"] == pytest.approx(b["linf"], abs=1e-7)
