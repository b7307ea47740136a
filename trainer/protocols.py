"""Every evaluation protocol behind one call, and `selfsup eval all`: each result stored once.

An `EvaluationSession` is one checkpoint's backbone (pretrained student or teacher, or its
random-init twin) measured on one dataset (and optional held-out test set). `run_protocol(session,
name, options)` runs one protocol of `PROTOCOLS`, stores the result in `RUN/eval.json` under its
key (`trainer.eval_store.result_key`: step, weights, protocol, options) and writes its scalars to
`RUN/tensorboard/eval`; with `reuse=True` a stored result of the same key is returned instead.
The frozen-feature protocols (kNN, linear, SVM, low-shot, RankMe) share one feature cache, so
each split is extracted once per session; fine-tuning trains a copy of the backbone.

`planned_protocols(session)` lists what `selfsup eval all` runs on a dataset: kNN, linear, SVM,
low-shot SVMs at each K of 1..64 that the smallest train class allows, fine-tuning on 1% and 10% of
the labels, segmentation when the dataset carries masks, and RankMe.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from selfsup.errors import ConfigError, DatasetError
from selfsup.pipeline.dataset import DatasetInfo, load_dataset_info
from selfsup.trainer.eval_store import EvalWriter, find_result, finite, result_key, run_folder, save_result, save_table
from selfsup.trainer.eval_table import format_table, label, table_rows
from selfsup.trainer.evaluate import cached_features, effective_rank, evaluation_samples, held_out_test_set


@dataclass(frozen=True)
class EvaluationTarget:
    """What to measure and where: a run folder or checkpoint, a labeled dataset, how to read it."""

    checkpoint: str | Path
    data: str | Path
    test_data: str | Path | None = None
    weights: str = "student"  # or "teacher"
    random_init: bool = False
    image_size: int | None = None  # default: the run's data.image_size
    feature_batch_size: int | None = None  # default: the run's eval.batch_size
    device: str | None = None  # default: cuda when present
    recalibrate_bn: int = 0  # images to re-estimate BatchNorm statistics on first (0: off)
    progress: bool = False


class EvaluationSession:
    """One backbone state on one dataset: loaded on first use, features extracted once per split."""

    def __init__(self, target: EvaluationTarget):
        from selfsup.trainer.checkpoint import load_checkpoint
        from selfsup.trainer.config import config_from_dict
        from selfsup.trainer.resume import find_checkpoint

        self.target = target
        self.checkpoint = find_checkpoint(target.checkpoint)
        state = load_checkpoint(self.checkpoint)
        self.config = config_from_dict(state["config"])
        self.step = int(state.get("step", 0))
        del state
        self.run = run_folder(self.checkpoint)
        self.dataset = load_dataset_info(target.data)
        self.test = held_out_test_set(self.dataset, target.test_data)
        self.device = torch.device(target.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.image_size = target.image_size or self.config.data.image_size
        self.batch_size = target.feature_batch_size or self.config.eval.batch_size
        self.weights = "random-init" if target.random_init else (
            "pretrained teacher" if target.weights == "teacher" else "pretrained")
        self.feature_cache: dict = {}
        self.recalibrated_images = 0
        self.writer = EvalWriter(self.run)

    @functools.cached_property
    def backbone(self) -> torch.nn.Module:
        """The backbone measured (BatchNorm re-estimated first when the target asks)."""
        from selfsup.trainer.evaluate import load_backbone, recalibrate_batch_norm

        backbone, _ = load_backbone(self.checkpoint, random_init=self.target.random_init, weights=self.target.weights)
        if self.target.recalibrate_bn:
            self.recalibrated_images = recalibrate_batch_norm(
                backbone, self.dataset.root, image_size=self.image_size, batch_size=self.batch_size,
                max_samples=self.target.recalibrate_bn, device=self.device)
        return backbone.eval()

    def weights_text(self) -> str:
        """The weights measured, in words: 'pretrained', 'random-init, BatchNorm re-estimated on 50 train images'."""
        if not self.target.recalibrate_bn or "backbone" not in self.__dict__:
            return self.weights
        if not self.recalibrated_images:
            return f"{self.weights}, no BatchNorm to re-estimate"
        return f"{self.weights}, BatchNorm re-estimated on {self.recalibrated_images} train images"

    def common_options(self) -> dict:
        """The options every result's key holds: what was measured on what."""
        return {"data": str(self.dataset.root), "test_data": str(self.test.root) if self.test else None,
                "image_size": self.image_size, "recalibrate_bn": self.target.recalibrate_bn,
                "seed": self.config.seed}

    def features(self, dataset: DatasetInfo, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return cached_features(self.feature_cache, self.backbone, dataset, split, self.image_size, self.batch_size,
                               self.device, progress=self.target.progress)

    def extract_all(self) -> None:
        """Fill the feature cache for the train split and the held-out samples, with progress bars."""
        self.features(self.dataset, "train")
        for dataset, split in ([(self.test, split) for split in self.test.splits] if self.test else
                               [(self.dataset, "val")] if "val" in self.dataset.splits else []):
            self.features(dataset, split)

    def close(self) -> None:
        self.writer.close()


# --------------------------------------------------------------------------------------------
# The protocols: each takes the session and its options, returns a JSON-able result dict.
# --------------------------------------------------------------------------------------------


def _knn(session: EvaluationSession, options: dict) -> dict:
    from selfsup.trainer.evaluate import knn_evaluate

    session.extract_all()
    return knn_evaluate(session.backbone, session.dataset.root, image_size=session.image_size,
                        batch_size=session.batch_size, k=options["k"], temperature=options["temperature"],
                        device=session.device, test_data=session.target.test_data,
                        feature_cache=session.feature_cache)


def _linear(session: EvaluationSession, options: dict) -> dict:
    from selfsup.trainer.linear_probe import linear_evaluate

    session.extract_all()
    return linear_evaluate(session.backbone, session.dataset.root, image_size=session.image_size,
                           epochs=options["epochs"], lr=options["lr"], batch_size=options["batch_size"],
                           feature_batch_size=session.batch_size, weight_decay=options["weight_decay"],
                           device=session.device, seed=session.config.seed, test_data=session.target.test_data,
                           feature_cache=session.feature_cache)


def _svm(session: EvaluationSession, options: dict) -> dict:
    from selfsup.trainer.svm import check_costs, check_low_shot_fits, svm_evaluate

    check_costs(options["costs"])
    if options.get("per_class") is not None:
        check_low_shot_fits(session.dataset, options["per_class"])
    session.extract_all()
    return svm_evaluate(session.backbone, session.dataset.root, image_size=session.image_size,
                        batch_size=session.batch_size, device=session.device, test_data=session.target.test_data,
                        costs=options["costs"], folds=options["folds"], low_shot=options.get("per_class"),
                        draws=options.get("draws", 5), seed=session.config.seed, feature_cache=session.feature_cache)


def _finetune(session: EvaluationSession, options: dict) -> dict:
    from selfsup.trainer.finetune import finetune_evaluate

    return finetune_evaluate(session.backbone, session.dataset.root, image_size=session.image_size,
                             label_fraction=options["label_fraction"], epochs=options["epochs"], lr=options["lr"],
                             batch_size=options["batch_size"], weight_decay=options["weight_decay"],
                             eval_batch_size=session.batch_size, seed=session.config.seed, device=session.device,
                             test_data=session.target.test_data, progress=session.target.progress)


def _segment(session: EvaluationSession, options: dict) -> dict:
    from selfsup.trainer.segmentation import segmentation_evaluate

    return segmentation_evaluate(session.backbone, session.dataset.root, image_size=options["size"],
                                 head=options["head"], epochs=options["epochs"], lr=options["lr"],
                                 batch_size=options["batch_size"], seed=session.config.seed, device=session.device,
                                 test_data=session.target.test_data, progress=session.target.progress)


def _rankme(session: EvaluationSession, options: dict) -> dict:
    features, _ = session.features(session.dataset, "train")
    return {"effective_rank": effective_rank(features), "samples": len(features), "feature_dim": features.shape[1]}


@dataclass(frozen=True)
class Protocol:
    """A protocol's runner, what the data must have, and which result values are its scalars."""

    run: Callable[[EvaluationSession, dict], dict]
    needs: str  # "labels", "masks" or "" (any dataset)
    metrics: tuple[str, ...]


PROTOCOLS: dict[str, Protocol] = {
    "knn": Protocol(_knn, "labels", ("top1", "top5")),
    "linear": Protocol(_linear, "labels", ("top1", "top5")),
    "svm": Protocol(_svm, "labels", ("mAP", "top1")),
    "low-shot": Protocol(_svm, "labels", ("mAP", "mAP_std", "top1")),
    "finetune": Protocol(_finetune, "labels", ("top1", "top5", "val_top1", "test_top1")),
    "segment": Protocol(_segment, "masks", ("mIoU", "pixel_accuracy")),
    "rankme": Protocol(_rankme, "", ("effective_rank",)),
}


def default_options(session: EvaluationSession, name: str, **overrides) -> dict:
    """A protocol's options as `selfsup eval all` runs it, updated with `overrides`."""
    from selfsup.trainer.svm import DEFAULT_COSTS

    config = session.config.eval
    defaults = {
        "knn": {"k": config.knn_k, "temperature": config.knn_temperature},
        "linear": {"epochs": 100, "lr": 0.1, "batch_size": 256, "weight_decay": 0.0},
        "svm": {"costs": list(DEFAULT_COSTS), "folds": 3},
        "low-shot": {"costs": list(DEFAULT_COSTS), "folds": 3, "draws": 5},
        "finetune": {"epochs": 30, "lr": 0.05, "batch_size": 256, "weight_decay": 0.0},
        "segment": {"head": "linear", "epochs": 20, "lr": 0.01, "batch_size": 32, "size": session.image_size},
        "rankme": {},
    }
    if name not in defaults:
        raise ConfigError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    if name == "finetune" and "epochs" not in overrides and "label_fraction" in overrides:
        overrides["epochs"] = finetune_epochs(overrides["label_fraction"])
    return {**defaults[name], **overrides}


def finetune_epochs(label_fraction: float) -> int:
    """SimCLR's fine-tuning length (Chen et al. 2020, appendix B.5): 60 epochs on 1% of the labels
    (or less), 30 on more."""
    return 60 if label_fraction <= 0.01 else 30


def check_supported(session: EvaluationSession, name: str) -> None:
    """A DatasetError when the dataset lacks what protocol `name` needs (labels, masks)."""
    needs = PROTOCOLS[name].needs
    if needs == "labels" and not session.dataset.labeled:
        raise DatasetError(f"{session.dataset.root}: {name} needs labels; this dataset was converted from a flat "
                           "folder (convert a folder of class folders)")
    if needs == "masks":
        from selfsup.pipeline.segmentation_masks import require_masks

        require_masks(session.dataset)


def run_protocol(session: EvaluationSession, name: str, options: dict, *, reuse: bool = False) -> tuple[dict, bool]:
    """(result, whether it was reused): run protocol `name`, store it and write its scalars; with
    `reuse`, the stored result of the same step, weights, protocol and options when there is one."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    options = dict(options)
    key_options = {**session.common_options(), **options}
    key = result_key(session.step, session.weights, name, key_options)
    if reuse:
        stored = find_result(session.run, key)
        if stored is not None:
            return stored["result"], True
    check_supported(session, name)
    result = {**PROTOCOLS[name].run(session, options), "weights": session.weights, "step": session.step}
    try:
        entry = save_result(session.run, key, step=session.step, weights=session.weights, protocol=name,
                            options=key_options, result=result)
        prefix = "random_init/" if session.weights == "random-init" else (
            "teacher/" if session.weights == "pretrained teacher" else "")
        session.writer.scalars(session.step, prefix + label(name, options).replace(" ", "_"),
                               {metric: entry["result"].get(metric) for metric in PROTOCOLS[name].metrics})
    except OSError as error:  # a run folder this user may read but not write: the measurement still counts
        print(f"selfsup: warning: {session.run}: result not stored ({error.strerror or error})", file=sys.stderr)
        return finite(result), False
    return entry["result"], False


def supported(session: EvaluationSession, name: str) -> bool:
    try:
        check_supported(session, name)
    except DatasetError:
        return False
    return True


def planned_protocols(session: EvaluationSession, selection: list[str] | None = None) -> list[tuple[str, dict]]:
    """(name, options) of every protocol `selfsup eval all` runs on this dataset, in table order;
    `selection` keeps the named protocols only (a name the data cannot support is an error)."""
    from selfsup.trainer.svm import LOW_SHOT_SIZES

    names = list(PROTOCOLS) if selection is None else selection
    unknown = [name for name in names if name not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"--protocols: unknown {', '.join(unknown)}; known: {', '.join(PROTOCOLS)}")
    planned = []
    for name in PROTOCOLS:
        if name not in names:
            continue
        if not supported(session, name):
            if selection is not None:
                check_supported(session, name)  # raises the reason
            continue
        if name == "low-shot":
            counts = session.dataset.split("train").class_counts
            sizes = [size for size in LOW_SHOT_SIZES if not counts or size <= min(counts)]
            planned += [(name, default_options(session, name, per_class=size)) for size in sizes]
        elif name == "finetune":
            planned += [(name, default_options(session, name, label_fraction=fraction)) for fraction in (0.01, 0.1)]
        else:
            planned.append((name, default_options(session, name)))
    return planned


def evaluate_all(target: EvaluationTarget, selection: list[str] | None = None, *, reuse: bool = True,
                 announce: Callable[[str], None] | None = None) -> dict:
    """Run every planned protocol (`planned_protocols`), reusing stored results when `reuse`;
    store the table in `RUN/eval.json`. Returns {"table": printable text, "rows", "run", "step",
    "weights"}; `announce` is told each protocol's name before it runs."""
    session = EvaluationSession(target)
    try:
        measured = []
        for name, options in planned_protocols(session, selection):
            if announce is not None:
                announce(label(name, options))
            result, reused = run_protocol(session, name, options, reuse=reuse)
            measured.append((name, options, result, reused))
        rows = table_rows(session, measured)
        save_table(session.run, f"step {session.step}, {session.weights}", rows)
        return {"table": format_table(session, rows), "rows": rows, "run": str(session.run), "step": session.step,
                "weights": session.weights}
    finally:
        session.close()
