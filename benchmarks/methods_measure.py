"""What the methods benchmark measures on a pretrained checkpoint, next to its random-init twin.

kNN top-1 and the effective rank of the features on the val split, kNN after precise BN, a linear
probe, and kNN and the linear probe on the held-out test set; `benchmarks.methods` trains the
runs and `benchmarks.methods_report` turns the stored fields into tables.
"""

from __future__ import annotations

import functools
from pathlib import Path

from benchmarks.methods_report import TEST_SAMPLES
from selfsup.trainer.evaluate import knn_evaluate, load_backbone, recalibrate_batch_norm
from selfsup.trainer.linear_probe import linear_evaluate

# The figures measured on a checkpoint, for its backbone and for the random-init twin.
MEASURED = ("knn_top1", "random_top1", "effective_rank", "random_effective_rank", "knn_top1_precise_bn",
            "random_top1_precise_bn", "linear_top1", "random_linear_top1", "knn_correct", "random_knn_correct",
            "test_knn_top1", "random_test_knn_top1", "test_knn_correct", "random_test_knn_correct",
            "test_linear_top1", "random_test_linear_top1")


def outcomes(correct: list[bool]) -> str:
    """Per-query kNN outcomes as a string of 0/1 in query order (compact in the JSON files)."""
    return "".join("1" if hit else "0" for hit in correct)


def measure_checkpoint(checkpoint: Path, shards: Path, test_shards: Path, weights: str = "student") -> dict:
    """kNN (and the features' effective rank), the linear probe, and kNN with precise BN (BatchNorm
    statistics re-estimated on the clean train images; None for a backbone without) of the
    checkpoint's backbone (`weights`: the online network or the momentum teacher) and of its
    random-init twin, and kNN and the linear probe on the held-out test set, as the fields of a
    result (`MEASURED`)."""
    fields = {}
    for random_init in (False, True):
        backbone, config = load_backbone(checkpoint, random_init=random_init, weights=weights)
        features = {}  # each split's features once, for the four measurements of this backbone state
        knn = functools.partial(knn_evaluate, backbone, shards, image_size=config.data.image_size,
                                k=config.eval.knn_k, temperature=config.eval.knn_temperature)
        linear = functools.partial(linear_evaluate, backbone, shards, image_size=config.data.image_size,
                                   feature_batch_size=config.eval.batch_size, seed=config.seed,
                                   feature_cache=features)
        on_val = knn(per_query=True, feature_cache=features)
        on_test = knn(per_query=True, test_data=test_shards, feature_cache=features)
        if on_test["query_samples"] != TEST_SAMPLES:
            raise RuntimeError(f"{test_shards}: {on_test['query_samples']} test images, expected {TEST_SAMPLES}")
        linear_on_val, linear_on_test = linear(), linear(test_data=test_shards)
        recalibrated = recalibrate_batch_norm(backbone, shards, image_size=config.data.image_size,
                                              batch_size=config.eval.batch_size)
        precise_bn = knn()["top1"] if recalibrated else None  # new statistics: new features
        prefix = "random_" if random_init else ""
        fields.update({
            ("random_top1" if random_init else "knn_top1"): on_val["top1"],
            f"{prefix}effective_rank": on_val["effective_rank"],
            ("random_top1_precise_bn" if random_init else "knn_top1_precise_bn"): precise_bn,
            f"{prefix}linear_top1": linear_on_val["top1"],
            f"{prefix}knn_correct": outcomes(on_val["top1_correct"]),
            f"{prefix}test_knn_top1": on_test["top1"],
            f"{prefix}test_knn_correct": outcomes(on_test["top1_correct"]),
            f"{prefix}test_linear_top1": linear_on_test["top1"],
        })
    return fields
