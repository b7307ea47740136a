"""pipeline.staging: a converted dataset at a file:// or s3:// URI copied to a local cache, once,
within a space limit, complete or not at all. The s3:// tests use an S3 server on loopback (moto)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from selfsup.pipeline.dataset import load_dataset_info, read_manifest

from selfsup.errors import DatasetError
from selfsup.pipeline.loader import build_train_loader
from selfsup.pipeline.node_staging import stage_node_parts
from selfsup.pipeline.recipes import build_recipe
from selfsup.pipeline.staging import is_placeholder, is_uri, public_uri, stage_dataset, staged_folder
from selfsup.pipeline.verify import verify
from tests.s3_server import loopback_s3, unused_port
from selfsup.trainer.data import DataStream, tensor_to_bytes


def _size(folder) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_is_uri():
    assert is_uri("s3://bucket/data") and is_uri("file:///mnt/x") and is_uri("gs://b/p")
    assert not is_uri("/mnt/shared/data") and not is_uri("relative/path") and not is_uri("C:/x")


def test_stage_copies_once_and_reads_back(demo_shards, tmp_path):
    uri = demo_shards.resolve().as_uri()
    local = stage_dataset(uri, tmp_path / "cache")
    assert local == staged_folder(uri, tmp_path / "cache")
    staged, original = load_dataset_info(local), load_dataset_info(demo_shards)
    names = [shard.name for shard in staged.split("train").shards]
    assert names == [shard.name for shard in original.split("train").shards]
    for shard in original.split("train").shards + original.split("val").shards:
        assert (local / shard.name).read_bytes() == shard.read_bytes()
    assert not list(local.glob("*.partial"))
    stamps = {path.name: path.stat().st_mtime_ns for path in local.glob("*.tar")}
    assert stage_dataset(uri, tmp_path / "cache") == local  # a second call copies nothing
    assert stamps == {path.name: path.stat().st_mtime_ns for path in local.glob("*.tar")}
    assert stage_dataset(str(demo_shards), tmp_path / "cache") == demo_shards  # a plain path stays


def test_interrupted_copy_is_completed(demo_shards, tmp_path):
    uri = demo_shards.resolve().as_uri()
    local = stage_dataset(uri, tmp_path / "cache")
    (local / "dataset.json").unlink()  # as if stopped before the end: incomplete
    first_shard = sorted(local.glob("train-*.tar"))[0]
    first_shard.write_bytes(b"partial")
    stage_dataset(uri, tmp_path / "cache")
    assert first_shard.read_bytes() == (demo_shards / first_shard.name).read_bytes()
    load_dataset_info(local)


def test_space_limit_evicts_least_recently_used(demo_shards, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(demo_shards, other)
    size = _size(demo_shards)
    cache = tmp_path / "cache"
    first = stage_dataset(other.as_uri(), cache, max_bytes=int(size * 1.5))
    second = stage_dataset(demo_shards.resolve().as_uri(), cache, max_bytes=int(size * 1.5))
    assert not first.exists() and (second / "dataset.json").exists()
    with pytest.raises(DatasetError, match="staging limit"):
        stage_dataset(other.as_uri(), tmp_path / "small", max_bytes=size // 2)


def test_another_conversion_at_the_same_uri_is_staged_again(demo_shards, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(demo_shards, source)
    local = stage_dataset(source.as_uri(), tmp_path / "cache")
    description = json.loads((source / "dataset.json").read_text())
    description["fingerprint"] = "another"
    (source / "dataset.json").write_text(json.dumps(description))
    stage_dataset(source.as_uri(), tmp_path / "cache")
    assert json.loads((local / "dataset.json").read_text())["fingerprint"] == "another"


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="finished conversion"):
        stage_dataset((tmp_path / "nothing").as_uri(), tmp_path / "cache")


def test_public_uri_hides_credentials():
    assert public_uri("s3://KEY:SECRET@bucket/shapes/?endpoint_override=h:9000&scheme=http") == \
        "s3://bucket/shapes?endpoint_override=h:9000&scheme=http"
    assert public_uri("gs://bucket/x?access_token=abc") == "gs://bucket/x?access_token=%2A%2A%2A"
    assert public_uri("file:///mnt/shared/shapes/") == "file:///mnt/shared/shapes"


@pytest.fixture(scope="module")
def s3(demo_shards):
    """An S3 server on loopback holding the demo dataset twice: datasets/shapes and datasets/copy."""
    with loopback_s3() as store:
        store.upload(demo_shards, "datasets", "shapes")
        store.upload(demo_shards, "datasets", "copy")
        yield store


def test_stage_from_s3_copies_every_byte(s3, demo_shards, tmp_path, capsys):
    uri = s3.uri("datasets", "shapes")
    local = stage_dataset(uri, tmp_path / "cache")
    assert local == staged_folder(uri, tmp_path / "cache") and local.name.startswith("shapes-")
    originals = sorted(path.name for path in demo_shards.iterdir() if path.is_file())
    assert {path.name for path in local.iterdir()} >= set(originals)
    for name in originals:
        assert (local / name).read_bytes() == (demo_shards / name).read_bytes(), name
    assert verify(local, progress=False).ok  # every shard against the manifest, every image decoded
    assert f"staged {uri} -> {local}" in capsys.readouterr().out
    stamps = {path.name: path.stat().st_mtime_ns for path in local.glob("*.tar")}
    assert stage_dataset(uri, tmp_path / "cache") == local  # a second call copies nothing
    assert stamps == {path.name: path.stat().st_mtime_ns for path in local.glob("*.tar")}


def test_stage_from_s3_with_endpoint_from_environment(s3, demo_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3.endpoint}")
    local = stage_dataset("s3://datasets/shapes", tmp_path / "cache")
    assert (local / "manifest.parquet").read_bytes() == (demo_shards / "manifest.parquet").read_bytes()


def test_stage_from_s3_within_the_space_limit(s3, demo_shards, tmp_path):
    size = _size(demo_shards)
    cache = tmp_path / "cache"
    first = stage_dataset(s3.uri("datasets", "copy"), cache, max_bytes=int(size * 1.5))
    assert _size(cache) <= size * 1.5
    second = stage_dataset(s3.uri("datasets", "shapes"), cache, max_bytes=int(size * 1.5))
    assert not first.exists() and (second / "dataset.json").exists()  # the least recently used went
    assert _size(cache) <= size * 1.5
    with pytest.raises(DatasetError, match=r"s3://datasets/copy\?endpoint_override=.*staging limit"):
        stage_dataset(s3.uri("datasets", "copy"), tmp_path / "small", max_bytes="1KB")
    assert not (tmp_path / "small").exists() or _size(tmp_path / "small") == 0


def test_s3_credentials_stay_out_of_names_and_messages(s3, tmp_path, capsys):
    uri = f"s3://AKIDSELFSUP:NOT-TO-BE-PRINTED@datasets/shapes?endpoint_override={s3.endpoint}&scheme=http"
    local = stage_dataset(uri, tmp_path / "cache")
    assert local == staged_folder(s3.uri("datasets", "shapes"), tmp_path / "cache")  # same data, same copy
    marker = (local / ".staged").read_text()
    assert "NOT-TO-BE-PRINTED" not in marker + str(local) + capsys.readouterr().out
    with pytest.raises(DatasetError) as error:
        stage_dataset(uri.replace("datasets/shapes", "missing/shapes"), tmp_path / "cache")
    assert "NOT-TO-BE-PRINTED" not in str(error.value)


@pytest.mark.slow
def test_s3_errors_name_the_uri(s3, tmp_path):
    with pytest.raises(DatasetError, match=r"s3://missing/shapes\?endpoint_override=.*the bucket 'missing' "
                                           r"does not exist"):
        stage_dataset(s3.uri("missing", "shapes"), tmp_path / "cache")
    with pytest.raises(DatasetError, match=r"s3://datasets/nothing/dataset.json: not found; is "
                                           r"s3://datasets/nothing\?endpoint_override=.* a finished conversion"):
        stage_dataset(s3.uri("datasets", "nothing"), tmp_path / "cache")
    with pytest.raises(DatasetError, match=r"s3://datasets/shapes\?foo=1: not a location pyarrow can open"):
        stage_dataset("s3://datasets/shapes?foo=1", tmp_path / "cache")
    port = unused_port()
    started = time.monotonic()
    with pytest.raises(DatasetError, match=rf"s3://datasets/shapes/dataset.json: cannot read it from "
                                           rf"s3://datasets/shapes\?endpoint_override=127.0.0.1:{port}.*{port}"):
        stage_dataset(f"s3://datasets/shapes?endpoint_override=127.0.0.1:{port}&scheme=http", tmp_path / "cache")
    assert time.monotonic() - started < 60  # pyarrow retries a few times, then gives up
    assert not list((tmp_path / "cache").glob("shapes-*"))


# --- per-epoch staging of a node's parts (pipeline.node_staging) ---------------------------------


def _train_rows(dataset):
    """The manifest's train rows in reading order (shard, then position in it)."""
    rows = [row for row in read_manifest(dataset / "manifest.parquet") if row["split"] == "train"]
    return sorted(rows, key=lambda row: (row["shard"], row["offset"]))


