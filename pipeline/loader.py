"""The loader: WebDataset shards -> one DALI graph -> `dict[str, torch.Tensor]` per step.

`build_train_loader` streams a split forever (the trainer counts steps and epochs), reading the
rank's own part of the samples with DALI's webdataset reader and the shards' `.idx` files.
`build_eval_loader` reads a split exactly once, in order, keeping the last partial batch.

On a GPU (`device="cuda:N"`) decoding is `mixed` (nvJPEG / the hardware decoder) and every
augmentation runs on that GPU; the tensors arrive on it. On a CPU-only machine the same graph
runs in DALI's CPU mode (`device_id=None`) and the tensors arrive on the CPU.

Batch keys: `view_0`, `view_1`, ... (float32, B x 3 x S x S, normalized) and, for labeled
datasets, `label` (int64, B).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from nvidia.dali import fn, pipeline_def
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from pipeline.augment import augmented_view, eval_view, label_digits
from pipeline.dataset import DatasetError, DatasetInfo
from pipeline.recipes import EvalRecipe, Recipe, validate_recipe

IMAGE_EXTENSIONS = "jpg;jpeg;png;webp;bmp;tif;tiff"
READER_NAME = "reader"


def parse_label_digits(digits: torch.Tensor) -> torch.Tensor:
    """(B, W) uint8 ASCII digits, zero-padded on the right -> (B,) int64 class indices."""
    digits = digits.to(torch.int64)
    present = digits > 0
    values = torch.zeros(digits.shape[0], dtype=torch.int64, device=digits.device)
    for column in range(digits.shape[1]):
        step = values * 10 + (digits[:, column] - ord("0"))
        values = torch.where(present[:, column], step, values)
    return values


def dali_device(device: str | torch.device) -> tuple[str, int | None]:
    """'cpu' -> ('cpu', None); 'cuda:N' -> ('mixed', N): the decoder device and DALI's device_id."""
    device = torch.device(device)
    if device.type == "cuda":
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

    def __iter__(self):
        for outputs in self.iterator:
            batch = dict(outputs[0])
            if "label" in batch:
                batch["label"] = parse_label_digits(batch["label"])
            yield batch

    def close(self) -> None:
        self.iterator = None


def _split_files(dataset: DatasetInfo, split: str):
    info = dataset.split(split)
    if info.count == 0:
        raise DatasetError(f"{dataset.root}: split {split!r} has no samples")
    return info, [str(path) for path in info.shards], [str(path) for path in info.indexes]


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
) -> DaliLoader:
    """An endless stream of augmented batches for one rank.

    Rank r of W reads the r-th of W contiguous parts of the split (DALI's shard_id/num_shards);
    after each pass it moves on to the next part, so over epochs every rank sees all data.
    A fixed `seed` gives the same batches; each rank's graph is seeded differently.
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

    @pipeline_def(enable_conditionals=True)
    def views_pipeline():
        components = fn.readers.webdataset(
            paths=paths,
            index_paths=index_paths,
            ext=[IMAGE_EXTENSIONS, "cls"] if with_label else [IMAGE_EXTENSIONS],
            missing_component_behavior="error",
            shard_id=rank,
            num_shards=world_size,
            random_shuffle=True,
            initial_fill=max(2, min(shuffle_buffer, info.count // world_size)),
            name=READER_NAME,
        )
        encoded = components[0]
        outputs = [augmented_view(encoded, view, recipe.mean, recipe.std, decoder_device)
                   for view in recipe.views]
        if with_label:
            outputs.append(label_digits(components[1]))
        return tuple(outputs)

    pipeline = views_pipeline(
        batch_size=batch_size,
        num_threads=num_threads or default_threads(),
        device_id=device_id,
        seed=seed * 1_000_003 + rank,
        prefetch_queue_depth=prefetch_depth,
    )
    pipeline.build()
    names = tuple(f"view_{index}" for index in range(len(recipe.views))) + (("label",) if with_label else ())
    iterator = DALIGenericIterator([pipeline], list(names), auto_reset=False)
    return DaliLoader(iterator, names, batch_size, steps_per_epoch, info.count)


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
    decoder_device, device_id = dali_device(device)
    labeled = dataset.labeled

    @pipeline_def
    def eval_pipeline():
        components = fn.readers.webdataset(
            paths=paths,
            index_paths=index_paths,
            ext=[IMAGE_EXTENSIONS, "cls"] if labeled else [IMAGE_EXTENSIONS],
            missing_component_behavior="error",
            random_shuffle=False,
            pad_last_batch=True,
            name=READER_NAME,
        )
        images = eval_view(components[0], recipe, decoder_device)
        return (images, label_digits(components[1])) if labeled else (images,)

    pipeline = eval_pipeline(batch_size=batch_size, num_threads=num_threads or default_threads(),
                             device_id=device_id, seed=0)
    pipeline.build()
    names = ("image", "label") if labeled else ("image",)
    iterator = DALIGenericIterator([pipeline], list(names), reader_name=READER_NAME,
                                   last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
    return DaliLoader(iterator, names, batch_size, -(-info.count // batch_size), info.count)
