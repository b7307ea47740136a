"""convert on hostile input: every entry that cannot be read is skipped and listed (or, for a
class folder, stops the run with one line), nothing blocks on a special file, and a write that
fails (a full disk, a read-only one, a path of the wrong kind) is one line, leaves what was
written valid, and the same command finishes the job. Everything on real folders and files.
(Concurrent use and signals: test_convert_processes.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from selfsup.errors import DatasetError
from selfsup.pipeline.convert import convert
from selfsup.pipeline.dataset import read_manifest
from selfsup.pipeline.images import prepare_image
from selfsup.pipeline.shards import read_index
from selfsup.pipeline.verify import verify

sys.path.insert(0, str(Path(__file__).parent))
from convert_runs import errors_by_path, one_error_line, run_convert, write_many_images  # noqa: E402
from dataset_checks import check_complete, shard_samples  # noqa: E402
from image_files import noise, write_class_folders  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """See `write_many_images`: (source, relative paths)."""
    source = tmp_path_factory.mktemp("many") / "src"
    return source, write_many_images(source)


# --- odd entries in the source --------------------------------------------------------------------

def test_odd_entries_are_skipped_and_listed_and_the_rest_converted(tmp_path):
    source = tmp_path / "src"
    good = write_class_folders(source, classes=3, per_class=3)
    os.mkfifo(source / "c0" / "pipe.jpg")  # a read of it would block forever
    device = True
    try:
        os.mknod(source / "c0" / "null.png", 0o600 | 0o020000, os.makedev(1, 3))  # char device (/dev/null)
    except PermissionError:
        device = False
    (source / "c1" / "broken.jpg").symlink_to(tmp_path / "no-such-image.jpg")
    (source / "c1" / "self.jpg").symlink_to("self.jpg")
    (source / "c1" / "up").symlink_to("..")  # a folder loop
    (source / "c1" / "linked.jpg").symlink_to(source / "c0" / "img0000.jpg")  # followed
    (source / "gone").symlink_to(tmp_path / "no-such-folder")  # a class folder, perhaps: listed
    latin1 = os.fsdecode(b"caf\xe9.jpg")
    noise(30, 20, 7).save(source / "c2" / latin1, "JPEG")
    odd_class = os.fsdecode(b"c\xff3")
    noise(30, 20, 8).save((source / odd_class).mkdir() or source / odd_class / "one.jpg", "JPEG")
    elsewhere = tmp_path / "elsewhere"
    write_class_folders(elsewhere, classes=1, per_class=2)
    (source / "c4").symlink_to(elsewhere / "c0")  # a linked class folder: followed

    result = run_convert(source, tmp_path / "out", "--workers", "2", timeout=120)
    assert result.returncode == 0, result.stderr
    output = tmp_path / "out"
    errors = errors_by_path(output)
    expected = {"c0/pipe.jpg": "not a regular file: a FIFO", "c1/broken.jpg": "broken symlink",
                "c1/self.jpg": "symlink loop", "c1/up": "symlink loop", "gone": "broken symlink"}
    if device:
        expected["c0/null.png"] = "not a regular file: a character device"
    assert set(errors) == set(expected)
    for path, reason in expected.items():
        assert errors[path]["reason"].startswith(reason), errors[path]
    assert f"skipped: {len(expected)} unreadable entries" in result.stdout

    description = json.loads((output / "dataset.json").read_text())
    classes = ["c0", "c1", "c2", "c4", "c\\xff3"]
    assert description["classes"] == classes and description["skipped"] == len(expected)
    rows = read_manifest(output / "manifest.parquet")
    sources = good + ["c1/linked.jpg", "c2/caf\\xe9.jpg", "c\\xff3/one.jpg", "c4/img0000.jpg", "c4/img0001.jpg"]
    assert sorted(row["source"] for row in rows) == sorted(sources)
    for row in rows:
        assert row["label"] == classes.index(row["source"].split("/")[0]), row
    exact = {row["source"]: row["source_hex"] for row in rows}
    assert bytes.fromhex(exact["c2/caf\\xe9.jpg"]) == b"c2/caf\xe9.jpg"
    assert bytes.fromhex(exact["c\\xff3/one.jpg"]) == b"c\xff3/one.jpg"
    assert exact["c0/img0000.jpg"] is None
    for sample in shard_samples(output):
        meta = json.loads(sample["json"])
        if "source_hex" in meta:  # the name's exact bytes find the very file
            assert sample["jpg"] == (source / os.fsdecode(bytes.fromhex(meta["source_hex"]))).read_bytes()
    assert verify(output).ok


def test_a_fifo_or_device_where_a_file_was_is_not_read(tmp_path):
    """The scan lists only regular files, but one may become a FIFO before a worker reads it:
    prepare_image itself never opens one for a blocking read (checked in a process of its own,
    so that a block fails the test instead of hanging it)."""
    os.mkfifo(tmp_path / "late.jpg")
    code = ("import sys; from selfsup.pipeline.images import prepare_image; "
            "print(prepare_image(sys.argv[1], 'late.jpg', None)['reason']); "
            "print(prepare_image('/dev', 'null', None)['reason'])")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.splitlines() == ["not a regular file: a FIFO (named pipe)",
                                          "not a regular file: a character device"], result.stderr
    assert prepare_image(str(tmp_path), "missing.jpg", None)["reason"].startswith("cannot read file")


# --- permissions, without root's override of them ---------------------------------------------------

def unprivileged_prefix() -> tuple[str, ...]:
    """A command prefix that runs its command without the capabilities that bypass file permissions."""
    if shutil.which("setpriv"):
        return ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
    if shutil.which("capsh"):
        return ("capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", 'exec "$0" "$@"')
    pytest.skip("neither setpriv nor capsh is installed: cannot drop the permission-override capabilities")


@pytest.fixture
def open_folder():
    """A folder every user may enter (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="selfsup-hostile-"))
    folder.chmod(0o755)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(folder)


