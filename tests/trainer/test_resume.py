"""A resumed run continues exactly: the losses after the restart equal the uninterrupted run's,
bit for bit on the CPU (torchtune-style), and the loader yields the same batches either way."""

from __future__ import annotations

import json

import pytest
import torch

from selfsup.pipeline.dataset import load_dataset_info
from selfsup.pipeline.loader import build_train_loader
from selfsup.pipeline.recipes import build_recipe
from tests.trainer.training_run import OneTorchThread, merge_optimizer_groups, read_losses, tiny_config
from selfsup.trainer.checkpoint import load_checkpoint
from selfsup.errors import CheckpointError
from selfsup.trainer.data import DataStream, tensor_to_bytes
from selfsup.trainer.loop import train
from selfsup.trainer.preemption import StopRequest


@pytest.fixture(autouse=True)
def one_thread():
    with OneTorchThread():
        yield


def test_stream_restored_mid_epoch_yields_the_same_batches(demo_shards):
    dataset = load_dataset_info(demo_shards)
    recipe = build_recipe("simclr", 16)

    def build(epoch, dali_checkpoint):
        return build_train_loader(dataset, recipe, batch_size=16, seed=4, num_threads=1, epoch=epoch,
                                  resumable=True, dali_checkpoint=dali_checkpoint)

    straight = DataStream(build, build_ahead=1)
    assert straight.batches_per_epoch == 7
    batches = [next(straight)["view_0"] for _ in range(12)]  # crosses the epoch boundary at 7
    straight.close()

    first = DataStream(build)
    for _ in range(3):
        next(first)
    state = first.state()
    first.close()
    assert (state["epoch"], state["batches"]) == (0, 3) and state["dali"].dtype == torch.uint8
    restored = DataStream(build, epoch=0, batches=3, dali_checkpoint=tensor_to_bytes(state["dali"]))
    replayed = DataStream(build, epoch=0, batches=3)  # no DALI state: pull and discard 3 batches
    for expected in batches[3:]:
        assert torch.equal(next(restored)["view_0"], expected)
        assert torch.equal(next(replayed)["view_0"], expected)
    assert restored.state()["epoch"] == 1
    restored.close()
    replayed.close()


def test_stopped_and_resumed_run_matches_an_uninterrupted_one(demo_shards, tmp_path):
    """Cosine lr with warm-up over 18 steps; stop mid-epoch, start again on the same folder."""
    config = tiny_config(demo_shards, "trainer.max_steps=18", "optim.warmup_epochs=0.4")
    train(config, tmp_path / "straight")

    stop = StopRequest()

    def report(metrics):
        if metrics["step"] == 5:
            stop.request("test")

    summary = train(config, tmp_path / "resumed", report=report, stop=stop)
    assert summary["step"] == 6 and summary["stopped"] == "test"
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step-00000006")["ranks"][0]["data"]["batches"] == 6
    summary = train(config, tmp_path / "resumed")
    assert summary["step"] == 18

    straight, resumed = read_losses(tmp_path / "straight"), read_losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 19))
    assert resumed == straight  # bitwise: floats compared exactly


@pytest.mark.slow
def test_going_further_with_a_larger_max_steps(demo_shards, tmp_path):
    """`--set trainer.max_steps=N` on a finished run continues it (constant schedule, so the first
    half does not depend on the final length)."""
    constant = ["optim.lr_scaling=none", "optim.lr=0.01", "optim.final_lr=0.01", "optim.warmup_epochs=0"]
    train(tiny_config(demo_shards, "trainer.max_steps=16", *constant), tmp_path / "straight")
    train(tiny_config(demo_shards, "trainer.max_steps=8", *constant), tmp_path / "resumed")
    train(tiny_config(demo_shards, "trainer.max_steps=16", *constant), tmp_path / "resumed")
    assert read_losses(tmp_path / "resumed") == read_losses(tmp_path / "straight")


def test_a_checkpoint_of_another_config_is_refused(demo_shards, tmp_path):
    train(tiny_config(demo_shards, "trainer.max_steps=1"), tmp_path / "run")
    other = tiny_config(demo_shards, "trainer.max_steps=2", "method.temperature=0.3", "data.batch_size=4")
    with pytest.raises(CheckpointError, match=r"data\.batch_size: checkpoint has 8, this run has 4") as error:
        train(other, tmp_path / "run")
    assert "method.temperature: checkpoint has 0.1, this run has 0.3" in str(error.value)
    assert str(error.value).startswith(str(tmp_path / "run" / "checkpoints" / "step-00000001"))