def _expected_files(dataset, ranks, world_size, epoch) -> set[str]:
    """From the manifest: the shards holding the samples of the ranks' parts, cut as DALI cuts them."""
    rows = _train_rows(dataset)
    names = set()
    for rank in ranks:
        part = (rank + epoch) % world_size
        start, stop = len(rows) * part // world_size, len(rows) * (part + 1) // world_size
        names |= {row["shard"] for row in rows[start:stop]}
    return names


def _staged_shards(folder) -> set[str]:
    return {path.name for path in folder.glob("*.tar") if not is_placeholder(path)}


def _small_bytes(dataset) -> int:
    return sum(path.stat().st_size for path in dataset.iterdir() if path.suffix != ".tar")


def test_each_node_stages_only_the_files_of_its_parts(demo_shards, tmp_path):
    uri, world_size = demo_shards.resolve().as_uri(), 4
    nodes = {"a": [0, 1], "b": [2, 3]}
    staged = {name: stage_node_parts(uri, tmp_path / name, node_ranks=ranks, world_size=world_size)
              for name, ranks in nodes.items()}
    folders = {name: folder for name, (folder, _) in staged.items()}
    sessions = {name: session for name, (_, session) in staged.items()}
    for name, folder in folders.items():  # the small files are there, no shard yet
        assert _staged_shards(folder) == set()
        for path in demo_shards.iterdir():
            if path.suffix != ".tar":
                assert (folder / path.name).read_bytes() == path.read_bytes()
        load_dataset_info(folder)  # the trainer reads the description as usual
        sessions[name].prefetch_next = False
    for name, ranks in nodes.items():
        folder = folders[name]
        for rank in ranks:
            paths, indexes = sessions[name].prepare(rank, world_size, 0)
            assert {Path(path).name for path in paths} == _expected_files(demo_shards, [rank], world_size, 0)
            assert len(indexes) == len(paths)
        assert _staged_shards(folder) == _expected_files(demo_shards, ranks, world_size, 0)
        for shard in _staged_shards(folder):
            assert (folder / shard).read_bytes() == (demo_shards / shard).read_bytes()
        assert not list(folder.glob("val-*.tar")) or not any(
            not is_placeholder(path) for path in folder.glob("val-*.tar"))
    # the next epoch's files arrive in the background while the epoch trains
    session = sessions["a"]
    session.prefetch_next = True
    stamps = {path.name: path.stat().st_mtime_ns for path in folders["a"].glob("*.tar") if not is_placeholder(path)}
    session.prepare(0, world_size, 0)  # already there: nothing copied again
    session.wait_for_prefetch()
    assert not session.prefetch_errors
    assert _staged_shards(folders["a"]) == (_expected_files(demo_shards, [0, 1], world_size, 0)
                                           | _expected_files(demo_shards, [0], world_size, 1))
    assert all(folders["a"].joinpath(name).stat().st_mtime_ns == stamp for name, stamp in stamps.items())


