"""`selfsup tune`: the search space parsed from the config, tiny trials on a local Ray, a results
table, `best.yaml` loadable by `selfsup train`, TensorBoard per trial, and an interrupted search
continued by running the same command again."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from trainer.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "model.backbone=resnet18", "--set", "data.image_size=32", "--set", "data.batch_size=8",
        "--set", "method.projection_hidden_dim=64", "--set", "trainer.log_every=1",
        "--set", "optim.warmup_epochs=0", "--set", "trainer.max_steps=6", "--set", "trainer.checkpoint_every=2",
        "--set", "data.shuffle_buffer=16", "--set", "data.num_threads=1"]


def test_search_space_parsing():
    from ray import tune

    from cluster.tune import parse_domain, search_space, split_search

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


def _selfsup_tune(config: Path, data: Path, output: Path, samples: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "tune", "--config", str(config), "--data", str(data),
         "--output", str(output), "--samples", str(samples), "--concurrent", "1", "--grace-steps", "4", *TINY],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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
        time.sleep(1)
    assert list(output.glob("trials/*/checkpoints/step-*")), "no trial wrote a checkpoint"
    first.send_signal(signal.SIGINT)  # as Ctrl-C: Tune saves the search state and stops
    text, _ = first.communicate(timeout=300)
    assert first.returncode == 130 and "search interrupted" in text, text[-3000:]
    assert not (output / "best.yaml").exists()

    second = _selfsup_tune(config, demo_shards, output, samples=2)
    text, _ = second.communicate(timeout=900)
    assert second.returncode == 0, text[-5000:]
    assert "continuing the search" in text
    trials = sorted(path for path in (output / "trials").iterdir())
    assert len(trials) == 2
    for trial in trials:
        assert list((trial / "tensorboard").glob("events.*")), trial  # TensorBoard logs per trial
    assert "optim.lr" in text and "loss" in text  # the results table

    best = load_config(output / "best.yaml")  # a complete config, ready for `selfsup train`
    assert best.data.path == str(demo_shards.resolve()) and best.method.temperature in (0.1, 0.5)
    assert 1e-3 <= best.optim.lr <= 1e-1
    assert "search" not in yaml.safe_load((output / "best.yaml").read_text())
