"""`selfsup index SHARDS`: adopt WebDataset shards made elsewhere in place (`selfsup.pipeline.index`)."""

from __future__ import annotations

import argparse

from selfsup.errors import ConfigError


def parse_split_patterns(assignments: list[str] | None) -> dict[str, str]:
    """`--split-pattern SPLIT=GLOB` pairs as {split: glob}; a pair without `=` is a ConfigError."""
    patterns = {}
    for assignment in assignments or []:
        split, _, pattern = assignment.partition("=")
        if not split.strip() or not pattern:
            raise ConfigError(f"--split-pattern {assignment!r}: expected SPLIT=GLOB, e.g. --split-pattern 'val=*val*'")
        if split.strip() in patterns:
            raise ConfigError(f"--split-pattern: split {split.strip()!r} given twice")
        patterns[split.strip()] = pattern
    return patterns


def _index(args: argparse.Namespace) -> int:
    from selfsup.api import index
    from selfsup.pipeline.index import format_index_summary

    summary = index(args.shards, label_field=args.label_field, unlabeled=args.unlabeled,
                    split_patterns=parse_split_patterns(args.split_pattern), val_fraction=args.val_fraction,
                    workers=args.workers, progress=not args.quiet)
    print(format_index_summary(summary))
    return 0


def add_commands(commands) -> None:
    index = commands.add_parser(
        "index", help="adopt WebDataset shards made elsewhere (img2dataset, the Hub) in place: .idx, manifest, "
                      "dataset.json; the tars are not modified")
    index.add_argument("shards", help="a folder of .tar shards (subfolders included)")
    index.add_argument("--label-field", default=None, metavar="NAME",
                       help="take labels from this field of each .json member (class index or name) "
                            "instead of the .cls members")
    index.add_argument("--unlabeled", action="store_true", help="ignore labels: every decodable image is kept")
    index.add_argument("--split-pattern", action="append", metavar="SPLIT=GLOB",
                       help="shards whose path matches GLOB form SPLIT (train or val), e.g. 'val=*validation*'; "
                            "default: every shard is train")
    index.add_argument("--val-fraction", type=float, default=0.0,
                       help="hold out the last round(F x shards) shards (whole shards) as val")
    index.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    index.add_argument("--quiet", action="store_true", help="no progress bar")
    index.set_defaults(run=_index)
