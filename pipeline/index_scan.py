"""Reading one WebDataset shard made elsewhere, for `selfsup index`: its samples, their images and labels.

Runs in the indexing worker processes; tarfile, PIL and json only. A sample is what the
`webdataset` library makes of the tar: consecutive members sharing a key (a member's name up to
the first dot of its basename, directories included: `a/b/x.seg.png` has key `a/b/x`). Its image
is its first member whose extension is one of `IMAGE_EXTENSIONS` (exactly, in lower case, as
DALI's reader matches them); other members (`.txt`, `.json`, `.seg.png`, ...) are only read for
a label. Every image is fully decoded with PIL; the samples that cannot be used are returned
with the reason, never raised.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from pathlib import Path

from PIL import Image

from selfsup.pipeline.shards import IMAGE_EXTENSIONS, split_member_name

MAX_LABEL_BYTES = 64  # a .cls member is a class index: a few ASCII digits


def parse_class_member(data: bytes) -> int | None:
    """A `.cls` member's class index ('7', '7\\n', ' 12 '), or None when it holds no such number."""
    text = data[:MAX_LABEL_BYTES].decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() and len(data) <= MAX_LABEL_BYTES else None


def label_from_json(data: bytes, field: str) -> int | str | None:
    """The top-level `field` of a `.json` member: a class index (int >= 0) or a class name (str)."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    value = value.get(field) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    return value if value.strip() else None


def _label(members: dict[str, bytes], label_field: str | None) -> tuple[int | str | None, str]:
    """(the sample's label or None, why there is none) from its `.cls` or the `.json` field."""
    if label_field is not None:
        if "json" not in members:
            return None, f"no .json member to read the label field {label_field!r} from"
        value = label_from_json(members["json"], label_field)
        return value, "" if value is not None else (f".json has no field {label_field!r} holding a class "
                                                     "index (an integer >= 0) or a class name (a string)")
    if "cls" not in members:
        return None, "no .cls member"
    value = parse_class_member(members["cls"])
    return value, "" if value is not None else f".cls is {members['cls'][:20]!r}, expected a class index (digits)"


def _decoded_size(data: bytes) -> tuple[int, int] | str:
    """(width, height) of an image that PIL decodes fully, or why it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.size
    except Exception as error:  # PIL raises many types for corrupt data
        return f"does not decode ({type(error).__name__}: {error})"


def _finish_sample(key: str, members: dict[str, tuple[int, int]], contents: dict[str, bytes],
                   label_field: str | None, record: dict) -> None:
    """Add one grouped sample to `record`: kept (with its image member's place) or excluded (with why)."""
    images = [ext for ext in IMAGE_EXTENSIONS if ext in members]
    if not images:
        found = ", ".join("." + ext for ext in members) or "none"
        record["excluded"].append([key, f"no image member (found {found}; looked for "
                                        f"{', '.join('.' + ext for ext in IMAGE_EXTENSIONS)})"])
        return
    ext = images[0]
    member = f"{key}.{ext}"
    if any(character.isspace() for character in member):
        record["excluded"].append([member, "the member name holds whitespace, which a DALI index cannot list"])
        return
    size = _decoded_size(contents[ext])
    if isinstance(size, str):
        record["excluded"].append([member, size])
        return
    label, why = _label(contents, label_field)
    offset, length = members[ext]
    record["samples"].append([key, ext, offset, length, size[0], size[1], label, why,
                              zlib.crc32(contents[ext])])


def scan_shard(root: str, relative: str, label_field: str | None) -> dict:
    """Read the shard ROOT/RELATIVE: {"shard", "samples", "excluded", "problem"}.

    "samples": [key, image ext, data offset, bytes, width, height, label or None, why no label,
    crc32] per sample whose image decodes, in tar order; "excluded": [member or key, reason] per
    sample left out; "problem": what made the rest of the tar unreadable ("" when nothing)."""
    path = Path(root, relative)
    record = {"shard": relative, "samples": [], "excluded": [], "problem": ""}
    wanted = set(IMAGE_EXTENSIONS) | {"cls", "json"}
    seen: set[str] = set()
    key, members, contents, repeated = None, {}, {}, False
    try:
        file_size = path.stat().st_size
        with tarfile.open(path, mode="r:") as archive:
            for info in archive:
                if not info.isreg():
                    continue
                member_key, ext = split_member_name(info.name)
                if member_key != key:
                    if key is not None and not repeated:
                        _finish_sample(key, members, contents, label_field, record)
                    key, members, contents, repeated = member_key, {}, {}, member_key in seen
                    if repeated:
                        record["excluded"].append([member_key, "the key appears again after other samples "
                                                               "(a sample is a run of consecutive members)"])
                    seen.add(member_key)
                if repeated or ext in members:
                    continue
                if info.offset_data + info.size > file_size:
                    raise tarfile.ReadError(f"member {info.name} ends past the end of the file (truncated)")
                members[ext] = (info.offset_data, info.size)
                if ext in wanted:
                    contents[ext] = archive.extractfile(info).read()
        if key is not None and not repeated:
            _finish_sample(key, members, contents, label_field, record)
    except (tarfile.TarError, OSError, EOFError) as error:
        record["problem"] = f"unreadable after {len(record['samples'])} samples ({type(error).__name__}: {error})"
    return record
