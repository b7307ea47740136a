"""Measuring a representation: weighted kNN on frozen backbone features.

The feature bank is the labeled `train` split; the queries are the `val` split when the
dataset has one, otherwise the train split itself with each sample's own match left out. A
second converted dataset with the same classes (`test_data`: a held-out test set) can supply the
queries instead: every sample of every split of it. Images pass through the eval recipe (resize,
center crop) at the run's image size.

`recalibrate_batch_norm` re-estimates a backbone's BatchNorm statistics on the eval images
("precise BN") before it is measured: the stored statistics are an average over augmented
training views (or, at random initialization, the identity), not over the images measured.
"""

from __future__ import annotations

from pathlib import Path

import torch

from selfsup.pipeline.dataset import DatasetInfo, load_dataset_info

from selfsup.errors import DatasetError
from selfsup.pipeline.loader import build_eval_loader
from selfsup.pipeline.recipes import EvalRecipe
from selfsup.trainer.checkpoint import load_checkpoint
from selfsup.errors import CheckpointError
from selfsup.trainer.config import Config, config_from_dict
from selfsup.trainer.knn import knn_accuracy
from selfsup.trainer.model import build_model, seed_everything


def load_backbone(checkpoint: str | Path, random_init: bool = False,
                  weights: str = "student") -> tuple[torch.nn.Module, Config]:
    """The pretrained backbone of a checkpoint (strict load), or the same architecture freshly
    initialized with the run's seed when `random_init` is set (the baseline to compare against).

    `weights="teacher"` gives the momentum teacher / target / key encoder of the methods that keep
    one (DINO evaluates its teacher) instead of the online network; at random init both are the same."""
    if weights not in ("student", "teacher"):
        raise ValueError(f"weights={weights!r}; expected 'student' or 'teacher'")
    state = load_checkpoint(checkpoint)
    config = config_from_dict(state["config"])
    seed_everything(config.seed)
    model = build_model(config, load_tokenizer=False)  # a BEiT checkpoint holds its tokenizer
    if not random_init:
        model.load_state_dict(state["model"], strict=True)
    if weights == "student":
        return model.backbone, config
    teacher = model.teacher_backbone()
    if teacher is None:
        raise CheckpointError(f"{checkpoint}: {config.method.name} keeps no teacher backbone (no momentum "
                              "teacher, target or key encoder); evaluate the student")
    return teacher, config


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, dataset: DatasetInfo, split: str, image_size: int,
                     batch_size: int, device: torch.device,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 features and (N,) labels of every sample of `split`, on the CPU; `progress`
    shows a bar of the images done.

    The (N, D) tensor is allocated once, at the first batch, and filled in place: the peak memory
    is the bank itself, not the bank plus a list of its batches."""
    from tqdm import tqdm

    loader = build_eval_loader(dataset, EvalRecipe(size=image_size), batch_size=batch_size,
                               split=split, device=device)
    backbone.eval().to(device)
    features = labels = None
    filled = 0
    bar = tqdm(total=loader.samples, desc=f"features {split}", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for batch in loader:
            output = backbone(batch["image"].to(device)).float().cpu()
            if features is None:
                features = torch.empty(loader.samples, output.shape[1], dtype=torch.float32)
                labels = torch.empty(loader.samples, dtype=torch.int64)
            features[filled:filled + len(output)] = output
            labels[filled:filled + len(output)] = batch["label"].cpu()
            filled += len(output)
            bar.update(len(output))
    finally:
        bar.close()
        loader.close()
    if filled != loader.samples:
        raise DatasetError(f"{dataset.root}: split {split!r} yielded {filled} samples, dataset.json says "
                           f"{loader.samples}")
    return features, labels


def held_out_test_set(dataset: DatasetInfo, test_data: str | Path | None) -> DatasetInfo | None:
    """The test set `test_data` (None: none), checked before any feature is extracted: a labeled
    dataset other than `dataset`, with its classes in the same order."""
    if test_data is None:
        return None
    test = load_dataset_info(test_data)
    if test.root.resolve() == dataset.root.resolve():
        raise DatasetError(f"{test.root}: the test set is the dataset itself (its train split is the "
                           "bank); give a separately converted held-out folder")
    if not test.labeled:
        raise DatasetError(f"{test.root}: a test set needs labels; this dataset was converted from a "
                           "flat folder (convert a folder of class folders)")
    if test.classes != dataset.classes:
        raise DatasetError(f"{test.root}: its classes {list(test.classes)} are not those of "
                           f"{dataset.root} {list(dataset.classes)}; a test set must have the same "
                           "class folders")
    return test


FeatureCache = dict  # (dataset root, split, image size) -> (features, labels) of one backbone state


def cached_features(cache: FeatureCache | None, backbone: torch.nn.Module, dataset: DatasetInfo, split: str,
                    image_size: int, batch_size: int, device: torch.device,
                    progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`extract_features`, kept in `cache` (when given) so that several measurements of the same
    backbone extract each split once. A cache belongs to one backbone state: start a new one after
    the weights or BatchNorm statistics change (`recalibrate_batch_norm`)."""
    if cache is None:
        return extract_features(backbone, dataset, split, image_size, batch_size, device, progress)
    key = (str(dataset.root.resolve()), split, image_size)
    if key not in cache:
        cache[key] = extract_features(backbone, dataset, split, image_size, batch_size, device, progress)
    return cache[key]


