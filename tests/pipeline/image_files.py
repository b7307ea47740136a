"""Test helpers that write small image files of every kind `convert` must handle."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

BAD_FILES = ("cat/truncated.jpg", "dog/empty.png", "fish/text.jpg")
IGNORED_FILES = ("notes.txt", ".hidden.jpg", ".DS_Store", "cat/.thumbs/x.jpg", "dog/readme.md")


def noise(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A smooth-ish random image (gradients plus noise) of the given size and mode."""
    generator = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                     (x + y) * 255 // max(1, width + height - 2)], axis=-1)
    pixels = np.clip(base + generator.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode) if mode != "RGB" else Image.fromarray(pixels)


def _save(path: Path, image: Image.Image, format: str, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format, **options)


def write_all_kinds(root: Path) -> dict[str, dict]:
    """Write a labeled folder (classes cat, dog, fish) holding every kind of file; returns expectations.

    The result maps each valid image's relative path to {"ext": stored extension, "size": stored
    (width, height), "kept": whether the original bytes are stored, "class": its class name}.
    """
    expected: dict[str, dict] = {}

    def add(relative: str, image: Image.Image, format: str, ext: str, kept: bool, size=None, **options):
        _save(root / relative, image, format, **options)
        expected[relative] = {"ext": ext, "size": size or image.size, "kept": kept,
                              "class": relative.split("/", 1)[0]}

    add("cat/rgb.jpg", noise(40, 30, 1), "JPEG", "jpg", True)
    add("cat/gray.jpg", noise(48, 36, 2, "L"), "JPEG", "jpg", True)
    add("cat/progressive.jpeg", noise(64, 48, 3), "JPEG", "jpg", True, progressive=True)
    add("cat/UPPER.JPG", noise(50, 40, 4), "JPEG", "jpg", True)
    add("cat/nested/deep/inner.png", noise(44, 33, 5), "PNG", "png", True)
    add("dog/cmyk.jpg", noise(56, 42, 6, "CMYK"), "JPEG", "jpg", False)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: stored size is swapped
    add("dog/rotated.jpg", noise(60, 40, 7), "JPEG", "jpg", False, size=(40, 60), exif=exif.tobytes())
    rgba = noise(52, 39, 8, "RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(52, dtype=np.uint8) * 4, (39, 1))))
    add("dog/rgba.png", rgba, "PNG", "png", False)
    add("dog/palette.png", noise(46, 34, 9).convert("P", palette=Image.Palette.ADAPTIVE), "PNG", "png", False)
    add("dog/gray.png", noise(42, 31, 10, "L"), "PNG", "png", True)
    sixteen = Image.fromarray(np.asarray(noise(58, 43, 11, "L"), dtype=np.uint16) * 257)
    add("dog/gray16.png", sixteen, "PNG", "png", False)
    add("dog/la.png", noise(40, 40, 12, "LA"), "PNG", "png", False)
    add("fish/photo.webp", noise(70, 50, 13), "WEBP", "jpg", False, quality=80)
    add("fish/image.bmp", noise(45, 35, 14), "BMP", "png", False)
    add("fish/image.tiff", noise(62, 47, 15), "TIFF", "png", False)
    add("fish/small.TIF", noise(41, 31, 16), "TIFF", "png", False)

    buffer = io.BytesIO()
    noise(120, 90, 17).save(buffer, "JPEG", quality=95)
    (root / "cat/truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "dog/empty.png").write_bytes(b"")
    (root / "fish/text.jpg").write_text("this is not an image\n")
    for relative in IGNORED_FILES:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if relative.endswith(".jpg"):
            noise(20, 20, 18).save(path, "JPEG")
        else:
            path.write_text("ignored\n")
    return expected


def write_class_folders(root: Path, classes: int, per_class: int, size: tuple[int, int] = (32, 24),
                        format: str = "JPEG", suffix: str = ".jpg") -> list[str]:
    """`classes` folders c0, c1, ... of `per_class` images each; returns the relative paths."""
    written = []
    for class_index in range(classes):
        for number in range(per_class):
            relative = f"c{class_index}/img{number:04d}{suffix}"
            _save(root / relative, noise(*size, seed=class_index * 1000 + number), format)
            written.append(relative)
    return written
