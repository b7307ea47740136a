"""The loader: WebDataset shards -> one DALI graph -> `dict[str, torch.Tensor]` per step.

`build_train_loader` streams a split forever (the trainer counts steps and epochs), reading the
rank's own part of the samples with DALI's webdataset reader and the shards' `.idx` files. For a
dataset that a trainer stages per epoch from a URI (`pipeline.node_staging`; the session is
passed as `staging=`), the train loader first has its part's shards copied to this node, and hands DALI only those files (with indexes
trimmed to the part, `pipeline.shard_parts`), which yields the same samples in the same order.
`build_eval_loader` reads a split exactly once, in order, keeping the last partial batch.

On a GPU (`device="cuda:N"`) decoding is `mixed` (nvJPEG / the hardware decoder) and every
augmentation runs on that GPU; the tensors arrive on it. On a CPU-only machine the same graph
runs in DALI's CPU mode (`device_id=None`) and the tensors arrive on the CPU.

Batch keys: `view_0`, `view_1`, ... (float32, B x 3 x S x S, normalized), the recipe's pretext
keys (listed in `pipeline.recipes`), for labeled datasets `label` (int64, B) and, from the train
loader, `index` (int64, B): each sample's position in its split (the rows of NPID's and
DeepCluster's memory banks), found from the sample's `source_info` in the graph
(`pipeline.positions`). A dataset adopted with `selfsup index` keeps its labels in the manifest:
its `label` is looked up by position too, and DALI reads the image members alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from selfsup.pipeline.augment import eval_view, label_digits
from selfsup.pipeline.damaged import damaged_error, find_damaged, indexes_without, part_range, sample_count
from selfsup.pipeline.dataset import DatasetInfo
from selfsup.errors import DatasetError
from selfsup.pipeline.graph import finish_batch, recipe_outputs
from selfsup.pipeline.node_staging import NodeStaging, placeholders
from selfsup.pipeline.positions import SplitPositions, split_positions
from selfsup.pipeline.recipes import EvalRecipe, Recipe, validate_recipe
from selfsup.pipeline.shards import IMAGE_EXTENSIONS as IMAGE_EXTENSION_LIST

IMAGE_EXTENSIONS = ";".join(IMAGE_EXTENSION_LIST)  # DALI's webdataset `ext` form
READER_NAME = "reader"
SOURCE_INFO = "source_info"  # graph output turned into `index` (and manifest labels) by DaliLoader


def parse_label_digits(digits: torch.Tensor) -> torch.Tensor:
    """(B, W) uint8 ASCII digits, zero-padded on the right -> (B,) int64 class indices."""
    digits = digits.to(torch.int64)
    present = digits > 0
    values = torch.zeros(digits.shape[0], dtype=torch.int64, device=digits.device)
    for column in range(digits.shape[1]):
        step = values * 10 + (digits[:, column] - ord("0"))
        values = torch.where(present[:, column], step, values)
    return values


def malformed_label_rows(digits: torch.Tensor) -> torch.Tensor:
    """(B, W) uint8 ASCII digits, zero-padded on the right -> (B,) bool: rows that are no number
    (a byte that is not a digit, nothing at all, or a gap before the padding)."""
    present = digits > 0
    is_digit = (digits >= ord("0")) & (digits <= ord("9"))
    return (present & ~is_digit).any(1) | ~present[:, 0] | (present[:, 1:] & ~present[:, :-1]).any(1)


def read_shards(paths: list[str], index_paths: list[str], labeled: bool, **reader_options) -> list:
    """DALI's webdataset reader over the shards, named READER_NAME: [encoded image, class bytes]
    (class bytes only when `labeled`). With one `ext` the reader returns a bare node, which `[0]`
    would index byte-wise (the first byte of every file), so the outputs are always a list.

    The shards are read with plain file I/O (`dont_use_mmap`): mapped, every page of every tar
    read stays in the process's resident set, so one epoch over 100k small images (490 MB of
    shards) took the loader from 0.49 to 1.10 GB, against 0.70 read (benchmarks/RESULTS.md,
    "Scale"); over ImageNet it would map all 140 GB."""
    outputs = fn.readers.webdataset(
        paths=paths,
        index_paths=index_paths,
        ext=[IMAGE_EXTENSIONS, "cls"] if labeled else [IMAGE_EXTENSIONS],
        missing_component_behavior="error",
        name=READER_NAME,
        dont_use_mmap=True,
        **reader_options,
    )
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def dali_device(device: str | torch.device) -> tuple[str, int | None]:
    """'cpu' -> ('cpu', None); 'cuda:N' -> ('mixed', N): the decoder device and DALI's device_id."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"loader device {str(device)!r}: no CUDA device is visible to torch here")
        return "mixed", device.index if device.index is not None else torch.cuda.current_device()
    if device.type == "cpu":
        return "cpu", None
    raise ValueError(f"loader device must be 'cpu' or 'cuda[:N]', got {str(device)!r}")


