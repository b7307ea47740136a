"""`make demo`: the whole path on a small built-in dataset, with the commands a user would type.

1. draw a labeled folder of 10 shape classes (no download), with each shape's label map,
2. `selfsup convert` it into WebDataset shards with a val split (the label maps carried as masks,
   for `selfsup eval segment`),
3. `selfsup train` SimCLR with 2 Ray workers (DDP over gloo on a CPU-only machine),
4. `selfsup eval knn` of the pretrained backbone and of the same backbone randomly initialized.

Exits non-zero when the pretrained backbone is not better than the random one. Every protocol
(`selfsup eval all --checkpoint demo/run --data demo/shards`) can follow.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

from selfsup.cli.main import main as selfsup
from selfsup.pipeline.demo_images import CLASSES, make_demo_folder
from selfsup.pipeline.segmentation_masks import dataset_segmentation

# Small enough for a 2-core CPU in a few minutes; every value is a plain `--set` override.
DEMO_OVERRIDES = [
    "model.backbone=resnet18",
    "data.image_size=48",
    "data.batch_size=32",  # per worker: a global batch of 64 with 2 workers
    "data.shuffle_buffer=512",
    # colour carries no class information in the demo images: make it useless to the views too
    "data.recipe={scale: [0.25, 1.0], blur_probability: 0.0, hue: 0.5, saturation: 0.6, grayscale_probability: 0.3}",
    "method.temperature=0.1",
    "method.projection_hidden_dim=512",
    "optim.name=adamw",
    "optim.lr=2.0e-3",
    "optim.lr_scaling=none",
    "optim.weight_decay=1.0e-4",
    "optim.warmup_epochs=1",
    "trainer.epochs=16",
    "trainer.log_every=5",
    "trainer.checkpoint_every=100",
]


def run(arguments: list[str], capture: bool = False) -> str:
    """Print a `selfsup` command line, run it in this process, stop the demo if it fails."""
    print(f"\n$ selfsup {shlex.join(arguments)}", flush=True)
    output = io.StringIO()
    with contextlib.redirect_stdout(output) if capture else contextlib.nullcontext():
        status = selfsup(arguments)
    if status != 0:
        sys.exit(f"demo: `selfsup {arguments[0]}` failed with status {status}")
    return output.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="selfsup end to end on a small built-in dataset")
    parser.add_argument("folder", nargs="?", default="demo")
    parser.add_argument("--per-class", type=int, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra overrides for the training run")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    images, masks, shards, run_dir = folder / "images", folder / "masks", folder / "shards", folder / "run"
    started = time.perf_counter()

    if not (images / CLASSES[0]).is_dir() or not (masks / CLASSES[0]).is_dir():
        print(f"drawing {args.per_class * len(CLASSES)} images of {len(CLASSES)} shape classes into {images} "
              f"(their label maps into {masks})")
        make_demo_folder(images, images_per_class=args.per_class, masks=masks)
    if (shards / "dataset.json").is_file() and dataset_segmentation(shards) is None:
        shutil.rmtree(shards)  # converted by an older demo, without the masks
    run(["convert", str(images), str(shards), "--val-fraction", "0.2", "--shard-size", "1MB", "--masks", str(masks)])
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo always trains from scratch
    train = ["train", "--config", "simclr", "--data", str(shards), "--output", str(run_dir),
             "--workers", str(args.workers)]
    for override in DEMO_OVERRIDES + args.set:
        train += ["--set", override]
    run(train)

    results = {}
    for label, extra in (("pretrained (SimCLR)", []), ("random init", ["--random-init"])):
        text = run(["eval", "knn", "--checkpoint", str(run_dir), "--data", str(shards), "--json", *extra],
                   capture=True)
        results[label] = json.loads(text.strip().splitlines()[-1])
    print(f"\nkNN accuracy on the val split (k=20, T=0.07), {time.perf_counter() - started:.0f} s in all:")
    print(f"  {'backbone':22s} {'top-1':>7s} {'top-5':>7s}")
    for label, result in results.items():
        print(f"  {label:22s} {result['top1']:6.1f}% {result['top5']:6.1f}%")
    pretrained, random_init = (result["top1"] for result in results.values())
    if pretrained <= random_init:
        print("demo: the pretrained backbone is not better than random initialization", file=sys.stderr)
        return 1
    print(f"  pretraining gained {pretrained - random_init:+.1f} points of top-1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