def test_the_loader_reads_the_same_batches_from_a_partial_copy(demo_shards, tmp_path):
    """3 ranks (parts cut mid-shard), on two nodes: every batch of every rank in two epochs equals
    the batch from the whole local dataset, sample for sample and bit for bit."""
    uri, world_size = demo_shards.resolve().as_uri(), 3
    recipe = build_recipe("simclr", 16)
    local = load_dataset_info(demo_shards)
    staged = {}
    for name, ranks in {"a": [0], "b": [1, 2]}.items():
        folder, session = stage_node_parts(uri, tmp_path / name, node_ranks=ranks, world_size=world_size)
        for rank in ranks:
            staged[rank] = (load_dataset_info(folder), session)

    def batches(dataset, rank, epoch, staging=None):
        loader = build_train_loader(dataset, recipe, batch_size=8, rank=rank, world_size=world_size, seed=3,
                                    num_threads=1, epoch=epoch, shuffle_buffer=16, staging=staging)
        iterator = iter(loader)
        result = [next(iterator) for _ in range(loader.steps_per_epoch)]
        loader.close()
        return result

    for epoch in (0, 1):
        for rank in range(world_size):
            expected, got = batches(local, rank, epoch), batches(staged[rank][0], rank, epoch, staging=staged[rank][1])
            assert len(got) == len(expected) == 5
            for mine, theirs in zip(got, expected):
                assert mine.keys() == theirs.keys()
                for key in theirs:
                    assert torch.equal(mine[key], theirs[key]), (epoch, rank, key)
    assert list((tmp_path / "a").glob("shapes-*/.parts/train-of-3/*.idx"))  # parts cut inside a shard


