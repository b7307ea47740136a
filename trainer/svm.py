"""Linear SVMs on frozen features: the VOC07 protocol of Goyal, Mahajan, Gupta & Misra 2019,
"Scaling and Benchmarking Self-Supervised Visual Representation Learning" (ICCV, Sec. 5.1 and
their fair_self_supervision_benchmark), and its low-shot variant.

* Features are L2-normalized; for every class a one-vs-rest `sklearn.svm.LinearSVC` (squared
  hinge, L2 penalty, positives weighted 2 : 1 as in their code) is trained on the train split.
* Its cost C is chosen per class from `costs` by `folds`-fold stratified cross-validation **on
  the train split** (the mean average precision over the folds; the smaller cost on a tie), then
  the SVM is refit on the whole train split with it. The held-out samples are never seen before
  the final scoring.
* Reported on the held-out samples (a test set when given, else the val split): the mean over
  classes of the average precision of each class's SVM scores (`sklearn.metrics.
  average_precision_score`; classes without a held-out positive are left out), and top-1 of the
  arg-max over the classes' scores.
* Low shot (`low_shot_svms`): K samples of every class (`trainer.label_subsets.low_shot_subset`),
  `draws` independent draws, each SVM's cost cross-validated on the K-shot samples with
  min(folds, K) folds (with K = 1 nothing is left to validate on: C = `SINGLE_SHOT_COST`), mean and
  sample standard deviation over the draws.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from selfsup.errors import ConfigError, DatasetError
from selfsup.pipeline.dataset import DatasetInfo, load_dataset_info
from selfsup.trainer.evaluate import FeatureCache, cached_features, evaluation_samples, held_out_test_set
from selfsup.trainer.label_subsets import check_low_shot, low_shot_subset

DEFAULT_COSTS = (0.01, 0.1, 1.0, 10.0, 100.0)
LOW_SHOT_SIZES = (1, 2, 4, 8, 16, 32, 64)
SINGLE_SHOT_COST = 1.0
POSITIVE_WEIGHT = {1: 2.0, -1: 1.0}  # Goyal et al.'s class_weight


def normalized(features) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float64 numpy."""
    features = np.asarray(features, dtype=np.float64)
    return features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-10)


def _svm(cost: float):
    from sklearn.svm import LinearSVC

    # The primal solver (liblinear's trust-region Newton method) reaches the same optimum of this
    # strictly convex objective as Goyal et al.'s dual one, 10-100x faster at large costs here.
    return LinearSVC(C=cost, class_weight=POSITIVE_WEIGHT, loss="squared_hinge", penalty="l2", dual=False,
                     tol=1e-4, max_iter=1000)


