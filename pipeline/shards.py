"""WebDataset tar shards written atomically, with the DALI index beside each one.

A shard `NAME.tar` holds samples as consecutive tar members `KEY.EXT` (one key per sample, no
dots in keys). `ShardWriter` writes `NAME.tar.partial`, then on `finish()` writes the DALI index
`NAME.idx` and renames the tar to its final name, so a final `.tar` is always complete and always
has its `.idx`.

The DALI index (format v1.2, what `wds2idx` from nvidia-dali writes) is text: a first line
`v1.2 N` (N samples), then one line per sample listing, for each member in tar order,
`EXT OFFSET SIZE NAME` separated by spaces; OFFSET is the byte offset of the member's data
(after its 512-byte header)::

    v1.2 1
    jpg 512 10234 000000001.jpg cls 11264 1 000000001.cls json 12288 80 000000001.json
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

from selfsup.files import sync_folder, write_atomically

from selfsup.errors import DatasetError

INDEX_VERSION = "v1.2"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")  # accepted by convert, verify, the loader
TAR_BLOCK = 512
TAR_RECORD = tarfile.RECORDSIZE  # tarfile pads the finished archive to a multiple of this
END_OF_ARCHIVE = 2 * TAR_BLOCK
MEMBER_MODE = 0o444
MEMBER_MTIME = 0  # fixed, so that the same samples give byte-identical shards

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_SIZE_FORMS = ("plain bytes (e.g. 1000000) or a number with a unit: KB, MB, GB, TB (powers of 1000) "
               "or KiB, MiB, GiB, TiB (powers of 1024), case-insensitive, e.g. '256MB'")


def parse_size(text: str | int) -> int:
    """'256MB' -> 256_000_000, '1GiB' -> 1024**3, '4096' or 4096 -> 4096 (a positive byte count)."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"size {text!r}: expected {_SIZE_FORMS}")
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"size {text!r}: must be positive; expected {_SIZE_FORMS}")
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"size {text!r}: expected {_SIZE_FORMS}")
    number, unit = match.groups()
    value = int(float(number) * _UNITS[unit.lower()]) if "." in number else int(number) * _UNITS[unit.lower()]
    if value <= 0:
        raise ValueError(f"size {text!r}: must be positive; expected {_SIZE_FORMS}")
    return value


def member_footprint(size: int) -> int:
    """Bytes a tar member of `size` data bytes takes: its 512-byte header plus padded data."""
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


