"""`selfsup eval finetune|svm|segment|all|plot`: the semi-supervised, SVM, dense and combined
protocols, and the 2-D map of the embeddings. Each result is stored in the run's eval.json and
TensorBoard; `eval all` reuses what is stored."""

from __future__ import annotations

import argparse
import json
import sys

from selfsup.cli.measurements import add_evaluation_arguments, measure
from selfsup.errors import ConfigError


def _costs(text: str | None) -> list[float] | None:
    """--costs as a list of positive numbers (None: the default grid); a ConfigError naming the value."""
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(not value > 0 for value in values):
        raise ConfigError(f"--costs {text!r}: expected comma-separated positive SVM costs, e.g. 0.01,0.1,1,10")
    return values


def _measure(args: argparse.Namespace, name: str, overrides: dict, feature_batch_size: int | None = None) -> dict:
    return measure(args, name, overrides, feature_batch_size=feature_batch_size)


def _print(args: argparse.Namespace, result: dict, line: str) -> int:
    print(json.dumps(result) if args.json else line)
    return 0


def _eval_finetune(args: argparse.Namespace) -> int:
    result = _measure(args, "finetune", {"label_fraction": args.label_fraction, "epochs": args.epochs, "lr": args.lr,
                                         "batch_size": args.batch_size, "weight_decay": args.weight_decay})
    measured = [f"val top-1 {result['val_top1']:.2f}%  top-5 {result['val_top5']:.2f}%"] if "val_top1" in result else []
    if "test_top1" in result:
        measured.append(f"test top-1 {result['test_top1']:.2f}%  top-5 {result['test_top5']:.2f}%")
    return _print(args, result, f"finetune ({result['weights']}, {100 * result['label_fraction']:g}% of the labels: "
                                f"{result['train_samples']} images, {result['epochs']} epochs, lr {result['lr']:.3g}): "
                                + ";  ".join(measured))


def _eval_svm(args: argparse.Namespace) -> int:
    name = "svm" if args.low_shot is None else "low-shot"
    overrides = {"costs": _costs(args.costs), "folds": args.folds}
    if args.low_shot is not None:
        overrides.update(per_class=args.low_shot, draws=args.draws)
    result = _measure(args, name, overrides, feature_batch_size=args.batch_size)
    where = f"{result['eval_samples']} {result['eval_split']} samples"
    if args.low_shot is None:
        line = (f"svm ({result['weights']}, costs cross-validated on the train split): mAP {result['mAP']:.2f}%  "
                f"top-1 {result['top1']:.2f}%  ({where}, {result['train_samples']} to train on)")
    else:
        line = (f"svm low-shot ({result['weights']}, {args.low_shot} per class, {result['draws']} draws): "
                f"mAP {result['mAP']:.2f} ± {result['mAP_std']:.2f}%  top-1 {result['top1']:.2f} ± "
                f"{result['top1_std']:.2f}%  ({where})")
    return _print(args, result, line)


def _eval_segment(args: argparse.Namespace) -> int:
    result = _measure(args, "segment", {"head": args.head, "epochs": args.epochs, "lr": args.lr,
                                        "batch_size": args.batch_size, "size": args.image_size})
    return _print(args, result, f"segment ({result['weights']}, {result['head']} head on the frozen feature map, "
                                f"{result['epochs']} epochs): mIoU {result['mIoU']:.2f}%  pixel accuracy "
                                f"{result['pixel_accuracy']:.2f}%  ({result['eval_samples']} {result['eval_split']} "
                                f"images, {result['segmentation_classes']} classes)")


def _eval_all(args: argparse.Namespace) -> int:
    from selfsup.trainer.protocols import EvaluationTarget, evaluate_all

    target = EvaluationTarget(checkpoint=args.checkpoint, data=args.data, test_data=args.test_data,
                              weights=args.weights, random_init=args.random_init, image_size=args.image_size,
                              feature_batch_size=args.batch_size, device=args.device,
                              recalibrate_bn=args.recalibrate_bn, progress=not args.json)
    selection = [name.strip() for name in args.protocols.split(",") if name.strip()] if args.protocols else None
    announce = None if args.json else (lambda name: print(f"-- {name}", file=sys.stderr, flush=True))
    outcome = evaluate_all(target, selection, reuse=not args.redo, announce=announce)
    if args.json:
        print(json.dumps({key: outcome[key] for key in ("run", "step", "weights", "rows")}))
    else:
        print(outcome["table"])
        print(f"stored in {outcome['run']}/eval.json and {outcome['run']}/tensorboard/eval")
    return 0