def _cross_validated_cost(features: np.ndarray, targets: np.ndarray, costs, folds: int, seed: int) -> tuple[float, float]:
    """(the cost with the best mean average precision over the folds, that mean); ties: the smaller cost."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    best_cost, best_score = None, -1.0
    for cost in sorted(costs):
        score = float(cross_val_score(_svm(cost), features, targets, cv=splitter, scoring="average_precision").mean())
        if score > best_score + 1e-12:
            best_cost, best_score = cost, score
    return best_cost, best_score


def check_costs(costs) -> tuple[float, ...]:
    costs = tuple(float(cost) for cost in costs)
    if not costs or any(not cost > 0 for cost in costs):
        raise ConfigError(f"--costs {list(costs)}: expected one or more positive SVM costs, e.g. 0.1,1,10")
    return costs


def fit_one_vs_rest(features, labels, num_classes: int, *, costs=DEFAULT_COSTS, folds: int = 3,
                    seed: int = 0) -> dict:
    """One cross-validated linear SVM per class on (N, D) features and (N,) labels.

    Returns {"models": [LinearSVC per class], "costs": [chosen C per class],
    "cross_validation_ap": [its mean fold AP per class], "unconverged_fits": count}."""
    from sklearn.exceptions import ConvergenceWarning

    features, labels = normalized(features), np.asarray(labels, dtype=np.int64)
    costs = check_costs(costs)
    models, chosen, scores = [], [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for label in range(num_classes):
            targets = np.where(labels == label, 1, -1)
            positives = int((targets == 1).sum())
            if positives == 0:
                raise DatasetError(f"class {label} has no train sample: an SVM needs at least one positive")
            class_folds = min(folds, positives, len(targets) - positives)
            if class_folds >= 2 and len(costs) > 1:
                cost, score = _cross_validated_cost(features, targets, costs, class_folds, seed)
            else:
                cost, score = (SINGLE_SHOT_COST if len(costs) > 1 else costs[0]), float("nan")
            models.append(_svm(cost).fit(features, targets))
            chosen.append(cost)
            scores.append(score)
    unconverged = sum(1 for warning in caught if issubclass(warning.category, ConvergenceWarning))
    return {"models": models, "costs": chosen, "cross_validation_ap": scores, "unconverged_fits": unconverged}


def score_one_vs_rest(fitted: dict, features, labels) -> dict:
    """Mean average precision and top-1 (percent) of fitted SVMs on held-out features and labels."""
    from sklearn.metrics import average_precision_score

    features, labels = normalized(features), np.asarray(labels, dtype=np.int64)
    scores = np.stack([model.decision_function(features) for model in fitted["models"]], axis=1)  # (N, C)
    precisions = [float(average_precision_score(labels == label, scores[:, label]))
                  for label in range(scores.shape[1]) if (labels == label).any()]
    return {"mAP": 100.0 * float(np.mean(precisions)), "top1": 100.0 * float((scores.argmax(1) == labels).mean()),
            "per_class_ap": [100.0 * value for value in precisions], "scored_classes": len(precisions)}


def svm_on_features(train_features, train_labels, test_features, test_labels, num_classes: int, *,
                    costs=DEFAULT_COSTS, folds: int = 3, seed: int = 0) -> dict:
    """The full protocol on given features: fit on train (costs by cross-validation on train), score on test."""
    fitted = fit_one_vs_rest(train_features, train_labels, num_classes, costs=costs, folds=folds, seed=seed)
    return {**score_one_vs_rest(fitted, test_features, test_labels), "costs": fitted["costs"],
            "cross_validation_mAP": 100.0 * float(np.nanmean(fitted["cross_validation_ap"]))
            if not np.isnan(fitted["cross_validation_ap"]).all() else None,
            "unconverged_fits": fitted["unconverged_fits"], "train_samples": len(train_labels),
            "eval_samples": len(test_labels)}


def low_shot_svms(train_features, train_labels, test_features, test_labels, num_classes: int, per_class: int, *,
                  draws: int = 5, costs=DEFAULT_COSTS, folds: int = 3, seed: int = 0) -> dict:
    """`svm_on_features` on `draws` independent K-shot subsets of the train samples: mean and std."""
    train_labels = np.asarray(train_labels, dtype=np.int64)
    check_low_shot(train_labels, per_class)
    if draws < 1:
        raise ConfigError(f"--draws {draws}: expected at least one draw")
    runs = []
    for draw in range(draws):
        chosen = low_shot_subset(train_labels, per_class, draw, seed)
        runs.append(svm_on_features(np.asarray(train_features)[chosen], train_labels[chosen], test_features,
                                    test_labels, num_classes, costs=costs, folds=folds, seed=seed))
    precision = np.array([run["mAP"] for run in runs])
    top1 = np.array([run["top1"] for run in runs])
    spread = (lambda values: float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    return {"per_class": per_class, "draws": draws, "mAP": float(precision.mean()), "mAP_std": spread(precision),
            "top1": float(top1.mean()), "top1_std": spread(top1), "mAP_per_draw": precision.tolist(),
            "costs_per_draw": [run["costs"] for run in runs], "train_samples": per_class * num_classes,
            "eval_samples": len(test_labels)}


def check_low_shot_fits(dataset: DatasetInfo, per_class: int) -> None:
    """A ConfigError, before any feature is extracted, when `per_class` samples of every class
    are more than the dataset's smallest train class holds (from dataset.json's class counts)."""
    counts = dataset.split("train").class_counts
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"--low-shot {per_class!r}: expected a number of samples per class of at least 1")
    if counts and per_class > min(counts):
        smallest = int(np.argmin(counts))
        raise ConfigError(f"--low-shot {per_class}: class {dataset.classes[smallest]!r} of {dataset.root} "
                          f"(train split) has only {counts[smallest]} samples; choose at most {counts[smallest]}")


def svm_evaluate(backbone: torch.nn.Module, data: str | Path, *, image_size: int, batch_size: int = 256,
                 device: str | torch.device = "cpu", test_data: str | Path | None = None, costs=DEFAULT_COSTS,
                 folds: int = 3, low_shot: int | None = None, draws: int = 5, seed: int = 0,
                 feature_cache: FeatureCache | None = None) -> dict:
    """The SVM protocol (or, with `low_shot=K`, its K-shot variant) on a backbone's frozen features
    of a labeled dataset; measured on `test_data` when given, else on the val split."""
    dataset = load_dataset_info(data)
    if not dataset.labeled:
        raise DatasetError(f"{dataset.root}: SVM evaluation needs labels; this dataset was converted from a "
                           "flat folder (convert a folder of class folders)")
    test = held_out_test_set(dataset, test_data)
    if test is None and "val" not in dataset.splits:
        raise DatasetError(f"{dataset.root}: the SVMs are scored on held-out data and this dataset has no val "
                           "split; convert with --val-fraction or pass --test-data")
    costs = check_costs(costs)
    if low_shot is not None:
        check_low_shot_fits(dataset, low_shot)
    device = torch.device(device)
    bank = cached_features(feature_cache, backbone, dataset, "train", image_size, batch_size, device)
    features, labels, split = evaluation_samples(backbone, dataset, test, bank, image_size, batch_size, device,
                                                 feature_cache)
    arguments = (bank[0].numpy(), bank[1].numpy(), features.numpy(), labels.numpy(), len(dataset.classes))
    if low_shot is None:
        result = svm_on_features(*arguments, costs=costs, folds=folds, seed=seed)
    else:
        result = low_shot_svms(*arguments, low_shot, draws=draws, costs=costs, folds=folds, seed=seed)
    return {**result, "eval_split": split, "cost_grid": list(costs), "folds": folds, "classes": len(dataset.classes)}