@torch.no_grad()
def evaluation_samples(backbone: torch.nn.Module, dataset: DatasetInfo, test: DatasetInfo | None,
                       bank: tuple[torch.Tensor, torch.Tensor], image_size: int, batch_size: int,
                       device: torch.device, cache: FeatureCache | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The features and labels to measure on, and where they come from ("val", "train" or the
    test set's path with its splits): every sample of the test set (`held_out_test_set`) when
    given, else the val split, else the train split (`bank`, the train split's features, is
    returned as is). `cache` as in `cached_features`."""
    if test is not None:
        parts = [cached_features(cache, backbone, test, split, image_size, batch_size, device)
                 for split in test.splits]
        return (torch.cat([features for features, _ in parts]), torch.cat([labels for _, labels in parts]),
                f"{test.root} ({'+'.join(test.splits)})")
    if "val" in dataset.splits:
        return (*cached_features(cache, backbone, dataset, "val", image_size, batch_size, device), "val")
    return (*bank, "train")


@torch.no_grad()
def recalibrate_batch_norm(backbone: torch.nn.Module, data: str | Path, *, image_size: int,
                           batch_size: int = 256, max_samples: int = 8192,
                           device: str | torch.device = "cpu") -> int:
    """Replace every BatchNorm layer's running mean and variance by population statistics of
    the first `max_samples` eval-recipe images of the train split; returns the images used
    (0 when the backbone has no BatchNorm, e.g. a ViT, and is left as it was).

    "Precise BN" (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576, Sec. 3):
    the forward runs in training mode, as the layers were trained, and each layer's statistics
    are the exact mean and (unbiased) variance of its inputs over all the images, not an EMA of
    per-batch values, so neither the batch size nor the order of the samples biases them.
    Other layers (dropout) stay in eval mode; every layer's mode is put back afterwards.
    """
    if max_samples < 1:
        raise ValueError(f"max_samples must be at least 1 image, got {max_samples}")
    norms = [module for module in backbone.modules()
             if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats]
    if not norms:
        return 0
    device = torch.device(device)
    sums: dict[torch.nn.Module, list] = {}  # per layer: [sum of x, sum of x^2, count] per channel

    def accumulate(module, inputs, _output):
        x = inputs[0].detach().double().transpose(0, 1).flatten(1)  # (C, N * H * W)
        total = sums.setdefault(module, [0.0, 0.0, 0])
        total[0] = total[0] + x.sum(dim=1)
        total[1] = total[1] + (x * x).sum(dim=1)
        total[2] += x.shape[1]

    modes = {module: module.training for module in backbone.modules()}
    hooks = [norm.register_forward_hook(accumulate) for norm in norms]
    backbone.eval().to(device)
    for norm in norms:
        norm.train()
    loader = build_eval_loader(load_dataset_info(data), EvalRecipe(size=image_size),
                               batch_size=batch_size, split="train", device=device)
    seen = 0
    try:
        for batch in loader:
            images = batch["image"].to(device)[: max_samples - seen]
            backbone(images)
            seen += len(images)
            if seen >= max_samples:
                break
    finally:
        loader.close()
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.train(training)
    for norm, (total, squares, count) in sums.items():
        mean = total / count
        variance = (squares / count - mean * mean).clamp_min(0) * count / max(count - 1, 1)
        norm.running_mean.copy_(mean.to(norm.running_mean.dtype))
        norm.running_var.copy_(variance.to(norm.running_var.dtype))
    return seen


def effective_rank(features: torch.Tensor, epsilon: float = 1e-7, chunk: int = 8192) -> float:
    """RankMe: the effective rank of a feature matrix (Garrido, Balestriero, Najman & LeCun,
    "RankMe: Assessing the Downstream Performance of Pretrained Self-Supervised Representations
    by Their Rank", ICML 2023, Eq. 1): ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum(s) + eps``
    over the singular values s of `features` (N, D). Between 1 (every sample on one line: a
    collapsed representation) and min(N, D). Needs no labels.

    The singular values are the square roots of the eigenvalues of the (D, D) Gram matrix
    ``F^T F``, summed in float64 over blocks of `chunk` rows: memory O(D^2), not a float64 copy of
    the whole (N, D) bank."""
    gram = torch.zeros(features.shape[1], features.shape[1], dtype=torch.float64)
    for start in range(0, features.shape[0], chunk):
        block = features[start:start + chunk].double()
        gram += block.T @ block
    eigenvalues = torch.linalg.eigvalsh(gram).clamp_min(0).flip(0)[:min(features.shape)]
    singular_values = eigenvalues.sqrt()
    shares = singular_values / singular_values.sum() + epsilon
    return float(torch.exp(-(shares * shares.log()).sum()))


def knn_evaluate(backbone: torch.nn.Module, data: str | Path, *, image_size: int, batch_size: int = 256,
                 k: int = 20, temperature: float = 0.07, device: str | torch.device = "cpu",
                 per_query: bool = False, test_data: str | Path | None = None,
                 feature_cache: FeatureCache | None = None) -> dict:
    """Weighted kNN top-1/top-5 (percent) of a backbone on a labeled converted dataset, the queries
    from `test_data` when given (see `held_out_test_set`); with `per_query`, also "top1_correct"
    (one bool per query, in the queries' order). `feature_cache`: see `cached_features`."""
    dataset = load_dataset_info(data)
    if not dataset.labeled:
        raise DatasetError(f"{dataset.root}: kNN evaluation needs labels; this dataset was converted "
                           "from a flat folder (convert a folder of class folders)")
    test = held_out_test_set(dataset, test_data)
    device = torch.device(device)
    bank, bank_labels = cached_features(feature_cache, backbone, dataset, "train", image_size, batch_size, device)
    queries, query_labels, query_split = evaluation_samples(backbone, dataset, test, (bank, bank_labels),
                                                            image_size, batch_size, device, feature_cache)
    result = knn_accuracy(bank, bank_labels, queries, query_labels, num_classes=len(dataset.classes),
                          k=k, temperature=temperature, exclude_self=query_split == "train", per_query=per_query)
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
