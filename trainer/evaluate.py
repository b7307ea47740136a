"""Measuring a representation: weighted kNN on frozen backbone features.

The feature bank is the labeled `train` split; the queries are the `val` split when the
dataset has one, otherwise the train split itself with each sample's own match left out.
Images pass through the eval recipe (resize, center crop) at the run's image size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.dataset import DatasetError, DatasetInfo, load_dataset_info
from pipeline.loader import build_eval_loader
from pipeline.recipes import EvalRecipe
from trainer.checkpoint import load_checkpoint
from trainer.config import Config, config_from_dict
from trainer.knn import knn_accuracy
from trainer.model import build_model, seed_everything


def load_backbone(checkpoint: str | Path, random_init: bool = False) -> tuple[torch.nn.Module, Config]:
    """The pretrained backbone of a checkpoint (strict load), or the same architecture freshly
    initialized with the run's seed when `random_init` is set (the baseline to compare against)."""
    state = load_checkpoint(checkpoint)
    config = config_from_dict(state["config"])
    seed_everything(config.seed)
    model = build_model(config)
    if not random_init:
        model.load_state_dict(state["model"], strict=True)
    return model.backbone, config


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, dataset: DatasetInfo, split: str, image_size: int,
                     batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 features and (N,) labels of every sample of `split`, on the CPU."""
    loader = build_eval_loader(dataset, EvalRecipe(size=image_size), batch_size=batch_size,
                               split=split, device=device)
    backbone.eval().to(device)
    features, labels = [], []
    try:
        for batch in loader:
            features.append(backbone(batch["image"].to(device)).float().cpu())
            labels.append(batch["label"].cpu())
    finally:
        loader.close()
    return torch.cat(features), torch.cat(labels)


def effective_rank(features: torch.Tensor, epsilon: float = 1e-7) -> float:
    """RankMe: the effective rank of a feature matrix (Garrido, Balestriero, Najman & LeCun,
    "RankMe: Assessing the Downstream Performance of Pretrained Self-Supervised Representations
    by Their Rank", ICML 2023, Eq. 1): ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum(s) + eps``
    over the singular values s of `features` (N, D). Between 1 (every sample on one line: a
    collapsed representation) and min(N, D). Needs no labels."""
    singular_values = torch.linalg.svdvals(features.double())
    shares = singular_values / singular_values.sum() + epsilon
    return float(torch.exp(-(shares * shares.log()).sum()))


def knn_evaluate(backbone: torch.nn.Module, data: str | Path, *, image_size: int, batch_size: int = 256,
                 k: int = 20, temperature: float = 0.07, device: str | torch.device = "cpu") -> dict:
    """Weighted kNN top-1/top-5 (percent) of a backbone on a labeled converted dataset."""
    dataset = load_dataset_info(data)
    if not dataset.labeled:
        raise DatasetError(f"{dataset.root}: kNN evaluation needs labels; this dataset was converted "
                           "from a flat folder (convert a folder of class folders)")
    device = torch.device(device)
    bank, bank_labels = extract_features(backbone, dataset, "train", image_size, batch_size, device)
    query_split = "val" if "val" in dataset.splits else "train"
    if query_split == "val":
        queries, query_labels = extract_features(backbone, dataset, "val", image_size, batch_size, device)
    else:
        queries, query_labels = bank, bank_labels
    result = knn_accuracy(bank, bank_labels, queries, query_labels, num_classes=len(dataset.classes),
                          k=k, temperature=temperature, exclude_self=query_split == "train")
    return {**result, "k": k, "temperature": temperature, "effective_rank": effective_rank(bank),
            "bank_samples": len(bank),
            "query_split": query_split, "query_samples": len(queries)}


def online_knn(backbone: torch.nn.Module, data: str | Path, *, image_size: int, batch_size: int, k: int,
               temperature: float, device: torch.device) -> dict | None:
    """kNN during pretraining (rank 0): the backbone's train/eval modes are put back afterwards.

    None when the dataset has no labels. Gradients are off; no random generator is touched, so
    a run with the monitor on sees the same batches and losses as one without.
    """
    dataset = load_dataset_info(data)
    if not dataset.labeled:
        return None
    modes = {module: module.training for module in backbone.modules()}
    try:
        return knn_evaluate(backbone, data, image_size=image_size, batch_size=batch_size, k=k,
                            temperature=temperature, device=device)
    finally:
        for module, training in modes.items():
            module.train(training)
