"""`selfsup eval knn|linear` and `selfsup export`: measuring and exporting a pretrained backbone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _image_count(text: str) -> int:
    """argparse type of --recalibrate-bn: a whole number of images, at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of images of at least 1, got {text!r}")
    return int(text)


def _add_evaluation_arguments(parser: argparse.ArgumentParser, batch_size: int | None = None,
                              batch_size_help: str | None = None) -> None:
    """The arguments `eval knn` and `eval linear` share: what to evaluate, on which data and how.

    `--recalibrate-bn [IMAGES]` re-estimates BatchNorm statistics first (precise BN)."""
    parser.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint")
    parser.add_argument("--data", required=True, help="a labeled converted dataset")
    parser.add_argument("--test-data", default=None, metavar="PATH",
                        help="a labeled converted dataset with the same classes to measure on (every "
                             "sample of it) instead of the --data val split: a held-out test set")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=batch_size_help)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--random-init", action="store_true", help="same architecture, untrained weights")
    parser.add_argument("--weights", choices=("student", "teacher"), default="student",
                        help="the online network, or the momentum teacher of the methods that keep one "
                             "(DINO evaluates its teacher)")
    parser.add_argument("--recalibrate-bn", type=_image_count, nargs="?", const=8192, default=0, metavar="IMAGES",
                        help="re-estimate BatchNorm statistics on this many train images first "
                             "(precise BN; default 8192 when given without a number)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _backbone_to_evaluate(args: argparse.Namespace):
    """The checkpoint's backbone (or its random-init twin), its config, the device to run on, and
    which weights these are (with the images its BatchNorm statistics were re-estimated on)."""
    import torch

    from selfsup.api import load_backbone_and_config

    backbone, config = load_backbone_and_config(args.checkpoint, random_init=args.random_init, weights=args.weights)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    weights = "random-init" if args.random_init else "pretrained" + (" teacher" if args.weights == "teacher" else "")
    if args.recalibrate_bn:
        from selfsup.trainer.evaluate import recalibrate_batch_norm

        used = recalibrate_batch_norm(backbone, args.data, image_size=args.image_size or config.data.image_size,
                                      batch_size=config.eval.batch_size, max_samples=args.recalibrate_bn,
                                      device=device)
        weights += f", BatchNorm re-estimated on {used} train images" if used else ", no BatchNorm to re-estimate"
    return backbone, config, device, weights


def _measured_on(count: int, source: str, test_data: str | None) -> str:
    """"40 val" or "4800 test-set" (with the test set's path and splits) for the evaluation summaries."""
    return f"{count} test-set [{source}]" if test_data else f"{count} {source}"


def _eval_knn(args: argparse.Namespace) -> int:
    from selfsup.trainer.evaluate import knn_evaluate

    backbone, config, device, weights = _backbone_to_evaluate(args)
    result = knn_evaluate(backbone, args.data, image_size=args.image_size or config.data.image_size,
                          batch_size=args.batch_size or config.eval.batch_size,
                          k=args.k or config.eval.knn_k,
                          temperature=args.temperature or config.eval.knn_temperature, device=device,
                          test_data=args.test_data)
    result["weights"] = weights
    if args.json:
        print(json.dumps(result))
    else:
        print(f"kNN ({result['weights']}, k={result['k']}, T={result['temperature']}): "
              f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
              f"({_measured_on(result['query_samples'], result['query_split'], args.test_data)} queries, "
              f"{result['bank_samples']} in the bank; "
              f"effective rank of the bank features {result['effective_rank']:.1f})")
    return 0


def _eval_linear(args: argparse.Namespace) -> int:
    from selfsup.trainer.linear_probe import linear_evaluate

    backbone, config, device, weights = _backbone_to_evaluate(args)
    result = linear_evaluate(backbone, args.data, image_size=args.image_size or config.data.image_size,
                             epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                             feature_batch_size=config.eval.batch_size, weight_decay=args.weight_decay,
                             device=device, seed=config.seed, test_data=args.test_data)
    result["weights"] = weights
    if args.json:
        print(json.dumps(result))
    else:
        print(f"linear ({result['weights']}, {result['epochs']} epochs, lr {result['lr']}): "
              f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  (train top-1 {result['train_top1']:.2f}%; "
              f"{_measured_on(result['eval_samples'], result['eval_split'], args.test_data)} samples, "
              f"{result['train_samples']} to train on)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from selfsup.trainer.export import export_backbone
    from selfsup.trainer.resume import find_checkpoint

    sidecar = export_backbone(find_checkpoint(args.checkpoint), args.output, weights=args.weights)
    print(f"exported {sidecar['backbone']} ({sidecar['weights']} weights, step {sidecar['step']}) to {args.output}; "
          f"build it with {Path(args.output).with_suffix('.json')}")
    return 0


def add_commands(commands) -> None:
    evaluate = commands.add_parser("eval", help="evaluate a pretrained backbone")
    protocols = evaluate.add_subparsers(dest="protocol", required=True)
    knn = protocols.add_parser("knn", help="weighted kNN accuracy on a labeled dataset")
    _add_evaluation_arguments(knn)
    knn.add_argument("--k", type=int, default=None)
    knn.add_argument("--temperature", type=float, default=None)
    knn.set_defaults(run=_eval_knn)
    linear = protocols.add_parser("linear", help="linear classifier on frozen features (top-1/top-5)")
    _add_evaluation_arguments(linear, batch_size=256, batch_size_help="classifier batch size (default 256)")
    linear.add_argument("--epochs", type=int, default=100, help="epochs over the cached features (default 100)")
    linear.add_argument("--lr", type=float, default=0.1, help="SGD learning rate, cosine to 0 (default 0.1)")
    linear.add_argument("--weight-decay", type=float, default=0.0)
    linear.set_defaults(run=_eval_linear)

    export = commands.add_parser("export", help="write a pretrained backbone as a plain state_dict file")
    export.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint")
    export.add_argument("--output", required=True, help="the file to write, e.g. backbone.pt (+ backbone.json)")
    export.add_argument("--weights", choices=("student", "teacher"), default="student",
                        help="the online backbone, or the momentum teacher/target where the method has one")
    export.set_defaults(run=_export)
