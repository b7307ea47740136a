"""Linear evaluation on frozen features: the classifier on cached features, and `selfsup eval linear`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.trainer.training_run import ROOT, OneTorchThread, tiny_config
from selfsup.trainer.linear_probe import topk_accuracy, train_linear_classifier
from selfsup.trainer.loop import train


def test_topk_accuracy():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])
    labels = torch.tensor([0, 1, 1])
    result = topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert abs(result["top1"] - 100 / 3) < 1e-4 and result["top2"] == 100.0
    assert result["top5"] == 100.0  # k capped at the 3 classes


def test_linear_classifier_separates_separable_features():
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=generator) * 5 + 100  # far from zero: standardization matters
    labels = torch.arange(200) % 4
    features = centers[labels] + torch.randn(200, 16, generator=generator)
    classifier = train_linear_classifier(features, labels, 4, epochs=30, lr=0.1, batch_size=32)
    with torch.no_grad():
        assert topk_accuracy(classifier(features), labels, (1,))["top1"] == 100.0


@pytest.mark.slow
def test_cli_linear_eval_reports_top1_and_top5_as_json(demo_shards, tmp_path):
    run = tmp_path / "run"
    with OneTorchThread():
        train(tiny_config(demo_shards, "trainer.max_steps=1"), run)
    result = subprocess.run([sys.executable, "-m", "selfsup", "eval", "linear", "--checkpoint", str(run),
                             "--data", str(demo_shards), "--epochs", "10", "--batch-size", "32", "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0.0 <= answer["top1"] <= answer["top5"] <= 100.0
    assert answer["eval_split"] == "val" and answer["eval_samples"] == 40 and answer["train_samples"] == 120
    assert answer["classes"] == 10 and answer["epochs"] == 10 and answer["weights"] == "pretrained"