def finished_tar_size(member_bytes: int) -> int:
    """Size of a finished tar whose members take `member_bytes`: end marker + record padding."""
    return -(-(member_bytes + END_OF_ARCHIVE) // TAR_RECORD) * TAR_RECORD


def split_member_name(name: str) -> tuple[str, str]:
    """'dir/000001.seg.png' -> ('dir/000001', 'seg.png'): the key ends at the basename's first dot."""
    dot = name.find(".", name.rfind("/") + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


def format_index(samples: list[tuple[str, dict[str, tuple[int, int]]]]) -> str:
    """The DALI v1.2 index text for (key, {ext: (data offset, size)}) samples, in tar order."""
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for key, components in samples:
        lines.append(" ".join(f"{ext} {offset} {size} {key}.{ext}"
                              for ext, (offset, size) in components.items()))
    return "\n".join(lines) + "\n"


def index_lines(path: str | Path) -> list[str]:
    """The sample lines of a DALI v1.2 index (the header checked, blank lines dropped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read the DALI index ({error})") from error
    header = lines[0].split() if lines else []
    if len(header) != 2 or header[0] != INDEX_VERSION or not header[1].isdigit():
        raise DatasetError(f"{path}: line 1 is {lines[0] if lines else ''!r}, expected "
                           f"'{INDEX_VERSION} N' (a DALI webdataset index)")
    body = [line for line in lines[1:] if line.strip()]
    if len(body) != int(header[1]):
        raise DatasetError(f"{path}: header announces {header[1]} samples but {len(body)} lines follow")
    return body


def read_index_entries(path: str | Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Parse a DALI v1.2 index into (key, {ext: (data offset, size)}) per sample, in order."""
    path = Path(path)
    body = index_lines(path)
    entries = []
    for number, line in enumerate(body, start=2):
        fields = line.split()
        if not fields or len(fields) % 4:
            raise DatasetError(f"{path}: line {number} {line!r}: expected groups of 'EXT OFFSET SIZE NAME'")
        key, components = None, {}
        for start in range(0, len(fields), 4):
            ext, offset, size, name = fields[start:start + 4]
            if not (offset.isdigit() and size.isdigit()):
                raise DatasetError(f"{path}: line {number}: offset {offset!r} and size {size!r} "
                                   "must be non-negative integers")
            name_key, name_ext = split_member_name(name)
            if name_ext != ext or (key is not None and name_key != key):
                raise DatasetError(f"{path}: line {number}: member {name!r} does not match extension "
                                   f"{ext!r} of sample {key or name_key!r}")
            key = name_key
            components[ext] = (int(offset), int(size))
        entries.append((key, components))
    return entries


def read_index(path: str | Path) -> list[dict[str, tuple[int, int]]]:
    """Parse a DALI v1.2 index: one {ext: (data offset, size)} dict per sample, in order."""
    return [components for _, components in read_index_entries(path)]


class ShardWriter:
    """Write one WebDataset tar shard atomically (see the module docstring).

    Use as a context manager: leaving the block normally finishes the shard; an exception
    aborts it and removes the partial file::

        with ShardWriter(folder / "train-000000.tar") as writer:
            writer.write_sample("000000042", {"jpg": jpeg_bytes, "cls": b"3"})
    """

    def __init__(self, path: str | Path):
        """Start writing `path` (which must end in .tar) as `path.partial`."""
        self.path = Path(path)
        if self.path.suffix != ".tar":
            raise ValueError(f"shard path {self.path}: expected a name ending in .tar")
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self.index_path = self.path.with_suffix(".idx")
        self.samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
        self._keys: set[str] = set()
        self._state = "open"
        self._file = open(self.partial_path, "wb")
        try:
            self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT)
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> ShardWriter:
        """The writer itself."""
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        """Finish on normal exit, abort (remove the partial file) on an exception."""
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.finish()

    @property
    def bytes_written(self) -> int:
        """Bytes of tar members (headers and padded data) written so far."""
        return self._tar.offset

    def projected_size(self, files: dict[str, bytes]) -> int:
        """The finished file size if `files` were added as one more sample."""
        added = sum(member_footprint(len(data)) for data in files.values())
        return finished_tar_size(self.bytes_written + added)

    def write_sample(self, key: str, files: dict[str, bytes]) -> None:
        """Append one sample: a member `KEY.EXT` per (ext, bytes) item, in the dict's order."""
        if self._state != "open":
            raise ValueError(f"{self.path}: shard is already {self._state}, cannot add sample {key!r}")
        if not isinstance(key, str) or not key or "." in key or "/" in key:
            raise ValueError(f"{self.path}: sample key {key!r}: expected a non-empty string without '.' or '/'")
        if key in self._keys:
            raise ValueError(f"{self.path}: sample key {key!r} written twice")
        if not files:
            raise ValueError(f"{self.path}: sample {key!r} has no files")
        components = {}
        for ext, data in files.items():
            if not isinstance(ext, str) or not ext or "/" in ext or ext.strip() != ext or " " in ext:
                raise ValueError(f"{self.path}: sample {key!r}: bad extension {ext!r}")
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise ValueError(f"{self.path}: sample {key!r}.{ext}: expected bytes, got {type(data).__name__}")
            data = bytes(data)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(data), MEMBER_MODE, MEMBER_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
            data_offset = self._tar.offset - (member_footprint(len(data)) - TAR_BLOCK)
            components[ext] = (data_offset, len(data))
        self._keys.add(key)
        self.samples.append((key, components))

    def finish(self) -> Path:
        """Close the tar, write `NAME.idx`, fsync, then rename to `NAME.tar`; returns that path."""
        if self._state != "open":
            raise ValueError(f"{self.path}: shard is already {self._state}")
        if not self.samples:
            self.abort()
            raise ValueError(f"{self.path}: refusing to finish a shard without samples")
        try:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            write_atomically(self.index_path, format_index(self.samples).encode("ascii"), sync_parent=False)
            os.replace(self.partial_path, self.path)
            sync_folder(self.path.parent)
        except BaseException:
            self.abort()
            raise
        self._state = "finished"
        return self.path

    def abort(self) -> None:
        """Stop writing and remove the partial files (a no-op once finished)."""
        if self._state == "finished":
            return
        self._state = "aborted"
        try:
            self._file.close()
        except OSError:
            pass
        self.partial_path.unlink(missing_ok=True)
        self.index_path.with_name(self.index_path.name + ".partial").unlink(missing_ok=True)
