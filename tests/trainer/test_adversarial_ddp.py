"""Two optimizers under real 2-process DDP (gloo, CPU): the discriminator's forward leaves the
generator out of its graph and DDP (`find_unused_parameters`) accepts it, with gradient
accumulation (`no_sync` on the first micro-batch of each optimizer step); the gradients are
all-reduced, so both ranks hold the same parameters after every step although each saw its own
images; and the checkpoint written at the end continues on both ranks."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from tests.trainer.training_run import tiny_config
from selfsup.trainer.distributed import current_context
from selfsup.trainer.loop import Batches, train, train_step
from selfsup.trainer.preemption import StopRequest
from selfsup.trainer.run import build_run

WORLD_SIZE = 2
STEPS = 3
ADVERSARIAL = ["method.decoder_width=16", "method.adversarial_weight=0.001", "method.discriminator_width=8",
               "optim.lr_scaling=none", "optim.lr=1.0e-3", "trainer.accumulate_steps=2"]


def worker(rank: int, data: str, output: str, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=120))
    try:
        config = tiny_config(Path(data), *ADVERSARIAL, f"trainer.max_steps={STEPS}", method="inpainting")
        run = build_run(config, Path(output) / "steps", current_context())
        assert isinstance(run.parallel_model, DistributedDataParallel)
        initial = {name: parameter.detach().clone() for name, parameter in run.model.named_parameters()}
        batches = Batches(run.data, channels_last=False, keep_first_views=False)
        try:
            for step in range(STEPS):
                terms = train_step(run, step, StopRequest(), batches).terms
                assert all(torch.isfinite(torch.tensor(value)) for value in terms.values()), terms
        finally:
            run.close()
        parameters = {name: parameter.detach().clone() for name, parameter in run.model.named_parameters()}
        torch.save({"initial": initial, "final": parameters, "terms": terms}, Path(output) / f"rank{rank}.pt")
        summary = train(config, Path(output) / "train")  # the loop itself, checkpoint included
        assert summary["step"] == STEPS
        dist.barrier()  # both ranks done before gloo is torn down: a rank leaving first can abort the other
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_optimizers_under_ddp_keep_the_ranks_in_step(demo_shards, tmp_path):
    root = str(Path(__file__).resolve().parents[2])
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(root)  # the spawned children import this module by name
        mp.spawn(worker, args=(str(demo_shards), str(tmp_path), str(tmp_path / "init")), nprocs=WORLD_SIZE,
                 join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    assert ranks[0]["terms"] != ranks[1]["terms"]  # each rank saw its own images
    for name, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][name]), f"{name} differs between the ranks"
        assert torch.equal(ranks[0]["initial"][name], ranks[1]["initial"][name])
    moved = [name for name, value in ranks[0]["final"].items() if not torch.equal(value, ranks[0]["initial"][name])]
    assert any(name.startswith("discriminator.") for name in moved)
    assert any(name.startswith("backbone.") for name in moved) and any(name.startswith("decoder.") for name in moved)
    checkpoint = torch.load(tmp_path / "train" / "checkpoints" / f"step-{STEPS:08d}" / "state.pt")
    assert list(checkpoint["optimizers"]) == ["discriminator", "generator"]
    # 120 images / (8 x 2 ranks) = 7 batches, 6 of them in 3 steps of 2 micro-batches: the epoch is done
    positions = [(entry["data"]["epoch"], entry["data"]["batches"]) for entry in checkpoint["ranks"]]
    assert positions == [(1, 0)] * WORLD_SIZE
