"""Images with their label maps (`KEY.seg.png`, `pipeline.segmentation_masks`), cropped alike.

`build_segmentation_loader(dataset, split=..., size=S, train=...)` yields {"image": (B, 3, S, S)
float32 normalized, "mask": (B, S, S) int64 class indices (255: ignore)}:

* `train=True`: an endless stream of random resized crops (area `scale` of the image, aspect
  `ratio`, in relative coordinates) and horizontal flips, the same crop and flip applied to the
  image and its mask (one draw per sample, used by both), resized to S x S: bilinear for the image,
  nearest neighbour for the mask, so no new class index appears;
* `train=False`: every sample of the split once, in shard order, the whole image and mask
  resized to S x S (the mask by nearest neighbour); the last batch may be smaller.

On a GPU (`device="cuda:N"`) decoding is `mixed` and every operation runs on that GPU.
"""

from __future__ import annotations

import math

import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dali_math
from nvidia.dali.plugin.base_iterator import LastBatchPolicy

from selfsup.pipeline.dataset import DatasetInfo
from selfsup.pipeline.loader import (
    IMAGE_EXTENSIONS, READER_NAME, DaliLoader, _check_on_disk, _split_files, dali_device, default_threads, diagnosis,
    in_order_batch, in_order_diagnosis, start_iterator,
)
from selfsup.pipeline.recipes import IMAGENET_MEAN, IMAGENET_STD
from selfsup.pipeline.segmentation_masks import MASK_MEMBER


def _random_window(scale: tuple[float, float], ratio: tuple[float, float]):
    """Per-sample relative (anchor, shape) of a crop with area fraction in `scale`, aspect in `ratio`."""
    area = fn.random.uniform(range=list(scale))
    aspect = dali_math.exp(fn.random.uniform(range=[math.log(ratio[0]), math.log(ratio[1])]))
    width = dali_math.min(dali_math.sqrt(area * aspect), 1.0)
    height = dali_math.min(dali_math.sqrt(area / aspect), 1.0)
    left = fn.random.uniform(range=[0.0, 1.0]) * (1.0 - width)
    top = fn.random.uniform(range=[0.0, 1.0]) * (1.0 - height)
    return fn.stack(left, top), fn.stack(width, height)


def _paired_views(image, mask, size: int, train: bool, scale, ratio):
    """The same geometry for an HWC image and its HWC one-channel mask."""
    if train:
        anchor, shape = _random_window(scale, ratio)
        image = fn.slice(image, anchor, shape, normalized_anchor=True, normalized_shape=True, axis_names="WH")
        mask = fn.slice(mask, anchor, shape, normalized_anchor=True, normalized_shape=True, axis_names="WH")
    image = fn.resize(image, size=[size, size], interp_type=types.INTERP_LINEAR, antialias=False)
    mask = fn.resize(mask, size=[size, size], interp_type=types.INTERP_NN)
    if train:
        flip = fn.random.coin_flip(probability=0.5)
        image, mask = fn.flip(image, horizontal=flip), fn.flip(mask, horizontal=flip)
    return image, mask


def build_segmentation_loader(dataset: DatasetInfo, *, split: str, size: int, batch_size: int, train: bool,
                              seed: int = 0, device: str | torch.device = "cpu",
                              scale: tuple[float, float] = (0.25, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                              mean=IMAGENET_MEAN, std=IMAGENET_STD, num_threads: int | None = None) -> DaliLoader:
    """Image and mask batches of `split` (see the module docstring); the dataset must carry masks."""
    info, paths, index_paths = _split_files(dataset, split)
    _check_on_disk(dataset, split, paths)
    decoder_device, device_id = dali_device(device)
    if not train:
        batch_size = in_order_batch(batch_size, decoder_device)
    # a damaged image names its shard and key (`pipeline.damaged`); a damaged mask keeps DALI's message
    diagnose = (diagnosis(dataset, split, paths, index_paths, lambda handed: (0, None), None) if train
                else in_order_diagnosis(dataset, split, batch_size, None))

    @pipeline_def
    def segmentation_pipeline():
        encoded, encoded_mask = fn.readers.webdataset(
            paths=paths, index_paths=index_paths, ext=[IMAGE_EXTENSIONS, MASK_MEMBER],
            missing_component_behavior="error", name=READER_NAME, random_shuffle=train,
            initial_fill=max(2, min(1024, info.count)) if train else 1024, pad_last_batch=not train)
        image = fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB)
        mask = fn.decoders.image(encoded_mask, device=decoder_device, output_type=types.GRAY)
        image, mask = _paired_views(image, mask, size, train, scale, ratio)
        image = fn.crop_mirror_normalize(image, dtype=types.FLOAT, output_layout="CHW",
                                         mean=[255.0 * value for value in mean], std=[255.0 * value for value in std])
        return image, mask

    pipeline = segmentation_pipeline(batch_size=batch_size, num_threads=num_threads or default_threads(),
                                     device_id=device_id, seed=seed)
    pipeline.build()
    if train:
        iterator = start_iterator(pipeline, ["image", "mask"], diagnose, auto_reset=False)
        steps = max(1, info.count // batch_size)
    else:
        iterator = start_iterator(pipeline, ["image", "mask"], diagnose, reader_name=READER_NAME,
                                  last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
        steps = -(-info.count // batch_size)
    return DaliLoader(iterator, ("image", "mask"), batch_size, steps, info.count, diagnose=diagnose)


def mask_batch(batch: dict) -> torch.Tensor:
    """The loader's (B, S, S, 1) uint8 masks as (B, S, S) int64."""
    return batch["mask"][..., 0].long()
