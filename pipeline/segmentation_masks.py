"""Per-pixel label maps carried beside the images: `selfsup convert SRC OUT --masks MASKS`.

MASKS mirrors SRC (as VOC's SegmentationClass mirrors JPEGImages): the mask of `SRC/a/b.jpg` is
`MASKS/a/b.png`, a single-channel (`L`) or palette (`P`, the VOC files) PNG of the image's size
whose pixel values are class indices, 255 meaning "ignore" (VOC's object borders). Each sample
then carries a member `KEY.seg.png`: the mask as an 8-bit grayscale PNG of the stored image's size
(resized with nearest neighbours when `--max-side` shrank the image). An image without a mask,
or with one that does not fit, is skipped and listed in `errors.jsonl` like an unreadable image.

`dataset.json` then holds {"segmentation": {"member": "seg.png", "classes": C, "ignore_index":
255, "masks": "/abs/MASKS"}}, C being the largest class index found + 1 (`segmentation_info`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from selfsup.errors import DatasetError
from selfsup.pipeline.dataset import DatasetInfo, read_description
from selfsup.pipeline.shards import read_index_entries

MASK_MEMBER = "seg.png"
IGNORE_INDEX = 255
MASK_MODES = ("L", "P")


def check_masks_folder(masks: str | Path | None, source: Path) -> Path | None:
    """The masks folder made absolute (None: none); a DatasetError when it is not a folder or is SRC."""
    if masks is None:
        return None
    folder = Path(masks).expanduser().resolve()
    if not folder.is_dir():
        raise DatasetError(f"{folder}: --masks {'is not a folder' if folder.exists() else 'no such folder'} "
                           "(expected a folder of PNG label maps mirroring the images folder)")
    if folder == source or source in folder.parents:
        raise DatasetError(f"{folder}: --masks lies inside the images folder {source}, whose PNG files would be "
                           "read as images; keep the label maps in a folder of their own")
    return folder


def mask_path(masks: Path, relative: str) -> Path:
    """Where the mask of image `relative` (to SRC) lies: the same path under MASKS, ending in .png."""
    return masks / (os.path.splitext(relative)[0] + ".png")


def prepare_mask(masks: Path, relative: str, result: dict) -> dict:
    """`result` of `prepare_image` with the mask as an extra member (`members`) and its largest
    class index (`row_fields`), or a {"reason"} when the mask is missing or does not fit."""
    path = mask_path(masks, relative)
    shown = path.relative_to(masks).as_posix()
    if not path.is_file():
        return {"reason": f"no mask {shown} in {masks}"}
    try:
        with Image.open(path) as mask:
            mask.load()
            mode, size = mask.mode, mask.size
            values = np.asarray(mask) if mode in MASK_MODES else None
    except Exception as error:  # PIL raises many types for corrupt files
        return {"reason": f"mask {shown} does not decode ({type(error).__name__}: {error})"}
    if values is None:
        return {"reason": f"mask {shown} is a {mode} image; expected one channel of class indices (L or P)"}
    if size != (result["original_width"], result["original_height"]):
        return {"reason": f"mask {shown} is {size[0]}x{size[1]}, its image "
                          f"{result['original_width']}x{result['original_height']}"}
    label_map = Image.fromarray(values.astype(np.uint8), mode="L")
    if (result["width"], result["height"]) != size:
        label_map = label_map.resize((result["width"], result["height"]), Image.NEAREST)
    encoded = io.BytesIO()
    label_map.save(encoded, format="PNG")
    present = values[values != IGNORE_INDEX]
    return {**result, "members": {MASK_MEMBER: encoded.getvalue()},
            "row_fields": {"mask_max": int(present.max()) if present.size else -1}}


def attach_masks(results: Iterator[dict], relatives: list[str], masks: Path) -> Iterator[dict]:
    """`prepare_image` results in plan order, each with its mask (`prepare_mask`); closing this
    closes `results` (the worker pool)."""
    try:
        for relative, result in zip(relatives, results):
            yield result if "reason" in result else prepare_mask(masks, relative, result)
    finally:
        if hasattr(results, "close"):
            results.close()


def segmentation_info(rows: Iterator[dict], masks: Path) -> dict:
    """dataset.json's "segmentation" entry from the manifest rows (their `mask_max`)."""
    largest = max((row.get("mask_max", -1) for row in rows), default=-1)
    return {"segmentation": {"member": MASK_MEMBER, "classes": largest + 1, "ignore_index": IGNORE_INDEX,
                             "masks": str(masks)}}


def dataset_segmentation(root: str | Path) -> dict | None:
    """The "segmentation" entry of a converted dataset's dataset.json, or None."""
    entry = read_description(root).get("segmentation")
    return entry if isinstance(entry, dict) and entry.get("classes", 0) > 0 else None


def require_masks(dataset: DatasetInfo) -> dict:
    """The dataset's segmentation entry; a DatasetError when it was converted without masks."""
    entry = dataset_segmentation(dataset.root)
    if entry is None:
        raise DatasetError(f"{dataset.root}: no segmentation masks in this dataset (dataset.json has no "
                           "'segmentation' entry); convert it with `selfsup convert SRC OUT --masks MASKS`")
    return entry


def decode_mask(data: bytes) -> np.ndarray:
    """A `seg.png` member's bytes -> (H, W) uint8 class indices; a ValueError when it is not a label map."""
    with Image.open(io.BytesIO(data)) as mask:
        mask.load()
        if mask.mode not in MASK_MODES:
            raise ValueError(f"a {mask.mode} image, expected one channel (L)")
        return np.asarray(mask)


def mask_problem(data: bytes | None, image_size: tuple[int, int], classes: int) -> str | None:
    """What is wrong with a sample's `seg.png` member (None when it is a label map of the image's
    size with indices below `classes` or 255); `data` None: the member is missing."""
    if data is None:
        return f"missing the .{MASK_MEMBER} mask (the dataset was converted with --masks)"
    try:
        mask = decode_mask(data)
    except Exception as error:  # PIL raises many types for corrupt data
        return f"mask .{MASK_MEMBER} does not decode as a label map ({type(error).__name__}: {error})"
    if (mask.shape[1], mask.shape[0]) != tuple(image_size):
        return f"mask is {mask.shape[1]}x{mask.shape[0]}, its image {image_size[0]}x{image_size[1]}"
    outside = np.setdiff1d(np.unique(mask), np.append(np.arange(classes), IGNORE_INDEX))
    if outside.size:
        return f"mask holds class {int(outside[0])}, dataset.json says {classes} segmentation classes"
    return None


def first_masks(dataset: DatasetInfo, split: str, count: int) -> list[np.ndarray]:
    """The masks of the first `count` samples of `split` in shard order (for `selfsup preview`)."""
    masks = []
    for shard, index in zip(dataset.split(split).shards, dataset.split(split).indexes):
        with open(shard, "rb") as handle:
            for _, components in read_index_entries(index):
                if len(masks) == count:
                    return masks
                offset, size = components[MASK_MEMBER]
                handle.seek(offset)
                masks.append(decode_mask(handle.read(size)))
    return masks


def colour_mask(mask: np.ndarray) -> Image.Image:
    """A label map as an RGB picture: class 0 black, others in distinct colours, ignore white."""
    generator = np.random.default_rng(7)
    palette = generator.integers(40, 256, size=(256, 3)).astype(np.uint8)
    palette[0], palette[IGNORE_INDEX] = (0, 0, 0), (255, 255, 255)
    return Image.fromarray(palette[mask])
