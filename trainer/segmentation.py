"""Dense transfer: semantic segmentation with a head on the frozen backbone's feature map.

The backbone is frozen (eval mode, no gradient); its last feature map (`methods.dense.feature_map`:
the ResNet's last stage, the ViT's patch tokens on their grid) feeds a head trained with pixel-wise
cross-entropy (255 ignored):

* `linear`: BatchNorm + 1x1 convolution, the "linear" head of DINOv2's segmentation evaluation
  (Oquab et al. 2023, Sec. 7.4: a linear layer on the patch tokens, logits upsampled);
* `fcn`: two 3x3 convolution + BatchNorm + ReLU layers of 128 channels, then a 1x1 classifier,
  a small FCN head (Long, Shelhamer & Darrell 2015; mmsegmentation's FCNHead).

The logits are upsampled bilinearly to the S x S input. The head trains with AdamW and a cosine
learning rate on random resized crops and flips of the train split (the same crop for image and
mask, `pipeline.segmentation_loader`), and is scored on the whole images of the val split (or of
every split of a held-out test set): mean intersection-over-union over the classes present in the
labels or the predictions, and pixel accuracy, both over non-ignored pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from selfsup.errors import ConfigError, DatasetError
from selfsup.methods.dense import feature_map
from selfsup.pipeline.dataset import DatasetInfo, load_dataset_info
from selfsup.pipeline.segmentation_loader import build_segmentation_loader, mask_batch
from selfsup.pipeline.segmentation_masks import IGNORE_INDEX, require_masks
from selfsup.trainer.evaluate import held_out_test_set

HEADS = ("linear", "fcn")


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(C, C) int64 counts, rows the true class, columns the predicted one, over pixels whose target
    is not `ignore_index` (targets >= C are an error)."""
    targets, predictions = targets.reshape(-1).long(), predictions.reshape(-1).long()
    keep = targets != ignore_index
    targets, predictions = targets[keep], predictions[keep]
    if targets.numel() and int(targets.max()) >= num_classes:
        raise DatasetError(f"a mask holds class {int(targets.max())}, but the dataset has {num_classes} classes")
    return torch.bincount(targets * num_classes + predictions, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor) -> dict:
    """mIoU and pixel accuracy (percent) of a confusion matrix, and the IoU of each class (None for a
    class neither labeled nor predicted, left out of the mean)."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    present = union > 0
    iou = torch.where(present, true_positive / union.clamp_min(1), torch.zeros_like(union))
    total = confusion.sum()
    return {"mIoU": 100.0 * float(iou[present].mean()) if present.any() else 0.0,
            "pixel_accuracy": 100.0 * float(true_positive.sum() / total) if total > 0 else 0.0,
            "per_class_iou": [100.0 * float(value) if keep else None for value, keep in zip(iou, present)]}


def segmentation_head(kind: str, channels: int, num_classes: int) -> torch.nn.Module:
    """The `linear` or `fcn` head: (B, channels, h, w) -> (B, num_classes, h, w)."""
    if kind == "linear":
        return torch.nn.Sequential(torch.nn.BatchNorm2d(channels), torch.nn.Conv2d(channels, num_classes, 1))
    if kind == "fcn":
        width = 128
        return torch.nn.Sequential(
            torch.nn.Conv2d(channels, width, 3, padding=1, bias=False), torch.nn.BatchNorm2d(width),
            torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(width, width, 3, padding=1, bias=False), torch.nn.BatchNorm2d(width),
            torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(width, num_classes, 1))
    raise ConfigError(f"--head {kind!r}: expected one of {', '.join(HEADS)}")


@torch.no_grad()
def frozen_features(backbone: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The backbone's last feature map; a backbone behind an input wrapper (colorization's
    lightness input: `prepare` + `net`) is read through it."""
    if hasattr(backbone, "prepare") and hasattr(backbone, "net"):
        return feature_map(backbone.net, backbone.prepare(images))
    try:
        return feature_map(backbone, images)
    except ValueError as error:
        raise ConfigError(f"segment: {error}") from None


