"""What a dataset profile's benchmark measures: a backbone, its random-init twin, and raw pixels.

Each backbone state is measured with the weighted kNN (k=20, T=0.07) and the linear probe
(`trainer.linear_probe.train_linear_classifier`, as `selfsup eval linear` trains it: 100 epochs
of SGD on the standardized frozen features, fitted once per state) on the val split
(for choosing settings) and on the held-out test set (for the table), with the train split as
the bank and the probe's training set, keeping each test query's outcome for paired margins.
The raw-pixel floor runs the same kNN and the same linear probe on the stored images' pixel
values (784 for Fashion-MNIST), read back from the shards in the order the eval loader reads them.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from benchmarks.datasets import PreparedData
from benchmarks.methods_measure import outcomes
from selfsup.pipeline.dataset import MANIFEST_FILE, load_dataset_info
from selfsup.trainer.config import Config
from selfsup.trainer.evaluate import (cached_features, evaluation_samples, held_out_test_set, knn_evaluate,
                                     load_backbone, recalibrate_batch_norm)
from selfsup.trainer.knn import knn_accuracy
from selfsup.trainer.linear_probe import topk_accuracy, train_linear_classifier
from selfsup.trainer.model import build_model, seed_everything

PROBE_EPOCHS = 100  # linear_evaluate's default


def linear_probe(bank: tuple[torch.Tensor, torch.Tensor], sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 classes: int, seed: int = 0) -> dict[str, tuple[float, list[bool]]]:
    """The linear probe of `trainer.linear_probe` (`train_linear_classifier`: standardized features,
    SGD 0.1, momentum 0.9, cosine, 100 epochs, batch 256, as `linear_evaluate` trains it) fitted
    once on the bank (features, labels) and applied to each named set: its top-1 and per-sample
    outcomes."""
    classifier = train_linear_classifier(*bank, classes, epochs=PROBE_EPOCHS, seed=seed)
    results = {}
    with torch.no_grad():
        for name, (features, labels) in sets.items():
            logits = classifier(features)
            results[name] = (topk_accuracy(logits, labels, (1,))["top1"], (logits.argmax(dim=1) == labels).tolist())
    return results


def measure_backbone(backbone: torch.nn.Module, config: Config, data: PreparedData, with_test: bool = True) -> dict:
    """kNN and linear top-1 on the val split (and the test set), the test queries' outcomes as
    '0'/'1' strings, and the effective rank of the bank features. Each split's features are
    extracted once; the linear classifier is trained once and measured on both."""
    features = {}  # (dataset, split, size) -> (features, labels) of this backbone state
    size, batch = config.data.image_size, config.eval.batch_size
    knn = functools.partial(knn_evaluate, backbone, data.evaluation, image_size=size, batch_size=batch,
                            k=config.eval.knn_k, temperature=config.eval.knn_temperature, per_query=True,
                            feature_cache=features)
    on_val = knn()
    evaluation, cpu = load_dataset_info(data.evaluation), torch.device("cpu")
    bank = cached_features(features, backbone, evaluation, "train", size, batch, cpu)
    sets = {"val": cached_features(features, backbone, evaluation, "val", size, batch, cpu)}
    fields = {"val_knn_top1": on_val["top1"], "effective_rank": on_val["effective_rank"],
              "bank_samples": on_val["bank_samples"], "val_queries": on_val["query_samples"]}
    if with_test:
        on_test = knn(test_data=data.test)
        test = held_out_test_set(evaluation, data.test)
        sets["test"] = evaluation_samples(backbone, evaluation, test, bank, size, batch, cpu, features)[:2]
        fields.update({"test_knn_top1": on_test["top1"], "test_queries": on_test["query_samples"],
                       "test_knn_correct": outcomes(on_test["top1_correct"])})
    for name, (top1, correct) in linear_probe(bank, sets, len(evaluation.classes), config.seed).items():
        fields[f"{name}_linear_top1"] = top1
        if name == "test":
            fields["test_linear_correct"] = outcomes(correct)
    return fields


def measure_checkpoint(checkpoint: str | Path, data: PreparedData, weights: str = "student",
                       with_test: bool = True) -> dict:
    """`measure_backbone` of a run's pretrained backbone (`weights`: the online network or the
    momentum teacher)."""
    backbone, config = load_backbone(checkpoint, weights=weights)
    return measure_backbone(backbone, config, data, with_test)


def measure_random_init(config: Config, data: PreparedData, with_test: bool = True) -> dict:
    """The backbone of `config` as the trainer builds it before the first step (the run's seed),
    measured as it is and, where it has BatchNorm layers, after re-estimating their statistics
    on the clean train images (`recalibrate_batch_norm`: a random network's stored statistics
    are the identity); those fields prefixed "precise_bn_"."""
    seed_everything(config.seed)
    backbone = build_model(config).backbone
    fields = measure_backbone(backbone, config, data, with_test)
    recalibrated = recalibrate_batch_norm(backbone, data.evaluation, image_size=config.data.image_size,
                                          batch_size=config.eval.batch_size)
    fields["precise_bn_images"] = recalibrated
    if recalibrated:
        fields.update({f"precise_bn_{key}": value
                       for key, value in measure_backbone(backbone, config, data, with_test).items()})
    return fields


def pixels(dataset: str | Path, splits: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H * W) float32 pixel values in [0, 1] (8-bit gray; RGB images averaged to gray) and
    (N,) labels of the samples of `splits`, in the order the eval loader reads them (the splits
    in turn, each in shard and key order), decoded from the shards' stored bytes."""
    root = Path(dataset)
    rows = pq.read_table(root / MANIFEST_FILE, columns=["key", "split", "shard", "offset", "bytes", "label"]).to_pylist()
    values, labels = [], []
    for split in splits:
        shards = [path.name for path in load_dataset_info(root).split(split).shards]
        chosen = sorted((row for row in rows if row["split"] == split),
                        key=lambda row: (shards.index(row["shard"]), row["key"]))
        handles = {}
        try:
            for row in chosen:
                handle = handles.setdefault(row["shard"], open(root / row["shard"], "rb"))
                handle.seek(row["offset"])
                image = Image.open(io.BytesIO(handle.read(row["bytes"]))).convert("L")
                values.append(np.asarray(image, dtype=np.uint8).reshape(-1))
                labels.append(row["label"])
        finally:
            for handle in handles.values():
                handle.close()
    return (torch.from_numpy(np.stack(values)).float() / 255.0, torch.tensor(labels, dtype=torch.long))


def measure_pixels(data: PreparedData, k: int = 20, temperature: float = 0.07, seed: int = 0,
                   with_test: bool = True) -> dict:
    """The raw-pixel floor: kNN on the L2-normalized pixel vectors (as `knn_accuracy` normalizes
    every feature) and the backbones' `linear_probe` on the pixels, trained on the train split;
    on the val split and the test set, as `measure_backbone`."""
    evaluation = load_dataset_info(data.evaluation)
    bank, bank_labels = pixels(data.evaluation, ("train",))
    classes = len(evaluation.classes)
    sets = {"val": pixels(data.evaluation, ("val",))}
    if with_test:
        sets["test"] = pixels(data.test, tuple(load_dataset_info(data.test).splits))
    fields = {"features": bank.shape[1], "bank_samples": len(bank), "val_queries": len(sets["val"][0])}
    for name, (top1, correct) in linear_probe((bank, bank_labels), sets, classes, seed).items():
        queries, labels = sets[name]
        knn = knn_accuracy(bank, bank_labels, queries, labels, num_classes=classes, k=k, temperature=temperature,
                           per_query=True)
        fields.update({f"{name}_knn_top1": knn["top1"], f"{name}_linear_top1": top1})
        if name == "test":
            fields.update({"test_queries": len(queries), "test_knn_correct": outcomes(knn["top1_correct"]),
                           "test_linear_correct": outcomes(correct)})
    return fields
