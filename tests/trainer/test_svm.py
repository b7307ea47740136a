"""The VOC07 SVM protocol: answers known from the features, costs chosen on the train split only,
low-shot draws, and the protocol on a backbone's features of real shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup.errors import ConfigError
from selfsup.methods.backbones import build_backbone
from selfsup.trainer.svm import DEFAULT_COSTS, low_shot_svms, svm_evaluate, svm_on_features
from tests.trainer.training_run import OneTorchThread

CLASSES, DIMENSION = 6, 24


def _clusters(per_class: int, seed: int, spread: float = 1.0, merged: bool = False):
    """Gaussian clusters, one per class (fixed centres); `merged`: classes 0 and 1 share a centre."""
    centres = np.random.default_rng(0).normal(size=(CLASSES, DIMENSION)) * 4
    if merged:
        centres[1] = centres[0]
    labels = np.repeat(np.arange(CLASSES), per_class)
    features = centres[labels] + spread * np.random.default_rng(seed).normal(size=(len(labels), DIMENSION))
    return features, labels


def test_separable_classes_score_perfectly():
    result = svm_on_features(*_clusters(20, 1), *_clusters(10, 2), CLASSES)
    assert result["mAP"] == pytest.approx(100.0) and result["top1"] == pytest.approx(100.0)
    assert result["scored_classes"] == CLASSES and all(cost in DEFAULT_COSTS for cost in result["costs"])
    assert result["cross_validation_mAP"] == pytest.approx(100.0)


def test_two_indistinguishable_classes_lose_only_their_own_precision():
    result = svm_on_features(*_clusters(30, 1, merged=True), *_clusters(20, 2, merged=True), CLASSES)
    precision = result["per_class_ap"]
    assert precision[2:] == pytest.approx([100.0] * 4)  # the separable classes are still ranked perfectly
    assert max(precision[:2]) < 85.0  # classes 0 and 1 share one cluster: a coin toss between them
    assert result["top1"] < 100.0 * 5 / 6 + 1e-6  # at best half of the 2 merged classes' samples are right


def test_features_without_information_score_near_chance():
    rng = np.random.default_rng(5)
    labels, test_labels = np.repeat(np.arange(CLASSES), 30), np.repeat(np.arange(CLASSES), 20)
    result = svm_on_features(rng.normal(size=(180, DIMENSION)), labels, rng.normal(size=(120, DIMENSION)),
                             test_labels, CLASSES)
    assert result["mAP"] < 35.0 and result["top1"] < 35.0  # chance: 1/6 = 16.7%


def test_the_costs_are_chosen_on_the_train_split_only():
    train, labels = _clusters(20, 1, spread=4.0)  # overlapping clusters: the cost matters
    test, test_labels = _clusters(10, 2, spread=4.0)
    first = svm_on_features(train, labels, test, test_labels, CLASSES, costs=(0.001, 0.1, 10.0))
    shuffled = np.random.default_rng(3).permutation(len(test_labels))
    second = svm_on_features(train, labels, test[shuffled] * 2 + 1, test_labels[::-1], CLASSES,
                             costs=(0.001, 0.1, 10.0))
    assert first["costs"] == second["costs"]  # the test samples and their labels play no part in the choice
    assert first["cross_validation_mAP"] == second["cross_validation_mAP"]
    assert first["mAP"] != second["mAP"]


def test_low_shot_is_the_mean_and_spread_of_five_draws():
    result = low_shot_svms(*_clusters(20, 1, spread=3.0), *_clusters(10, 2, spread=3.0), CLASSES, 2)
    draws = np.array(result["mAP_per_draw"])
    assert len(draws) == 5 and result["train_samples"] == 12
    assert result["mAP"] == pytest.approx(draws.mean()) and result["mAP_std"] == pytest.approx(draws.std(ddof=1))
    single = low_shot_svms(*_clusters(20, 1), *_clusters(10, 2), CLASSES, 1)
    assert single["costs_per_draw"][0] == [1.0] * CLASSES  # one sample per class: nothing to cross-validate
    with pytest.raises(ConfigError, match="--low-shot 21: class 0 of the train split has only 20 samples"):
        low_shot_svms(*_clusters(20, 1), *_clusters(10, 2), CLASSES, 21)


def test_svm_protocol_on_a_backbone_of_real_shards(demo_shards):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", small_input=False)[0]
    cache = {}
    with OneTorchThread():
        full = svm_evaluate(backbone, demo_shards, image_size=32, costs=(0.1, 10.0), feature_cache=cache)
        few = svm_evaluate(backbone, demo_shards, image_size=32, costs=(0.1, 10.0), low_shot=2, draws=3,
                           feature_cache=cache)
    assert (full["train_samples"], full["eval_samples"], full["eval_split"]) == (120, 40, "val")
    assert 0.0 <= full["top1"] <= 100.0 and 0.0 < full["mAP"] <= 100.0 and len(full["costs"]) == 10
    assert few["per_class"] == 2 and few["draws"] == 3 and few["train_samples"] == 20
    assert len(cache) == 2  # train and val extracted once for both
    counts = np.bincount(np.array([int(label) for _, labels in [cache[key] for key in cache if key[1] == "train"]
                                   for label in labels]))
    with pytest.raises(ConfigError, match=rf"--low-shot {counts.max() + 1}: class '.+' of .+ \(train split\) has only"):
        svm_evaluate(backbone, demo_shards, image_size=32, low_shot=int(counts.max()) + 1, feature_cache=cache)