def _logits(backbone, head, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        features = frozen_features(backbone, images)
    logits = head(features.float())
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def _train_head(backbone, head, dataset: DatasetInfo, *, size: int, epochs: int, lr: float, batch_size: int,
                seed: int, device: torch.device, progress: bool) -> float:
    loader = build_segmentation_loader(dataset, split="train", size=size, batch_size=min(batch_size,
                                       dataset.split("train").count), train=True, seed=seed, device=device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    total = epochs * loader.steps_per_epoch
    bar = tqdm(total=total, desc="segment head", unit="step", disable=not progress, dynamic_ncols=True)
    batches, loss = iter(loader), float("nan")
    head.train()
    try:
        for step in range(total):
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            batch = next(batches)
            images, masks = batch["image"].to(device), mask_batch(batch).to(device)
            value = F.cross_entropy(_logits(backbone, head, images, device), masks, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            loss = float(value.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
    finally:
        bar.close()
        loader.close()
    return loss


@torch.no_grad()
def _score(backbone, head, dataset: DatasetInfo, splits, *, size: int, batch_size: int, num_classes: int,
           device: torch.device) -> tuple[dict, int]:
    head.eval()
    confusion, images_seen = torch.zeros(num_classes, num_classes, dtype=torch.int64), 0
    for split in splits:
        loader = build_segmentation_loader(dataset, split=split, size=size, batch_size=batch_size, train=False,
                                           device=device)
        try:
            for batch in loader:
                images = batch["image"].to(device)
                predictions = _logits(backbone, head, images, device).argmax(dim=1).cpu()
                confusion += confusion_matrix(predictions, mask_batch(batch).cpu(), num_classes)
                images_seen += len(images)
        finally:
            loader.close()
    return segmentation_scores(confusion), images_seen


def segmentation_evaluate(backbone: torch.nn.Module, data: str | Path, *, image_size: int, head: str = "linear",
                          epochs: int = 20, lr: float = 0.01, batch_size: int = 32, seed: int = 0,
                          device: str | torch.device = "cpu", test_data: str | Path | None = None,
                          progress: bool = False) -> dict:
    """Train a `head` on the frozen `backbone`'s feature map on the train split of a dataset
    converted with masks; mIoU and pixel accuracy (percent) on the val split or the test set."""
    if head not in HEADS:
        raise ConfigError(f"--head {head!r}: expected one of {', '.join(HEADS)}")
    if epochs < 1 or batch_size < 1 or lr <= 0 or image_size < 8:
        raise ConfigError(f"segment: epochs={epochs}, batch_size={batch_size}, lr={lr}, image size {image_size}: "
                          "expected positive values (an image size of at least 8)")
    dataset = load_dataset_info(data)
    segmentation = require_masks(dataset)
    test = held_out_test_set(dataset, test_data) if test_data is not None else None
    if test is not None:
        require_masks(test)
    elif "val" not in dataset.splits:
        raise DatasetError(f"{dataset.root}: segmentation is scored on held-out images and this dataset has no "
                           "val split; convert with --val-fraction or pass --test-data")
    device = torch.device(device)
    num_classes = int(segmentation["classes"])
    backbone.eval().to(device)  # frozen: its features are computed without gradients (`frozen_features`)
    with torch.no_grad():
        channels = frozen_features(backbone, torch.zeros(1, 3, image_size, image_size, device=device)).shape[1]
    torch.manual_seed(seed)
    model = segmentation_head(head, channels, num_classes).to(device)
    with torch.enable_grad():
        loss = _train_head(backbone, model, dataset, size=image_size, epochs=epochs, lr=lr, batch_size=batch_size,
                           seed=seed, device=device, progress=progress)
    scored, splits = (test, list(test.splits)) if test is not None else (dataset, ["val"])
    scores, images = _score(backbone, model, scored, splits, size=image_size, batch_size=batch_size,
                            num_classes=num_classes, device=device)
    return {**scores, "head": head, "epochs": epochs, "lr": lr, "batch_size": batch_size, "final_loss": loss,
            "segmentation_classes": num_classes, "image_size": image_size, "eval_samples": images,
            "eval_split": f"{test.root} ({'+'.join(test.splits)})" if test is not None else "val",
            "train_samples": dataset.split("train").count}
