"""In what order `convert` reads the candidate images of a source folder (`pipeline/source_scan.py`
finds them): the shuffled plan that fixes each image's split, label and sample key, and the
fingerprint that tells a resumed conversion whether the source or the options changed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfsup.pipeline.dataset import FORMAT_VERSION
from selfsup.pipeline.source_scan import SourceScan

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


def source_fingerprint(source: Path, scan: SourceScan, options: dict) -> str:
    """Hash of the source path, every candidate's size and mtime, the skipped entries, the options
    and the format version (names that are not UTF-8 enter as their escaped form: lossless)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([str(source), options, FORMAT_VERSION]).encode())
    for candidate in scan.candidates:  # the bytes of json.dumps([relative, size, mtime]), about 3x faster
        digest.update(f"[{json.dumps(candidate.relative)}, {candidate.size}, {candidate.mtime_ns}]".encode())
    for entry in scan.skipped:
        digest.update(json.dumps(["skipped", entry.relative, entry.reason]).encode())
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
