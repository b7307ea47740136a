"""The methods benchmark on a dataset profile: `python -m benchmarks.methods --dataset NAME`.

    python -m benchmarks.methods --dataset fashion-mnist                       # every method + supervised
    python -m benchmarks.methods --dataset fashion-mnist --methods simclr,byol # a selection
    python -m benchmarks.methods --dataset fashion-mnist --report-only         # the table from stored results
    python -m benchmarks.methods --dataset fashion-mnist --per-class 100 --val-only --set data.image_size=64 \\
        --methods simclr --store /tmp/probe                                    # a probe of a setting, on val

The profile (`benchmarks.datasets`) makes its converted folders once in `--workdir`/NAME. Each
method trains in this process (`trainer.loop.train`, no Ray) from its shipped config with the
profile's overrides, then its backbone (DINO's teacher) is measured (`benchmarks.dataset_measure`);
the baselines, measured once per store: each architecture at random initialization (as built
and after precise BN) and the raw pixels. Results go to the profile's store
(`benchmarks/results/NAME/`), one JSON file per method and budget and one per baseline; the
section "Methods on TITLE (E epochs)" of RESULTS.md is rewritten after each method
(`benchmarks.dataset_report`), its last line the verdict.

Resumable as the demo benchmark: a method with a stored result at these epochs is skipped
unless `--force`; a run that was killed continues from its last checkpoint (every 100 steps)
when the same command runs again; SIGTERM/SIGINT stop the benchmark after a checkpoint. A stored
baseline is kept (delete its file to measure it again). With `--per-class` (a sample), `--set`
or `--val-only` (probes of settings) the store and the markdown file default to a scratch
folder, so the committed table is never replaced by a probe's.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.dataset_measure import measure_checkpoint, measure_pixels, measure_random_init
from benchmarks.dataset_report import PIXELS, random_name, section, section_heading, stored, verdict, write_section
from benchmarks.datasets import ROOT, DatasetProfile, PreparedData
from benchmarks.methods import TrainingStopped, evaluated_weights, interrupted, pretrain
from benchmarks.methods_report import machine
from selfsup.files import write_atomically
from selfsup.pipeline.dataset import load_dataset_info
from selfsup.trainer.config import Config, load_config


def method_overrides(profile: DatasetProfile, name: str, epochs: int, data: PreparedData, extra: list[str]) -> list[str]:
    """The profile's overrides of `name` for this pretraining set, then `extra` (`--set`)."""
    train_samples = load_dataset_info(data.pretraining).split("train").count
    return profile.overrides_for(name, epochs, train_samples) + list(extra)


def method_config(overrides: list[str], name: str, data: PreparedData) -> Config:
    return load_config(ROOT / "configs" / f"{name}.yaml", overrides + [f"data.path={data.pretraining}"])


def save(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, (json.dumps(result, indent=1) + "\n").encode())


def stamp() -> dict:
    return {"date": datetime.date.today().isoformat(), "machine": machine()}


def measure_baselines(profile: DatasetProfile, data: PreparedData, configs: dict[str, Config], store: Path,
                      with_test: bool) -> None:
    """Random init of each architecture of `configs` (method -> config) and the raw pixels, each
    measured once per store (a stored one is kept)."""
    for name, config in configs.items():
        path = store / random_name(config.model.backbone, config.data.image_size, config.model.small_input)
        if not path.is_file():
            print(f"baseline: {path.stem} ...", flush=True)
            fields = measure_random_init(config, data, with_test)
            save(path, {"backbone": config.model.backbone, "image_size": config.data.image_size,
                        "small_input": config.model.small_input, "built_as": name, **fields, **stamp()})
    if not (store / PIXELS).is_file():
        print("baseline: raw pixels ...", flush=True)
        fields = measure_pixels(data, k=20, temperature=0.07, with_test=with_test)
        save(store / PIXELS, {"backbone": "pixels", **fields, **stamp()})


