"""Linear evaluation: a linear classifier trained on frozen backbone features.

The standard protocol of self-supervised papers (Zhang et al. 2016; SimCLR, MoCo, DINO), done
the cheap way: the features of the labeled `train` split pass through the eval recipe (resize,
center crop) once, are cached, standardized with their mean and standard deviation (as MAE's
linear probe does with a non-affine BatchNorm), and a linear layer is trained on them with SGD
(momentum 0.9, cosine learning rate, cross-entropy). Accuracy is measured on a held-out test set
when one is given (`test_data`), else on the `val` split (or, lacking one, on train itself, which
the result says).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from selfsup.pipeline.dataset import load_dataset_info

from selfsup.errors import DatasetError
from selfsup.trainer.evaluate import FeatureCache, cached_features, evaluation_samples, held_out_test_set


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """{'top1': %, 'top5': %} of (N, C) logits against (N,) labels; k is capped at C."""
    result = {}
    for k in ks:
        top = logits.topk(min(k, logits.shape[1]), dim=1).indices
        correct = (top == labels[:, None]).any(dim=1).float().mean().item()
        result[f"top{k}"] = 100.0 * correct
    return result


def train_linear_classifier(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int = 100,
                            lr: float = 0.1, batch_size: int = 256, weight_decay: float = 0.0,
                            seed: int = 0) -> torch.nn.Module:
    """A `Sequential(standardize, Linear)` fitted on (N, D) features and (N,) labels, in eval mode."""
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"epochs={epochs}, batch_size={batch_size}, lr={lr}: expected positive values")
    mean = features.mean(dim=0)
    std = features.std(dim=0).clamp_min(1e-6) if len(features) > 1 else torch.ones_like(mean)
    standardize = Standardize(mean, std)
    generator = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(features.shape[1], num_classes).to(features.device)
    torch.nn.init.normal_(linear.weight, std=0.01, generator=generator)  # as MoCo/DINO's linear heads
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.SGD(linear.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    inputs = standardize(features)
    steps_per_epoch = math.ceil(len(inputs) / batch_size)
    total_steps = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator).to(features.device)
        for start in range(0, len(inputs), batch_size):
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            chosen = order[start:start + batch_size]
            loss = F.cross_entropy(linear(inputs[chosen]), labels[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return torch.nn.Sequential(standardize, linear).eval()


class Standardize(torch.nn.Module):
    """x -> (x - mean) / std with fixed (D,) statistics."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


def linear_evaluate(backbone: torch.nn.Module, data: str | Path, *, image_size: int, epochs: int = 100,
                    lr: float = 0.1, batch_size: int = 256, feature_batch_size: int = 256,
                    weight_decay: float = 0.0, device: str | torch.device = "cpu", seed: int = 0,
                    test_data: str | Path | None = None, per_query: bool = False,
                    feature_cache: FeatureCache | None = None) -> dict:
    """Top-1/top-5 (percent) of a linear classifier on the frozen features of `backbone`, measured on
    `test_data` when given (see `trainer.evaluate.held_out_test_set`); with `per_query`, also
    "top1_correct" (one bool per evaluated sample, in order). `feature_cache`: see
    `trainer.evaluate.cached_features`."""
    dataset = load_dataset_info(data)
    if not dataset.labeled:
        raise DatasetError(f"{dataset.root}: linear evaluation needs labels; this dataset was converted "
                           "from a flat folder (convert a folder of class folders)")
    test = held_out_test_set(dataset, test_data)
    device = torch.device(device)
    train_features, train_labels = cached_features(feature_cache, backbone, dataset, "train", image_size,
                                                   feature_batch_size, device)
    eval_features, eval_labels, eval_split = evaluation_samples(backbone, dataset, test,
                                                                (train_features, train_labels), image_size,
                                                                feature_batch_size, device, feature_cache)
    num_classes = len(dataset.classes)
    with torch.enable_grad():
        classifier = train_linear_classifier(train_features.to(device), train_labels.to(device), num_classes,
                                             epochs=epochs, lr=lr, batch_size=batch_size,
                                             weight_decay=weight_decay, seed=seed)
    with torch.no_grad():
        logits = classifier(eval_features.to(device))
        train_logits = classifier(train_features.to(device))
    result = topk_accuracy(logits.cpu(), eval_labels)
    if per_query:
        result["top1_correct"] = (logits.argmax(dim=1).cpu() == eval_labels).tolist()
    return {**result, "train_top1": topk_accuracy(train_logits.cpu(), train_labels, (1,))["top1"],
            "epochs": epochs, "lr": lr, "batch_size": batch_size, "eval_split": eval_split,
            "train_samples": len(train_features), "eval_samples": len(eval_features), "classes": num_classes}
