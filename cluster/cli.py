"""The `selfsup` command line: convert, verify, train, eval, methods.

Every command turns its arguments into plain function calls; user errors (a wrong path, a bad
config key, a corrupt checkpoint) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from methods.registry import METHODS
from pipeline.dataset import DatasetError
from pipeline.recipes import RecipeError
from trainer.checkpoint import CheckpointError, latest_checkpoint
from trainer.config import ConfigError, load_config
from trainer.resume import find_checkpoint
from trainer.step import NonFiniteLossError

USER_ERRORS = (DatasetError, ConfigError, CheckpointError, RecipeError, FileNotFoundError)


def _convert(args: argparse.Namespace) -> int:
    from pipeline.convert import convert, format_summary

    map_in_order = None
    if args.ray:  # Ray tasks read the images; the shards are written here, as on the local path
        from cluster.convert_tasks import ray_map_in_order
        from cluster.local_ray import ensure_ray

        ensure_ray(args.address, dashboard=False)
        map_in_order = ray_map_in_order
    summary = convert(args.source, args.output, shard_size=args.shard_size, max_side=args.max_side,
                      val_fraction=args.val_fraction, workers=args.workers, seed=args.seed,
                      progress=not args.quiet, map_in_order=map_in_order)
    print(format_summary(summary))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pipeline.verify import format_report, verify

    report = verify(args.output, progress=not args.quiet)
    print(format_report(report))
    return 0 if report.ok else 1


def _train(args: argparse.Namespace) -> int:
    overrides = list(args.set or [])
    if args.data:
        overrides.append(f"data.path={data_location(args.data)}")
    if args.resume:
        overrides.append(f"trainer.resume={find_checkpoint(args.resume).resolve()}")
    config = load_config(args.config, overrides)
    if not config.data.path:
        raise ConfigError("no dataset: pass --data OUT (a folder written by `selfsup convert`)")
    _check_before_launch(config, args.output)
    from cluster.train_job import run_training

    metrics = run_training(config, args.output, workers=args.workers, use_gpu=args.gpus_per_worker > 0,
                           gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                           address=args.address, max_failures=args.max_failures, storage=args.storage,
                           spread=args.spread)
    checkpoint = latest_checkpoint(Path(args.output) / "checkpoints")
    loss = metrics.get("loss")
    print(f"trained {metrics.get('step', '?')} steps" + (f", final loss {loss:.4f}" if loss is not None else ""))
    if metrics.get("stopped"):
        print(f"stopped early ({metrics['stopped']}); run the same command again to continue")
    print(f"checkpoint: {checkpoint}")
    print(f"tensorboard: tensorboard --logdir {Path(args.output) / 'tensorboard'}")
    return stopped_status(metrics.get("stopped"))


def stopped_status(reason: str | None) -> int:
    """0 for a finished run; 128 + the signal's number (143 for SIGTERM, 130 for SIGINT) for one
    that checkpointed and stopped early, so a scheduler sees that it has not finished."""
    if not reason:
        return 0
    try:
        return 128 + int(getattr(signal, str(reason)))
    except (AttributeError, TypeError, ValueError):
        return 1


def data_location(data: str) -> str:
    """--data as the workers should see it: a URI (s3://, gs://, file://) as given, a path made absolute."""
    from pipeline.staging import is_uri

    return data if is_uri(data) else str(Path(data).resolve())


def _check_before_launch(config, output: str) -> None:
    """Catch a bad dataset or recipe, or a checkpoint in `output` (or --resume) that does not fit the
    run, here, with a one-line error, before any worker starts."""
    from pipeline.dataset import load_dataset_info
    from pipeline.staging import is_uri
    from trainer.loop import check_resume_fits
    from trainer.model import check_buildable

    if not is_uri(str(config.data.path)):  # a URI is checked by each node as it stages it
        load_dataset_info(config.data.path)
    check_buildable(config)
    check_resume_fits(config, output)


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

    from trainer.evaluate import load_backbone

    backbone, config = load_backbone(find_checkpoint(args.checkpoint), random_init=args.random_init,
                                     weights=args.weights)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    weights = "random-init" if args.random_init else "pretrained" + (" teacher" if args.weights == "teacher" else "")
    if args.recalibrate_bn:
        from trainer.evaluate import recalibrate_batch_norm

        used = recalibrate_batch_norm(backbone, args.data, image_size=args.image_size or config.data.image_size,
                                      batch_size=config.eval.batch_size, max_samples=args.recalibrate_bn,
                                      device=device)
        weights += f", BatchNorm re-estimated on {used} train images" if used else ", no BatchNorm to re-estimate"
    return backbone, config, device, weights


def _measured_on(count: int, source: str, test_data: str | None) -> str:
    """"40 val" or "4800 test-set" (with the test set's path and splits) for the evaluation summaries."""
    return f"{count} test-set [{source}]" if test_data else f"{count} {source}"


def _eval_knn(args: argparse.Namespace) -> int:
    from trainer.evaluate import knn_evaluate

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
    from trainer.linear_probe import linear_evaluate

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
    from trainer.export import export_backbone

    sidecar = export_backbone(find_checkpoint(args.checkpoint), args.output, weights=args.weights)
    print(f"exported {sidecar['backbone']} ({sidecar['weights']} weights, step {sidecar['step']}) to {args.output}; "
          f"build it with {Path(args.output).with_suffix('.json')}")
    return 0


def _preview(args: argparse.Namespace) -> int:
    import yaml

    from pipeline.preview import render_preview

    options = {}
    for assignment in args.option or []:
        key, _, value = assignment.partition("=")
        if not value:
            raise ConfigError(f"--option {assignment!r}: expected NAME=VALUE, e.g. --option mode=one")
        options[key.strip()] = yaml.safe_load(value)
    path = render_preview(args.data, args.recipe, args.out, count=args.count, seed=args.seed,
                          image_size=args.image_size, options=options)
    print(f"wrote {path}")
    return 0


def _methods(args: argparse.Namespace) -> int:
    for name, entry in sorted(METHODS.items()):
        print(f"{name:20s} {entry.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup", description="Self-supervised visual pretraining at scale.")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert an image folder into WebDataset shards")
    convert.add_argument("source", help="a folder of class folders, or a flat folder of images")
    convert.add_argument("output", help="the dataset folder to write")
    convert.add_argument("--shard-size", default="256MB", help="bytes per shard, e.g. 256MB, 1GB (default 256MB)")
    convert.add_argument("--max-side", type=int, default=None, help="downscale so the longer side is at most N")
    convert.add_argument("--val-fraction", type=float, default=0.0, help="fraction held out as the val split")
    convert.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    convert.add_argument("--seed", type=int, default=0)
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    convert.add_argument("--ray", action="store_true", help="read the images with Ray tasks (a cluster's CPUs)")
    convert.add_argument("--address", default=None, help="with --ray: a running Ray cluster ('auto'); "
                         "default: local Ray")
    convert.set_defaults(run=_convert)

    verify = commands.add_parser("verify", help="check every shard against the manifest and decode every image")
    verify.add_argument("output")
    verify.add_argument("--quiet", action="store_true")
    verify.set_defaults(run=_verify)

    train = commands.add_parser("train", help="pretrain a backbone (Ray Train, local Ray by default)")
    train.add_argument("--config", required=True, help="a YAML config, e.g. configs/simclr.yaml")
    train.add_argument("--data", help="a converted dataset folder (sets data.path)")
    train.add_argument("--output", required=True, help="the run folder (checkpoints/, tensorboard/)")
    train.add_argument("--workers", type=int, default=1, help="DDP workers (default 1)")
    train.add_argument("--gpus-per-worker", type=float, default=1.0 if _has_gpu() else 0.0)
    train.add_argument("--cpus-per-worker", type=float, default=1.0)
    train.add_argument("--address", default=None, help="a running Ray cluster ('auto'); default: local Ray")
    train.add_argument("--max-failures", type=int, default=0, help="worker failures to recover from")
    train.add_argument("--storage", default=None, help="where Ray keeps checkpoints: a shared folder or a "
                       "URI (s3://bucket/runs); default OUTPUT/ray")
    train.add_argument("--spread", action="store_true", help="place the workers on different nodes")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    train.add_argument("--resume", default=None, metavar="CKPT",
                       help="continue from this checkpoint (the run's own newer checkpoints win)")
    train.set_defaults(run=_train)

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

    preview = commands.add_parser("preview", help="draw originals beside a recipe's views and pretext labels")
    preview.add_argument("data", help="a converted dataset folder")
    preview.add_argument("--recipe", required=True, help="a view recipe, e.g. simclr, dino, rotation, jigsaw")
    preview.add_argument("--out", required=True, help="the PNG file to write")
    preview.add_argument("--count", type=int, default=4, help="images to show")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--image-size", type=int, default=None)
    preview.add_argument("--option", action="append", metavar="NAME=VALUE", help="a recipe option")
    preview.set_defaults(run=_preview)

    methods = commands.add_parser("methods", help="list the pretraining methods")
    methods.set_defaults(run=_methods)

    from cluster.cli_cluster import add_cluster_commands  # tune, submit, jobs

    add_cluster_commands(commands)
    return parser


def _has_gpu() -> bool:
    return bool(os.environ.get("CUDA_VISIBLE_DEVICES", "x")) and Path("/dev/nvidia0").exists()


def disconnect_ray() -> None:
    """Leave Ray, if this command started or joined it, before the command's last lines: Ray forwards
    the logs of failed workers (their tracebacks) to this process until then, and they would
    otherwise arrive after the one line that says what went wrong. Never imports Ray itself."""
    if "ray" in sys.modules:
        from cluster.local_ray import shutdown_ray

        shutdown_ray()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        disconnect_ray()
        print(f"selfsup: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:  # the run diverged: not a usage error, but one line all the same
        disconnect_ray()
        print(f"selfsup: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("selfsup: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
