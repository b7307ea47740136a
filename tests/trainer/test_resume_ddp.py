"""Exact resume with two ranks: a 2-process gloo run stopped mid-epoch and started again logs the
same losses, bit for bit, as the same 2-process run straight through, and each rank's loader
position is restored from its own entry of the checkpoint."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.trainer.training_run import read_losses, tiny_config
from selfsup.trainer.checkpoint import load_checkpoint
from selfsup.trainer.loop import train
from selfsup.trainer.preemption import StopRequest

WORLD_SIZE = 2
STEPS = 10  # 120 train samples / (8 x 2 ranks) = 7 steps per epoch: the run crosses an epoch
STOP_AFTER = 4


def worker(rank: int, data: str, run: str, init_file: str, stop_after: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=120))
    try:
        config = tiny_config(Path(data), f"trainer.max_steps={STEPS}", "optim.warmup_epochs=0.4")
        stop = StopRequest()

        def report(metrics):
            if stop_after and metrics["step"] == stop_after and rank == 1:  # one rank asks; all stop
                stop.request("test")

        summary = train(config, run, report=report, stop=stop)
        Path(run, f"summary-{rank}.json").write_text(json.dumps({"step": summary["step"]}))
        dist.barrier()  # both ranks done before gloo is torn down: a rank leaving first can abort the other
    finally:
        dist.destroy_process_group()


def run_two_ranks(data: Path, run: Path, init_file: Path, stop_after: int = 0) -> list[int]:
    mp.spawn(worker, args=(str(data), str(run), str(init_file), stop_after), nprocs=WORLD_SIZE, join=True)
    return [json.loads((run / f"summary-{rank}.json").read_text())["step"] for rank in range(WORLD_SIZE)]


@pytest.mark.slow
def test_two_rank_run_stopped_and_resumed_matches_a_straight_one(demo_shards, tmp_path):
    root = str(Path(__file__).resolve().parents[2])
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(root)  # the spawned children import this module by name
        assert run_two_ranks(demo_shards, tmp_path / "straight", tmp_path / "init-a") == [STEPS, STEPS]
        stopped = run_two_ranks(demo_shards, tmp_path / "resumed", tmp_path / "init-b", stop_after=STOP_AFTER)
        assert stopped[0] == stopped[1] and STOP_AFTER <= stopped[0] < STEPS  # every rank stops at one step
        checkpoint = load_checkpoint(tmp_path / "resumed" / "checkpoints" / f"step-{stopped[0]:08d}")
        assert [entry["data"]["batches"] for entry in checkpoint["ranks"]] == [stopped[0]] * WORLD_SIZE
        assert run_two_ranks(demo_shards, tmp_path / "resumed", tmp_path / "init-c") == [STEPS, STEPS]

    straight, resumed = read_losses(tmp_path / "straight"), read_losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed == straight  # bitwise: the mean loss over both ranks, compared exactly