def test_a_local_dataset_with_linked_shards_is_read_and_a_staged_placeholder_is_refused(demo_shards, tmp_path):
    """Only links to the placeholder mean "not on this node": a user's shards linked from another
    disk are read like any others, while the eval loader refuses a per-epoch copy's val split."""
    from selfsup.pipeline.loader import build_eval_loader
    from selfsup.pipeline.recipes import EvalRecipe

    linked = tmp_path / "linked"
    shutil.copytree(demo_shards, linked)
    for shard in linked.glob("*.tar"):
        shard.unlink()
        shard.symlink_to((demo_shards / shard.name).resolve())
    assert not any(is_placeholder(shard) for shard in linked.glob("*.tar"))
    loader = build_eval_loader(load_dataset_info(linked), EvalRecipe(size=16), batch_size=64, split="val")
    assert sum(len(batch["label"]) for batch in loader) == load_dataset_info(linked).splits["val"].count
    loader.close()

    folder, _ = stage_node_parts(demo_shards.resolve().as_uri(), tmp_path / "cache", node_ranks=[0], world_size=1)
    assert all(is_placeholder(shard) for shard in folder.glob("val-*.tar"))
    with pytest.raises(DatasetError, match="not on this node"):
        build_eval_loader(load_dataset_info(folder), EvalRecipe(size=16), batch_size=64, split="val")


def test_the_train_loader_stages_only_through_the_session_it_is_given(demo_shards, tmp_path):
    """No module remembers a staging session: a per-epoch copy's train loader without its session
    refuses the placeholders, and a session of another folder is refused by name."""
    uri, recipe = demo_shards.resolve().as_uri(), build_recipe("simclr", 16)
    folder, session = stage_node_parts(uri, tmp_path / "cache", node_ranks=[0], world_size=1)
    _, other_session = stage_node_parts(uri, tmp_path / "other", node_ranks=[0], world_size=1)
    session.prefetch_next = False
    dataset = load_dataset_info(folder)
    with pytest.raises(DatasetError, match="not on this node"):
        build_train_loader(dataset, recipe, batch_size=8, num_threads=1)
    with pytest.raises(ValueError, match=f"staging session of {re.escape(str(other_session.folder))} given for "
                                         f"the dataset at {re.escape(str(folder))}"):
        build_train_loader(dataset, recipe, batch_size=8, num_threads=1, staging=other_session)
    assert _staged_shards(folder) == set()
    loader = build_train_loader(dataset, recipe, batch_size=8, num_threads=1, staging=session)
    assert len(next(iter(loader))["index"]) == 8
    loader.close()
    assert _staged_shards(folder) == {path.name for path in demo_shards.glob("train-*.tar")}


