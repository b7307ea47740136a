"""`selfsup train` and `selfsup eval knn` refuse bad input with one clear line (exit 2), before Ray
starts. Run in this process (`selfsup.cli.main.main`), as the command runs them. The 2-worker run
through Ray, its run folder and `eval knn` on it are in tests/cluster/test_ray_preemption.py."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from selfsup.cli.main import main
from selfsup.trainer.config import save_config
from selfsup.trainer.loop import train
from tests.trainer.training_run import merge_optimizer_groups, tiny_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "model.backbone=resnet18", "--set", "data.image_size=32", "--set", "data.batch_size=16",
        "--set", "method.projection_hidden_dim=64", "--set", "trainer.log_every=1",
        "--set", "optim.warmup_epochs=0"]


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def selfsup(capsys, monkeypatch):
    """Run `selfsup ARGS...` in this process from the repository root; its status and output."""
    monkeypatch.chdir(ROOT)

    def run(*arguments: str) -> Outcome:
        try:
            status = main(list(arguments))
        except SystemExit as exit:  # argparse's usage errors
            status = exit.code
        captured = capsys.readouterr()
        return Outcome(status, captured.out, captured.err)
    return run


def ray_running() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def test_train_refuses_bad_input_clearly(selfsup, demo_shards, tmp_path):
    typo = selfsup("train", "--config", "configs/simclr.yaml", "--data", str(demo_shards), "--output",
                   str(tmp_path / "a"), "--set", "optim.lrr=0.1")
    assert typo.returncode == 2
    assert "unknown config key optim.lrr" in typo.stderr and "valid keys in optim" in typo.stderr
    missing = selfsup("train", "--config", "configs/simclr.yaml", "--data", str(tmp_path / "nowhere"),
                      "--output", str(tmp_path / "b"), *TINY)
    assert missing.returncode == 2 and "nowhere" in missing.stderr
    # a model that cannot be built is refused before Ray starts (it failed inside every worker)
    patch = selfsup("train", "--config", "configs/dino.yaml", "--data", str(demo_shards), "--output",
                    str(tmp_path / "c"), "--set", "data.image_size=40", "--set", "data.recipe.local_size=16")
    assert patch.returncode == 2, patch.stderr[-2000:]
    assert "vit_small + dino: img_size 40 is not a multiple of patch_size 16" in patch.stderr
    assert "Ray" not in patch.stderr and not ray_running() and not (tmp_path / "c").exists()
    no_checkpoint = selfsup("eval", "knn", "--checkpoint", str(tmp_path / "empty"), "--data", str(demo_shards))
    assert no_checkpoint.returncode == 2 and "no checkpoint" in no_checkpoint.stderr
    no_images = selfsup("eval", "knn", "--checkpoint", str(tmp_path / "empty"), "--data", str(demo_shards),
                        "--recalibrate-bn", "0")
    assert no_images.returncode == 2
    assert "--recalibrate-bn: expected a number of images of at least 1, got '0'" in no_images.stderr


def test_train_refuses_a_checkpoint_that_does_not_fit_before_ray_starts(selfsup, demo_shards, tmp_path):
    """Continuing a run whose checkpoint was written with another config, or by another version of
    the method (other optimizer groups), is one clear line naming the checkpoint, not a traceback
    from every worker; the checkpoint stays as it was."""
    run, tiny = tmp_path / "run", tiny_config(demo_shards, "trainer.max_steps=1")
    save_config(tiny, tmp_path / "tiny.yaml")
    train(tiny, run)
    step = run / "checkpoints" / "step-00000001"
    config = ["--config", str(tmp_path / "tiny.yaml"), "--data", str(demo_shards), "--output", str(run)]
    other = selfsup("train", *config, "--set", "data.batch_size=4")
    assert other.returncode == 2, other.stderr[-2000:]
    assert f"selfsup: error: {step}: the checkpoint does not fit this run" in other.stderr
    assert "data.batch_size: checkpoint has 8, this run has 4" in other.stderr and not ray_running()

    merge_optimizer_groups(step)
    written = (step / "state.pt").read_bytes()
    older = selfsup("train", *config, "--set", "trainer.max_steps=2")
    assert older.returncode == 2, older.stderr[-2000:]
    assert f"selfsup: error: {step}: its optimizer has the parameter groups [all (" in older.stderr
    assert not ray_running() and (step / "state.pt").read_bytes() == written


@pytest.mark.parametrize("override, message", [
    ("trainer.precision=bf61", "trainer.precision: expected one of 'auto', 'bf16', 'fp16', 'fp32', got 'bf61'"),
    ("data.batch_size=0", "data.batch_size=0: expected 1 or more"),
    ("trainer.max_steps=-1", "trainer.max_steps=-1: expected 1 or more"),
    ("trainer.keep_checkpoints=0", "trainer.keep_checkpoints=0: expected 1 or more"),
])
def test_a_bad_value_stops_train_before_ray_starts(selfsup, demo_shards, tmp_path, override, message):
    outcome = selfsup("train", "--config", "simclr", "--data", str(demo_shards), "--output", str(tmp_path / "run"),
                      "--set", override)
    assert outcome.returncode == 2 and outcome.stderr.strip().splitlines() == [f"selfsup: error: simclr: {message}"]
    assert not ray_running() and not (tmp_path / "run").exists()


def test_train_names_an_unreadable_checkpoint_in_one_line_before_ray_starts(selfsup, demo_shards, tmp_path):
    """The run's only checkpoint is garbage: one line naming it and pointing to --resume (exit 2),
    from the pre-launch check; tests/trainer/test_corrupt_checkpoint.py has the fallbacks."""
    run, tiny = tmp_path / "run", tiny_config(demo_shards, "trainer.max_steps=1")
    save_config(tiny, tmp_path / "tiny.yaml")
    train(tiny, run)
    state = run / "checkpoints" / "step-00000001" / "state.pt"
    state.write_bytes(b"garbage, not a checkpoint")
    outcome = selfsup("train", "--config", str(tmp_path / "tiny.yaml"), "--data", str(demo_shards), "--output",
                      str(run), "--set", "trainer.max_steps=2")
    assert outcome.returncode == 2, outcome.stderr[-2000:]
    (line,) = outcome.stderr.strip().splitlines()
    assert line == (f"selfsup: error: {state}: not a checkpoint (torch.save writes a zip archive; this file does "
                    f"not begin as one); no intact checkpoint in {run / 'checkpoints'} to continue from: name one "
                    "with --resume CKPT (trainer.resume), or move that folder aside to start afresh")
    assert not ray_running() and state.read_bytes() == b"garbage, not a checkpoint"


def test_supervised_needs_labels_and_the_dataset_s_classes(selfsup, demo_folder, demo_shards, tmp_path):
    """`supervised` trains on the class labels: a dataset converted from a flat folder (no labels),
    or a num_classes other than the dataset's, is one line before any training starts."""
    from selfsup.pipeline.convert import convert

    flat = tmp_path / "flat"
    flat.mkdir()
    for index, image in enumerate(sorted(demo_folder.glob("*/*.jpg"))[:24]):
        (flat / f"{index:02d}.jpg").write_bytes(image.read_bytes())
    convert(flat, tmp_path / "flat-shards", shard_size="64KB", workers=1, progress=False)
    common = ["--config", "supervised", *TINY[:6]]
    unlabeled = selfsup("train", *common, "--set", "method.num_classes=10", "--data", str(tmp_path / "flat-shards"),
                        "--output", str(tmp_path / "a"))
    assert unlabeled.returncode == 2, unlabeled.stderr[-2000:]
    assert unlabeled.stderr.strip().splitlines() == [
        f"selfsup: error: {tmp_path / 'flat-shards'}: method supervised trains on class labels, but this dataset "
        "has none (converted from a flat folder); convert a folder of class folders"]
    other = selfsup("train", *common, "--data", str(demo_shards), "--output", str(tmp_path / "b"))
    assert other.returncode == 2, other.stderr[-2000:]
    assert other.stderr.strip().splitlines() == [
        f"selfsup: error: method.num_classes=1000, but {demo_shards} has 10 classes; set method.num_classes=10"]
    assert not ray_running() and not (tmp_path / "a" / "checkpoints").exists()
