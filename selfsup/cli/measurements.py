"""What every `selfsup eval` command shares: its arguments (which weights of which checkpoint, on
which data, how), the `EvaluationSession` they describe, and running one protocol of
`trainer.protocols` through it (stored in the run's eval.json and TensorBoard)."""

from __future__ import annotations

import argparse


def _image_count(text: str) -> int:
    """argparse type of --recalibrate-bn: a whole number of images, at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of images of at least 1, got {text!r}")
    return int(text)


def add_evaluation_arguments(parser: argparse.ArgumentParser, batch_size: int | None = None,
                             batch_size_help: str | None = None) -> None:
    """The arguments every `eval` protocol takes: what to evaluate, on which data and how.

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


def evaluation_session(args: argparse.Namespace, feature_batch_size: int | None = None):
    """The `EvaluationSession` the arguments describe (`trainer.protocols`): which weights of which
    checkpoint, on which data, on which device."""
    from selfsup.trainer.protocols import EvaluationSession, EvaluationTarget

    return EvaluationSession(EvaluationTarget(
        checkpoint=args.checkpoint, data=args.data, test_data=args.test_data, weights=args.weights,
        random_init=args.random_init, image_size=args.image_size, feature_batch_size=feature_batch_size,
        device=args.device, recalibrate_bn=args.recalibrate_bn, progress=not args.json))


def measure(args: argparse.Namespace, name: str, overrides: dict, feature_batch_size: int | None = None) -> dict:
    """Run protocol `name` with its default options updated by `overrides` (None values left out),
    store it in the run's eval.json and TensorBoard; the result with "weights" in words."""
    from selfsup.trainer.protocols import default_options, run_protocol

    session = evaluation_session(args, feature_batch_size)
    try:
        options = default_options(session, name, **{key: value for key, value in overrides.items() if value is not None})
        result, _ = run_protocol(session, name, options)
        return {**result, "weights": session.weights_text()}
    finally:
        session.close()
