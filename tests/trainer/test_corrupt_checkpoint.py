"""A run whose newest checkpoint cannot be read (truncated, garbage bytes, its state.pt gone):
without --resume it continues from its newest intact checkpoint and says which one it passed
over; with --resume it continues from the checkpoint named; either way its losses go on exactly
as an uninterrupted run's. With no intact checkpoint, one CheckpointError names the unreadable
one. The pre-launch check (`check_resume_fits`) chooses as the trainer does."""

from __future__ import annotations

import shutil

import pytest

from selfsup.errors import CheckpointError
from selfsup.trainer.checkpoint import latest_checkpoint
from selfsup.trainer.loop import check_resume_fits, train
from selfsup.trainer.resume import load_resume_state
from tests.trainer.training_run import OneTorchThread, read_losses, tiny_config

STEPS = ["trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=3",
         "optim.warmup_epochs=0.2"]


@pytest.fixture(autouse=True)
def one_thread():
    with OneTorchThread():
        yield


@pytest.fixture(scope="module")
def finished_run(demo_shards, tmp_path_factory):
    """A 6-step run with checkpoints at steps 2, 4 and 6 (its losses are the uninterrupted run's)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    with OneTorchThread():
        train(tiny_config(demo_shards, *STEPS), run)
    assert sorted(path.name for path in (run / "checkpoints").glob("step-*")) == [
        "step-00000002", "step-00000004", "step-00000006"]
    return run


def corrupt(step_folder, how: str) -> None:
    state = step_folder / "state.pt"
    if how == "truncated":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif how == "garbage":
        state.write_bytes(b"\x89not a checkpoint at all" * 1000)
    else:
        state.unlink()


@pytest.mark.parametrize("how", ["truncated", "garbage", "missing"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_newest_intact_one(finished_run, demo_shards, tmp_path,
                                                                           how, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    newest, fallback = run / "checkpoints" / "step-00000006", run / "checkpoints" / "step-00000004"
    corrupt(newest, how)
    config = tiny_config(demo_shards, *STEPS)
    check_resume_fits(config, run)  # the pre-launch check agrees: no error, and the same choice
    assert load_resume_state(run / "checkpoints", None, config).path == fallback
    capsys.readouterr()

    summary = train(config, run)
    assert summary["start_step"] == 4 and summary["step"] == 6 and summary["resumed_from"] == str(fallback)
    warning = summary["resume_warning"]
    assert warning.startswith(str(newest)) and f"continuing from {fallback}, the newest intact checkpoint" in warning
    assert "--resume" in warning
    assert f"warning: {warning}" in capsys.readouterr().out.splitlines()  # the trainer's logger said so
    assert read_losses(run) == read_losses(finished_run)  # steps 5 and 6 again, bit for bit
    assert latest_checkpoint(run / "checkpoints") == newest  # rewritten, intact again
    assert train(config, run).get("resume_warning") is None


def test_resume_uses_the_checkpoint_it_names_even_when_the_newest_is_corrupt(finished_run, demo_shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    corrupt(run / "checkpoints" / "step-00000006", "garbage")
    named = run / "checkpoints" / "step-00000002"
    config = tiny_config(demo_shards, *STEPS, f"trainer.resume={named}")
    check_resume_fits(config, run)
    summary = train(config, run)
    assert summary["start_step"] == 2 and summary["step"] == 6 and summary["resumed_from"] == str(named)
    assert summary["resume_warning"].endswith(f"continuing from {named}, the checkpoint --resume names")
    assert read_losses(run) == read_losses(finished_run)


def test_with_no_intact_checkpoint_one_error_names_the_corrupt_one(finished_run, demo_shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for how, step in zip(("truncated", "garbage", "missing"), (6, 4, 2)):
        corrupt(run / "checkpoints" / f"step-{step:08d}", how)
    losses = (run / "losses.jsonl").read_bytes()
    config = tiny_config(demo_shards, *STEPS)
    for attempt in (lambda: check_resume_fits(config, run), lambda: train(config, run)):
        with pytest.raises(CheckpointError) as error:
            attempt()
        message = str(error.value)
        assert "\n" not in message and message.startswith(str(run / "checkpoints" / "step-00000006" / "state.pt"))
        assert f"no intact checkpoint in {run / 'checkpoints'}" in message and "--resume CKPT" in message
    assert (run / "losses.jsonl").read_bytes() == losses  # nothing written over

    # named by --resume, a corrupt checkpoint is refused by name too
    named = run / "checkpoints" / "step-00000004"
    with pytest.raises(CheckpointError, match=f"{named / 'state.pt'}: not a checkpoint .*; it is the checkpoint "
                                              r"--resume \(trainer.resume\) names: name an intact one"):
        check_resume_fits(tiny_config(demo_shards, *STEPS, f"trainer.resume={named}"), run)
