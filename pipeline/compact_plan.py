"""The conversion plan of `convert_plan.build_plan`, held as arrays instead of one object per image.

`build_plan` makes a `PlanItem` per candidate file; with the lists `convert` derived from it (per
split, the items still to do, their tasks) that was about 450 bytes per image: 4.5 GB of driver
memory for 10 million images, and a peak RSS that grew with the folder. `CompactPlan` keeps the
sorted paths as one UTF-8 buffer with their offsets (a path's bytes + 8, instead of a Python
string's 50 + its length) and one int64 permutation; `PlanItem`s and worker tasks are made one
at a time as the conversion reaches them, so the caller can drop its list of paths. It yields exactly the items `build_plan` lists, in
the same order, with the same positions, splits, keys and labels (tests/pipeline/test_convert.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from selfsup.pipeline.convert_plan import SPLITS, PlanItem


@dataclass(frozen=True)
class CompactPlan:
    """Position p of the shuffled plan is `path(order[p])`; positions below `validation` are "val"."""

    paths: bytes  # every sorted candidate path, UTF-8, one after the other
    ends: np.ndarray  # (N,) int64: where each path's bytes end in `paths`
    order: np.ndarray  # (N,) int64
    validation: int
    class_index: dict[str, int]

    @classmethod
    def build(cls, files: list[str], classes: list[str], val_fraction: float, seed: int) -> "CompactPlan":
        """The plan of `build_plan(files, classes, val_fraction, seed)`."""
        encoded = [name.encode("utf-8", "surrogateescape") for name in files]  # names os gives undecodable
        ends = np.cumsum(np.fromiter((len(name) for name in encoded), dtype=np.int64, count=len(encoded)))
        order = np.random.default_rng(seed).permutation(len(files))
        validation = round(val_fraction * len(files)) if val_fraction > 0 else 0
        return cls(b"".join(encoded), ends, order, validation, {name: index for index, name in enumerate(classes)})

    def __len__(self) -> int:
        return len(self.ends)

    def path(self, index: int) -> str:
        """The `index`-th sorted candidate path."""
        start = int(self.ends[index - 1]) if index else 0
        return self.paths[start:int(self.ends[index])].decode("utf-8", "surrogateescape")

    def span(self, split: str) -> range:
        """The plan positions of `split`, in plan order."""
        return range(0, self.validation) if split == "val" else range(self.validation, len(self))

    def count(self, split: str) -> int:
        return len(self.span(split))

    def item(self, position: int) -> PlanItem:
        relative = self.path(int(self.order[position]))
        label = self.class_index[relative.split("/", 1)[0]] if self.class_index else -1
        return PlanItem(position, "val" if position < self.validation else "train", relative, label)

    def remaining(self, starts: dict[str, int]) -> Iterator[tuple[str, int, PlanItem]]:
        """(split, index within the split, item) for every item from `starts[split]` on, split by
        split in `SPLITS` order: what `convert` still has to write."""
        for split in SPLITS:
            span = self.span(split)
            for index in range(starts[split], len(span)):
                yield split, index, self.item(span[index])

    def tasks(self, source: str, max_side: int | None, starts: dict[str, int]) -> "PlanTasks":
        """The `prepare_image` tasks of `remaining(starts)`, as a sequence made on demand."""
        positions = [self.span(split)[starts[split]:] for split in SPLITS]
        return PlanTasks(self, source, max_side, positions)


@dataclass(frozen=True)
class PlanTasks:
    """(source, relative path, max_side) per remaining item, a read-only sequence (`len`, indexing,
    slicing, iteration) whose slices are lists made when asked for, so the workers' chunks
    (`tasks[start:stop]`) cost memory only while they are in flight."""

    plan: CompactPlan
    source: str
    max_side: int | None
    spans: list[range]

    def __len__(self) -> int:
        return sum(len(span) for span in self.spans)

    def _position(self, index: int) -> int:
        for span in self.spans:
            if index < len(span):
                return span[index]
            index -= len(span)
        raise IndexError("task index out of range")

    def __iter__(self) -> Iterator[tuple[str, str, int | None]]:
        for span in self.spans:
            for position in span:
                yield self.source, self.plan.path(int(self.plan.order[position])), self.max_side

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[number] for number in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("task index out of range")
        return (self.source, self.plan.path(int(self.plan.order[self._position(index)])), self.max_side)
