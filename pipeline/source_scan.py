"""What `convert` finds in a source folder: the candidate images, every entry it had to skip and
why, and the layout (labeled by class folders, or flat).

Nothing that cannot be read disappears silently: a folder that cannot be listed, a broken
symlink, a symlink loop and a special file (a FIFO, a device, a socket) named like an image are
each skipped and reported (`SourceScan.skipped`, which ends up in `OUT/errors.jsonl`). Only
regular files are candidates, so no read can block on a pipe. Symlinks are followed, to files and
to folders; a link to a folder that contains it (a loop) is reported instead of walked.

File names are Python strings as `os` gives them: bytes that are not UTF-8 become lone surrogates
(`surrogateescape`), so the original name is always recoverable with `os.fsencode`. Where a name
is written out, `name_fields` gives a readable form plus, for such names only, the exact bytes
in hex.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from selfsup.errors import DatasetError
from selfsup.pipeline.shards import IMAGE_EXTENSIONS

LISTING_FAILED = "cannot list folder: "


@dataclass(frozen=True)
class Candidate:
    """A regular file with an image extension: its path relative to SRC ('/'-separated), size, mtime."""

    relative: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    """An entry of SRC that was not read: its relative path and why."""

    relative: str
    reason: str
    unlisted_folder: bool = False  # a folder that could not be listed (what it holds is unknown)

    def record(self) -> dict[str, str]:
        """The entry as written to errors.jsonl: {"path", ["path_hex",] "reason"}."""
        return {**name_fields(self.relative, "path"), "reason": self.reason}


@dataclass
class SourceScan:
    """The result of `scan_source`."""

    candidates: list[Candidate] = field(default_factory=list)  # sorted by path
    skipped: list[Skipped] = field(default_factory=list)  # sorted by path
    labeled: bool = False
    classes: list[str] = field(default_factory=list)  # the class folders' names (as `os` gives them)

    @property
    def files(self) -> list[str]:
        """The candidates' relative paths, sorted."""
        return [candidate.relative for candidate in self.candidates]


def is_hidden(name: str) -> bool:
    """Names starting with '.' (hidden files and folders, including our state folder)."""
    return name.startswith(".")


def has_image_extension(name: str) -> bool:
    """Whether `name` ends in one of IMAGE_EXTENSIONS, in any case."""
    return os.path.splitext(name)[1].lower().lstrip(".") in IMAGE_EXTENSIONS


def describe_file_type(mode: int) -> str:
    """'a FIFO (named pipe)', 'a character device', ... for a stat mode that is not a regular file."""
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return f"a special file (mode {stat.filemode(mode)})"


