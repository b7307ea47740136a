"""The label subsets of fine-tuning and low-shot SVMs: class-balanced, reproducible from the seed,
the same for every backbone; read from the real shards through trimmed DALI indexes."""

from __future__ import annotations

import numpy as np
import pytest

from selfsup.errors import ConfigError
from selfsup.pipeline.dataset import load_dataset_info, read_manifest
from selfsup.pipeline.embedding_loaders import build_indexed_eval_loader
from selfsup.pipeline.loader import build_eval_loader, build_train_loader
from selfsup.pipeline.recipes import EvalRecipe
from selfsup.pipeline.subsets import split_labels, subset_dataset
from selfsup.trainer.finetune import finetune_recipe
from selfsup.trainer.label_subsets import class_balanced_subset, low_shot_subset


def test_split_labels_are_the_manifest_labels_in_reading_order(demo_shards):
    dataset = load_dataset_info(demo_shards)
    rows = sorted((row for row in read_manifest(demo_shards / "manifest.parquet") if row["split"] == "train"),
                  key=lambda row: row["key"])
    labels = split_labels(dataset, "train")
    assert labels.tolist() == [row["label"] for row in rows]
    loader = build_eval_loader(dataset, EvalRecipe(size=32), batch_size=32, split="train")
    assert np.concatenate([batch["label"].numpy() for batch in loader]).tolist() == labels.tolist()


@pytest.mark.parametrize("fraction, per_class", [(0.01, 1), (0.1, 1), (0.5, 6), (0.25, 3)])
def test_the_subset_is_class_balanced_and_drawn_by_the_seed(demo_shards, fraction, per_class):
    labels = split_labels(load_dataset_info(demo_shards), "train")  # 120 samples, 10 classes of 8 to 16
    chosen = class_balanced_subset(labels, fraction, seed=3)
    assert np.bincount(labels[chosen], minlength=10).tolist() == [per_class] * 10
    assert np.array_equal(chosen, class_balanced_subset(labels, fraction, seed=3))  # any backbone, same subset
    assert np.array_equal(chosen, np.unique(chosen))  # sorted, no repeats
    others = {tuple(class_balanced_subset(labels, fraction, seed=seed)) for seed in range(4, 9)}
    assert len(others | {tuple(chosen)}) > 1  # another seed, another draw


def test_all_labels_and_bad_fractions(demo_shards):
    labels = split_labels(load_dataset_info(demo_shards), "train")
    assert class_balanced_subset(labels, 1.0).tolist() == list(range(len(labels)))
    for fraction in (0, 0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=rf"--label-fraction {fraction!r}: expected a fraction"):
            class_balanced_subset(labels, fraction)


def test_low_shot_draws_are_k_per_class_independent_and_bounded_by_the_smallest_class(demo_shards):
    labels = split_labels(load_dataset_info(demo_shards), "train")
    draws = [low_shot_subset(labels, 4, draw, seed=0) for draw in range(5)]
    for chosen in draws:
        assert np.bincount(labels[chosen], minlength=10).tolist() == [4] * 10
    assert len({tuple(chosen) for chosen in draws}) == 5
    assert np.array_equal(draws[2], low_shot_subset(labels, 4, 2, seed=0))
    smallest = np.bincount(labels).min()
    low_shot_subset(labels, int(smallest), 0)
    with pytest.raises(ConfigError, match=rf"--low-shot {smallest + 1}: class \d+ of the train split has only "
                                          rf"{smallest} samples"):
        low_shot_subset(labels, int(smallest) + 1, 0)


def test_a_subset_dataset_reads_exactly_the_chosen_samples(demo_shards, tmp_path):
    dataset = load_dataset_info(demo_shards)
    labels = split_labels(dataset, "train")
    chosen = class_balanced_subset(labels, 0.25, seed=1)
    subset = subset_dataset(dataset, "train", chosen, tmp_path / "indexes")
    assert subset.split("train").count == len(chosen) == 30 and list(subset.splits) == ["train"]
    assert len(subset.split("train").shards) < len(dataset.split("train").shards) + 1

    full = build_indexed_eval_loader(dataset, EvalRecipe(size=32), batch_size=64, split="train")
    every = {int(position): image for batch in full for position, image in zip(batch["index"], batch["image"])}
    part = build_eval_loader(subset, EvalRecipe(size=32), batch_size=7, split="train")
    images, part_labels = zip(*[(image, label) for batch in part for image, label in zip(batch["image"], batch["label"])])
    assert [int(label) for label in part_labels] == labels[chosen].tolist()
    assert all(np.array_equal(image.numpy(), every[int(position)].numpy()) for image, position in zip(images, chosen))

    train = build_train_loader(subset, finetune_recipe(32), batch_size=10, seed=0, shuffle_buffer=30)
    assert train.steps_per_epoch == 3
    batches = iter(train)
    seen = [int(label) for _ in range(3) for label in next(batches)["label"]]
    assert sorted(seen) == sorted(labels[chosen].tolist())  # one pass: each chosen sample once
