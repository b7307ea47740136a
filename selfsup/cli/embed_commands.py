"""`selfsup embed`: one parquet row per image with the backbone's embedding."""

from __future__ import annotations

import argparse


def _embed(args: argparse.Namespace) -> int:
    from selfsup.api import embed

    summary = embed(args.checkpoint, args.output, data=args.data, images=args.images,
                    splits=[args.split] if args.split else None, weights=args.weights,
                    random_init=args.random_init, image_size=args.image_size, batch_size=args.batch_size,
                    device=args.device, progress=not args.quiet)
    print(f"wrote {summary['rows']} embeddings of dimension {summary['dimension']} from {summary['source']} "
          f"to {summary['output']}")
    if summary["skipped"]:
        first = summary["skipped"][0]
        print(f"skipped {len(summary['skipped'])} unreadable file{'s' if len(summary['skipped']) != 1 else ''}, "
              f"e.g. {first['path']}: {first['reason']}")
    return 0


def add_commands(commands) -> None:
    embed = commands.add_parser("embed", help="write one parquet row per image with its embedding")
    embed.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint")
    source = embed.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", default=None, help="a converted dataset (every split, or --split)")
    source.add_argument("--images", default=None, help="a folder of images (class folders give labels)")
    embed.add_argument("--output", required=True, help="the parquet file to write, e.g. embeddings.parquet")
    embed.add_argument("--split", default=None, help="with --data: only this split")
    embed.add_argument("--weights", choices=("student", "teacher"), default="student",
                       help="the online network, or the momentum teacher of the methods that keep one")
    embed.add_argument("--random-init", action="store_true", help="same architecture, untrained weights")
    embed.add_argument("--image-size", type=int, default=None, help="default: the run's data.image_size")
    embed.add_argument("--batch-size", type=int, default=None, help="default: the run's eval.batch_size")
    embed.add_argument("--device", default=None, help="default: cuda when present")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(run=_embed)
