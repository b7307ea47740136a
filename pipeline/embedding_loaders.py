"""Eval-recipe loaders that say which sample each row is, for writing one row per image.

* `build_indexed_eval_loader(dataset, recipe, ...)`: every sample of a split once, in shard
  order, with "image", "label" (labeled datasets) and "index": the sample's position in the
  split's sorted keys (`loader.split_sample_keys`), read from DALI's `source_info` of each sample.
* `build_folder_loader(root, files, recipe, ...)`: the image files `files` (paths relative to
  `root`) read straight from disk with DALI's file reader, with "image" and "index" (the
  position in `files`), for embedding a folder that was never converted.

The last batch may be smaller; on a GPU decoding is `mixed` and the images arrive on it.
"""

from __future__ import annotations

from pathlib import Path

from nvidia.dali import fn, pipeline_def
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from selfsup.pipeline.augment import eval_view, label_digits
from selfsup.pipeline.dataset import DatasetInfo
from selfsup.pipeline.loader import (
    READER_NAME, SOURCE_INFO, DaliLoader, _check_on_disk, _split_files, dali_device, default_threads, read_shards,
    split_sample_keys,
)
from selfsup.pipeline.recipes import EvalRecipe


def build_indexed_eval_loader(dataset: DatasetInfo, recipe: EvalRecipe, *, batch_size: int, split: str,
                              device: str = "cpu", num_threads: int | None = None) -> DaliLoader:
    """`build_eval_loader` plus each sample's position in the split ("index", int64)."""
    info, paths, index_paths = _split_files(dataset, split)
    _check_on_disk(dataset, split, paths)
    decoder_device, device_id = dali_device(device)
    labeled = dataset.labeled

    @pipeline_def
    def indexed_pipeline():
        components = read_shards(paths, index_paths, labeled, random_shuffle=False, pad_last_batch=True)
        images = eval_view(components[0], recipe, decoder_device)
        where = fn.pad(fn.get_property(components[0], key="source_info"), fill_value=0)
        return (images, label_digits(components[1]), where) if labeled else (images, where)

    pipeline = indexed_pipeline(batch_size=batch_size, num_threads=num_threads or default_threads(),
                                device_id=device_id, seed=0)
    pipeline.build()
    names = ["image", "label", SOURCE_INFO] if labeled else ["image", SOURCE_INFO]
    iterator = DALIGenericIterator([pipeline], names, reader_name=READER_NAME,
                                   last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
    output_names = tuple(name for name in names if name != SOURCE_INFO) + ("index",)
    return DaliLoader(iterator, output_names, batch_size, -(-info.count // batch_size), info.count,
                      sample_keys=split_sample_keys(tuple(index_paths)))


def build_folder_loader(root: str | Path, files: list[str], recipe: EvalRecipe, *, batch_size: int,
                        device: str = "cpu", num_threads: int | None = None) -> DaliLoader:
    """The images `files` (relative to `root`) through the eval recipe, in that order, with "index"."""
    root = Path(root)
    decoder_device, device_id = dali_device(device)

    @pipeline_def
    def folder_pipeline():
        encoded, positions = fn.readers.file(files=[str(root / name) for name in files],
                                             labels=list(range(len(files))), random_shuffle=False,
                                             pad_last_batch=True, name=READER_NAME)
        return eval_view(encoded, recipe, decoder_device), positions

    pipeline = folder_pipeline(batch_size=batch_size, num_threads=num_threads or default_threads(),
                               device_id=device_id, seed=0)
    pipeline.build()
    iterator = DALIGenericIterator([pipeline], ["image", "index"], reader_name=READER_NAME,
                                   last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
    return DaliLoader(iterator, ("image", "index"), batch_size, -(-len(files) // batch_size), len(files))
