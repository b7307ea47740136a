"""How selfsup's cost grows with the work: 1k, 10k and 100k images (1M with --max 1000000).

    python -m benchmarks.scale                    # 1k, 10k, 100k: table, growth lines, projection
    python -m benchmarks.scale --max 10000        # 1k and 10k only
    python -m benchmarks.scale --sizes 500,2000   # any sizes
    python -m benchmarks.scale --json             # the same, then one JSON object as the last line
    python -m benchmarks.scale --code /tmp/old    # measure another checkout's selfsup (before/after)

For each size it makes a folder of small JPEGs (64-96 px, 10 class folders; the sizes share files
through hard links) and measures, each stage in a fresh process whose peak RSS is read with
`os.wait4` (the process and the workers it waited for): the listing `convert` starts with (the
candidates and a stat of each, against a bare `os.walk` and `os.walk` + `os.stat`), `convert`,
`verify`, `index` (the same
shards, hard-linked into another folder and adopted as shards made elsewhere), the loader
(SimCLR views at 32 px, batch 256: time to the first batch, then the rest of one epoch; once as
users run it, once with `MALLOC_MMAP_THRESHOLD_=131072`, which keeps glibc's heap from growing
with the number of batches read, to tell that growth from the dataset's), feature
extraction (ResNet-18, 32 px, random init: the kNN bank of every train image), kNN (1,000 fixed
query images against the full bank, and the bank's effective rank) and DeepCluster-v2's k-means
(k = 3000, 128-d, 10 iterations, one head) on a bank of that many rows; then the size of the
shards, indexes, `manifest.parquet` and `dataset.json`.

Growth lines: the cost per image at the largest size over that at the smallest (target <= 1.15:
linear) and the peak RSS at the largest over the smallest (target <= 1.2 for the listing,
convert, verify, index and the loader; the feature bank, kNN and k-means hold O(N * D) by
design, and their bank size is printed beside it). The cost is CPU seconds of the stage's work
(its worker processes included, imports excluded: `scale_stages.CLOCK`), which other jobs on a
shared machine disturb far less than wall time; the wall-time growth is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
STAGES_FILE = Path(__file__).resolve().parent / "scale_stages.py"
STAGES = ("listing", "convert", "verify", "index", "loader", "loader_fixed_heap", "features", "knn", "kmeans")
# The loader once more with glibc's mmap threshold fixed (RESULTS.md, pipeline section): glibc's
# heap otherwise grows with the number of batches read, whatever the dataset's size.
STAGE_ENVIRONMENT = {"loader_fixed_heap": {"MALLOC_MMAP_THRESHOLD_": "131072"}}
CLASSES = 10
QUERY_IMAGES = 1000
DEFAULT_SIZES = (1_000, 10_000, 100_000, 1_000_000)

sys.path.insert(0, str(ROOT))
from benchmarks.scale_report import (format_growth_lines, format_projection, format_table, growths,  # noqa: E402
                                     projection)


def write_image(arguments: tuple[Path, int, int]) -> None:
    """One small JPEG: smooth noise with a tint that depends on its class (so kNN is above chance)."""
    from PIL import Image

    path, number, seed = arguments
    generator = np.random.default_rng(seed * 10_000_019 + number)
    label = number % CLASSES
    width, height = (int(value) for value in generator.integers(64, 97, 2))
    coarse = generator.integers(0, 256, (4, 4, 3)).astype(np.float64) * 0.6
    coarse[..., label % 3] += 100 * (label / CLASSES)
    image = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    noise = generator.integers(-12, 13, (height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=85)


def image_path(folder: Path, number: int) -> Path:
    return folder / f"c{number % CLASSES}" / f"{number:08d}.jpg"


def make_images(folder: Path, count: int, seed: int, processes: int) -> Path:
    """`count` JPEGs in class folders under `folder` (kept: only missing files are written)."""
    for label in range(CLASSES):
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
    missing = [(image_path(folder, number), number, seed) for number in range(count)
               if not image_path(folder, number).exists()]
    if missing:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pool.map(write_image, missing, chunksize=256)
    return folder


def linked_subset(pool: Path, folder: Path, count: int) -> Path:
    """A folder of the first `count` images of `pool`, as hard links (no extra disk)."""
    if folder.exists() and sum(1 for _ in folder.rglob("*.jpg")) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for number in range(count):
        target = image_path(folder, number)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(image_path(pool, number), target)
    return folder


def run_stage(stage: str, arguments: dict, code: Path, threads: int) -> dict:
    """Run one stage in a fresh process; its JSON result with the process's peak RSS and wall time."""
    environment = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS=str(threads),
                       **STAGE_ENVIRONMENT.get(stage, {}))
    with tempfile.TemporaryFile("w+") as output:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, str(STAGES_FILE), stage, json.dumps(arguments)],
                                   stdout=output, stderr=subprocess.STDOUT, env=environment, cwd=arguments["work"])
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        output.seek(0)
        text = output.read()
    if process.returncode != 0:
        raise SystemExit(f"stage {stage} failed (exit {process.returncode}):\n{text[-3000:]}")
    result = json.loads(text.strip().splitlines()[-1])
    cpu = usage.ru_utime + usage.ru_stime - result.pop("cpu_before_work") - result.pop("cpu_after_work")
    return {**result, "stage": stage, "rss_mib": result.pop("peak_rss_kib") / 1024, "wall_seconds": wall, "cpu_seconds": cpu}


