"""A NaN loss stops the run with a message naming the step and the loss terms, leaving the last good
checkpoint intact; with `trainer.skip_nonfinite` the step is skipped instead."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.methods.simclr import SimCLR
from tests.trainer.training_run import OneTorchThread, read_losses, tiny_config
from selfsup.trainer.checkpoint import latest_checkpoint, load_checkpoint
from selfsup.trainer.loop import train
from selfsup.errors import NonFiniteLossError


@pytest.fixture
def nan_at_third_step(monkeypatch):
    """SimCLR whose third forward returns a NaN loss."""
    original = SimCLR.forward
    calls = {"count": 0}

    def forward(self, batch):
        outputs = original(self, batch)
        calls["count"] += 1
        if calls["count"] == 3:
            outputs = {key: value * float("nan") for key, value in outputs.items()}
        return outputs

    monkeypatch.setattr(SimCLR, "forward", forward)
    with OneTorchThread():
        yield


def test_nan_stops_naming_step_and_terms_and_keeps_the_last_checkpoint(demo_shards, tmp_path, nan_at_third_step):
    config = tiny_config(demo_shards, "trainer.max_steps=6", "trainer.checkpoint_every=2")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3: loss=nan, nt_xent=nan") as error:
        train(config, tmp_path / "run")
    assert "step-00000002" in str(error.value) and "trainer.skip_nonfinite" in str(error.value)
    checkpoint = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert checkpoint.name == "step-00000002"
    state = load_checkpoint(checkpoint)
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())
    assert sorted(read_losses(tmp_path / "run")) == [1, 2]


def test_skip_nonfinite_skips_the_step_and_goes_on(demo_shards, tmp_path, nan_at_third_step):
    config = tiny_config(demo_shards, "trainer.max_steps=5", "trainer.skip_nonfinite=true")
    summary = train(config, tmp_path / "run")
    assert summary["step"] == 5 and summary["skipped_steps"] == 1
    losses = read_losses(tmp_path / "run")
    assert math.isnan(losses[3]) and all(math.isfinite(losses[step]) for step in (1, 2, 4, 5))
    state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())
