"""convert: layouts, every image kind, errors.jsonl, DALI decoding, splits, shuffling, resume."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from selfsup.pipeline.convert import convert, format_summary
from selfsup.pipeline.dataset import read_manifest
from selfsup.errors import DatasetError
from selfsup.pipeline.shards import ShardWriter, parse_size, read_index
from selfsup.pipeline.verify import verify

sys.path.insert(0, str(Path(__file__).parent))
from dataset_checks import check_complete, shard_samples  # noqa: E402
from image_files import BAD_FILES, noise, write_all_kinds, write_class_folders  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def all_kinds(tmp_path_factory):
    """The every-kind folder converted once: (source, output, expectations, summary)."""
    source = tmp_path_factory.mktemp("kinds") / "src"
    expected = write_all_kinds(source)
    output = source.parent / "out"
    summary = convert(source, output, shard_size="64KB", val_fraction=0.25, workers=1, seed=3, progress=False)
    return source, output, expected, summary


# --- shards ---------------------------------------------------------------------------------------

def test_parse_size_units_and_errors():
    assert parse_size("256MB") == 256 * 10**6
    assert parse_size("1gib") == 1024**3
    assert parse_size("64 KiB") == 64 * 1024
    assert parse_size("1.5kb") == 1500
    assert parse_size("4096") == parse_size(4096) == 4096
    for bad in ("12 parsecs", "", "-5MB", "MB", 0, True, 1.5):
        with pytest.raises(ValueError, match="expected|positive"):
            parse_size(bad)


def test_shard_index_matches_dalis_wds2idx_byte_for_byte(tmp_path):
    with ShardWriter(tmp_path / "a.tar") as writer:
        writer.write_sample("000000001", {"jpg": os.urandom(10234), "cls": b"3", "json": b"{}" * 40})
        writer.write_sample("000000002", {"png": os.urandom(512), "json": b"{}"})
        writer.write_sample("000000003", {"jpg": os.urandom(1), "json": b"x" * 1023})
    assert not (tmp_path / "a.tar.partial").exists()
    subprocess.run([str(Path(sys.executable).with_name("wds2idx")), str(tmp_path / "a.tar"), str(tmp_path / "dali.idx")],
                   check=True, capture_output=True)
    assert (tmp_path / "a.idx").read_bytes() == (tmp_path / "dali.idx").read_bytes()
    entries = read_index(tmp_path / "a.idx")
    assert entries[0] == {"jpg": (512, 10234), "cls": (11264, 1), "json": (12288, 80)}
    with tarfile.open(tmp_path / "a.tar") as archive:
        member = archive.getmember("000000002.png")
        assert (member.offset_data, member.size, member.mode, member.mtime) == (*entries[1]["png"], 0o444, 0)


def test_shard_writer_abort_and_bad_input(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "b.tar") as writer:
            writer.write_sample("k1", {"jpg": b"x"})
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with ShardWriter(tmp_path / "c.tar") as writer:
        for key in ("a.b", "", "x/y"):
            with pytest.raises(ValueError, match="key"):
                writer.write_sample(key, {"jpg": b"x"})
        writer.write_sample("ok", {"jpg": b"x"})
        with pytest.raises(ValueError, match="twice"):
            writer.write_sample("ok", {"jpg": b"y"})
    (tmp_path / "bad.idx").write_text("v1.2 1\njpg 512 notanumber 0.jpg\n")
    with pytest.raises(DatasetError, match="bad.idx: line 2"):
        read_index(tmp_path / "bad.idx")


# --- every kind of image ------------------------------------------------------------------------

def test_errors_labels_and_stored_formats(all_kinds):
    source, output, expected, summary = all_kinds
    errors = [json.loads(line) for line in (output / "errors.jsonl").read_text().splitlines()]
    assert sorted(error["path"] for error in errors) == sorted(BAD_FILES)
    assert all(error["reason"] for error in errors)
    assert summary.skipped == 3 and summary.errors_path == output / "errors.jsonl"
    assert summary.labeled and summary.classes == ["cat", "dog", "fish"]
    rows = read_manifest(output / "manifest.parquet")
    assert sorted(row["source"] for row in rows) == sorted(expected)
    assert len({row["key"] for row in rows}) == len(rows)
    for row in rows:
        wanted = expected[row["source"]]
        assert row["label"] == ["cat", "dog", "fish"].index(wanted["class"]), row["source"]
        assert (row["width"], row["height"]) == wanted["size"], row["source"]
    by_source = {json.loads(sample["json"])["source"]: sample for sample in shard_samples(output)}
    assert sorted(by_source) == sorted(expected)
    for relative, wanted in expected.items():
        sample = by_source[relative]
        image_ext = "jpg" if "jpg" in sample else "png"
        assert image_ext == wanted["ext"], relative
        stored = sample[image_ext]
        assert (stored == (source / relative).read_bytes()) == wanted["kept"], relative
        meta = json.loads(sample["json"])
        with Image.open(source / relative) as original:
            assert (meta["original_width"], meta["original_height"]) == original.size
        assert (meta["width"], meta["height"]) == wanted["size"]
        assert int(sample["cls"]) == ["cat", "dog", "fish"].index(wanted["class"])
    assert by_source["cat/nested/deep/inner.png"]["cls"] == b"0"


def test_dali_cpu_decodes_every_stored_sample_as_a_person_sees_it(all_kinds):
    from nvidia.dali import fn, pipeline_def, types

    source, output, expected, _ = all_kinds
    description = json.loads((output / "dataset.json").read_text())
    shards = [output / shard for split in description["splits"].values() for shard in split["shards"]]
    total = sum(split["count"] for split in description["splits"].values())

    @pipeline_def(batch_size=total, num_threads=1, device_id=None)
    def decode_all():
        image, meta = fn.readers.webdataset(paths=[str(path) for path in shards],
                                            index_paths=[str(path.with_suffix(".idx")) for path in shards],
                                            ext=["jpg;png", "json"], missing_component_behavior="error")
        return fn.decoders.image(image, device="cpu", output_type=types.RGB), meta

    pipeline = decode_all()
    pipeline.build()
    images, metas = pipeline.run()
    seen = set()
    for index in range(total):
        decoded = np.asarray(images.at(index))
        meta = json.loads(bytes(np.asarray(metas.at(index))).decode("utf-8"))
        assert decoded.shape == (meta["height"], meta["width"], 3), meta["source"]
        with Image.open(source / meta["source"]) as original:  # what a person sees, on white
            seen_image = ImageOps.exif_transpose(original)
            if seen_image.mode == "I;16":
                seen_image = Image.fromarray((np.asarray(seen_image) >> 8).astype(np.uint8))
            rgba = seen_image.convert("RGBA")
            reference = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
        difference = np.abs(decoded.astype(int) - np.asarray(reference, dtype=int)).mean()
        assert difference < 4, (meta["source"], difference)
        seen.add(meta["source"])
    assert seen == set(expected)


def test_dataset_json_schema_and_summary_text(all_kinds):
    source, output, expected, summary = all_kinds
    description = json.loads((output / "dataset.json").read_text())
    assert set(description) == {"format_version", "source", "labeled", "classes", "fingerprint", "options",
                                "skipped", "splits", "created"}
    assert description["source"] == str(source.resolve()) and description["format_version"] == 1
    assert description["options"] == {"shard_size": 64000, "max_side": None, "val_fraction": 0.25, "seed": 3}
    planned_val = round(0.25 * (len(expected) + 3))  # bad files take plan places too, in either split
    assert planned_val - 3 <= description["splits"]["val"]["count"] <= planned_val
    counts = {name: split["count"] for name, split in description["splits"].items()}
    assert counts == summary.counts and sum(counts.values()) == len(expected)
    for name, split in description["splits"].items():
        assert sum(split["class_counts"]) == split["count"] and split["shards"] == summary.shards[name]
    assert not (output / ".selfsup-convert").exists()
    text = format_summary(summary)
    assert "skipped: 3" in text and str(output / "errors.jsonl") in text and "images/s" in text
    assert "train-000000.tar" in text and f"train: {counts['train']} images" in text


def test_already_complete_is_a_no_op_and_other_datasets_are_refused(all_kinds, tmp_path):
    source, output, _, _ = all_kinds
    before = {path.name: path.stat().st_mtime_ns for path in output.iterdir()}
    again = convert(source, output, shard_size="64KB", val_fraction=0.25, workers=1, seed=3, progress=False)
    assert again.already_complete and not again.resumed
    assert {path.name: path.stat().st_mtime_ns for path in output.iterdir()} == before
    assert "already converted" in format_summary(again)
    with pytest.raises(DatasetError, match="different dataset.*new or empty folder"):
        convert(source, output, shard_size="64KB", val_fraction=0.25, workers=1, seed=4, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.pdf").write_text("mine")
    with pytest.raises(DatasetError, match=r"foreign.*thesis\.pdf.*new or empty folder"):
        convert(source, foreign, progress=False)


def test_bad_sources_and_options(tmp_path):
    with pytest.raises(DatasetError, match="missing.*no such folder"):
        convert(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "file.jpg").write_text("x")
    with pytest.raises(DatasetError, match="file.jpg: not a folder"):
        convert(tmp_path / "file.jpg", tmp_path / "out")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="empty: no images"):
        convert(empty, tmp_path / "out")
    for option in ({"shard_size": "big"}, {"val_fraction": 1.0}, {"max_side": 0}, {"workers": 0}):
        with pytest.raises(DatasetError, match=str(next(iter(option.values())))):
            convert(tmp_path, tmp_path / "out", **option)


# --- layouts, splits, shuffling -----------------------------------------------------------------

def test_flat_folder_is_unlabeled_and_recursive(tmp_path):
    source = tmp_path / "flat"
    noise(30, 20, 1).save(source.mkdir() or source / "top.jpg")
    (source / "sub" / "deeper").mkdir(parents=True)
    noise(20, 30, 2).save(source / "sub" / "a.png")
    noise(25, 25, 3).save(source / "sub" / "deeper" / "b.jpeg")
    summary = convert(source, tmp_path / "out", workers=1, progress=False)
    assert not summary.labeled and summary.classes == [] and summary.counts == {"train": 3}
    rows = read_manifest(tmp_path / "out" / "manifest.parquet")
    assert sorted(row["source"] for row in rows) == ["sub/a.png", "sub/deeper/b.jpeg", "top.jpg"]
    assert {row["label"] for row in rows} == {-1}
    assert all("cls" not in sample for sample in shard_samples(tmp_path / "out"))
    description = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert description["classes"] == [] and description["splits"]["train"]["class_counts"] == []


def test_shuffled_splits_mix_classes_are_deterministic_and_respect_shard_size(tmp_path):
    source = tmp_path / "classes"
    write_class_folders(source, classes=3, per_class=20)
    first = convert(source, tmp_path / "a", shard_size="40KB", val_fraction=0.2, workers=1, seed=7, progress=False)
    assert first.counts == {"train": 48, "val": 12}
    rows = read_manifest(tmp_path / "a" / "manifest.parquet")
    train_shards = first.shards["train"]
    assert len(train_shards) >= 3
    for shard in train_shards:
        labels = {row["label"] for row in rows if row["shard"] == shard}
        assert len(labels) >= 2, f"{shard} holds one class only: not shuffled"
        size = (tmp_path / "a" / shard).stat().st_size
        assert size <= 40_000 or sum(row["shard"] == shard for row in rows) == 1
    same = convert(source, tmp_path / "b", shard_size="40KB", val_fraction=0.2, workers=1, seed=7, progress=False)
    other = convert(source, tmp_path / "c", shard_size="40KB", val_fraction=0.2, workers=1, seed=8, progress=False)
    assert read_manifest(tmp_path / "b" / "manifest.parquet") == rows
    assert same.shards == first.shards
    for shard in train_shards:
        assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()
    other_rows = read_manifest(tmp_path / "c" / "manifest.parquet")
    assert [row["source"] for row in other_rows] != [row["source"] for row in rows]
    validation = {row["source"] for row in rows if row["split"] == "val"}
    assert len(validation) == 12 and validation.isdisjoint(row["source"] for row in rows if row["split"] == "train")


def test_worker_pool_gives_the_same_shards_and_max_side_downscales(tmp_path):
    source = tmp_path / "classes"
    write_class_folders(source, classes=2, per_class=6, size=(90, 60))
    noise(40, 120, 9, "RGBA").save(source / "c0" / "tall.png")
    one = convert(source, tmp_path / "one", max_side=64, workers=1, progress=False)
    two = convert(source, tmp_path / "two", max_side=64, workers=2, progress=False)
    assert one.shards == two.shards
    for shard in one.shards["train"]:
        assert (tmp_path / "one" / shard).read_bytes() == (tmp_path / "two" / shard).read_bytes()
    rows = {row["source"]: row for row in read_manifest(tmp_path / "one" / "manifest.parquet")}
    assert (rows["c0/img0000.jpg"]["width"], rows["c0/img0000.jpg"]["height"]) == (64, 43)
    assert (rows["c0/tall.png"]["width"], rows["c0/tall.png"]["height"]) == (21, 64)
    for sample in shard_samples(tmp_path / "one"):
        assert "jpg" in sample  # downscaled images are stored as JPEG
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            assert max(image.size) == 64 and image.mode == "RGB"


# --- interruption -------------------------------------------------------------------------------

# Each image takes at least 10 ms (about 0.1 s per shard), so the test, polling for shards on a loaded
# machine, gets to interrupt the conversion well before its end.
# SIGINT back to Python's handler first: a process started from a background job inherits SIGINT
# ignored (POSIX shells do that to `cmd &`), and Python then never raises KeyboardInterrupt.
CONVERT_CALL = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                "import time; from selfsup.pipeline.convert import convert; from selfsup.pipeline.images import prepare_image; "
                "paced = lambda tasks: (time.sleep(0.01) or prepare_image(*task) for task in tasks); "
                "convert({source!r}, {output!r}, shard_size='150KB', val_fraction=0.1, workers=1, progress=False, "
                "map_in_order=paced)")


def start_and_interrupt(source: Path, output: Path, signal_number: int, after_shards: int) -> int:
    """Run convert in a subprocess, send `signal_number` once `after_shards` final shards exist."""
    process = subprocess.Popen([sys.executable, "-c", CONVERT_CALL.format(source=str(source), output=str(output))],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if output.is_dir() and len(list(output.glob("train-*.tar"))) >= after_shards:
            process.send_signal(signal_number)
            break
        time.sleep(0.002)
    process.communicate(timeout=60)
    assert not (output / "dataset.json").exists(), "conversion finished before it could be interrupted"
    return process.returncode


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """300 small BMP files in 3 classes (re-encoded to PNG, so each takes a few milliseconds)."""
    source = tmp_path_factory.mktemp("many") / "src"
    return source, write_class_folders(source, classes=3, per_class=100, size=(96, 72), format="BMP",
                                       suffix=".bmp")


def test_sigkill_twice_then_resume_gives_every_image_once(many_images, tmp_path):
    source, files = many_images
    output = tmp_path / "out"
    assert start_and_interrupt(source, output, signal.SIGKILL, after_shards=1) == -signal.SIGKILL
    assert start_and_interrupt(source, output, signal.SIGKILL, after_shards=5) == -signal.SIGKILL
    summary = convert(source, output, shard_size="150KB", val_fraction=0.1, workers=1, progress=False)
    assert summary.resumed and not summary.already_complete and 0 < summary.processed < 300
    check_complete(files, output)
    assert summary.counts == {"train": 270, "val": 30}


def test_ctrl_c_leaves_only_complete_shards(many_images, tmp_path):
    source, files = many_images
    output = tmp_path / "out"
    assert start_and_interrupt(source, output, signal.SIGINT, after_shards=2) != 0
    assert not list(output.glob("*.partial"))
    for shard in output.glob("*.tar"):
        with tarfile.open(shard) as archive:
            members = [member.name for member in archive]
        assert len(read_index(shard.with_suffix(".idx"))) * 3 == len(members) > 0
    convert(source, output, shard_size="150KB", val_fraction=0.1, workers=1, progress=False)
    check_complete(files, output)


def test_crash_between_shard_rename_and_its_record_is_redone(tmp_path, monkeypatch):
    import selfsup.pipeline.convert_output as convert_module  # where the shard records are written

    source = tmp_path / "classes"
    files = write_class_folders(source, classes=2, per_class=15)
    output = tmp_path / "out"
    real_write, records_written = convert_module.write_atomically, []

    def crash_on_third_record(path, data, **options):
        if path.parent.name == ".selfsup-convert" and path.name != "plan.json":
            records_written.append(path.name)
            if len(records_written) == 3:
                raise KeyboardInterrupt  # the shard is final, its record never written
        real_write(path, data, **options)

    monkeypatch.setattr(convert_module, "write_atomically", crash_on_third_record)
    with pytest.raises(KeyboardInterrupt):
        convert(source, output, shard_size="30KB", workers=1, progress=False)
    monkeypatch.undo()
    assert len(list(output.glob("train-*.tar"))) == 3 and not (output / "dataset.json").exists()
    (output / "train-000007.tar.partial").write_bytes(b"half a shard")
    summary = convert(source, output, shard_size="30KB", workers=1, progress=False)
    assert summary.resumed and summary.processed < len(files)
    check_complete(files, output)


def test_a_split_of_only_unreadable_files_is_left_out(tmp_path):
    source = tmp_path / "flat"
    source.mkdir()
    noise(30, 20, 1).save(source / "a.jpg")
    noise(30, 20, 2).save(source / "b.jpg")
    (source / "c.jpg").write_text("not an image")
    summary = convert(source, tmp_path / "out", val_fraction=0.34, seed=0, workers=1, progress=False)
    assert summary.counts == {"train": 2} and summary.skipped == 1  # with seed 0, c.jpg is the one val place
    assert "val" not in json.loads((tmp_path / "out" / "dataset.json").read_text())["splits"]
    assert verify(tmp_path / "out").ok
