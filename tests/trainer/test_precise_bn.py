"""Precise BatchNorm statistics for evaluation, on real shards read by DALI in CPU mode."""

import pytest
import torch

from selfsup.methods.backbones import build_backbone
from selfsup.pipeline.dataset import load_dataset_info
from selfsup.pipeline.loader import build_eval_loader
from selfsup.pipeline.recipes import EvalRecipe
from selfsup.trainer.evaluate import knn_evaluate, recalibrate_batch_norm

SIZE = 32


def _train_images(shards) -> torch.Tensor:
    loader = build_eval_loader(load_dataset_info(shards), EvalRecipe(size=SIZE), batch_size=64, split="train")
    try:
        return torch.cat([batch["image"] for batch in loader])
    finally:
        loader.close()


def test_statistics_are_those_of_the_eval_images(demo_shards):
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet18", small_input=True)
    backbone.train()  # the mode it is in is given back
    used = recalibrate_batch_norm(backbone, demo_shards, image_size=SIZE, batch_size=48)
    assert used == 120  # every train image, in batches of 48, 48 and 24
    assert backbone.training and all(module.training for module in backbone.modules())

    # the first layer's statistics are the population mean and variance of conv1's output
    with torch.no_grad():
        stem = backbone.conv1(_train_images(demo_shards)).double()
    mean = stem.mean(dim=(0, 2, 3))
    variance = stem.transpose(0, 1).flatten(1).var(dim=1)  # unbiased, over N * H * W
    torch.testing.assert_close(backbone.bn1.running_mean.double(), mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(backbone.bn1.running_var.double(), variance, rtol=1e-4, atol=1e-5)
    # so in eval mode the layer standardizes those images: zero mean, unit variance per channel
    backbone.eval()
    with torch.no_grad():
        normalized = backbone.bn1(stem.float())
    torch.testing.assert_close(normalized.mean(dim=(0, 2, 3)), torch.zeros(64), atol=1e-3, rtol=0)
    torch.testing.assert_close(normalized.transpose(0, 1).flatten(1).std(dim=1), torch.ones(64),
                               atol=1e-3, rtol=0)
    # deeper layers moved off their initial statistics (mean 0, variance 1) too
    last = backbone.layer4[-1].bn2
    assert not torch.allclose(last.running_var, torch.ones_like(last.running_var))


def test_max_samples_and_batch_order_do_not_bias_the_statistics(demo_shards):
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet18", small_input=True)
    reference = {name: tensor.clone() for name, tensor in backbone.state_dict().items()}
    assert recalibrate_batch_norm(backbone, demo_shards, image_size=SIZE, batch_size=8, max_samples=50) == 50
    small_batches = backbone.bn1.running_var.clone()
    backbone.load_state_dict(reference)
    recalibrate_batch_norm(backbone, demo_shards, image_size=SIZE, batch_size=50, max_samples=50)
    # the same 50 images in batches of 8 (the last one 2) or one batch of 50: the same statistics,
    # unlike an average of per-batch variances
    torch.testing.assert_close(backbone.bn1.running_var, small_batches, rtol=1e-4, atol=1e-6)


def test_backbone_without_batch_norm_is_untouched(demo_shards):
    torch.manual_seed(0)
    backbone, _ = build_backbone("vit_tiny", img_size=SIZE, patch_size=8)
    before = {name: tensor.clone() for name, tensor in backbone.state_dict().items()}
    assert recalibrate_batch_norm(backbone, demo_shards, image_size=SIZE) == 0
    for name, tensor in backbone.state_dict().items():
        torch.testing.assert_close(tensor, before[name])


@pytest.mark.slow
def test_recalibrated_features_are_measured(demo_shards):
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet18", small_input=True)
    stored = knn_evaluate(backbone, demo_shards, image_size=SIZE, k=5)
    recalibrate_batch_norm(backbone, demo_shards, image_size=SIZE)
    recalibrated = knn_evaluate(backbone, demo_shards, image_size=SIZE, k=5)
    # the features themselves changed (identity statistics vs the data's)
    assert recalibrated["effective_rank"] != stored["effective_rank"]
    assert 0.0 <= recalibrated["top1"] <= 100.0
