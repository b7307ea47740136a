"""One test drives every registered method: build from its shipped config, train a few steps on a
fixed batch from its own recipe (real DALI CPU graph over real shards), check the loss falls."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from methods.registry import METHODS, method_entry
from pipeline.dataset import load_dataset_info
from pipeline.loader import build_train_loader
from pipeline.recipes import build_recipe
from trainer.config import load_config
from trainer.loop import build_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = ["model.backbone=resnet18", "model.small_input=true", "data.image_size=32", "data.batch_size=16"]


def test_unknown_method_lists_known_ones():
    with pytest.raises(KeyError, match="known methods: .*simclr"):
        method_entry("nope")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_on_its_recipe(name, demo_shards):
    config = load_config(CONFIGS / f"{name}.yaml", SMALL)
    entry = method_entry(name)
    recipe = build_recipe(entry.recipe, config.data.image_size, **config.data.recipe)
    loader = build_train_loader(load_dataset_info(demo_shards), recipe, batch_size=16, seed=0, num_threads=1)
    batch = next(iter(loader))
    loader.close()

    torch.manual_seed(0)
    model = build_model(config)
    assert hasattr(model, "backbone")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(8):
        outputs = model(batch)
        assert "loss" in outputs and outputs["loss"].ndim == 0
        assert torch.isfinite(outputs["loss"]), f"{name}: non-finite loss at step {step}"
        optimizer.zero_grad()
        outputs["loss"].backward()
        optimizer.step()
        if hasattr(model, "on_step_end"):
            model.on_step_end(step, 8)
        losses.append(float(outputs["loss"]))
    assert min(losses[-3:]) < losses[0], f"{name}: loss did not fall on a fixed batch: {losses}"
    state = model.state_dict()
    assert any(key.startswith("backbone.") for key in state)
