"""Semi-supervised evaluation: fine-tune the whole backbone with a linear head on a fraction of the labels.

The protocol of SimCLR (Chen et al. 2020, Sec. 4.2 and appendix B.5) and its successors: a
class-balanced subset of the train labels (`label_fraction` 0.01 / 0.1 / 1.0, drawn by `seed`,
the same subset for every checkpoint: `trainer.label_subsets`), random resized crops and
horizontal flips only, SGD with Nesterov momentum 0.9 and SimCLR's learning rate `lr` x batch / 256
(lr = 0.05 by default; a subset smaller than the batch is one batch), cosine to zero, no weight
decay by default, the backbone's BatchNorm layers training as well. Top-1 / top-5 are measured
through the eval recipe (resize, center crop) on the val split and, when given, on every sample of
a held-out test set (`test_data`).

The subset is read from the original shards through trimmed indexes (`pipeline.subsets`): a 1%
subset of a million images costs a million index lines, not a copy of the images.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from selfsup.errors import DatasetError
from selfsup.pipeline.dataset import DatasetInfo, load_dataset_info
from selfsup.pipeline.loader import build_eval_loader, build_train_loader
from selfsup.pipeline.recipes import PLAIN_VIEW, EvalRecipe, Recipe, ViewSpec, validate_recipe
from selfsup.pipeline.subsets import split_labels, subset_dataset
from selfsup.trainer.evaluate import held_out_test_set
from selfsup.trainer.label_subsets import check_fraction, class_balanced_subset
from selfsup.trainer.linear_probe import topk_accuracy


class Classifier(torch.nn.Module):
    """A backbone and a linear layer on its pooled features: (B, 3, S, S) -> (B, classes) logits."""

    def __init__(self, backbone: torch.nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone.requires_grad_(True)  # every layer trains
        self.head = torch.nn.Linear(feature_dim, num_classes)
        torch.nn.init.normal_(self.head.weight, std=0.01)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def finetune_recipe(image_size: int) -> Recipe:
    """Random resized crop (scale 0.08-1, aspect 3/4-4/3) and a horizontal flip; no colour, no blur."""
    return validate_recipe(Recipe(name="finetune", views=(ViewSpec(size=image_size, **PLAIN_VIEW),)))


@torch.no_grad()
def classify(model: torch.nn.Module, dataset: DatasetInfo, split: str, image_size: int, batch_size: int,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, classes) logits and (N,) labels of every sample of `split` through the eval recipe."""
    loader = build_eval_loader(dataset, EvalRecipe(size=image_size), batch_size=batch_size, split=split,
                               device=device)
    model.eval()
    logits, labels = [], []
    try:
        for batch in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits.append(model(batch["image"].to(device)).float().cpu())
            labels.append(batch["label"].cpu())
    finally:
        loader.close()
    return torch.cat(logits), torch.cat(labels)


def _train(model: Classifier, subset: DatasetInfo, *, image_size: int, epochs: int, lr: float, batch_size: int,
           weight_decay: float, seed: int, device: torch.device, description: str, progress: bool) -> float:
    """Fine-tune `model` on every sample of `subset`'s train split; returns the last loss."""
    count = subset.split("train").count
    batch_size = min(batch_size, count)
    loader = build_train_loader(subset, finetune_recipe(image_size), batch_size=batch_size, seed=seed,
                                device=device, shuffle_buffer=min(count, 4096))
    lr = lr * batch_size / 256  # SimCLR's linear scaling
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    total = epochs * loader.steps_per_epoch
    bar = tqdm(total=total, desc=description, unit="step", disable=not progress, dynamic_ncols=True)
    model.train().to(device)
    batches, loss = iter(loader), float("nan")
    try:
        for step in range(total):
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            batch = next(batches)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(batch["view_0"].to(device))
            value = F.cross_entropy(logits.float(), batch["label"].to(device))
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            loss = float(value.detach())
            bar.update(1)
            if (step + 1) % loader.steps_per_epoch == 0:
                bar.set_postfix(epoch=(step + 1) // loader.steps_per_epoch, loss=f"{loss:.3f}", refresh=False)
    finally:
        bar.close()
        loader.close()
    return loss


def finetune_evaluate(backbone: torch.nn.Module, data: str | Path, *, image_size: int, label_fraction: float,
                      epochs: int = 30, lr: float = 0.05, batch_size: int = 256, weight_decay: float = 0.0,
                      eval_batch_size: int = 256, seed: int = 0, device: str | torch.device = "cpu",
                      test_data: str | Path | None = None, progress: bool = False) -> dict:
    """Fine-tune a copy of `backbone` (left unchanged) with a linear head on a class-balanced
    `label_fraction` of the train labels; top-1/top-5 (percent) on val and, when given, the test set.

    "top1"/"top5" are the held-out figures: the test set's when given, else val's."""
    check_fraction(label_fraction)
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise DatasetError(f"finetune: epochs={epochs}, batch_size={batch_size}, lr={lr}: expected positive values")
    dataset = load_dataset_info(data)
    if not dataset.labeled:
        raise DatasetError(f"{dataset.root}: fine-tuning needs labels; this dataset was converted from a "
                           "flat folder (convert a folder of class folders)")
    test = held_out_test_set(dataset, test_data)
    if "val" not in dataset.splits and test is None:
        raise DatasetError(f"{dataset.root}: fine-tuning is measured on held-out data, and this dataset has "
                           "no val split; convert with --val-fraction or pass --test-data")
    device = torch.device(device)
    positions = class_balanced_subset(split_labels(dataset, "train"), label_fraction, seed)
    torch.manual_seed(seed)
    model = Classifier(copy.deepcopy(backbone), int(backbone.feature_dim), len(dataset.classes))
    with tempfile.TemporaryDirectory(prefix="selfsup-finetune-") as folder:
        subset = subset_dataset(dataset, "train", positions, folder)
        loss = _train(model, subset, image_size=image_size, epochs=epochs, lr=lr, batch_size=batch_size,
                      weight_decay=weight_decay, seed=seed, device=device, progress=progress,
                      description=f"finetune {label_fraction:g} of the labels")
    batch = min(batch_size, len(positions))
    result = {"label_fraction": label_fraction, "train_samples": len(positions), "epochs": epochs, "base_lr": lr,
              "lr": lr * batch / 256, "batch_size": batch, "final_loss": loss, "classes": len(dataset.classes)}
    if "val" in dataset.splits:
        logits, labels = classify(model, dataset, "val", image_size, eval_batch_size, device)
        accuracy = topk_accuracy(logits, labels)
        result.update(val_top1=accuracy["top1"], val_top5=accuracy["top5"], val_samples=len(labels))
    if test is not None:
        parts = [classify(model, test, split, image_size, eval_batch_size, device) for split in test.splits]
        logits, labels = torch.cat([part[0] for part in parts]), torch.cat([part[1] for part in parts])
        accuracy = topk_accuracy(logits, labels)
        result.update(test_top1=accuracy["top1"], test_top5=accuracy["top5"], test_samples=len(labels),
                      test_set=f"{test.root} ({'+'.join(test.splits)})")
    held_out = "test" if test is not None else "val"
    result.update(top1=result[f"{held_out}_top1"], top5=result[f"{held_out}_top5"], eval_split=held_out)
    return result