def test_dali_maps_every_file_it_is_given(demo_shards, tmp_path):
    """Why a partial copy hands DALI only its part's files: DALI 2.x maps every tar it is given
    when the pipeline is built, also those outside the part it reads."""
    from nvidia.dali import fn, pipeline_def

    folder, session = stage_node_parts(demo_shards.resolve().as_uri(), tmp_path / "cache", node_ranks=[0],
                                       world_size=2)
    session.prefetch_next = False
    session.prepare(0, 2, 0)
    shards = load_dataset_info(folder).split("train").shards
    assert is_placeholder(shards[-1]) and not is_placeholder(shards[0])

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def part_zero():
        return fn.readers.webdataset(paths=[str(path) for path in shards], ext=["jpg"], shard_id=0, num_shards=2,
                                     index_paths=[str(path.with_suffix(".idx")) for path in shards])

    first_absent = next(path for path in shards if is_placeholder(path))  # in part 1, not read by part 0
    with pytest.raises(RuntimeError, match=f"File mapping failed: .*{first_absent.name}"):
        part_zero().build()


def test_eviction_keeps_the_node_within_its_limit(demo_shards, tmp_path):
    """One rank of 4 on this node, a limit of about two parts: every epoch has its part on disk,
    the staged bytes never pass the limit, and the shards of parts read before are evicted."""
    uri, world_size = demo_shards.resolve().as_uri(), 4
    sizes = {path.name: path.stat().st_size for path in demo_shards.glob("train-*.tar")}
    part_bytes = [sum(sizes[name] for name in _expected_files(demo_shards, [0], world_size, epoch))
                  for epoch in range(world_size)]
    limit = _small_bytes(demo_shards) + 2 * max(part_bytes) + 4096
    folder, session = stage_node_parts(uri, tmp_path / "cache", node_ranks=[0], world_size=world_size,
                                       max_bytes=limit)
    evicted = set()
    for epoch in range(6):
        session.prepare(0, world_size, epoch)
        session.wait_for_prefetch()
        assert not session.prefetch_errors
        staged = _staged_shards(folder)
        assert staged >= _expected_files(demo_shards, [0], world_size, epoch)
        assert _size(tmp_path / "cache") <= limit, epoch
        evicted |= set(sizes) - staged
    assert evicted - _expected_files(demo_shards, [0], world_size, 5)  # earlier parts made room


def test_a_rank_never_evicts_what_another_rank_of_its_node_reads(demo_shards, tmp_path, monkeypatch):
    """Ranks 0 and 1 of 4 on one node, no prefetch, a limit that cannot hold parts 0, 1 and 2:
    rank 1 moving on to part 2 while rank 0 still reads part 0 evicts part 1 (needed only next),
    never part 0; each file is copied once for the node."""
    uri, world_size = demo_shards.resolve().as_uri(), 4
    sizes = {path.name: path.stat().st_size for path in demo_shards.glob("train-*.tar")}
    first_three = _expected_files(demo_shards, [0, 1, 2], world_size, 0)
    limit = _small_bytes(demo_shards) + sum(sizes[name] for name in first_three) - 1
    folder, session = stage_node_parts(uri, tmp_path / "cache", node_ranks=[0, 1], world_size=world_size,
                                       max_bytes=limit)
    session.prefetch_next = False
    session.prepare(0, world_size, 0)
    session.prepare(1, world_size, 0)
    part_zero = _expected_files(demo_shards, [0], world_size, 0)
    stamps = {name: (folder / name).stat().st_mtime_ns for name in part_zero}
    session.prepare(1, world_size, 1)  # part 2, while rank 0 is still in epoch 0
    assert all((folder / name).stat().st_mtime_ns == stamp for name, stamp in stamps.items())
    assert _staged_shards(folder) >= part_zero | _expected_files(demo_shards, [1], world_size, 1)
    assert _size(tmp_path / "cache") <= limit
    monkeypatch.setattr("selfsup.pipeline.node_staging.WAIT_FOR_ROOM_SECONDS", 2.0)
    session.prepare(0, world_size, 1)  # part 1 again: room from part 0, now read by no one
    assert _staged_shards(folder) >= _expected_files(demo_shards, [0, 1], world_size, 1)
    assert _size(tmp_path / "cache") <= limit


