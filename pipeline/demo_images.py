"""A small labeled image folder drawn procedurally, for the demo and the tests (no download).

Ten classes of shapes (circle, square, triangle, star, cross, ring, crescent, hexagon, arrow,
heart) drawn on textured backgrounds (noise, stripes, checks, gradients) with random colour,
size and position. Colour and texture carry no class information, so a backbone has to learn
shape to classify them: random initialization does poorly, good features do well. Shapes stand
upright, tilted by at most `max_tilt` radians (15 degrees by default), as objects in photographs
mostly do: pretexts that rely on a canonical orientation or layout (rotation, jigsaw, relative
location) have something to learn. `max_tilt=math.pi` draws them at any angle. Each image can come
with its label map (`draw_image_and_mask`, `make_demo_folder(masks=...)`), for segmentation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("arrow", "circle", "crescent", "cross", "heart", "hexagon", "ring", "square", "star", "triangle")


def _polygon(center, radius, angle, points):
    """Vertices of `points` (unit-circle coordinates) scaled, rotated and moved."""
    cos, sin = math.cos(angle), math.sin(angle)
    return [(center[0] + radius * (x * cos - y * sin), center[1] + radius * (x * sin + y * cos))
            for x, y in points]


def _regular(count, start=-math.pi / 2):
    return [(math.cos(start + 2 * math.pi * i / count), math.sin(start + 2 * math.pi * i / count))
            for i in range(count)]


def _star():
    return [(math.cos(-math.pi / 2 + math.pi * i / 5) * (1.0 if i % 2 == 0 else 0.42),
             math.sin(-math.pi / 2 + math.pi * i / 5) * (1.0 if i % 2 == 0 else 0.42)) for i in range(10)]


SHAPES = {
    "triangle": _regular(3),
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "hexagon": _regular(6),
    "star": _star(),
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1),
              (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "arrow": [(-1, -0.25), (0.2, -0.25), (0.2, -0.65), (1, 0), (0.2, 0.65), (0.2, 0.25), (-1, 0.25)],
    "heart": [(16 * math.sin(t) ** 3 / 17,
               -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17)
              for t in (2 * math.pi * k / 24 for k in range(24))],
}


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """One of four low-contrast textures in a random colour."""
    base = rng.integers(40, 216, size=3)
    colors = np.stack([base, np.clip(base + rng.integers(-40, 41, size=3), 0, 255)])  # low contrast
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:
        mix = rng.random((size // 8, size // 8))
        mix = np.array(Image.fromarray((mix * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)) / 255.0
    elif kind == 1:
        angle, frequency = rng.uniform(0, math.pi), rng.uniform(4, 12)
        mix = 0.5 + 0.5 * np.sin(2 * math.pi * frequency * (xx * math.cos(angle) + yy * math.sin(angle)))
    elif kind == 2:
        cells = rng.integers(3, 9)
        mix = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(np.float32)
    else:
        angle = rng.uniform(0, 2 * math.pi)
        mix = np.clip(0.5 + (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle), 0, 1)
    pixels = colors[0] * (1 - mix[..., None]) + colors[1] * mix[..., None]
    pixels += rng.normal(0, 8, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


DEFAULT_TILT = math.radians(15)


def draw_image(shape: str, rng: np.random.Generator, size: int = 96, max_tilt: float = DEFAULT_TILT) -> Image.Image:
    """One image of `shape` with random colour, size, position, tilt (|angle| <= max_tilt) and background."""
    return draw_image_and_mask(shape, rng, size, max_tilt)[0]


def draw_image_and_mask(shape: str, rng: np.random.Generator, size: int = 96,
                        max_tilt: float = DEFAULT_TILT) -> tuple[Image.Image, Image.Image]:
    """`draw_image`'s picture (the same random draws) and its label map: an `L` image holding the
    shape's class index + 1 (in `CLASSES`) where the shape is drawn, 0 on the background."""
    image = _background(rng, size)
    mask = Image.new("L", image.size, 0)
    draw, mask_draw, value = ImageDraw.Draw(image), ImageDraw.Draw(mask), CLASSES.index(shape) + 1
    radius = rng.uniform(0.28, 0.42) * size
    center = rng.uniform(radius, size - radius, size=2)
    angle = rng.uniform(-max_tilt, max_tilt)
    fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
    outline = tuple(int(c) for c in rng.integers(0, 256, size=3))
    box = [center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius]
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=2)
        mask_draw.ellipse(box, fill=value, outline=value, width=2)
    elif shape == "ring":
        draw.ellipse(box, fill=None, outline=fill, width=max(3, int(radius * 0.3)))
        mask_draw.ellipse(box, fill=None, outline=value, width=max(3, int(radius * 0.3)))
    elif shape == "crescent":
        crescent = Image.new("L", image.size, 0)
        crescent_draw = ImageDraw.Draw(crescent)
        crescent_draw.ellipse(box, fill=255)
        shift = (0.5 * radius * math.cos(angle), 0.5 * radius * math.sin(angle))
        crescent_draw.ellipse([box[0] + shift[0], box[1] + shift[1], box[2] + shift[0], box[3] + shift[1]], fill=0)
        image.paste(Image.new("RGB", image.size, fill), mask=crescent)
        mask.paste(value, mask=crescent)
    else:
        polygon = _polygon(center, radius, angle, SHAPES[shape])
        draw.polygon(polygon, fill=fill, outline=outline)
        mask_draw.polygon(polygon, fill=value, outline=value)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return image, mask


def make_demo_folder(path: str | Path, images_per_class: int = 100, size: int = 96, seed: int = 0,
                     classes: tuple[str, ...] = CLASSES, max_tilt: float = DEFAULT_TILT,
                     masks: str | Path | None = None) -> Path:
    """Write `path/CLASS/NNNN.jpg` for each class; returns the folder. Existing files are replaced.

    With `masks`, also each image's label map as `masks/CLASS/NNNN.png` (0 background, the class
    index in `CLASSES` + 1 on the shape), the folder `selfsup convert --masks` reads."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    for shape in classes:
        folder = path / shape
        folder.mkdir(parents=True, exist_ok=True)
        if masks is not None:
            (Path(masks) / shape).mkdir(parents=True, exist_ok=True)
        for index in range(images_per_class):
            image, mask = draw_image_and_mask(shape, rng, size, max_tilt)
            image.save(folder / f"{index:04d}.jpg", quality=90)
            if masks is not None:
                mask.save(Path(masks) / shape / f"{index:04d}.png")
    return path


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write the demo image folder (10 shape classes).")
    parser.add_argument("output")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_demo_folder(args.output, args.per_class, args.size, args.seed)
    print(f"wrote {args.per_class * len(CLASSES)} images in {len(CLASSES)} classes to {args.output}")


if __name__ == "__main__":
    main()
