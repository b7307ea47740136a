"""`selfsup train`, `methods` and `configs`. `train` reaches Ray (`selfsup.cluster`) through
`selfsup.api.train` with its `--workers`; `--workers 0` trains in this process without Ray."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from selfsup.api import train
    from selfsup.trainer.checkpoint import latest_checkpoint

    summary = train(args.config, args.output, data=args.data, overrides=args.set or [], resume=args.resume,
                    workers=args.workers or None, gpus_per_worker=args.gpus_per_worker,
                    cpus_per_worker=args.cpus_per_worker, address=args.address, max_failures=args.max_failures,
                    storage=args.storage, spread=args.spread)
    checkpoint = latest_checkpoint(Path(args.output) / "checkpoints")
    loss = summary.get("loss")
    print(f"trained {summary.get('step', '?')} steps" + (f", final loss {loss:.4f}" if loss is not None else ""))
    if summary.get("skipped_samples"):
        print(f"left out {summary['skipped_samples']} damaged samples (data.skip_corrupt; "
              f"`selfsup verify {args.data or 'DATA'}` lists them)")
    if summary.get("stopped"):
        print(f"stopped early ({summary['stopped']}); run the same command again to continue")
    print(f"checkpoint: {checkpoint}")
    print(f"tensorboard: tensorboard --logdir {Path(args.output) / 'tensorboard'}")
    return stopped_status(summary.get("stopped"))


def stopped_status(reason: str | None) -> int:
    """0 for a finished run; 128 + the signal's number (143 for SIGTERM, 130 for SIGINT) for one
    that checkpointed and stopped early, so a scheduler sees that it has not finished."""
    if not reason:
        return 0
    try:
        return 128 + int(getattr(signal, str(reason)))
    except (AttributeError, TypeError, ValueError):
        return 1


def _methods(args: argparse.Namespace) -> int:
    from selfsup.methods.registry import METHODS

    for name, entry in sorted(METHODS.items()):
        print(f"{name:20s} {entry.description}")
    return 0


def _configs(args: argparse.Namespace) -> int:
    from selfsup.trainer.config import shipped_configs

    for name, path in shipped_configs().items():
        print(f"{name:20s} {path}" if args.paths else name)
    return 0


def _has_gpu() -> bool:
    return bool(os.environ.get("CUDA_VISIBLE_DEVICES", "x")) and Path("/dev/nvidia0").exists()


def add_commands(commands) -> None:
    train = commands.add_parser("train", help="pretrain a backbone (Ray Train, local Ray by default)")
    train.add_argument("--config", required=True, help="a shipped config's name (simclr; see `selfsup configs`) "
                       "or a YAML file")
    train.add_argument("--data", help="a converted dataset folder (sets data.path)")
    train.add_argument("--output", required=True, help="the run folder (checkpoints/, tensorboard/)")
    train.add_argument("--workers", type=int, default=1,
                       help="DDP workers through Ray Train (default 1); 0 trains in this process, without Ray")
    train.add_argument("--gpus-per-worker", type=float, default=1.0 if _has_gpu() else 0.0)
    train.add_argument("--cpus-per-worker", type=float, default=1.0)
    train.add_argument("--address", default=None, help="a running Ray cluster ('auto'); default: local Ray")
    train.add_argument("--max-failures", type=int, default=0, help="worker failures to recover from")
    train.add_argument("--storage", default=None, help="where Ray keeps checkpoints: a shared folder or a "
                       "URI (s3://bucket/runs); default OUTPUT/ray")
    train.add_argument("--spread", action="store_true", help="place the workers on different nodes")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    train.add_argument("--resume", default=None, metavar="CKPT",
                       help="continue from this checkpoint (the run's own newer checkpoints win, unless "
                            "the newest cannot be read)")
    train.set_defaults(run=_train)

    methods = commands.add_parser("methods", help="list the pretraining methods")
    methods.set_defaults(run=_methods)

    configs = commands.add_parser("configs", help="list the shipped configs (`selfsup train --config NAME`)")
    configs.add_argument("--paths", action="store_true", help="print each config's file too")
    configs.set_defaults(run=_configs)