def file_sizes(shards: Path) -> dict[str, int]:
    """Bytes of the dataset's shards, indexes, manifest and dataset.json."""
    return {"shards": sum(path.stat().st_size for path in shards.glob("*.tar")),
            "indexes": sum(path.stat().st_size for path in shards.glob("*.idx")),
            "manifest": (shards / "manifest.parquet").stat().st_size,
            "dataset_json": (shards / "dataset.json").stat().st_size}


def prepare_query_set(work: Path, code: Path, threads: int) -> Path:
    """The fixed kNN queries: QUERY_IMAGES other images, converted once (not measured)."""
    shards = work / "queries" / "shards"
    if not (shards / "dataset.json").exists():
        images = make_images(work / "queries" / "images", QUERY_IMAGES, seed=1, processes=threads)
        run_stage("convert", {"work": str(work / "queries"), "images": str(images), "threads": threads}, code, threads)
    return shards


def measure_size(size: int, work: Path, pool: Path, queries: Path, stages: list[str], code: Path,
                 threads: int, loader_batch: int, log) -> tuple[list[dict], dict]:
    """Every asked stage at one size; (measurements, file sizes)."""
    folder = work / f"n{size}"
    folder.mkdir(parents=True, exist_ok=True)
    images = linked_subset(pool, folder / "images", size)
    arguments = {"work": str(folder), "images": str(images), "test": str(queries), "threads": threads,
                 "count": size, "loader_batch": loader_batch}
    shards = folder / "shards"
    if "convert" in stages or not (shards / "dataset.json").exists():
        shutil.rmtree(shards, ignore_errors=True)
    measurements = []
    for stage in STAGES:
        if stage == "index" and "index" in stages:
            shutil.rmtree(folder / "foreign", ignore_errors=True)
            (folder / "foreign").mkdir()
            for tar in shards.glob("*.tar"):
                os.link(tar, folder / "foreign" / tar.name)
        if stage not in stages and not (stage == "convert" and not (shards / "dataset.json").exists()):
            continue
        result = run_stage(stage, arguments, code, threads)
        if stage in stages:
            measurements.append({**result, "size": size})
            log(f"  {stage:9s} {size:>8d} images: {result['seconds']:8.2f} s ({result['cpu_seconds']:8.2f} CPU s, "
                f"load {result['load_average']:.1f}), peak RSS {result['rss_mib']:7.1f} MiB")
    return measurements, file_sizes(shards)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max", type=int, default=100_000, help="the largest size (1k, 10k, 100k, 1M up to it)")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes instead, e.g. 500,2000")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--workdir", default="/tmp/selfsup-bench-scale")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="workers/threads per stage")
    parser.add_argument("--code", default=str(ROOT), help="the checkout whose selfsup is measured")
    parser.add_argument("--loader-batch", type=int, default=256, help="the loader stage's batch size")
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")] if args.sizes else [
        size for size in DEFAULT_SIZES if size <= args.max]
    stages = [stage.strip() for stage in args.stages.split(",") if stage.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or len(sizes) < 1:
        parser.error(f"--stages: unknown {unknown}; known: {', '.join(STAGES)}" if unknown else "--sizes: none")
    work, code = Path(args.workdir), Path(args.code).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else (lambda line: print(line, flush=True))
    log(f"scale benchmark: sizes {sizes}, stages {stages}, {args.threads} threads, code {code}")
    pool = make_images(work / "pool", max(sizes), seed=0, processes=args.threads)
    queries = prepare_query_set(work, code, args.threads)
    measurements, files = [], {}
    for size in sizes:
        measured, files[size] = measure_size(size, work, pool, queries, stages, code, args.threads,
                                             args.loader_batch, log)
        measurements.extend(measured)
    stage_growths = growths(measurements)
    summary = {"sizes": sizes, "stages": stage_growths, "measurements": measurements, "files": files,
               "projection": projection(measurements, files), "threads": args.threads, "code": str(code)}
    print(format_table(measurements))
    print()
    print(format_growth_lines(stage_growths))
    print()
    for size, sizes_on_disk in files.items():
        print(f"{size:>8d} images: " + ", ".join(f"{name} {value / size:.1f} B/image" for name, value in sizes_on_disk.items()))
    print()
    print(format_projection(summary["projection"]))
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
