"""`selfsup tune`: the search space parsed from the config, tiny trials of two DDP workers each on a
local Ray (each trial a Ray Train run driven by its Tune trial), a results table, `best.yaml`
loadable by `selfsup train`, TensorBoard per trial, an interrupted search continued by running
the same command again, and trials that fail named with their own errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from selfsup.trainer.config import load_config

from selfsup.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "model.backbone=resnet18", "--set", "data.image_size=32", "--set", "data.batch_size=8",
        "--set", "method.projection_hidden_dim=64", "--set", "trainer.log_every=1",
        "--set", "optim.warmup_epochs=0", "--set", "trainer.max_steps=6", "--set", "trainer.checkpoint_every=2",
        "--set", "data.shuffle_buffer=16", "--set", "data.num_threads=1"]


def test_search_space_parsing():
    from ray import tune

    from selfsup.cluster.tune import parse_domain, search_space, split_search

    raw = yaml.safe_load((ROOT / "configs" / "simclr.yaml").read_text())
    raw["search"] = {"optim.lr": "loguniform(1e-4, 1e-1)", "method.temperature": "choice([0.1, 0.2, 0.5])",
                     "optim.weight_decay": "uniform(0, 1e-4)", "data.batch_size": "randint(8, 33)",
                     "optim.name": ["lars", "adamw"]}
    base, search = split_search(raw)
    assert "search" not in base and "search" in raw
    space = search_space(load_config(None, base=base), search)
    assert isinstance(space["optim.lr"], tune.search.sample.Float)
    assert space["method.temperature"].categories == [0.1, 0.2, 0.5]
    assert space["optim.name"].categories == ["lars", "adamw"]
    assert (space["data.batch_size"].lower, space["data.batch_size"].upper) == (8, 33)
    with pytest.raises(ConfigError, match="not a search domain"):
        parse_domain("optim.lr", "logarithmic(1, 2)")
    with pytest.raises(ConfigError, match="no such config key"):
        search_space(load_config(None, base=base), {"optim.lrr": "uniform(0, 1)"})


def test_search_values_that_cannot_be_built_are_refused_before_any_trial():
    from selfsup.cluster.tune import check_search, search_space, split_search

    raw = yaml.safe_load((ROOT / "configs" / "dino.yaml").read_text())  # ViT-S, patch 16
    raw["search"] = {"data.image_size": [224, 200], "optim.lr": "loguniform(1e-4, 1e-3)"}
    base, search = split_search(raw)
    space = search_space(load_config(None, base=base), search)
    with pytest.raises(ConfigError, match=r"search values data.image_size=200, optim.lr=0.0001: "
                                          r"vit_small \+ dino: img_size 200 is not a multiple of patch_size 16"):
        check_search(base, space)
    # the ends of a range are built too: randint(96, 209) reaches 208 = 13 x 16, fine; 210 is not
    check_search(base, search_space(load_config(None, base=base), {"data.image_size": "randint(96, 209)"}))
    with pytest.raises(ConfigError, match="data.image_size=210: vit_small"):
        check_search(base, search_space(load_config(None, base=base), {"data.image_size": "randint(96, 211)"}))


def test_trial_settings_and_worker_resources():
    from selfsup.cluster.tune import split_search, trial_settings, worker_resources

    raw = {"method": {"name": "simclr"}, "trial": {"workers": 4}, "search": {"optim.lr": "uniform(0, 1)"}}
    assert trial_settings(raw) == {"workers": 4}
    assert "trial" not in split_search(raw)[0]  # not part of the training config
    assert trial_settings({}) == {"workers": 1}
    with pytest.raises(ConfigError, match="unknown config key trial.worker; valid keys in trial: workers"):
        trial_settings({"trial": {"worker": 2}})
    with pytest.raises(ConfigError, match="trial.workers: expected a whole number of workers, 1 or more, got 0"):
        trial_settings({"trial": {"workers": 0}})
    assert worker_resources(2, 1, 0) == {"CPU": 0.5}
    assert worker_resources(4, 32, 4) == {"CPU": 8.0, "GPU": 1}
    with pytest.raises(ConfigError, match="gpus per trial 2 with 4 workers per trial: .* use gpus per trial 4"):
        worker_resources(4, 4, 2)


def _selfsup_tune(config: Path, data: Path, output: Path, samples: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "selfsup", "tune", "--config", str(config), "--data", str(data),
         "--output", str(output), "--samples", str(samples), "--concurrent", "2", "--grace-steps", "4",
         "--workers-per-trial", "2", *TINY],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _output_of(process: subprocess.Popen, timeout: float) -> str:
    """Wait for `process`; past `timeout`, kill it (so no search outlives the test) and fail."""
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"selfsup tune still running after {timeout} s: {process.communicate()[0][-5000:]}")


def _progress(trial: Path) -> tuple[int, set[int]]:
    """(the step of the trial's newest checkpoint, 0 if none; the pids of rank 0 that reported)."""
    steps = [int(path.name.split("-")[1]) for path in (trial / "checkpoints").glob("step-*")]
    reports = trial / "reports.jsonl"
    lines = reports.read_text().splitlines() if reports.exists() else []
    return max(steps, default=0), {json.loads(line)["pid"] for line in lines}


@pytest.mark.slow
def test_tune_interrupted_then_continued(demo_shards, tmp_path):
    raw = yaml.safe_load((ROOT / "configs" / "simclr.yaml").read_text())
    raw["search"] = {"optim.lr": "loguniform(1e-3, 1e-1)", "method.temperature": "choice([0.1, 0.5])"}
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    output = tmp_path / "search"

    first = _selfsup_tune(config, demo_shards, output, samples=2)
    deadline = time.monotonic() + 600
    while not list(output.glob("trials/*/checkpoints/step-*")) and time.monotonic() < deadline:
        if first.poll() is not None:  # ended before any checkpoint: show why
            pytest.fail(f"selfsup tune ended early ({first.returncode}): {first.communicate()[0][-5000:]}")
        time.sleep(1)
    assert list(output.glob("trials/*/checkpoints/step-*")), "no trial wrote a checkpoint"
    first.send_signal(signal.SIGINT)  # as Ctrl-C: Tune saves the search state and stops
    text = _output_of(first, timeout=300)
    assert first.returncode == 130 and "search interrupted" in text, text[-3000:]
    assert not (output / "best.yaml").exists()
    before = {trial.name: _progress(trial) for trial in (output / "trials").iterdir()}

    second = _selfsup_tune(config, demo_shards, output, samples=2)
    text = _output_of(second, timeout=900)
    assert second.returncode == 0, text[-5000:]
    assert "continuing the search" in text
    trials = sorted(path for path in (output / "trials").iterdir())
    assert len(trials) == 2
    for trial in trials:
        assert list((trial / "tensorboard").glob("events.*")), trial  # TensorBoard logs per trial
        newest = sorted((trial / "checkpoints").glob("step-*"))[-1]
        state = torch.load(newest / "state.pt", weights_only=True)
        assert len(state["ranks"]) == 2, trial  # a DDP run of two ranks: each rank's loader position
        assert (trial / "ray").is_dir()  # the trial's Ray Train storage (its checkpoints, run state)
        checkpointed, earlier_pids = before.get(trial.name, (0, set()))
        records = [json.loads(line) for line in (trial / "reports.jsonl").read_text().splitlines()]
        continued = [record["step"] for record in records if record["pid"] not in earlier_pids]
        assert continued[0] == checkpointed + 1, (trial, checkpointed, continued)  # from its checkpoint
    assert "optim.lr" in text and "loss" in text  # the results table

    best = load_config(output / "best.yaml")  # a complete config, ready for `selfsup train`
    assert best.data.path == str(demo_shards.resolve()) and best.method.temperature in (0.1, 0.5)
    assert 1e-3 <= best.optim.lr <= 1e-1
    assert "search" not in yaml.safe_load((output / "best.yaml").read_text())


@pytest.mark.slow
def test_tune_names_the_error_of_each_failed_trial(demo_shards, tmp_path):
    """Trials whose loss diverges in their DDP workers: each is named with the trainer's message (not
    Ray's report of the worker group), no best config is written, and the search exits 1."""
    raw = yaml.safe_load((ROOT / "configs" / "simclr.yaml").read_text())
    raw["search"] = {"optim.lr": "loguniform(1e29, 1e30)"}
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    output = tmp_path / "search"
    search = _selfsup_tune(config, demo_shards, output, samples=2)
    text = _output_of(search, timeout=900)
    assert search.returncode == 1, text[-5000:]
    failed = [line for line in text.splitlines() if line.startswith("trial ") and " failed: " in line]
    assert len(failed) == 2, text[-5000:]
    assert all(": NonFiniteLossError: non-finite loss at step " in line for line in failed), failed
    assert "selfsup: error: every trial failed (2 of 2)" in text, text[-3000:]
    table_rows = [line for line in text.splitlines() if line.rstrip().endswith(" NonFiniteLossError")]
    assert len(table_rows) == 2, text[-3000:]  # the table's error column
    assert not (output / "best.yaml").exists()


# Holds FOLDER's lock as a running search does, until its stdin closes.
LOCK_HOLDER = """
import sys
from selfsup.locks import hold_folder_lock
with hold_folder_lock(sys.argv[1], "selfsup tune"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_search_into_a_busy_output_exits_at_once_before_ray_starts(demo_shards, tmp_path, capsys,
                                                                           monkeypatch):
    import ray

    from selfsup.cli.main import main
    from selfsup.locks import LOCK_FILE, lock_holder

    output = tmp_path / "search"
    output.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(output)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.chdir(ROOT)
        status = main(["tune", "--config", "simclr_search", "--data", str(demo_shards), "--output", str(output),
                       "--samples", "1", *TINY])
        error = capsys.readouterr().err
        assert status == 2
        assert error.strip().splitlines() == [
            f"selfsup: error: {output}: in use by {lock_holder(output).describe()}; wait for it to finish or "
            f"stop it, then run again (the lock is {output / LOCK_FILE})"]
        assert f"pid {holder.pid} on " in error and not ray.is_initialized()
        assert sorted(path.name for path in output.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        holder.communicate("", timeout=30)


def test_the_shipped_search_config_is_found_by_name_and_builds():
    from selfsup.cluster.tune import check_search, load_raw_config, search_space, split_search

    base, search = split_search(load_raw_config("simclr_search", ["model.backbone=resnet18"]))
    assert set(search) == {"optim.lr", "method.temperature"}
    _, replaced = split_search(load_raw_config("simclr_search", ["search.optim.lr=loguniform(1e29, 1e30)",
                                                                 "search.data.image_size=[32, 48]"]))
    assert replaced == {**search, "optim.lr": "loguniform(1e29, 1e30)", "data.image_size": [32, 48]}
    config = load_config(None, base=base)
    assert config.method.name == "simclr" and config.eval.online_knn_every_epochs == 5
    check_search(base, search_space(config, search))
