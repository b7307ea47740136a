"""WebDataset shards as other tools write them, with `webdataset.ShardWriter`: what `selfsup index` adopts.

`write_foreign_shards` writes 3 classes of smooth-noise images, non-numeric keys, the image
members in turn `.jpeg`, `.png` and `.webp`, a `.cls` (some with a trailing newline, as text
tools leave them) and a `.json` with the class name and a caption, plus the problems met in real
shard sets: samples without a label, one image whose bytes are cut short, and one sample that
holds no image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = ("cat", "dog", "fish")
FORMATS = (("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"))


def image_bytes(seed: int, format: str, size: tuple[int, int] = (40, 32)) -> bytes:
    """A smooth-noise RGB image of `size`, encoded in `format`, whose mean colour depends on its class."""
    generator = np.random.default_rng(seed)
    width, height = size
    base = np.zeros((height, width, 3)) + generator.integers(0, 200, 3)
    pixels = np.clip(base + generator.integers(0, 55, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format, **({"quality": 90} if format != "PNG" else {}))
    return buffer.getvalue()


@dataclass
class ForeignShards:
    """What was written: the folder, every sample's member name -> class, and the problem samples."""

    folder: Path
    labels: dict[str, int] = field(default_factory=dict)  # image member -> class index, for good samples
    unlabeled: list[str] = field(default_factory=list)  # image members of samples without a .cls
    corrupt: str = ""  # the image member whose bytes are cut short
    no_image: str = ""  # the key of the sample without an image member


def write_foreign_shards(folder: Path, per_class: int = 12, samples_per_shard: int = 10) -> ForeignShards:
    """Shards `folder/part-000000.tar`, ... written by `webdataset.ShardWriter` (see the module docstring)."""
    import webdataset

    folder.mkdir(parents=True, exist_ok=True)
    written = ForeignShards(folder)
    with webdataset.ShardWriter(str(folder / "part-%06d.tar"), maxcount=samples_per_shard, verbose=0) as sink:
        for number in range(per_class * len(CLASS_NAMES)):
            label = number % len(CLASS_NAMES)
            ext, format = FORMATS[number % len(FORMATS)]
            key = f"sample_{number:04d}"
            sample = {"__key__": key, ext: image_bytes(label * 1000 + number, format),
                      "json": {"class_name": CLASS_NAMES[label], "caption": f"a {CLASS_NAMES[label]}"}}
            if number in (4, 17):  # no label
                written.unlabeled.append(f"{key}.{ext}")
            else:
                sample["cls"] = f"{label}\n" if number % 2 else label
                written.labels[f"{key}.{ext}"] = label
            if number == 9:  # an image cut short: it must never reach the loader
                sample[ext] = sample[ext][: len(sample[ext]) // 3]
                written.corrupt = f"{key}.{ext}"
                del written.labels[written.corrupt]
            sink.write(sample)
        written.no_image = "caption_only"
        sink.write({"__key__": written.no_image, "txt": "a sample with a caption and no image"})
    return written