def run_one(name: str, overrides: list[str], data: PreparedData, output: Path, epochs: int, fresh: bool,
            with_test: bool) -> dict:
    config = method_config(overrides, name, data)
    summary = pretrain(config, output, epochs, fresh)
    weights = evaluated_weights(name)
    return {
        "method": name, "backbone": config.model.backbone, "image_size": config.data.image_size,
        "small_input": config.model.small_input, "epochs": epochs, "steps": summary["step"],
        "images_seen": summary["step"] * config.data.batch_size,
        "pretrain_images": load_dataset_info(data.pretraining).split("train").count,
        "train_seconds": summary["train_seconds"], "images_per_second": summary["images_per_second"],
        "continued_from_step": summary["start_step"], "weights": weights,
        **measure_checkpoint(summary["checkpoint"], data, weights, with_test),
        "final_loss": summary.get("loss"), **stamp(), "overrides": overrides,
    }


def report(profile: DatasetProfile, store: Path, results_md: Path, epochs: int) -> str:
    """Rewrite the profile's section of `results_md` from the store; the verdict line."""
    rows, baselines = stored(store, epochs)
    if not rows and not baselines["random"] and "pixels" not in baselines:
        return verdict(profile, [], baselines)
    samples = {row["method"]: row.get("pretrain_images", 0) for row in rows}

    def today(name: str) -> list[str]:
        return profile.overrides_for(name, epochs, samples.get(name, 0))

    write_section(results_md, section_heading(profile, epochs),
                  section(profile, epochs, rows, baselines, today, evaluated_weights))
    return verdict(profile, rows, baselines)


def run_profile(profile: DatasetProfile, args, names: list[str]) -> int:
    """The benchmark of `profile` for the `names` methods, as `benchmarks.methods.main` parsed `args`."""
    epochs = args.epochs or profile.epochs
    sample = f"-first{args.per_class}" if args.per_class else ""
    scratch = Path(tempfile.gettempdir()) / f"selfsup-{profile.name}{sample}-results"
    store = Path(args.store) if args.store else (scratch if sample or args.set or args.val_only else profile.store)
    results_md = Path(args.results) if args.results else (store / "RESULTS.md" if store != profile.store
                                                         else profile.results_md)
    workdir = Path(args.workdir) / profile.name
    failures = []
    if not args.report_only:
        data = profile.prepare(workdir, per_class=args.per_class, source=Path(args.source) if args.source else None,
                               pretrain_per_class=profile.pretrain_per_class)
        overrides = {name: method_overrides(profile, name, epochs, data, args.set) for name in names}
        architectures = {}
        for name in names:  # one random init per architecture and size
            config = method_config(overrides[name], name, data)
            architectures.setdefault((config.model.backbone, config.data.image_size, config.model.small_input),
                                     (name, config))
        measure_baselines(profile, data, dict(architectures.values()), store, with_test=not args.val_only)
        # a probe's runs (other settings) never continue or replace the benchmark's own
        probe = f"-set-{hashlib.sha1(json.dumps(args.set).encode()).hexdigest()[:8]}" if args.set else ""
        runs = workdir / f"runs{sample}{probe}"
        for name in names:
            path = store / f"{name}-{epochs}ep.json"
            if not args.force and path.is_file():
                if not interrupted(runs / name, epochs):
                    print(f"{name}: stored result, skipped (--force to measure again)", flush=True)
                    continue
                print(f"{name}: an interrupted re-measurement; continuing it", flush=True)
            print(f"{name}: training {epochs} epochs ...", flush=True)
            try:
                result = run_one(name, overrides[name], data, runs / name, epochs, args.force,
                                 with_test=not args.val_only)
            except TrainingStopped as error:
                print(f"{name}: {error}; the same command continues it from its checkpoint", flush=True)
                return 130
            except Exception as error:  # report and go on with the next method
                print(f"{name}: FAILED: {type(error).__name__}: {error}", flush=True)
                failures.append(name)
                continue
            save(path, result)
            print(f"{name}: val kNN {result['val_knn_top1']:.1f}%, linear {result['val_linear_top1']:.1f}%; "
                  f"{result['images_per_second']} images/s", flush=True)
            report(profile, store, results_md, epochs)
    line = report(profile, store, results_md, epochs)
    print(f"{results_md}: section {section_heading(profile, epochs)!r}\n{line}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit("run it as: python -m benchmarks.methods --dataset NAME (see benchmarks/dataset_run.py)")
