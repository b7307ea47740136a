"""Eval-recipe loaders that say which sample each row is, for writing one row per image.

* `build_indexed_eval_loader(dataset, recipe, ...)`: every sample of a split once, in shard
  order, with "image", "label" (labeled datasets) and "index": the sample's position in the
  split (`pipeline.positions`, the manifest's shard and offset order; for a converted dataset the
  order of its sorted keys), read from DALI's `source_info` of each sample.
* `build_folder_loader(root, files, recipe, ...)`: the image files `files` (paths relative to
  `root`) of a folder that was never converted, each read and checked as `selfsup convert` does
  (an unreadable file is skipped and listed, not handed to DALI, whose CPU decoder can crash on
  a truncated JPEG) and fed to DALI through `external_source`, with "image" and "index" (the
  position in `files`).

The last batch may be smaller; on a GPU decoding is `mixed` and the images arrive on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nvidia.dali import fn, pipeline_def
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from selfsup.pipeline.augment import eval_view, label_digits
from selfsup.pipeline.dataset import DatasetInfo
from selfsup.pipeline.images import prepare_image
from selfsup.pipeline.loader import (
    READER_NAME, SOURCE_INFO, DaliLoader, _check_on_disk, _split_files, dali_device, default_threads, in_order_batch,
    in_order_diagnosis, read_shards, start_iterator,
)
from selfsup.pipeline.positions import split_positions
from selfsup.pipeline.recipes import EvalRecipe


def build_indexed_eval_loader(dataset: DatasetInfo, recipe: EvalRecipe, *, batch_size: int, split: str,
                              device: str = "cpu", num_threads: int | None = None) -> DaliLoader:
    """`build_eval_loader` plus each sample's position in the split ("index", int64)."""
    info, paths, index_paths = _split_files(dataset, split)
    _check_on_disk(dataset, split, paths)
    decoder_device, device_id = dali_device(device)
    batch_size = in_order_batch(batch_size, decoder_device)
    labeled = dataset.labeled
    manifest_labels = labeled and dataset.manifest_labels  # `selfsup index`: labels in the manifest, not .cls
    from_members = labeled and not manifest_labels

    @pipeline_def
    def indexed_pipeline():
        components = read_shards(paths, index_paths, from_members, random_shuffle=False, pad_last_batch=True)
        images = eval_view(components[0], recipe, decoder_device)
        where = fn.pad(fn.get_property(components[0], key="source_info"), fill_value=0)
        return (images, label_digits(components[1]), where) if from_members else (images, where)

    pipeline = indexed_pipeline(batch_size=batch_size, num_threads=num_threads or default_threads(),
                                device_id=device_id, seed=0)
    pipeline.build()
    names = ["image", "label", SOURCE_INFO] if from_members else ["image", SOURCE_INFO]
    class_count = len(dataset.classes) if from_members else None
    diagnose = in_order_diagnosis(dataset, split, batch_size, class_count)
    iterator = start_iterator(pipeline, names, diagnose, reader_name=READER_NAME,
                                   last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
    output_names = ("image", "label", "index") if labeled else ("image", "index")
    return DaliLoader(iterator, output_names, batch_size, -(-info.count // batch_size), info.count,
                      positions=split_positions(dataset, split, with_labels=manifest_labels),
                      manifest_labels=manifest_labels,
                      diagnose=diagnose, class_count=class_count)


def prepared_images(root: Path, files: list[str], skipped: list[dict], workers: int):
    """(position, encoded bytes DALI decodes) of each readable file, in order, read and checked as
    `selfsup convert` does (`images.prepare_image`: a full decode, re-encoded when DALI would not
    read it as PIL does) by `workers` threads, at most 4 per thread in flight; each unreadable file
    is appended to `skipped` as {"path", "reason"} instead."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, workers)) as executor:
        pending, upcoming = deque(), iter(enumerate(files))
        for position, name in upcoming:
            pending.append((position, name, executor.submit(prepare_image, str(root), name, None)))
            if len(pending) < 4 * workers:
                continue
            yield from _finished(pending.popleft(), skipped)
        while pending:
            yield from _finished(pending.popleft(), skipped)


def _finished(job, skipped: list[dict]):
    position, name, future = job
    result = future.result()
    if "reason" in result:
        skipped.append({"path": name, "reason": result["reason"]})
    else:
        yield position, np.frombuffer(result["data"], dtype=np.uint8)


def build_folder_loader(root: str | Path, files: list[str], recipe: EvalRecipe, *, batch_size: int,
                        device: str = "cpu", skipped: list[dict] | None = None,
                        num_threads: int | None = None) -> DaliLoader:
    """The images `files` (relative to `root`) through the eval recipe, in that order, with "index"
    (the position in `files`); unreadable files are left out and listed in `skipped`."""
    root = Path(root)
    decoder_device, device_id = dali_device(device)
    skipped = [] if skipped is None else skipped
    images = prepared_images(root, files, skipped, num_threads or default_threads())

    def batches():
        while True:
            chunk = [item for _, item in zip(range(batch_size), images)]
            if not chunk:
                return
            yield [data for _, data in chunk], [np.array([position], dtype=np.int64) for position, _ in chunk]

    @pipeline_def
    def folder_pipeline():
        encoded, positions = fn.external_source(source=batches(), num_outputs=2, batch=True, no_copy=False)
        return eval_view(encoded, recipe, decoder_device), positions

    pipeline = folder_pipeline(batch_size=batch_size, num_threads=num_threads or default_threads(),
                               device_id=device_id, seed=0, prefetch_queue_depth=1)
    pipeline.build()
    iterator = DALIGenericIterator([pipeline], ["image", "index"], last_batch_policy=LastBatchPolicy.PARTIAL,
                                   auto_reset=False)
    return DaliLoader(iterator, ("image", "index"), batch_size, -(-len(files) // batch_size), len(files))
