"""`selfsup convert`, `verify` and `preview`: the data commands. None of them imports Ray unless
`convert --ray` asks for it."""

from __future__ import annotations

import argparse

from selfsup.errors import ConfigError


def _convert(args: argparse.Namespace) -> int:
    from selfsup.api import convert
    from selfsup.pipeline.convert import format_summary

    summary = convert(args.source, args.output, shard_size=args.shard_size, max_side=args.max_side,
                      val_fraction=args.val_fraction, workers=args.workers, seed=args.seed,
                      progress=not args.quiet, use_ray=args.ray, ray_address=args.address, masks=args.masks)
    print(format_summary(summary))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from selfsup.api import verify
    from selfsup.pipeline.verify import format_report

    report = verify(args.output, progress=not args.quiet)
    print(format_report(report))
    return 0 if report.ok else 1


def parse_recipe_options(assignments: list[str] | None) -> dict:
    """`--option NAME=VALUE` pairs (VALUE as YAML) as a dict; a pair without `=` is a ConfigError."""
    import yaml

    options = {}
    for assignment in assignments or []:
        key, _, value = assignment.partition("=")
        if not value:
            raise ConfigError(f"--option {assignment!r}: expected NAME=VALUE, e.g. --option mode=one")
        options[key.strip()] = yaml.safe_load(value)
    return options


def _preview(args: argparse.Namespace) -> int:
    from selfsup.pipeline.preview import render_preview

    path = render_preview(args.data, args.recipe, args.out, count=args.count, seed=args.seed,
                          image_size=args.image_size, options=parse_recipe_options(args.option))
    print(f"wrote {path}")
    return 0


def add_commands(commands) -> None:
    convert = commands.add_parser("convert", help="convert an image folder into WebDataset shards")
    convert.add_argument("source", help="a folder of class folders, or a flat folder of images")
    convert.add_argument("output", help="the dataset folder to write")
    convert.add_argument("--shard-size", default="256MB", help="bytes per shard, e.g. 256MB, 1GB (default 256MB)")
    convert.add_argument("--max-side", type=int, default=None, help="downscale so the longer side is at most N")
    convert.add_argument("--val-fraction", type=float, default=0.0, help="fraction held out as the val split")
    convert.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    convert.add_argument("--seed", type=int, default=0)
    convert.add_argument("--masks", default=None, metavar="FOLDER",
                         help="PNG label maps mirroring SOURCE (a/b.jpg -> FOLDER/a/b.png), carried as KEY.seg.png")
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    convert.add_argument("--ray", action="store_true", help="read the images with Ray tasks (a cluster's CPUs)")
    convert.add_argument("--address", default=None, help="with --ray: a running Ray cluster ('auto'); "
                         "default: local Ray")
    convert.set_defaults(run=_convert)

    verify = commands.add_parser("verify", help="check every shard against the manifest and decode every image")
    verify.add_argument("output")
    verify.add_argument("--quiet", action="store_true")
    verify.set_defaults(run=_verify)

    preview = commands.add_parser("preview", help="draw originals beside a recipe's views and pretext labels")
    preview.add_argument("data", help="a converted dataset folder")
    preview.add_argument("--recipe", required=True, help="a view recipe, e.g. simclr, dino, rotation, jigsaw")
    preview.add_argument("--out", required=True, help="the PNG file to write")
    preview.add_argument("--count", type=int, default=4, help="images to show")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--image-size", type=int, default=None)
    preview.add_argument("--option", action="append", metavar="NAME=VALUE", help="a recipe option")
    preview.set_defaults(run=_preview)