def test_a_limit_below_one_epoch_is_refused(demo_shards, tmp_path):
    uri = demo_shards.resolve().as_uri()
    sizes = {path.name: path.stat().st_size for path in demo_shards.glob("train-*.tar")}
    need = _small_bytes(demo_shards) + sum(sizes[name] for name in _expected_files(demo_shards, [0, 1], 4, 0))
    with pytest.raises(DatasetError, match=rf"{re.escape(uri)}: one epoch on this node needs \d+ bytes .* ranks "
                                           rf"\[0, 1\] of 4 .* staging limit of {need // 2} bytes"):
        stage_node_parts(uri, tmp_path / "cache", node_ranks=[0, 1], world_size=4, max_bytes=need // 2)


def test_one_worker_from_a_uri_stages_the_train_split(demo_shards, tmp_path):
    folder, session = stage_node_parts(demo_shards.resolve().as_uri(), tmp_path / "cache", node_ranks=[0],
                                       world_size=1)
    session.prepare(0, 1, 0)
    session.wait_for_prefetch()
    assert _staged_shards(folder) == {path.name for path in demo_shards.glob("train-*.tar")}
    assert stage_node_parts(str(demo_shards), tmp_path / "cache", node_ranks=[0], world_size=1) == (demo_shards, None)


def test_a_stream_over_a_partial_copy_resumes_from_its_dali_checkpoint(demo_shards, tmp_path, capsys):
    """Rank 1 of 3 staged per epoch: restored mid-epoch from DALI's checkpoint, the stream goes on
    with the batches of the straight run, across the epoch boundary (the next part staged then)."""
    folder, session = stage_node_parts(demo_shards.resolve().as_uri(), tmp_path / "cache", node_ranks=[1],
                                       world_size=3)
    dataset, recipe = load_dataset_info(folder), build_recipe("simclr", 16)

    def build(epoch, dali_checkpoint):
        return build_train_loader(dataset, recipe, batch_size=8, rank=1, world_size=3, seed=5, num_threads=1,
                                  epoch=epoch, shuffle_buffer=16, resumable=True, dali_checkpoint=dali_checkpoint,
                                  staging=session)

    straight = DataStream(build, build_ahead=1)
    expected = [next(straight)["index"] for _ in range(7)]  # 5 per epoch
    straight.close()
    first = DataStream(build)
    for _ in range(2):
        next(first)
    state = first.state()
    first.close()
    restored = DataStream(build, epoch=0, batches=2, dali_checkpoint=tensor_to_bytes(state["dali"]))
    for batch in expected[2:]:
        assert torch.equal(next(restored)["index"], batch)
    restored.close()
    assert "could not restore" not in capsys.readouterr().err  # DALI's checkpoint, not a replay


def test_ranks_of_a_node_staging_at_once_copy_each_file_once(demo_shards, tmp_path, monkeypatch):
    """Ranks 0-2 of 3, all on this node, prepare epoch 0 at the same time (threads stand in for
    their processes): every file of the split arrives, each copied once."""
    import threading

    from selfsup.pipeline import node_staging

    copies = []
    original_copy = node_staging.copy_file
    monkeypatch.setattr(node_staging, "copy_file",
                        lambda filesystem, source, target, size: (copies.append(target.name),
                                                                  original_copy(filesystem, source, target, size)))
    folder, session = stage_node_parts(demo_shards.resolve().as_uri(), tmp_path / "cache", node_ranks=[0, 1, 2],
                                       world_size=3)
    session.prefetch_next = False
    errors = []

    def prepare(rank):
        try:
            session.prepare(rank, 3, 0)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=prepare, args=(rank,)) for rank in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    train = {path.name for path in demo_shards.glob("train-*.tar")}
    assert _staged_shards(folder) == train and sorted(copies) == sorted(train)


def test_a_shard_name_that_leaves_the_dataset_is_refused_before_any_copy(demo_shards, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(demo_shards, source)
    description = json.loads((source / "dataset.json").read_text())
    first = description["splits"]["train"]["shards"][0]
    (tmp_path / "escaped").mkdir()  # a real shard there: only the name's check keeps it out
    for name in (first, first.replace(".tar", ".idx")):
        shutil.copy(source / name, tmp_path / "escaped" / name)
    description["splits"]["train"]["shards"][0] = f"../escaped/{first}"
    (source / "dataset.json").write_text(json.dumps(description))
    with pytest.raises(DatasetError, match=r"dataset.json: key 'splits.train.shards\[0\]' must be a shard file "
                                           "name inside the dataset folder"):
        stage_dataset(source.as_uri(), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
