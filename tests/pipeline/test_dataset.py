"""load_dataset_info: what dataset.json says, and a clear DatasetError for every unusable folder."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from selfsup.pipeline.convert import convert
from selfsup.pipeline.dataset import DatasetInfo, SplitInfo, load_dataset_info
from selfsup.errors import DatasetError

sys.path.insert(0, str(Path(__file__).parent))
from image_files import write_class_folders  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Two classes of 10 images, 30 % validation, small shards."""
    source = tmp_path_factory.mktemp("dataset") / "src"
    write_class_folders(source, classes=2, per_class=10)
    output = source.parent / "out"
    convert(source, output, shard_size="30KB", val_fraction=0.3, workers=1, progress=False)
    return output


@pytest.fixture
def dataset(converted, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(converted, copy)
    return copy


def test_load_dataset_info(converted):
    info = load_dataset_info(converted)
    assert isinstance(info, DatasetInfo)
    assert info.root == converted.resolve() and info.labeled and info.classes == ("c0", "c1")
    assert info.format_version == 1 and set(info.splits) == {"train", "val"}
    train = info.split("train")
    assert isinstance(train, SplitInfo) and train.name == "train"
    assert train.count == 14 and info.split("val").count == 6
    assert sum(train.class_counts) == 14 and len(train.class_counts) == 2
    assert all(path.is_absolute() and path.is_file() and path.suffix == ".tar" for path in train.shards)
    assert [path.with_suffix(".idx") for path in train.shards] == list(train.indexes)


def test_unknown_split_names_the_available_ones(converted):
    with pytest.raises(DatasetError, match="'test'.*'train', 'val'"):
        load_dataset_info(converted).split("test")


def test_missing_folder_and_unconverted_folder(tmp_path):
    with pytest.raises(DatasetError, match="missing.*selfsup convert SRC"):
        load_dataset_info(tmp_path / "missing")
    with pytest.raises(DatasetError, match=r"dataset\.json: missing.*run `selfsup convert SRC .*` first"):
        load_dataset_info(tmp_path)


def test_unsupported_format_version_and_bad_json(dataset):
    description = json.loads((dataset / "dataset.json").read_text())
    (dataset / "dataset.json").write_text(json.dumps({**description, "format_version": 99}))
    with pytest.raises(DatasetError, match="dataset.json: unsupported format_version 99"):
        load_dataset_info(dataset)
    (dataset / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="dataset.json: not readable JSON"):
        load_dataset_info(dataset)
    (dataset / "dataset.json").write_text(json.dumps({**description, "splits": []}))
    with pytest.raises(DatasetError, match="'splits' must be a dict"):
        load_dataset_info(dataset)


def test_missing_shard_or_index_is_named(dataset):
    info = load_dataset_info(dataset)
    index = info.split("val").indexes[0]
    index.unlink()
    with pytest.raises(DatasetError, match=f"{index.name}: missing"):
        load_dataset_info(dataset)
    shard = info.split("train").shards[-1]
    shard.unlink()
    with pytest.raises(DatasetError, match=f"{shard.name}: missing"):
        load_dataset_info(dataset)


@pytest.mark.parametrize("change, key", [
    (lambda d: d.update(labeled="yes"), "'labeled' must be a bool"),
    (lambda d: d.update(classes=["c0", 1]), r"'classes\[1\]' must be a class name"),
    (lambda d: d.update(skipped=-1), "'skipped' must be a count"),
    (lambda d: d.update(source=["not", "a", "path"]), "'source' must be a str"),
    (lambda d: d["splits"].update(train=[]), "'splits.train' must be an object"),
    (lambda d: d["splits"]["train"].update(count="14"), "'splits.train.count' must be a count"),
    (lambda d: d["splits"]["train"].update(count=True), "'splits.train.count' must be a count"),
    (lambda d: d["splits"]["train"].update(shards="train-000000.tar"), "'splits.train.shards' must be a list"),
    (lambda d: d["splits"]["val"]["shards"].insert(0, 7), r"'splits.val.shards\[0\]' must be a shard file name"),
    (lambda d: d["splits"]["train"].update(class_counts=[14]), "'splits.train.class_counts' must be a list of 2"),
])
def test_a_description_that_breaks_the_schema_names_the_file_and_key(dataset, change, key):
    description = json.loads((dataset / "dataset.json").read_text())
    change(description)
    (dataset / "dataset.json").write_text(json.dumps(description))
    with pytest.raises(DatasetError, match=rf"{dataset / 'dataset.json'}: key {key}"):
        load_dataset_info(dataset)


@pytest.mark.parametrize("name", ["../outside/train-000000.tar", "/OUTSIDE/train-000000.tar",
                                  "sub/../../outside/train-000000.tar", "train-000000.idx"])
def test_shard_paths_that_leave_the_dataset_folder_are_refused_unopened(dataset, tmp_path, name):
    """The file the name points to exists and is a valid shard; it is refused all the same."""
    from selfsup.pipeline.verify import verify

    outside = tmp_path / "outside"
    outside.mkdir()
    description = json.loads((dataset / "dataset.json").read_text())
    first = description["splits"]["train"]["shards"][0]
    for suffix in (".tar", ".idx"):
        shutil.copy(dataset / first.replace(".tar", suffix), outside / first.replace(".tar", suffix))
    description["splits"]["train"]["shards"][0] = name.replace("/OUTSIDE", str(outside))
    (dataset / "dataset.json").write_text(json.dumps(description))
    expected = rf"{dataset / 'dataset.json'}: key 'splits.train.shards\[0\]' must be a shard file name inside"
    with pytest.raises(DatasetError, match=expected):
        load_dataset_info(dataset)
    with pytest.raises(DatasetError, match=expected):
        verify(dataset)