def test_a_checkpoint_of_another_method_version_is_refused_by_name(demo_shards, tmp_path):
    """Same config, other tensors (an older version of the method): a CheckpointError naming the
    file and the optimizer groups, and the checkpoint is left as it was."""
    train(tiny_config(demo_shards, "trainer.max_steps=1"), tmp_path / "run")
    step = tmp_path / "run" / "checkpoints" / "step-00000001"
    state = load_checkpoint(step)
    groups, merged = merge_optimizer_groups(step)
    written = (step / "state.pt").read_bytes()
    with pytest.raises(CheckpointError) as error:
        train(tiny_config(demo_shards, "trainer.max_steps=2"), tmp_path / "run")
    message = str(error.value)
    assert message.startswith(f"{step}: its optimizer has the parameter groups [all ({len(merged['params'])})]")
    assert f"{groups[0]['name']} ({len(groups[0]['params'])})" in message
    assert (step / "state.pt").read_bytes() == written

    model = dict(state["model"])
    model.pop(sorted(model)[0])
    torch.save(dict(state, model=model), step / "state.pt")
    with pytest.raises(CheckpointError, match=f"{step}: its model state does not fit this run's SimCLR"):
        train(tiny_config(demo_shards, "trainer.max_steps=2"), tmp_path / "run")


def test_resume_from_a_named_checkpoint_into_a_new_folder(demo_shards, tmp_path):
    train(tiny_config(demo_shards, "trainer.max_steps=3"), tmp_path / "first")
    named = tmp_path / "first" / "checkpoints" / "step-00000003"
    summary = train(tiny_config(demo_shards, "trainer.max_steps=5", f"trainer.resume={named}"), tmp_path / "second")
    assert summary["step"] == 5 and sorted(read_losses(tmp_path / "second")) == [4, 5]
    # started again (as after a preemption), the folder's own newer checkpoint wins over the named one
    summary = train(tiny_config(demo_shards, "trainer.max_steps=6", f"trainer.resume={named}"), tmp_path / "second")
    assert summary["step"] == 6 and sorted(read_losses(tmp_path / "second")) == [4, 5, 6]


def test_the_summary_reports_the_last_steps_loss_also_when_no_step_is_left(demo_shards, tmp_path):
    """Started again after its last step, a run trains nothing and still reports that step's loss
    terms (kept in the checkpoint); continued further, the loss of its new last step."""
    run = tmp_path / "run"
    config = tiny_config(demo_shards, "trainer.max_steps=3")
    first = train(config, run)
    last_line = json.loads((run / "losses.jsonl").read_text().splitlines()[-1])
    assert last_line["step"] == 3 and first["loss"] == last_line["loss"]
    again = train(config, run)
    assert again["step"] == 3 and again["start_step"] == 3
    assert {name: again[name] for name in last_line if name != "step"} == {
        name: value for name, value in last_line.items() if name != "step"}
    assert json.loads((run / "metrics.json").read_text())["loss"] == last_line["loss"]

    further = train(tiny_config(demo_shards, "trainer.max_steps=5"), run)
    assert further["step"] == 5 and further["loss"] == read_losses(run)[5] != last_line["loss"]

    # a checkpoint written before the loss terms were kept in it: the loss line of its step stands in
    step = run / "checkpoints" / "step-00000005"
    state = load_checkpoint(step)
    assert state["loss_terms"]["loss"] == read_losses(run)[5]
    torch.save({key: value for key, value in state.items() if key != "loss_terms"}, step / "state.pt")
    assert train(tiny_config(demo_shards, "trainer.max_steps=5"), run)["loss"] == read_losses(run)[5]


def test_a_run_stopped_between_logged_steps_reports_the_loss_of_its_last_step(demo_shards, tmp_path):
    """Stopped at step 1 with logging every 1000 steps and no checkpoint hook: the summary still has
    step 1's loss."""
    stop = StopRequest()
    stop.request("test")  # seen during the first step: every rank stops after it
    summary = train(tiny_config(demo_shards, "trainer.max_steps=10", "trainer.log_every=1000"), tmp_path / "run",
                    stop=stop)
    assert summary["step"] == 1 and summary["stopped"] == "test"
    assert summary["loss"] == read_losses(tmp_path / "run")[1]
