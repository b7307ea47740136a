"""The trainer's stream of batches: one DALI loader per epoch, and the exact position in it.

Each epoch's batches are a pure function of (seed, epoch, rank): the loader for epoch `e` is
`build_train_loader(..., epoch=e)`, whose graph seed and reader part depend on nothing else.
At an epoch boundary the stream switches to the next epoch's loader, which a background thread
built (and DALI started filling) while the last batches of the current epoch were handed out,
so the step does not wait for the rebuild. (For a dataset staged per epoch from a URI, building
the loader is also where the epoch's shards are copied to the node, `pipeline.node_staging`: the
background build leaves that copy out of the step time too, as far as it was not prefetched.)

The position is (epoch, batches handed out in that epoch). `DataStream.state()` returns it with
DALI's own checkpoint of the current loader (reader position and every random generator of the
graph). A stream created with that state continues exactly there: DALI restores its checkpoint
in place; without one (a graph DALI cannot checkpoint, a checkpoint taken by another number of
ranks) the epoch's loader is rebuilt and the consumed batches are pulled and discarded, which
yields the same batches, only slower.

A damaged sample (an image that does not decode, a `.cls` that is no class index) stops the
stream with the loader's `DamagedSamplesError`, one line naming the shard and the key. With
`skip_damaged` (`data.skip_corrupt`) the stream instead adds the samples to `excluded`, rebuilds
the current epoch's loader without them (`build(epoch, None, excluded=...)`) and goes on: the
epoch keeps its number of batches (every rank stays on the same steps), the new loader starts
the epoch's pass afresh, and `excluded` is part of the saved position, so a resumed run reads
around the same samples.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator

import torch

from selfsup.errors import DamagedSamplesError

# build(epoch, dali_checkpoint) -> a loader with `steps_per_epoch`, iteration, `checkpoint()`, `close()`
LoaderBuilder = Callable[[int, "bytes | None"], object]


def bytes_to_tensor(data: bytes) -> torch.Tensor:
    """Bytes as a uint8 tensor, so that they pass `torch.load(weights_only=True)`."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def tensor_to_bytes(tensor: torch.Tensor) -> bytes:
    return bytes(tensor.cpu().numpy().tobytes())


class DataStream:
    """Batches for one rank, epoch after epoch, with a position that can be saved and restored.

    `group` makes each epoch a whole number of groups of batches (gradient accumulation hands
    `group` micro-batches to one optimizer step): the last `batches % group` are not used.
    """

    def __init__(self, build: LoaderBuilder, *, epoch: int = 0, batches: int = 0,
                 dali_checkpoint: bytes | None = None, group: int = 1, build_ahead: int = 2,
                 skip_damaged: bool = False, excluded=(), on_skip: Callable[[list], None] | None = None):
        self._build_loader = build
        self.skip_damaged, self.on_skip = skip_damaged, on_skip
        self.excluded: set[tuple[str, int]] = {(str(name), int(offset)) for name, offset in excluded}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="selfsup-next-epoch")
        self._upcoming: Future | None = None
        self.epoch = epoch
        self.batches = batches
        self.build_ahead = build_ahead
        self.checkpointable = True
        self._loader = None
        self._open(dali_checkpoint)
        self.batches_per_epoch = self._loader.steps_per_epoch - self._loader.steps_per_epoch % group
        if self.batches_per_epoch == 0:
            raise ValueError(f"an epoch has {self._loader.steps_per_epoch} batches, fewer than one group "
                             f"of {group} (trainer.accumulate_steps); lower it or data.batch_size")
        if self.batches >= self.batches_per_epoch:  # saved exactly at the end of an epoch
            self._switch(self._build(self.epoch + 1, None))

    def _build(self, epoch: int, dali_checkpoint: bytes | None):
        if not self.excluded:
            return self._build_loader(epoch, dali_checkpoint)
        return self._build_loader(epoch, dali_checkpoint, excluded=frozenset(self.excluded))

    def _open(self, dali_checkpoint: bytes | None) -> None:
        """The loader of `self.epoch`, positioned after `self.batches` batches."""
        if dali_checkpoint is not None and self.batches > 0:
            try:
                self._set_loader(self._build(self.epoch, dali_checkpoint))
                return
            except Exception as error:  # DALI raises RuntimeError/ValueError for a checkpoint it cannot use
                print(f"selfsup: DALI could not restore the loader checkpoint ({type(error).__name__}: "
                      f"{error}); replaying {self.batches} batches of epoch {self.epoch + 1} instead",
                      file=sys.stderr, flush=True)
        self._set_loader(self._build(self.epoch, None))
        for _ in range(self.batches):
            next(self._iterator)

    def _set_loader(self, loader) -> None:
        if self._loader is not None:
            self._loader.close()
        self._loader = loader
        self._iterator: Iterator[dict] = iter(loader)

    def _switch(self, loader) -> None:
        self._set_loader(loader)
        self.epoch += 1
        self.batches = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> "DataStream":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.batches >= self.batches_per_epoch:
            upcoming, self._upcoming = self._upcoming, None
            self._switch(upcoming.result() if upcoming is not None else self._build(self.epoch + 1, None))
        if self._upcoming is None and self.batches >= self.batches_per_epoch - self.build_ahead:
            self._upcoming = self._pool.submit(self._build, self.epoch + 1, None)
        batch = self._next_batch()
        self.batches += 1
        return batch

    def _next_batch(self) -> dict[str, torch.Tensor]:
        while True:
            try:
                return next(self._iterator)
            except DamagedSamplesError as error:
                new = [sample for sample in error.samples if sample.name not in self.excluded]
                if not self.skip_damaged or not new:
                    raise
                self.excluded.update(sample.name for sample in new)
                if self.on_skip is not None:
                    self.on_skip(new)
                if self._upcoming is not None:  # built before these were known
                    self._upcoming.result().close()
                    self._upcoming = None
                self._set_loader(self._build(self.epoch, None))

    def state(self) -> dict:
        """{'epoch', 'batches', 'dali'}: where the next batch comes from; 'dali' is DALI's checkpoint
        (a uint8 tensor) or None at an epoch boundary or when the graph cannot be checkpointed."""
        if self.batches >= self.batches_per_epoch:
            return {"epoch": self.epoch + 1, "batches": 0, "dali": None, **self._excluded_state()}
        dali = None
        if self.checkpointable and self.batches > 0:
            try:
                dali = bytes_to_tensor(self._loader.checkpoint())
            except Exception as error:  # a graph with an operator DALI cannot checkpoint
                self.checkpointable = False
                print(f"selfsup: the loader cannot be checkpointed by DALI ({type(error).__name__}: {error}); "
                      "a resumed run will replay the epoch's consumed batches", file=sys.stderr, flush=True)
        return {"epoch": self.epoch, "batches": self.batches, "dali": dali, **self._excluded_state()}

    def _excluded_state(self) -> dict:
        """The samples left out, as [shard file name, offset] pairs (plain lists for the checkpoint)."""
        return {"excluded": [[name, offset] for name, offset in sorted(self.excluded)]} if self.excluded else {}

    def close(self) -> None:
        if self._upcoming is not None:
            try:
                self._upcoming.result().close()
            except Exception:
                pass
            self._upcoming = None
        self._pool.shutdown(wait=True)
        if self._loader is not None:
            self._loader.close()
            self._loader = None