def test_unreadable_folders_and_files_are_listed_or_stop_the_run(open_folder):
    prefix = unprivileged_prefix()
    source = open_folder / "src"
    write_class_folders(source, classes=3, per_class=3)
    write_class_folders(source / "c1" / "private", classes=1, per_class=2)
    (source / "c1" / "private").chmod(0)
    noise(20, 20, 5).save(source / "c1" / "secret.jpg")
    (source / "c1" / "secret.jpg").chmod(0)
    probe = subprocess.run([*prefix, "ls", str(source / "c1" / "private")], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("the unprivileged process can still list a folder of mode 000")
    outputs = open_folder / "outputs"
    outputs.mkdir(mode=0o777)
    outputs.chmod(0o777)

    result = run_convert(source, outputs / "a", "--workers", "1", prefix=prefix)
    assert result.returncode == 0, result.stderr
    errors = errors_by_path(outputs / "a")
    assert errors["c1/private"]["reason"] == "cannot list folder: Permission denied"
    assert errors["c1/secret.jpg"]["reason"] == "cannot read file: Permission denied"
    assert len(errors) == 2 and "skipped: 2 unreadable entries" in result.stdout
    rows = read_manifest(outputs / "a" / "manifest.parquet")
    assert json.loads((outputs / "a" / "dataset.json").read_text())["classes"] == ["c0", "c1", "c2"]
    assert {row["label"] for row in rows if row["source"].startswith("c2/")} == {2}  # no label shifted

    (source / "c1").chmod(0)  # a class folder that cannot be listed: its labels would be wrong
    line = one_error_line(run_convert(source, outputs / "b", "--workers", "1", prefix=prefix))
    assert line == (f"selfsup: error: {source / 'c1'}: this class folder cannot be listed (Permission denied); "
                    "without it the label of every later class would shift: make it readable (or move it "
                    f"out of {source}) and convert again")
    assert not (outputs / "b").exists()
    (source / "c1").chmod(0o755)

    (source / "c3" / "only").mkdir(parents=True)  # a class whose only content cannot be listed
    (source / "c3" / "only").chmod(0)
    line = one_error_line(run_convert(source, outputs / "c", "--workers", "1", prefix=prefix))
    assert f"{source / 'c3'}: c3/only in it cannot be listed, and no image was found beside it" in line


# --- write failures: a full disk, a read-only one, paths of the wrong kind ------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs mounted at tmp_path/disk (we are root); unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root in a mount namespace "
                    "that allows it")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def remount(disk: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(disk)], check=True)


