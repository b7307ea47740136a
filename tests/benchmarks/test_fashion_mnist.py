"""benchmarks/fashion_mnist.py: IDX files -> PNG class folders -> converted train (+ val) and test sets.

Run on small IDX files written here (so CI without Debian's package runs the parsing and the
conversion) and, when the real files are on this machine (Debian's `dataset-fashion-mnist`, an
earlier download in the cache, or the folder in $FASHION_MNIST_IDX), on the first 30 images of each
class of them.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks import fashion_mnist
from benchmarks.fashion_mnist import (CLASS_NAMES, find_idx_folder, first_per_class, load_split,
                                      prepare_fashion_mnist, pretraining_subset, read_idx)
from selfsup.errors import DatasetError
from tests.benchmarks.idx_files import idx_bytes, write_idx_folder


def shard_samples(dataset: Path) -> list[dict]:
    """Every sample of a converted dataset, read back from its shards: split, label, pixels, source."""
    description = json.loads((dataset / "dataset.json").read_text())
    rows = pq.read_table(dataset / "manifest.parquet").to_pylist()
    members = {}
    for shard in sorted({row["shard"] for row in rows}):
        with tarfile.open(dataset / shard) as archive:
            members.update({(shard, member.name): archive.extractfile(member).read()
                            for member in archive.getmembers()})
    samples = []
    for row in rows:
        label = int(members[(row["shard"], f"{row['key']}.cls")])
        assert label == row["label"]
        image = Image.open(io.BytesIO(members[(row["shard"], f"{row['key']}.png")]))
        samples.append({"split": row["split"], "class": description["classes"][label], "source": row["source"],
                        "pixels": np.asarray(image)})
    return samples


def check_conversion(result, written: dict, per_class: int | None) -> None:
    """Every converted sample is its IDX image, under its IDX class, in the right split and count."""
    expected_val = {"train": None, "test": 0}
    for split, dataset in (("train", result.train), ("test", result.test)):
        images, labels = written[split]
        chosen = first_per_class(labels, per_class)
        samples = shard_samples(dataset)
        description = json.loads((dataset / "dataset.json").read_text())
        assert description["classes"] == sorted(CLASS_NAMES)  # convert sorts the class folders
        assert len(samples) == len(chosen)
        assert sorted(int(Path(s["source"]).stem) for s in samples) == chosen.tolist()
        for sample in samples:
            index = int(Path(sample["source"]).stem)
            assert sample["class"] == CLASS_NAMES[labels[index]] == sample["source"].split("/")[0]
            assert sample["pixels"].shape == (28, 28) and np.array_equal(sample["pixels"], images[index])
        val = sum(sample["split"] == "val" for sample in samples)
        assert val == (round(len(chosen) / 12) if expected_val[split] is None else 0)


def test_small_idx_files_become_class_folders_and_shards(tmp_path):
    written = write_idx_folder(tmp_path / "idx", {"train": 240, "test": 60})
    result = prepare_fashion_mnist(tmp_path / "work", source=tmp_path / "idx", log=lambda line: None)
    check_conversion(result, written, per_class=None)
    pngs = sorted((tmp_path / "work" / "images-full" / "train").glob("*/*.png"))
    assert len(pngs) == 240 and {png.parent.name for png in pngs} == set(CLASS_NAMES)
    # done: a second call reads nothing (the IDX files may be gone)
    for path in (tmp_path / "idx").iterdir():
        path.unlink()
    assert prepare_fashion_mnist(tmp_path / "work", source=tmp_path / "idx") == result


def test_first_per_class_keeps_the_first_images_of_each_class_in_file_order(tmp_path):
    written = write_idx_folder(tmp_path / "idx", {"train": 120, "test": 40}, compress=False)
    result = prepare_fashion_mnist(tmp_path / "work", source=tmp_path / "idx", per_class=5, log=lambda line: None)
    assert result.train == tmp_path / "work" / "shards-first5" / "train"
    check_conversion(result, written, per_class=5)
    labels = written["train"][1]
    chosen = first_per_class(labels, 5)
    assert len(chosen) == 50 and np.bincount(labels[chosen]).tolist() == [5] * 10
    for label in range(10):  # nothing earlier in the file of that class was left out
        assert set(np.flatnonzero(labels == label)[:5]) <= set(chosen.tolist())


def test_a_pretraining_subset_takes_the_first_images_of_each_class_of_the_train_split(tmp_path):
    written = write_idx_folder(tmp_path / "idx", {"train": 240, "test": 20})
    result = prepare_fashion_mnist(tmp_path / "work", source=tmp_path / "idx", log=lambda line: None)
    subset = pretraining_subset(result.train, 3)
    samples = shard_samples(subset)
    assert json.loads((subset / "dataset.json").read_text())["splits"].keys() == {"train"}
    train_split = {s["source"] for s in shard_samples(result.train) if s["split"] == "train"}
    by_class = {}
    for source in sorted(train_split):  # the first 3 of each class among the train split's images
        by_class.setdefault(source.split("/")[0], []).append(source)
    assert sorted(s["source"] for s in samples) == sorted(x for sources in by_class.values() for x in sources[:3])
    images, labels = written["train"]
    for sample in samples:  # no val image, each its IDX image under its class
        index = int(Path(sample["source"]).stem)
        assert sample["class"] == CLASS_NAMES[labels[index]] and np.array_equal(sample["pixels"], images[index])
    assert pretraining_subset(result.train, 3) == subset


def test_malformed_idx_files_are_refused_with_their_path(tmp_path):
    good = idx_bytes(np.zeros((3, 2, 2), dtype=np.uint8))
    assert read_idx(_write(tmp_path / "good", good)).shape == (3, 2, 2)
    cases = {"magic": (b"\x01" + good[1:], "not an IDX file"),
             "type": (good[:2] + b"\x0d" + good[3:], "type code 0x0d"),
             "short": (good[:-1], "11 data bytes, expected 12 for shape (3, 2, 2)"),
             "gzip": (gzip.compress(good)[:-9], "not a readable gzip file")}
    for name, (data, message) in cases.items():
        with pytest.raises(DatasetError, match=re.escape(message)) as error:
            read_idx(_write(tmp_path / name, data))
        assert str(tmp_path / name) in str(error.value)


def test_labels_that_do_not_match_the_images_are_refused(tmp_path):
    folder = tmp_path / "idx"
    write_idx_folder(folder, {"train": 20, "test": 10})
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(9, dtype=np.uint8))))
    with pytest.raises(DatasetError, match=r"test images \(10, 28, 28\) and labels \(9,\) do not match"):
        load_split(folder, "test")


def test_missing_files_say_what_is_needed(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="expected the Fashion-MNIST IDX files train-images-idx3-ubyte"):
        find_idx_folder(tmp_path)  # --source without the files: no fallback
    monkeypatch.setattr(fashion_mnist, "SYSTEM_FOLDER", tmp_path / "nowhere")
    monkeypatch.setattr(fashion_mnist.shutil, "which", lambda tool: None)
    with pytest.raises(DatasetError, match=r"apt-get and dpkg-deb \(to download Debian's dataset-fashion-mnist\) "
                                           r"is not on this machine: pass --source FOLDER"):
        find_idx_folder(cache=tmp_path / "cache")
    assert fashion_mnist.main(["--workdir", str(tmp_path / "work"), "--cache", str(tmp_path / "cache")]) == 2


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def real_idx_folder() -> Path | None:
    if os.environ.get("FASHION_MNIST_IDX"):
        return Path(os.environ["FASHION_MNIST_IDX"])
    try:
        return find_idx_folder(download=False)
    except DatasetError:
        return None


@pytest.mark.skipif(real_idx_folder() is None, reason="the Fashion-MNIST IDX files are not on this machine "
                    "(apt-get download dataset-fashion-mnist, or set FASHION_MNIST_IDX to their folder)")
def test_the_real_files_first_30_per_class(tmp_path):
    folder = real_idx_folder()
    written = {split: load_split(folder, split) for split in ("train", "test")}
    assert {split: len(labels) for split, (_, labels) in written.items()} == fashion_mnist.SPLIT_SIZES
    for split, (images, labels) in written.items():  # 10 balanced classes of 28 x 28 photos
        assert images.shape[1:] == (28, 28) and np.bincount(labels).tolist() == [len(labels) // 10] * 10
    result = prepare_fashion_mnist(tmp_path, source=folder, per_class=30, log=lambda line: None)
    check_conversion(result, written, per_class=30)
    # the photos: a black background (the top-left corner), the garment in the middle; not noise
    images = written["train"][0][first_per_class(written["train"][1], 30)].astype(float)
    assert images[:, :3, :3].mean() < 5 and images[:, 10:18, 10:18].mean() > 100
