"""What `convert` reads and in what order: the candidate images of a source folder, their labels,
the shuffled plan that fixes each image's split and sample key, and the fingerprint that tells a
resumed conversion whether the source or the options changed."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfsup.pipeline.dataset import FORMAT_VERSION
from selfsup.pipeline.shards import IMAGE_EXTENSIONS

SPLITS = ("val", "train")  # plan order: the first round(val_fraction * N) positions are "val"
KEY_DIGITS = 9


@dataclass(frozen=True)
class PlanItem:
    """One candidate file at its place in the shuffled plan."""

    position: int  # place in the shuffled plan; the sample key is this number zero-padded
    split: str
    relative: str  # path relative to SRC, forward slashes
    label: int  # -1 when unlabeled

    @property
    def key(self) -> str:
        """The sample key: the plan position, zero-padded (no dots, sorts in plan order)."""
        return f"{self.position:0{KEY_DIGITS}d}"


def is_hidden(name: str) -> bool:
    """Names starting with '.' (hidden files and folders, including our state folder)."""
    return name.startswith(".")


def scan_source(source: Path, exclude: Path | None = None) -> tuple[list[str], bool, list[str]]:
    """Sorted candidate image paths (relative, '/'-separated), whether labeled, and the classes.

    Candidates are files with an accepted extension (any case); hidden files and folders (names
    starting with '.') and every other file are ignored. If any candidate lies directly in SRC,
    the folder is flat: unlabeled, every candidate at any depth is used. Otherwise it is labeled:
    the classes are the sorted names of the top-level folders holding at least one candidate,
    and an image nested anywhere below a top-level folder belongs to that folder's class.
    """
    found = []
    for folder, subfolders, files in os.walk(source):
        folder_path = Path(folder)
        subfolders[:] = sorted(name for name in subfolders if not is_hidden(name)
                               and (exclude is None or (folder_path / name).resolve() != exclude))
        for name in files:
            if not is_hidden(name) and os.path.splitext(name)[1].lower().lstrip(".") in IMAGE_EXTENSIONS:
                found.append((folder_path / name).relative_to(source).as_posix())
    found.sort()
    labeled = bool(found) and all("/" in relative for relative in found)
    classes = sorted({relative.split("/", 1)[0] for relative in found}) if labeled else []
    return found, labeled, classes


def source_fingerprint(source: Path, files: list[str], options: dict) -> str:
    """Hash of the source path, every candidate's size and mtime, the options and the format version."""
    digest = hashlib.sha256()
    digest.update(json.dumps([str(source), options, FORMAT_VERSION]).encode())
    root = str(source)
    for relative in files:  # the bytes of json.dumps([relative, size, mtime]), about 3x faster
        stat = os.stat(os.path.join(root, relative))
        digest.update(f"[{json.dumps(relative)}, {stat.st_size}, {stat.st_mtime_ns}]".encode())
    return digest.hexdigest()


def build_plan(files: list[str], classes: list[str], val_fraction: float, seed: int) -> list[PlanItem]:
    """Shuffle the sorted candidates with numpy's Generator(seed); the first round(val_fraction*N) are val."""
    order = np.random.default_rng(seed).permutation(len(files))
    validation = round(val_fraction * len(files)) if val_fraction > 0 else 0
    class_index = {name: index for index, name in enumerate(classes)}
    plan = []
    for position, file_index in enumerate(order.tolist()):
        relative = files[file_index]
        label = class_index[relative.split("/", 1)[0]] if classes else -1
        plan.append(PlanItem(position, "val" if position < validation else "train", relative, label))
    return plan