def _eval_plot(args: argparse.Namespace) -> int:
    from selfsup.trainer.plot import plot_embeddings

    summary = plot_embeddings(args.output, embeddings=args.embeddings, checkpoint=args.checkpoint, data=args.data,
                              split=args.split, weights=args.weights, random_init=args.random_init,
                              method=args.method, max_points=args.max_points, seed=args.seed, device=args.device)
    print(f"wrote {summary['output']}: {summary['method']} map of {summary['points']} embeddings "
          f"({summary['labels']} labels)")
    return 0


def add_commands(protocols) -> None:
    """Add finetune, svm, segment, all and plot to the `eval` sub-commands."""
    finetune = protocols.add_parser("finetune", help="fine-tune the backbone with a linear head on a fraction "
                                                     "of the labels (semi-supervised)")
    add_evaluation_arguments(finetune, batch_size=256, batch_size_help="fine-tuning batch size (default 256, at "
                                                                       "most the subset's size)")
    finetune.add_argument("--label-fraction", type=float, required=True,
                          help="the class-balanced fraction of the train labels to learn from: 0.01, 0.1 or 1.0")
    finetune.add_argument("--epochs", type=int, default=None,
                          help="epochs over the subset (default: 60 for 1%% of the labels or less, else 30)")
    finetune.add_argument("--lr", type=float, default=0.05, help="SGD (Nesterov) learning rate per 256 images of a "
                                                                 "batch, cosine to 0 (default 0.05)")
    finetune.add_argument("--weight-decay", type=float, default=0.0)
    finetune.set_defaults(run=_eval_finetune)

    svm = protocols.add_parser("svm", help="one-vs-rest linear SVMs on frozen features (VOC07 protocol): mAP, top-1")
    add_evaluation_arguments(svm, batch_size_help="feature extraction batch size (default: the run's)")
    svm.add_argument("--costs", default=None, help="the SVM costs to cross-validate on the train "
                                                               "split (default 0.01,0.1,1,10,100)")
    svm.add_argument("--folds", type=int, default=None, help="cross-validation folds (default 3)")
    svm.add_argument("--low-shot", type=int, default=None, metavar="K",
                     help="train on K samples per class (1, 2, 4, ..., 64) and report mean ± std over --draws")
    svm.add_argument("--draws", type=int, default=None, help="low-shot: independent draws of K per class (default 5)")
    svm.set_defaults(run=_eval_svm)

    segment = protocols.add_parser("segment", help="semantic segmentation with a head on the frozen feature map: "
                                                   "mIoU, pixel accuracy (a dataset converted with --masks)")
    add_evaluation_arguments(segment, batch_size=None, batch_size_help="head training batch size (default 32)")
    segment.add_argument("--head", choices=("linear", "fcn"), default=None,
                         help="linear (default): BatchNorm + 1x1 conv, as DINOv2's linear head; fcn: two 3x3 convs")
    segment.add_argument("--epochs", type=int, default=None, help="epochs of head training (default 20)")
    segment.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 0.01)")
    segment.set_defaults(run=_eval_segment)

    every = protocols.add_parser("all", help="every protocol the data supports, one table (results reused)")
    add_evaluation_arguments(every, batch_size_help="feature extraction batch size (default: the run's)")
    every.add_argument("--protocols", default=None,
                       help="a comma-separated subset: knn, linear, svm, low-shot, finetune, segment, rankme")
    every.add_argument("--redo", action="store_true", help="measure again what eval.json already holds")
    every.set_defaults(run=_eval_all)

    plot = protocols.add_parser("plot", help="a 2-D map of the embeddings coloured by label (t-SNE, or UMAP)")
    plot.add_argument("--output", required=True, help="the PNG file to write")
    plot.add_argument("--embeddings", default=None, help="a parquet file written by `selfsup embed`")
    plot.add_argument("--checkpoint", default=None, help="instead of --embeddings: a run folder or a checkpoint")
    plot.add_argument("--data", default=None, help="with --checkpoint: a converted dataset")
    plot.add_argument("--split", default=None, help="with --checkpoint: the split to embed (default: val if any)")
    plot.add_argument("--weights", choices=("student", "teacher"), default="student")
    plot.add_argument("--random-init", action="store_true")
    plot.add_argument("--method", choices=("tsne", "umap"), default="tsne",
                      help="tsne (scikit-learn, default) or umap (needs umap-learn installed)")
    plot.add_argument("--max-points", type=int, default=5000, help="at most this many points, drawn at random")
    plot.add_argument("--seed", type=int, default=0)
    plot.add_argument("--device", default=None)
    plot.set_defaults(run=_eval_plot)
