"""`trainer.freeze_last_layer_epochs`: the method's `last_layer_parameters()` (DINO's last layer,
SwAV's prototypes) take no update at all during the first epochs of a real training run, then
train; everything else trains from the start."""

from __future__ import annotations

import pytest
import torch

from selfsup.trainer.checkpoint import load_checkpoint
from selfsup.trainer.loop import train
from selfsup.trainer.model import build_model, seed_everything
from tests.trainer.training_run import OneTorchThread, tiny_config

STEPS_PER_EPOCH = 15  # 120 train samples, batch 8
FROZEN_EPOCHS = 0.2  # 3 steps
MULTICROP = ["data.recipe.local_crops=2", "data.recipe.local_size=16"]
CASES = {
    "dino": (["method.output_dim=64", "method.bottleneck_dim=16"], "head.last_layer."),
    "swav": (["method.projection_hidden_dim=64", "method.projection_dim=16", "method.num_prototypes=8",
              "method.queue_size=0"], "prototypes."),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(CASES))
def test_the_last_layer_stays_frozen_for_the_first_epochs_then_trains(method, demo_shards, tmp_path):
    overrides, last_layer = CASES[method]
    config = tiny_config(demo_shards, *MULTICROP, *overrides, f"trainer.freeze_last_layer_epochs={FROZEN_EPOCHS}",
                         "trainer.max_steps=5", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=5",
                         "optim.name=adamw", "optim.lr=1.0e-3", "optim.lr_scaling=none", "optim.final_lr=1.0e-3",
                         "optim.weight_decay=0.04", "optim.warmup_epochs=0", method=method)
    frozen_steps = round(FROZEN_EPOCHS * STEPS_PER_EPOCH)
    seed_everything(config.seed)  # as `train` starts: the same initial weights
    initial = build_model(config).state_dict()
    with OneTorchThread():
        train(config, tmp_path / "run")

    def moved(step: int, in_last_layer: bool) -> float:
        """The largest change since the start of a trained parameter in (or out of) the last layer."""
        model = load_checkpoint(tmp_path / "run" / "checkpoints" / f"step-{step:08d}")["model"]
        keys = [key for key in model if key.startswith(last_layer) == in_last_layer and model[key].is_floating_point()
                and not key.startswith(("teacher_", "center", "momentum", "queue")) and "running_" not in key]
        assert keys
        return max(float((model[key] - initial[key]).abs().max()) for key in keys)

    # an update at lr 1e-3 moves AdamW's parameters by ~1e-3; SwAV re-normalizes its prototypes every
    # forward (float rounding only while frozen); AdamW's decoupled weight decay would move a parameter
    # whose gradient were only zeroed
    last = [moved(step, in_last_layer=True) for step in range(1, 6)]
    assert [change > 1e-4 for change in last] == [False] * frozen_steps + [True] * 2, last
    assert all(change < 1e-6 for change in last[:frozen_steps]), last
    assert all(moved(step, in_last_layer=False) > 1e-4 for step in range(1, 6))