def check_shards_whole(output: Path) -> None:
    """Every final shard in OUT has its index and every member its index lists; nothing partial."""
    assert not list(output.rglob("*.partial"))
    for shard in output.glob("*.tar"):
        with tarfile.open(shard) as archive:
            members = [member.name for member in archive]
        assert len(read_index(shard.with_suffix(".idx"))) * 3 == len(members) > 0


def test_a_full_disk_is_one_line_and_the_rerun_finishes(many_images, small_disk):
    source, files = many_images
    output = small_disk / "out"
    line = one_error_line(run_convert(source, output, "--workers", "1", "--shard-size", "150KB"))
    assert line.startswith(f"selfsup: error: {output}") and "No space left on device" in line, line
    assert "run the same command again to finish" in line
    assert list(output.glob("train-*.tar")), "nothing was written before the disk filled"
    check_shards_whole(output)
    remount(small_disk, "size=64m")
    summary = convert(source, output, shard_size="150KB", workers=1, progress=False)
    assert summary.resumed
    check_complete(files, output)


def test_a_read_only_output_is_one_line_and_a_finished_one_still_reads(many_images, small_disk):
    source, files = many_images
    remount(small_disk, "size=64m")
    output = small_disk / "out"

    def interrupted(tasks):
        for number, task in enumerate(tasks):
            if number == 150:
                raise KeyboardInterrupt
            yield prepare_image(*task)

    with pytest.raises(KeyboardInterrupt):
        convert(source, output, shard_size="150KB", workers=1, progress=False, map_in_order=interrupted)
    before = {path.name: path.read_bytes() for path in output.glob("*.tar")}
    remount(small_disk, "ro")
    line = one_error_line(run_convert(source, output, "--workers", "1", "--shard-size", "150KB"))
    assert line.startswith(f"selfsup: error: {output}") and "Read-only file system" in line, line
    remount(small_disk, "rw")
    assert {path.name: path.read_bytes() for path in output.glob("*.tar")} == before
    assert convert(source, output, shard_size="150KB", workers=1, progress=False).resumed
    check_complete(files, output)
    remount(small_disk, "ro")
    again = run_convert(source, output, "--workers", "1", "--shard-size", "150KB")
    assert again.returncode == 0 and "already converted" in again.stdout, again.stderr
    assert verify(output).ok


def test_output_paths_of_the_wrong_kind_are_one_line(tmp_path):
    source = tmp_path / "src"
    write_class_folders(source, classes=2, per_class=2)
    (tmp_path / "a-file").write_text("x")
    line = one_error_line(run_convert(source, tmp_path / "a-file"))
    assert line == f"selfsup: error: {tmp_path / 'a-file'}: exists and is not a folder; choose a folder for the shards"
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'a-file' / 'out'}: cannot write the conversion "
                                           r"\(Not a directory\)"):
        convert(source, tmp_path / "a-file" / "out", workers=1, progress=False)
    (tmp_path / "out" / "manifest.parquet").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"out: manifest.parquet is not a regular file \(convert writes a file"):
        convert(source, tmp_path / "out", workers=1, progress=False)
    (tmp_path / "out" / "manifest.parquet").rmdir()
    (tmp_path / "out" / ".selfsup-convert").write_text("x")
    with pytest.raises(DatasetError, match=r"out: \.selfsup-convert is not a folder"):
        convert(source, tmp_path / "out", workers=1, progress=False)
    (tmp_path / "out" / ".selfsup-convert").unlink()
    convert(source, tmp_path / "out", workers=1, progress=False)
    assert verify(tmp_path / "out").ok
