"""`selfsup export`: the backbone alone, as a plain state_dict that loads strictly into a freshly
built backbone without the trainer, and gives the same features as the checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from methods.backbones import build_backbone
from tests.trainer.training_run import ROOT, OneTorchThread, tiny_config
from trainer.checkpoint import CheckpointError, latest_checkpoint
from trainer.evaluate import load_backbone
from trainer.export import export_backbone
from trainer.loop import train


@pytest.fixture(scope="module")
def trained_run(demo_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "run"
    with OneTorchThread():
        train(tiny_config(demo_shards, "trainer.max_steps=2"), run)
    return run


def test_cli_export_loads_strictly_and_gives_the_same_features(trained_run, tmp_path):
    output = tmp_path / "out" / "backbone.pt"
    result = subprocess.run([sys.executable, "-m", "cluster.cli", "export", "--checkpoint", str(trained_run),
                             "--output", str(output)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exported resnet18" in result.stdout

    spec = json.loads(output.with_suffix(".json").read_text())
    assert spec["backbone"] == "resnet18" and spec["kwargs"] == {"small_input": False} and spec["step"] == 2
    weights = torch.load(output, weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in weights.values())
    assert not any(key.startswith(("backbone.", "projector.")) for key in weights)
    fresh, feature_dim = build_backbone(spec["backbone"], **spec["kwargs"])
    fresh.load_state_dict(weights, strict=True)
    assert feature_dim == spec["feature_dim"]

    original, _ = load_backbone(latest_checkpoint(trained_run / "checkpoints"))
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(images), original.eval()(images))


def test_teacher_export_needs_a_teacher(trained_run, tmp_path):
    with pytest.raises(CheckpointError, match="no teacher backbone"):
        export_backbone(latest_checkpoint(trained_run / "checkpoints"), tmp_path / "b.pt", weights="teacher")