def name_fields(relative: str, name: str) -> dict[str, str]:
    """{name: readable form} of a path, plus {name + "_hex": its bytes in hex} when it is not UTF-8.

    The readable form shows each byte that is not UTF-8 as `\\xNN`: 'caf\\xe9.jpg' for the
    Latin-1 name b'caf\\xe9.jpg'; `bytes.fromhex(fields[name + "_hex"])` is the exact name.
    """
    raw = os.fsencode(relative)
    try:
        return {name: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {name: raw.decode("utf-8", "backslashreplace"), f"{name}_hex": raw.hex()}


def display_name(relative: str) -> str:
    """The readable form of a path (see `name_fields`)."""
    return name_fields(relative, "name")["name"]


def _stat_failure(path: str, error: OSError) -> str:
    """Why an entry whose type cannot be read was skipped."""
    if os.path.islink(path):
        if isinstance(error, FileNotFoundError):
            return f"broken symlink (its target {display_name(os.readlink(path))} does not exist)"
        if error.errno == errno.ELOOP:
            return "symlink loop (the link resolves to itself)"
        return f"cannot follow symlink: {error.strerror or error}"
    return f"cannot read: {error.strerror or error}"


def _plainly_other(entry: os.DirEntry) -> bool:
    """A regular file (not a link) without an image extension: ignored without a stat call."""
    try:
        return entry.is_file(follow_symlinks=False) and not has_image_extension(entry.name)
    except OSError:
        return False


def _walk(source: Path, exclude: Path | None, scan: SourceScan) -> None:
    """Fill `scan.candidates` and `scan.skipped` (unsorted), walking SRC without recursion."""
    try:
        excluded = os.stat(exclude) if exclude is not None else None
    except OSError:
        excluded = None
    root = os.stat(source)
    stack = [(str(source), "", frozenset({(root.st_dev, root.st_ino)}))]
    while stack:
        folder, relative, ancestors = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = [entry for entry in listing if not is_hidden(entry.name) and not _plainly_other(entry)]
        except OSError as error:
            if not relative:
                raise DatasetError(f"{source}: cannot list this folder ({error.strerror or error})") from error
            scan.skipped.append(Skipped(relative, LISTING_FAILED + (error.strerror or str(error)), True))
            continue
        for entry in entries:
            name, path = entry.name, entry.path
            child = f"{relative}/{name}" if relative else name
            try:
                info = os.stat(path)  # follows symlinks
            except OSError as error:
                scan.skipped.append(Skipped(child, _stat_failure(path, error)))
                continue
            if stat.S_ISDIR(info.st_mode):
                identity = (info.st_dev, info.st_ino)
                if excluded is not None and identity == (excluded.st_dev, excluded.st_ino):
                    continue  # the output folder, inside SRC
                if identity in ancestors:
                    scan.skipped.append(Skipped(child, "symlink loop (a link to a folder that contains it)"))
                    continue
                stack.append((path, child, ancestors | {identity}))
            elif has_image_extension(name):
                if stat.S_ISREG(info.st_mode):
                    scan.candidates.append(Candidate(child, info.st_size, info.st_mtime_ns))
                else:
                    scan.skipped.append(Skipped(child, f"not a regular file: {describe_file_type(info.st_mode)}"))


def scan_source(source: Path, exclude: Path | None = None) -> SourceScan:
    """The candidate images of SRC, the entries skipped, and the layout; `exclude` (OUT) is not walked.

    Candidates are regular files with an accepted extension (any case); hidden files and folders
    (names starting with '.') and other files are ignored. If any candidate lies directly in SRC,
    the folder is flat: unlabeled, every candidate at any depth is used. Otherwise it is labeled:
    the classes are the sorted names of the top-level folders holding at least one image (a
    candidate, or an image-named entry that was skipped), and an image nested anywhere below a
    top-level folder belongs to that folder's class.

    Raises a DatasetError when a labeled layout has a top-level folder that holds no image but
    could not be read completely: whether it is a class cannot be known, and leaving it out would
    shift the label of every class after it.
    """
    scan = SourceScan()
    _walk(source, exclude, scan)
    scan.candidates.sort(key=lambda candidate: candidate.relative)
    scan.skipped.sort(key=lambda entry: entry.relative)
    files = scan.files
    scan.labeled = bool(files) and all("/" in relative for relative in files)
    if not scan.labeled:
        return scan
    holding = {relative.split("/", 1)[0] for relative in files}
    holding |= {entry.relative.split("/", 1)[0] for entry in scan.skipped
                if "/" in entry.relative and has_image_extension(entry.relative) and not entry.unlisted_folder}
    for entry in scan.skipped:
        top = entry.relative.split("/", 1)[0]
        if entry.unlisted_folder and top not in holding:
            where = ("this class folder cannot be listed" if entry.relative == top else
                     f"{display_name(entry.relative)} in it cannot be listed, and no image was found beside it")
            cause = entry.reason.removeprefix(LISTING_FAILED)
            raise DatasetError(f"{source / display_name(top)}: {where} ({cause}); without it the "
                               "label of every later class would shift: make it readable (or move it out "
                               f"of {source}) and convert again")
    scan.classes = sorted(holding)
    return scan
