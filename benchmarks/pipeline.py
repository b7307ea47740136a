"""Input-pipeline throughput: selfsup's DALI two-view recipe against the loader users would write.

In one run, on the same shards, the same images and the same cores:

  (a) selfsup   the two-view 224 px SimCLR recipe through `pipeline.loader.build_train_loader`
  (b) baseline  PIL decoding + the same transforms (random resized crop, flip, colour jitter,
                grayscale, blur, normalize; written with PIL/torch since torchvision is not a
                dependency) in a torch DataLoader with as many workers as (a) has threads
  (c) decode    DALI decoding alone, each image once: the ceiling for (a)

Images/s counts source images (each gives two views in (a) and (b)). Without `--data` it makes
~600 photo-like 500 x 375 JPEGs (smooth noise, shapes, texture) and converts them to shards.

    python benchmarks/pipeline.py                 # table
    python benchmarks/pipeline.py --json          # one JSON object
    python benchmarks/pipeline.py --epochs 10     # (a) only, RSS after each epoch
    python benchmarks/pipeline.py --device cuda   # on a GPU node: (a) and (c) with mixed decoding
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfsup.pipeline.convert import convert  # noqa: E402
from selfsup.pipeline.dataset import load_dataset_info  # noqa: E402
from selfsup.pipeline.loader import build_train_loader, dali_device, default_threads  # noqa: E402
from selfsup.pipeline.recipes import IMAGENET_MEAN, IMAGENET_STD, ViewSpec, simclr_recipe  # noqa: E402


# ----------------------------------------------------------------------------- data

def photo_like(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    """Smooth colour noise + a few shapes + fine texture: compresses and decodes like a photo."""
    coarse = rng.random((height // 25 + 2, width // 25 + 2, 3)) * 255
    image = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 150))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    texture = rng.normal(0, 12, (height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float64) + texture, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(0.6))


def make_dataset(work: Path, count: int) -> tuple[Path, list[Path]]:
    """`count` JPEGs in work/images and their shards in work/shards (kept between runs)."""
    folder, shards = work / "images", work / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for index in range(count):
        path = folder / f"{index:05d}.jpg"
        if not path.exists():
            photo_like(rng).save(path, quality=90)
        files.append(path)
    if not (shards / "dataset.json").exists():
        convert(folder, shards, shard_size="32MB", workers=os.cpu_count(), progress=False)
    return shards, files


# ----------------------------------------------------------------------------- (b) PIL baseline

def random_resized_crop(image: Image.Image, view: ViewSpec, rng: random.Random) -> Image.Image:
    """torchvision's RandomResizedCrop: area in view.scale, log-uniform aspect, bilinear resize."""
    width, height = image.size
    for _ in range(10):
        area = width * height * rng.uniform(*view.scale)
        aspect = np.exp(rng.uniform(np.log(view.ratio[0]), np.log(view.ratio[1])))
        w, h = int(round((area * aspect) ** 0.5)), int(round((area / aspect) ** 0.5))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            break
    else:
        w, h = min(width, height), min(width, height)
        left, top = (width - w) // 2, (height - h) // 2
    return image.resize((view.size, view.size), Image.BILINEAR, box=(left, top, left + w, top + h))


def shift_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue by `shift` of the full circle (torchvision's adjust_hue)."""
    hsv = np.array(image.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def pil_view(image: Image.Image, view: ViewSpec, rng: random.Random) -> torch.Tensor:
    """One SimCLR view with PIL: crop, flip, jitter (random order as torchvision), grayscale,
    blur, to a normalized float CHW tensor."""
    image = random_resized_crop(image, view, rng)
    if rng.random() < view.flip_probability:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < view.jitter_probability:
        steps = [
            lambda im: ImageEnhance.Brightness(im).enhance(rng.uniform(1 - view.brightness, 1 + view.brightness)),
            lambda im: ImageEnhance.Contrast(im).enhance(rng.uniform(1 - view.contrast, 1 + view.contrast)),
            lambda im: ImageEnhance.Color(im).enhance(rng.uniform(1 - view.saturation, 1 + view.saturation)),
            lambda im: shift_hue(im, rng.uniform(-view.hue, view.hue)),
        ]
        rng.shuffle(steps)
        for step in steps:
            image = step(image)
    if rng.random() < view.grayscale_probability:
        image = image.convert("L").convert("RGB")
    if rng.random() < view.blur_probability:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(*view.blur_sigma)))
    tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (tensor - mean) / std


class PilTwoViews(torch.utils.data.Dataset):
    """What a user would write: an image list, PIL decode, two augmented views."""

    def __init__(self, files: list[Path], view: ViewSpec):
        self.files, self.view = files, view

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        rng = random.Random(index * 7919 + torch.initial_seed())
        with Image.open(self.files[index]) as image:
            image = image.convert("RGB")
        return pil_view(image, self.view, rng), pil_view(image, self.view, rng)


# ----------------------------------------------------------------------------- measurements

def device_name(device: str) -> str:
    """'CPU (N cores, DALI CPU mode)' or the GPU's name, for the printed table and the JSON."""
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (DALI mixed decoding)"
    return f"CPU ({os.cpu_count()} cores, DALI CPU mode)"