def default_threads(local_workers: int = 1) -> int:
    """DALI worker threads: this process's share of the machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, local_workers))


@dataclass
class DaliLoader:
    """Iterates batches as dicts of torch tensors; `close()` releases the DALI pipeline."""

    iterator: DALIGenericIterator
    output_names: tuple[str, ...]
    batch_size: int
    steps_per_epoch: int
    samples: int
    recipe: Recipe | None = None  # finishes pretext outputs (masks, ...) when set
    positions: SplitPositions | None = None  # SOURCE_INFO -> positions in the split
    with_index: bool = True  # hand out the positions as `index` (the train loader)
    manifest_labels: bool = False  # `label` from the manifest by position (datasets adopted by `index`)
    diagnose: Callable[[int, bool], Exception | None] | None = None  # (batches handed out, images?) -> error
    class_count: int | None = None  # `.cls` labels are checked against it when set
    trimmed_indexes: str | None = None  # a folder of `.idx` copies without damaged samples, removed on close

    def __iter__(self):
        handed = 0
        while True:
            try:
                outputs = next(self.iterator)
            except StopIteration:
                return
            except RuntimeError:  # DALI names neither shard nor sample: find them
                self.close()  # DALI's pipeline is no longer valid
                found = self.diagnose(handed, True) if self.diagnose is not None else None
                if found is None:
                    raise
                raise found from None
            batch = dict(outputs[0])
            if "label" in batch and not self.manifest_labels:
                digits, batch["label"] = batch["label"], parse_label_digits(batch["label"])
                if self.class_count is not None and bool((malformed_label_rows(digits)
                                                          | (batch["label"] >= self.class_count)).any()):
                    found = self.diagnose(handed, False) if self.diagnose is not None else None
                    raise found or DatasetError(f"a .cls member that is not a class index in 0..{self.class_count - 1}")
            if SOURCE_INFO in batch:
                positions = self.positions.positions(batch.pop(SOURCE_INFO))
                if self.with_index:
                    batch["index"] = positions
                if self.manifest_labels:
                    batch["label"] = torch.from_numpy(self.positions.labels[positions.numpy()].astype(np.int64))
            handed += 1
            yield finish_batch(batch, self.recipe) if self.recipe is not None else batch

    def checkpoint(self) -> bytes:
        """DALI's serialized state after the last batch handed out (`resumable=True` loaders only)."""
        return self.iterator.checkpoints()[0]

    def close(self) -> None:
        if self.iterator is not None:
            for pipeline in self.iterator._pipes:
                shut_down(pipeline)
        self.iterator = None
        if self.trimmed_indexes is not None:
            shutil.rmtree(self.trimmed_indexes, ignore_errors=True)
            self.trimmed_indexes = None


def shut_down(pipeline) -> None:
    """Stop a DALI pipeline's threads now. After a pipeline error, leaving that to the garbage
    collector crashed the process (DALI 2.4: a segmentation fault at the next thread start)."""
    pipeline._shutdown()


def start_iterator(pipeline, names: list[str], diagnose: Callable[[int, bool], Exception | None],
                   **options) -> DALIGenericIterator:
    """DALI's iterator over a built `pipeline`. Given a reader name it reads the first batch at
    once, so a damaged sample among the first ones stops it here: `diagnose` names it."""
    try:
        return DALIGenericIterator([pipeline], names, **options)
    except RuntimeError:
        shut_down(pipeline)
        found = diagnose(0, True)
        if found is None:
            raise
        raise found from None


def diagnosis(dataset: DatasetInfo, split: str, paths: list[str], indexes: list[str], sample_range,
              class_count: int | None) -> Callable[[int, bool], Exception | None]:
    """`DaliLoader.diagnose` for a reader of `paths`: the damaged samples among those that
    `sample_range(handed)` gives (then among all the reader's samples), as one user error; None
    when there are none (the failure was something else)."""
    def diagnose(handed: int, images: bool) -> Exception | None:
        start, stop = sample_range(handed)
        whole = start == 0 and (stop is None or stop >= sample_count(indexes))
        for low, high in [(start, stop)] + ([] if whole else [(0, None)]):
            found = find_damaged(paths, indexes, low, high, class_count=class_count, images=images)
            if found:
                return damaged_error(found, dataset.root, split)
        return None

    return diagnose


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The DALI seed of one rank's graph in one epoch: a pure function of (seed, epoch, rank)."""
    return ((seed * 1_000_003 + epoch) * 65_537 + rank) % 2**31


def _split_files(dataset: DatasetInfo, split: str):
    info = dataset.split(split)
    if info.count == 0:
        raise DatasetError(f"{dataset.root}: split {split!r} has no samples")
    return info, [str(path) for path in info.shards], [str(path) for path in info.indexes]


