"""A held-out test set (`test_data`): kNN and the linear probe measured on a second converted dataset.

Real shards read by DALI in CPU mode: the session's demo dataset is the bank, a separately drawn
and converted folder of the same classes supplies the queries.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from selfsup.methods.backbones import build_backbone
from selfsup.pipeline.convert import convert
from selfsup.pipeline.dataset import load_dataset_info
from selfsup.errors import DatasetError
from selfsup.pipeline.demo_images import CLASSES, make_demo_folder
from tests.trainer.training_run import ROOT, OneTorchThread, tiny_config
from selfsup.trainer.evaluate import extract_features, knn_evaluate
from selfsup.trainer.knn import knn_accuracy
from selfsup.trainer.linear_probe import linear_evaluate
from selfsup.trainer.loop import train

SIZE = 32


@pytest.fixture(scope="module")
def test_shards(tmp_path_factory):
    """60 other demo images of the same 10 classes (another seed), converted with a train and a val
    split: every sample of both is a query."""
    folder = make_demo_folder(tmp_path_factory.mktemp("test-images") / "shapes", images_per_class=6, size=64,
                              seed=7)
    output = tmp_path_factory.mktemp("test-shards") / "shapes"
    convert(folder, output, shard_size="64KB", val_fraction=0.5, workers=1, seed=0, progress=False)
    return output


def _backbone():
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet18", small_input=True)
    return backbone


@pytest.mark.slow
def test_knn_queries_are_every_test_sample_against_the_train_bank(demo_shards, test_shards):
    backbone = _backbone()
    with OneTorchThread():
        result = knn_evaluate(backbone, demo_shards, image_size=SIZE, k=5, per_query=True, test_data=test_shards)
        bank, bank_labels = extract_features(backbone, load_dataset_info(demo_shards), "train", SIZE, 64,
                                             torch.device("cpu"))
        test = load_dataset_info(test_shards)
        parts = [extract_features(backbone, test, split, SIZE, 64, torch.device("cpu")) for split in ("train", "val")]
    queries, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    expected = knn_accuracy(bank, bank_labels, queries, labels, num_classes=len(CLASSES), k=5, temperature=0.07,
                            per_query=True)
    assert result["query_samples"] == 60 and result["bank_samples"] == 120
    assert result["query_split"] == f"{test.root} (train+val)"
    assert result["top1"] == pytest.approx(expected["top1"])
    assert result["top1_correct"] == expected["top1_correct"] and len(result["top1_correct"]) == 60
    # the val split (40 queries) is another measurement
    assert knn_evaluate(backbone, demo_shards, image_size=SIZE, k=5)["query_samples"] == 40


def test_linear_probe_is_measured_on_the_test_set(demo_shards, test_shards):
    with OneTorchThread():
        result = linear_evaluate(_backbone(), demo_shards, image_size=SIZE, epochs=5, per_query=True,
                                 test_data=test_shards)
    assert result["eval_samples"] == 60 and result["train_samples"] == 120
    assert result["eval_split"].endswith("(train+val)")
    assert len(result["top1_correct"]) == 60
    assert result["top1"] == pytest.approx(100.0 * sum(result["top1_correct"]) / 60)


@pytest.mark.slow
def test_a_feature_cache_extracts_each_split_once_and_changes_no_result(demo_shards, test_shards):
    backbone = _backbone()
    cache = {}
    with OneTorchThread():
        measurements = [
            lambda **kw: knn_evaluate(backbone, demo_shards, image_size=SIZE, k=5, per_query=True, **kw),
            lambda **kw: knn_evaluate(backbone, demo_shards, image_size=SIZE, k=5, per_query=True,
                                      test_data=test_shards, **kw),
            lambda **kw: linear_evaluate(backbone, demo_shards, image_size=SIZE, epochs=5, per_query=True, **kw),
            lambda **kw: linear_evaluate(backbone, demo_shards, image_size=SIZE, epochs=5, per_query=True,
                                         test_data=test_shards, **kw),
        ]
        for measure in measurements:
            assert measure(feature_cache=cache) == measure()
    # the bank's train split, its val split and both splits of the test set: the test set's "train"
    # split is not the bank's
    bank, test = load_dataset_info(demo_shards).root.resolve(), load_dataset_info(test_shards).root.resolve()
    assert sorted(cache) == sorted([(str(bank), "train", SIZE), (str(bank), "val", SIZE),
                                    (str(test), "train", SIZE), (str(test), "val", SIZE)])
    assert [len(cache[(str(bank), split, SIZE)][0]) for split in ("train", "val")] == [120, 40]


def test_a_test_set_of_other_classes_or_the_dataset_itself_is_refused(demo_shards, tmp_path):
    folder = make_demo_folder(tmp_path / "images", images_per_class=2, size=64, seed=3, classes=CLASSES[:4])
    other = tmp_path / "shards"
    convert(folder, other, shard_size="64KB", workers=1, seed=0, progress=False)
    with pytest.raises(DatasetError, match=r"classes \['arrow', 'circle', 'crescent', 'cross'\] are not those"):
        knn_evaluate(_backbone(), demo_shards, image_size=SIZE, test_data=other)
    with pytest.raises(DatasetError, match="the test set is the dataset itself"):
        linear_evaluate(_backbone(), demo_shards, image_size=SIZE, epochs=1, test_data=demo_shards)


def test_cli_knn_with_test_data(demo_shards, test_shards, tmp_path):
    run = tmp_path / "run"
    with OneTorchThread():
        train(tiny_config(demo_shards, "trainer.max_steps=1"), run)
    result = subprocess.run([sys.executable, "-m", "selfsup", "eval", "knn", "--checkpoint", str(run),
                             "--data", str(demo_shards), "--test-data", str(test_shards)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"60 test-set [{test_shards} (train+val)] queries, 120 in the bank" in result.stdout