def rss_mib() -> float:
    """This process's resident set size (Linux /proc)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def time_batches(batches, batch_size: int, count: int, warmup: int, device: str = "cpu") -> float:
    """Images/s over `count` batches after `warmup` batches (the GPU's queued work included)."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return count * batch_size / (time.perf_counter() - start)


def measure_selfsup(dataset, size: int, batch_size: int, threads: int, batches: int, device: str = "cpu") -> float:
    loader = build_train_loader(dataset, simclr_recipe(size), batch_size=batch_size, num_threads=threads,
                                prefetch_depth=2, device=device)
    try:
        return time_batches(loader, batch_size, batches, warmup=3, device=device)
    finally:
        loader.close()


def measure_baseline(files: list[Path], size: int, batch_size: int, workers: int, batches: int) -> float:
    dataset = PilTwoViews(files, ViewSpec(size=size))
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=10 ** 9)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                         persistent_workers=workers > 0, prefetch_factor=2 if workers else None)
    return time_batches(loader, batch_size, batches, warmup=2)


def measure_decode(dataset, batch_size: int, threads: int, batches: int, device: str = "cpu") -> float:
    from nvidia.dali import fn, pipeline_def, types

    from selfsup.pipeline.loader import IMAGE_EXTENSIONS

    split = dataset.split("train")
    decoder_device, device_id = dali_device(device)  # "mixed" (nvJPEG) on a GPU

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=0, prefetch_queue_depth=2)
    def decode_only():
        encoded = fn.readers.webdataset(paths=[str(p) for p in split.shards],
                                        index_paths=[str(p) for p in split.indexes], ext=[IMAGE_EXTENSIONS],
                                        random_shuffle=True, initial_fill=256)
        return fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB)

    pipe = decode_only()
    pipe.build()

    def runs():
        while True:
            yield pipe.run()

    return time_batches(runs(), batch_size, batches, warmup=3, device=device)


def measure_memory(dataset, size: int, batch_size: int, threads: int, epochs: int) -> list[float]:
    """(a) for `epochs` epochs; RSS (MiB) after each."""
    loader = build_train_loader(dataset, simclr_recipe(size), batch_size=batch_size, num_threads=threads)
    iterator, rss = iter(loader), []
    for epoch in range(epochs):
        start = time.perf_counter()
        for _ in range(loader.steps_per_epoch):
            next(iterator)
        rss.append(rss_mib())
        print(f"epoch {epoch + 1}: RSS {rss[-1]:.0f} MiB, "
              f"{loader.steps_per_epoch * batch_size / (time.perf_counter() - start):.0f} images/s", flush=True)
    loader.close()
    return rss


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="converted shards (default: generate photo-like JPEGs)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/selfsup-pipeline-benchmark"))
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=default_threads(), help="DALI threads = DataLoader workers")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per loader; the best is kept")
    parser.add_argument("--epochs", type=int, default=0, help="only (a), this many epochs, RSS per epoch")
    parser.add_argument("--device", default="cpu",
                        help="cpu, or cuda[:N]: (a) and (c) decode with DALI's mixed (nvJPEG) decoder and run "
                             "their ops on that GPU; (b) stays on the CPU, as users' DataLoaders do")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        dali_device(args.device)
    except (RuntimeError, ValueError) as error:  # RuntimeError: torch cannot parse the name
        parser.error(f"--device {args.device}: {error}")

    if args.data is not None:
        import pyarrow.parquet as parquet

        shards = args.data  # the PIL baseline reads the source files the manifest lists
        rows = parquet.read_table(shards / "manifest.parquet").to_pylist()
        files = [Path(row["source"]) for row in rows if row["split"] == "train"]
    else:
        shards, files = make_dataset(args.work, args.images)
    dataset = load_dataset_info(shards)
    torch.set_num_threads(1)

    if args.epochs:
        rss = measure_memory(dataset, args.size, args.batch_size, args.threads, args.epochs)
        result = {"rss_mib_per_epoch": rss, "rss_growth_mib": rss[-1] - rss[0]}
        print(json.dumps(result) if args.json else f"RSS growth over {args.epochs} epochs: {rss[-1] - rss[0]:.0f} MiB")
        return result

    figures = {"selfsup_ips": 0.0, "baseline_ips": 0.0, "decode_ips": 0.0}
    for _ in range(args.repeats):  # interleaved, so a noisy neighbour hurts every column alike
        figures["decode_ips"] = max(figures["decode_ips"], measure_decode(dataset, args.batch_size, args.threads,
                                                                          args.batches, args.device))
        figures["selfsup_ips"] = max(figures["selfsup_ips"], measure_selfsup(dataset, args.size, args.batch_size,
                                                                             args.threads, args.batches, args.device))
        figures["baseline_ips"] = max(figures["baseline_ips"], measure_baseline(files, args.size, args.batch_size,
                                                                                args.threads, args.batches // 2))
    result = {**{key: round(value, 1) for key, value in figures.items()},
              "selfsup_over_baseline": round(figures["selfsup_ips"] / figures["baseline_ips"], 2),
              "selfsup_over_decode": round(figures["selfsup_ips"] / figures["decode_ips"], 2),
              "threads": args.threads, "batch_size": args.batch_size, "size": args.size, "images": len(files),
              "device": device_name(args.device)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'loader':<40} {'images/s':>9}")
        print(f"{'(a) selfsup DALI two views ' + str(args.size) + ' px':<40} {figures['selfsup_ips']:>9.0f}")
        print(f"{'(b) PIL + DataLoader, same transforms':<40} {figures['baseline_ips']:>9.0f}")
        print(f"{'(c) DALI decode only':<40} {figures['decode_ips']:>9.0f}")
        print(f"a/b = {result['selfsup_over_baseline']:.2f}   a/c = {result['selfsup_over_decode']:.2f}   "
              f"({args.threads} threads/workers, batch {args.batch_size}, {result['device']})")
    return result


if __name__ == "__main__":
    main()