def _check_on_disk(dataset: DatasetInfo, split: str, paths: list[str]) -> None:
    """A clear error for a split whose shards a node stages per epoch (placeholders on disk)."""
    missing = placeholders(paths)
    if missing:
        raise DatasetError(f"{dataset.root}: {len(missing)} shards of split {split!r} ({missing[0]}, ...) are not "
                           "on this node: the folder is a per-epoch staged copy (pipeline.node_staging), read "
                           "by the trainer that staged it; read the dataset from its source instead")


def _reader_part(dataset: DatasetInfo, split: str, paths: list[str], index_paths: list[str], *,
                 rank: int, world_size: int, epoch: int,
                 staging: NodeStaging | None) -> tuple[list[str], list[str], int, int]:
    """(paths, index_paths, shard_id, num_shards) of the reader of `rank` in `epoch`.

    A local dataset: every file, and DALI's part (rank + epoch) mod world_size. A dataset staged
    per epoch (`staging`, its session): only the files of that part, staged now, with indexes
    trimmed to the part, read whole (`pipeline.shard_parts`): the same samples in the same order."""
    if staging is not None and Path(staging.folder).resolve() != Path(dataset.root).resolve():
        raise ValueError(f"staging session of {staging.folder} given for the dataset at {dataset.root}")
    if staging is not None and staging.split == split:
        part_paths, part_indexes = staging.prepare(rank, world_size, epoch)
        return part_paths, part_indexes, 0, 1
    _check_on_disk(dataset, split, paths)
    return paths, index_paths, (rank + epoch) % world_size, world_size


