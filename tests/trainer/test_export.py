"""`selfsup export`: the backbone alone, as a plain state_dict that loads strictly into a freshly
built backbone without the trainer, and gives the same features as the checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from selfsup.methods.backbones import build_backbone
from tests.trainer.training_run import ROOT, OneTorchThread, tiny_config
from selfsup.trainer.checkpoint import latest_checkpoint
from selfsup.errors import CheckpointError
from selfsup.trainer.evaluate import load_backbone
from selfsup.trainer.export import export_backbone
from selfsup.trainer.loop import train


@pytest.fixture(scope="module")
def trained_run(demo_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "run"
    with OneTorchThread():
        train(tiny_config(demo_shards, "trainer.max_steps=2"), run)
    return run


def test_cli_export_loads_strictly_and_gives_the_same_features(trained_run, tmp_path):
    output = tmp_path / "out" / "backbone.pt"
    result = subprocess.run([sys.executable, "-m", "selfsup", "export", "--checkpoint", str(trained_run),
                             "--output", str(output)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exported resnet18" in result.stdout

    spec = json.loads(output.with_suffix(".json").read_text())
    assert spec["backbone"] == "resnet18" and spec["kwargs"] == {"small_input": False, "dilated_stages": 0} and spec["step"] == 2
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


@pytest.mark.parametrize("method, overrides", [
    ("simmim", ["model.backbone=vit_tiny", "model.patch_size=8", "data.recipe.patch_size=8"]),  # a mask token
    ("colorization", ["method.head_hidden_dim=32"]),  # a one-channel backbone inside a wrapper
])
def test_methods_that_change_their_backbone_export_a_plain_one(method, overrides, demo_shards, tmp_path):
    run = tmp_path / "run"
    with OneTorchThread():
        train(tiny_config(demo_shards, "trainer.max_steps=1", *overrides, method=method), run)
    checkpoint = latest_checkpoint(run / "checkpoints")
    spec = export_backbone(checkpoint, tmp_path / "backbone.pt")
    weights = torch.load(tmp_path / "backbone.pt", weights_only=True)
    assert "mask_token" not in weights and not any(key.startswith("net.") for key in weights)
    fresh, _ = build_backbone(spec["backbone"], **spec["kwargs"])
    fresh.load_state_dict(weights, strict=True)

    original, _ = load_backbone(checkpoint)  # the method's own backbone, as pretraining used it
    generator = torch.Generator().manual_seed(0)
    if method == "colorization":
        assert spec["kwargs"]["in_channels"] == 1 and "lightness" in spec["input"]
        centered = torch.rand(2, 1, 32, 32, generator=generator) * 100 - 50  # L - 50, as the recipe gives it
        with torch.no_grad():
            assert torch.equal(fresh.eval()(centered / 50), original.eval()(centered))
    else:
        assert "in_channels" not in spec["kwargs"] and "RGB" in spec["input"]
        assert spec["kwargs"]["patch_size"] == 8 and fresh.patch_embed.proj.weight.shape[-1] == 8
        images = torch.randn(2, 3, 32, 32, generator=generator)
        with torch.no_grad():
            assert torch.equal(fresh.eval()(images), original.eval()(images))


@pytest.mark.slow
def test_dino_is_evaluated_and_exported_on_its_teacher(trained_run, demo_shards, tmp_path):
    """`weights="teacher"` (DINO's evaluation protocol): the momentum teacher's backbone, not the student's."""
    run = tmp_path / "dino"
    with OneTorchThread():  # a low momentum, so that 2 steps move the teacher away from its start and the student
        train(tiny_config(demo_shards, "trainer.max_steps=2", "method.momentum=0.5", method="dino"), run)
    checkpoint = latest_checkpoint(run / "checkpoints")
    teacher, _ = load_backbone(checkpoint, weights="teacher")
    student, _ = load_backbone(checkpoint)
    start, _ = load_backbone(checkpoint, random_init=True, weights="teacher")
    export_backbone(checkpoint, tmp_path / "teacher.pt", weights="teacher")
    exported = torch.load(tmp_path / "teacher.pt", weights_only=True)
    assert all(torch.equal(value, exported[key]) for key, value in teacher.state_dict().items())
    assert not torch.equal(teacher.conv1.weight, student.conv1.weight)
    assert not torch.equal(teacher.conv1.weight, start.conv1.weight)

    result = subprocess.run([sys.executable, "-m", "selfsup", "eval", "knn", "--checkpoint", str(run),
                             "--data", str(demo_shards), "--weights", "teacher", "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["weights"] == "pretrained teacher"

    with pytest.raises(CheckpointError, match="simclr keeps no teacher backbone"):
        load_backbone(latest_checkpoint(trained_run / "checkpoints"), weights="teacher")
    with pytest.raises(ValueError, match="weights='ema'"):
        load_backbone(checkpoint, weights="ema")
