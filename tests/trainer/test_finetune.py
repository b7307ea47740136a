"""Fine-tuning on a fraction of the labels: real shards, DALI CPU views, real SGD steps."""

from __future__ import annotations

import pytest
import torch

from selfsup.errors import ConfigError
from selfsup.methods.backbones import build_backbone
from selfsup.pipeline.convert import convert
from selfsup.pipeline.demo_images import make_demo_folder
from selfsup.trainer.finetune import finetune_evaluate
from tests.trainer.training_run import OneTorchThread

SIZE = 32


@pytest.fixture(scope="module")
def other_shards(tmp_path_factory):
    """30 other demo images of the same classes: a held-out test set."""
    folder = make_demo_folder(tmp_path_factory.mktemp("finetune-test") / "shapes", images_per_class=3, size=64, seed=11)
    output = tmp_path_factory.mktemp("finetune-test-shards") / "shapes"
    convert(folder, output, shard_size="64KB", workers=1, seed=0, progress=False)
    return output


def _backbone(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone("resnet18", small_input=False)[0]


def test_fine_tuning_fits_its_subset_and_leaves_the_backbone_alone(demo_shards, other_shards):
    backbone = _backbone()
    before = {key: value.clone() for key, value in backbone.state_dict().items()}
    with OneTorchThread():
        result = finetune_evaluate(backbone, demo_shards, image_size=SIZE, label_fraction=0.1, epochs=30,
                                   test_data=other_shards)
    assert all(torch.equal(value, backbone.state_dict()[key]) for key, value in before.items())
    assert result["train_samples"] == 10 and result["batch_size"] == 10  # one image of each of the 10 classes
    assert result["lr"] == pytest.approx(0.05 * 10 / 256)
    assert result["final_loss"] < 1.5 < 2.3  # well below chance, ln(10): 30 steps learned the 10 images
    assert result["val_samples"] == 40 and result["test_samples"] == 30 and result["eval_split"] == "test"
    assert (result["top1"], result["top5"]) == (result["test_top1"], result["test_top5"])
    assert 0.0 <= result["val_top1"] <= result["val_top5"] <= 100.0


def test_every_label_and_one_percent_are_class_balanced_subsets(demo_shards):
    with OneTorchThread():
        every = finetune_evaluate(_backbone(), demo_shards, image_size=SIZE, label_fraction=1.0, epochs=1,
                                  batch_size=64)
        one = finetune_evaluate(_backbone(), demo_shards, image_size=SIZE, label_fraction=0.01, epochs=1)
    assert every["train_samples"] == 120 and every["batch_size"] == 64 and every["eval_split"] == "val"
    assert one["train_samples"] == 10  # at least one image per class


def test_a_label_fraction_of_zero_is_refused_before_anything_runs(demo_shards):
    with pytest.raises(ConfigError, match=r"--label-fraction 0: expected a fraction of the train labels in \(0, 1\]"):
        finetune_evaluate(_backbone(), demo_shards, image_size=SIZE, label_fraction=0)