def build_train_loader(
    dataset: DatasetInfo,
    recipe: Recipe,
    *,
    batch_size: int,
    split: str = "train",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_threads: int | None = None,
    prefetch_depth: int = 2,
    shuffle_buffer: int = 1024,
    epoch: int = 0,
    resumable: bool = False,
    dali_checkpoint: bytes | None = None,
    staging: NodeStaging | None = None,
    excluded: frozenset[tuple[str, int]] = frozenset(),
) -> DaliLoader:
    """An endless stream of augmented batches for one rank.

    Rank r of W reads part (r + epoch) mod W of the W contiguous parts of the split (DALI's
    shard_id/num_shards); after each pass it moves on to the next part, so over epochs every rank
    sees all data. A dataset staged per epoch (`pipeline.node_staging`; `staging` is the session
    `stage_node_parts` returned with its folder) has the files of that part copied here first
    (and the next epoch's prefetched); the batches are the same. The
    graph's seed is `epoch_seed(seed, epoch, rank)`: a loader built for a given (seed, epoch,
    rank) yields the same batches every time, which is how the trainer rebuilds each epoch
    reproducibly. `resumable=True` enables DALI checkpointing
    (`DaliLoader.checkpoint()`); `dali_checkpoint` (from that method) restores a loader built
    with the same arguments to the position where the checkpoint was taken.

    A sample that cannot be decoded (or whose `.cls` is no class index) stops the iteration with
    a `DamagedSamplesError` naming its shard and key (`pipeline.damaged`); `excluded` lists
    samples (shard file name, image data offset) to leave out, through trimmed copies of the
    `.idx` files. The epoch keeps its number of steps, which counts the whole split.
    """
    validate_recipe(recipe)
    info, paths, index_paths = _split_files(dataset, split)
    steps_per_epoch = info.count // (batch_size * world_size)
    if steps_per_epoch == 0:
        raise DatasetError(
            f"{dataset.root}: split {split!r} has {info.count} samples, fewer than one global batch "
            f"({batch_size} per worker x {world_size} workers); lower data.batch_size"
        )
    decoder_device, device_id = dali_device(device)
    with_label = recipe.with_label and dataset.labeled
    read_label = with_label and not dataset.manifest_labels  # else looked up by position
    names: list[str] = []  # filled while the graph is defined
    part_paths, part_indexes, shard_id, num_shards = _reader_part(
        dataset, split, paths, index_paths, rank=rank, world_size=world_size, epoch=epoch, staging=staging)
    trimmed = tempfile.mkdtemp(prefix="selfsup-without-damaged-") if excluded else None
    if excluded:
        part_paths, part_indexes = indexes_without(part_paths, part_indexes, excluded, Path(trimmed))
    part = part_range(sample_count(part_indexes), shard_id, num_shards)
    diagnose = diagnosis(dataset, split, part_paths, part_indexes, lambda handed: part,
                          len(dataset.classes) if read_label else None)

    @pipeline_def(enable_conditionals=True, enable_checkpointing=resumable)
    def views_pipeline():
        components = read_shards(
            part_paths, part_indexes, read_label,
            shard_id=shard_id,
            num_shards=num_shards,
            random_shuffle=True,
            initial_fill=max(2, min(shuffle_buffer, info.count // world_size)),
        )
        outputs = recipe_outputs(components[0], recipe, decoder_device)
        if read_label:
            label = label_digits(components[1])
            outputs["label"] = label.gpu() if decoder_device == "mixed" else label
        outputs[SOURCE_INFO] = fn.pad(fn.get_property(components[0], key="source_info"), fill_value=0)
        names.extend(outputs)
        return tuple(outputs.values())

    pipeline = views_pipeline(
        batch_size=batch_size,
        num_threads=num_threads or default_threads(),
        device_id=device_id,
        seed=epoch_seed(seed, epoch, rank),
        prefetch_queue_depth=prefetch_depth,
        checkpoint=dali_checkpoint,
    )
    pipeline.build()
    iterator = start_iterator(pipeline, list(names), diagnose, auto_reset=False)  # no reader_name: endless
    manifest_labels = with_label and not read_label
    names = [name for name in names if name != SOURCE_INFO] + ["index"] + (["label"] if manifest_labels else [])
    return DaliLoader(iterator, tuple(names), batch_size, steps_per_epoch, info.count, recipe,
                      split_positions(dataset, split, with_labels=manifest_labels), manifest_labels=manifest_labels,
                      diagnose=diagnose, class_count=len(dataset.classes) if read_label else None,
                      trimmed_indexes=trimmed)


def build_eval_loader(
    dataset: DatasetInfo,
    recipe: EvalRecipe,
    *,
    batch_size: int,
    split: str,
    device: str | torch.device = "cpu",
    num_threads: int | None = None,
) -> DaliLoader:
    """Every sample of a split exactly once, in shard order; the last batch may be smaller."""
    info, paths, index_paths = _split_files(dataset, split)
    _check_on_disk(dataset, split, paths)
    decoder_device, device_id = dali_device(device)
    batch_size = in_order_batch(batch_size, decoder_device)
    labeled, manifest_labels = dataset.labeled, dataset.labeled and dataset.manifest_labels

    @pipeline_def
    def eval_pipeline():
        components = read_shards(paths, index_paths, labeled and not manifest_labels,
                                 random_shuffle=False, pad_last_batch=True)
        images = eval_view(components[0], recipe, decoder_device)
        if manifest_labels:
            return images, fn.pad(fn.get_property(components[0], key="source_info"), fill_value=0)
        return (images, label_digits(components[1])) if labeled else (images,)

    pipeline = eval_pipeline(batch_size=batch_size, num_threads=num_threads or default_threads(),
                             device_id=device_id, seed=0)
    pipeline.build()
    names = ("image", "label") if labeled else ("image",)
    class_count = len(dataset.classes) if labeled and not manifest_labels else None
    diagnose = in_order_diagnosis(dataset, split, batch_size, class_count)
    iterator = start_iterator(pipeline, ["image", SOURCE_INFO] if manifest_labels else list(names), diagnose,
                              reader_name=READER_NAME, last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
    positions = split_positions(dataset, split, with_labels=True) if manifest_labels else None
    return DaliLoader(iterator, names, batch_size, -(-info.count // batch_size), info.count,
                      positions=positions, with_index=False, manifest_labels=manifest_labels,
                      diagnose=diagnose, class_count=class_count)


CPU_IN_ORDER_BATCH = 16


def in_order_batch(batch_size: int, decoder_device: str) -> int:
    """The batch DALI reads for a loader going through a split once in order.

    In DALI 2.4's CPU mode, a pipeline whose batch met an image it could not decode often crashed
    the process (a segmentation fault inside `share_outputs`) instead of raising. Measured here
    with the damaged image in the first batch: 0 crashes in 14 runs at batches of 16 to 31, 2 of 3
    at 32, 4 of 6 at 48, 3 of 3 at 64 and most at 119 or more, on splits of 32 and 120 samples.
    So on the CPU the loader reads batches of at most 16 (the samples and their order are the
    same; CPU decoding gains little from larger batches). GPU decoding (`mixed`) keeps the batch
    asked for."""
    return min(batch_size, CPU_IN_ORDER_BATCH) if decoder_device == "cpu" else batch_size


def in_order_diagnosis(dataset: DatasetInfo, split: str, batch_size: int,
                       class_count: int | None) -> Callable[[int, bool], Exception | None]:
    """`DaliLoader.diagnose` for a loader reading `split` once in order: the damaged samples among
    the few batches it was about to hand out (then among the whole split)."""
    _, paths, index_paths = _split_files(dataset, split)
    ahead = 2 + 2  # the batch asked for, DALI's prefetch queue (2) and one more
    return diagnosis(dataset, split, paths, index_paths,
                      lambda handed: (handed * batch_size, (handed + ahead) * batch_size), class_count)
