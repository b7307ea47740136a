"""`data.skip_corrupt`: a run over a dataset with a damaged image stops with one error naming it by
default; with the option it leaves the sample out, says so, counts it in TensorBoard, keeps every
rank on the same steps (2 gloo ranks), and a resumed run reads around it from the checkpoint."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from selfsup.errors import DamagedSamplesError
from selfsup.pipeline.dataset import read_manifest
from selfsup.trainer.checkpoint import load_checkpoint
from selfsup.trainer.loop import train
from tests.trainer.training_run import OneTorchThread, read_losses, tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))
from damaged_shards import copy_dataset, overwrite_image  # noqa: E402

STEPS = 18  # 15 steps per epoch at batch 8 over the 120 train samples: the run crosses an epoch


@pytest.fixture(scope="module")
def damaged(demo_shards, tmp_path_factory):
    """The demo dataset with one train image's first bytes overwritten: (folder, its manifest row)."""
    dataset = copy_dataset(demo_shards, tmp_path_factory.mktemp("damaged") / "shapes")
    rows = [number for number, row in enumerate(read_manifest(dataset / "manifest.parquet")) if row["split"] == "train"]
    return dataset, overwrite_image(dataset, rows[30])


def test_a_damaged_sample_stops_the_run_naming_it(damaged, tmp_path):
    dataset, row = damaged
    with OneTorchThread(), pytest.raises(DamagedSamplesError) as caught:
        train(tiny_config(dataset, f"trainer.max_steps={STEPS}"), tmp_path / "run")
    assert row["shard"] in str(caught.value) and row["key"] in str(caught.value)
    assert "data.skip_corrupt=true" in str(caught.value)


@pytest.mark.slow
def test_skip_corrupt_leaves_it_out_counts_it_and_resumes_around_it(damaged, tmp_path, capfd):
    dataset, row = damaged
    run = tmp_path / "run"
    options = ("data.skip_corrupt=true", "trainer.checkpoint_every=10")
    with OneTorchThread():
        summary = train(tiny_config(dataset, f"trainer.max_steps={STEPS}", *options), run)
    assert summary["step"] == STEPS and summary["skipped_samples"] == 1
    said = capfd.readouterr().err
    assert f"leaving out 1 damaged samples" in said and row["key"] in said
    assert sorted(read_losses(run)) == list(range(1, STEPS + 1))
    saved = load_checkpoint(run / "checkpoints" / f"step-{STEPS:08d}")["ranks"][0]["data"]
    assert saved["excluded"] == [[row["shard"], row["offset"]]]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [event.value for event in events.Scalars("train/skipped_samples")][-1] == 1
    with OneTorchThread():  # resumed: the checkpoint's position leaves the sample out from the start
        resumed = train(tiny_config(dataset, f"trainer.max_steps={STEPS + 12}", *options), run)
    assert resumed["step"] == STEPS + 12 and resumed["skipped_samples"] == 1
    assert "leaving out" not in capfd.readouterr().err  # not met again: no rebuild, no second message


def worker(rank: int, data: str, run: str, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    try:
        config = tiny_config(Path(data), f"trainer.max_steps={STEPS}", "data.skip_corrupt=true")
        summary = train(config, run)
        Path(run, f"summary-{rank}.json").write_text(json.dumps(
            {"step": summary["step"], "skipped": summary["skipped_samples"]}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_skipping_stay_on_the_same_steps(damaged, tmp_path):
    """7 steps per epoch of 2 x 8 samples; the rank whose part holds the sample rebuilds its loader,
    the other does not, and both end at the same step (a collective every step would hang if not)."""
    dataset, _ = damaged
    root = str(Path(__file__).resolve().parents[2])
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(root)  # the spawned children import this module by name
        mp.spawn(worker, args=(str(dataset), str(tmp_path / "run"), str(tmp_path / "init")), nprocs=2, join=True)
    summaries = [json.loads((tmp_path / "run" / f"summary-{rank}.json").read_text()) for rank in range(2)]
    assert [summary["step"] for summary in summaries] == [STEPS, STEPS]
    assert summaries[0]["skipped"] == summaries[1]["skipped"] >= 1  # the metric is summed over the ranks
