"""Reading one image file for conversion: validate it by a full decode, keep or re-encode it.

Runs in the conversion's worker processes; PIL and numpy only. Only regular files are read.
"""

from __future__ import annotations

import io
import os
import stat
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from selfsup.pipeline.source_scan import describe_file_type

ORIENTATION_TAG = 0x0112
LOSSY_FORMATS = ("JPEG", "MPO", "WEBP")  # re-encoded as JPEG; every other format as PNG
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _decodes_as_is(image: Image.Image, data: bytes) -> bool:
    """True for files DALI's decoder reads to the same RGB pixels as PIL: 8-bit RGB/gray JPEG or PNG."""
    if image.format == "JPEG":
        return image.mode in ("RGB", "L")
    if image.format == "PNG":  # IHDR: bit depth at byte 24, colour type (0 gray, 2 RGB) at byte 25
        return (image.mode in ("RGB", "L") and "transparency" not in image.info
                and len(data) > 25 and data[24] == 8 and data[25] in (0, 2))
    return False


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit gray scaled down, transparency composited on white, other modes converted."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).round().astype(np.uint8))
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


class NotRegularFile(Exception):
    """The path is not a regular file (a FIFO, a device, ...): it is not read."""


def read_regular_file(path: Path) -> bytes:
    """The bytes of `path` if it is a regular file; NotRegularFile otherwise, without blocking.

    The scan of SRC lists only regular files, but one can be replaced by a FIFO before it is
    read: it is opened non-blocking (which never waits for a writer) and checked again.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):  # checked before opening, so a device is never opened
        raise NotRegularFile(describe_file_type(mode))
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(descriptor, "rb") as handle:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(describe_file_type(mode))
        os.set_blocking(descriptor, True)  # a regular file: reads as usual
        return handle.read()


def prepare_image(root: str, relative: str, max_side: int | None) -> dict:
    """Read, fully decode and (when needed) re-encode one file; runs in the worker processes.

    Returns {"data", "ext", "width", "height", "original_width", "original_height", "crc32"}
    or {"reason": why the file was skipped}. The original bytes are kept for 8-bit RGB/gray
    JPEG and PNG without alpha (DALI decodes them as they are). Everything else is re-encoded
    after applying the EXIF orientation: lossy sources (WebP, CMYK or EXIF-rotated JPEG) as
    JPEG quality 95 (4:4:4), lossless ones (PNG with alpha/palette/16-bit/LA, BMP, TIFF) as RGB PNG,
    transparency composited on white. With `max_side`, an image whose longer side exceeds it is
    downscaled (Lanczos) to exactly that side and stored as JPEG quality 90. "original_*" is
    the file's pixel size before any orientation or resizing.
    """
    try:
        data = read_regular_file(Path(root, relative))
    except NotRegularFile as error:
        return {"reason": f"not a regular file: {error}"}
    except OSError as error:
        return {"reason": f"cannot read file: {error.strerror or error}"}
    if not data:
        return {"reason": "empty file"}
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            original = image.size
            orientation = image.getexif().get(ORIENTATION_TAG, 1)
            oriented = orientation in (2, 3, 4, 5, 6, 7, 8)
            width, height = (original[1], original[0]) if orientation in (5, 6, 7, 8) else original
            too_big = max_side is not None and max(width, height) > max_side
            if not too_big and not oriented and _decodes_as_is(image, data):
                stored, ext = data, "jpg" if image.format == "JPEG" else "png"
            else:
                rgb = _to_rgb(ImageOps.exif_transpose(image) if oriented else image)
                if too_big:
                    scale = max_side / max(rgb.size)
                    size = tuple(max_side if side == max(rgb.size) else max(1, round(side * scale))
                                 for side in rgb.size)
                    rgb = rgb.resize(size, Image.Resampling.LANCZOS)
                buffer = io.BytesIO()
                if too_big or image.format in LOSSY_FORMATS:
                    # quality 95 keeps full-resolution colour (4:4:4) to avoid a visible second loss
                    rgb.save(buffer, "JPEG", quality=90 if too_big else 95, subsampling=-1 if too_big else 0)
                    ext = "jpg"
                else:
                    rgb.save(buffer, "PNG")
                    ext = "png"
                stored, (width, height) = buffer.getvalue(), rgb.size
    except UnidentifiedImageError:
        return {"reason": "not an image (PIL cannot identify the format)"}
    except Exception as error:  # PIL raises many types for bad files (OSError, SyntaxError, ValueError...)
        return {"reason": f"cannot decode image: {type(error).__name__}: {error}"}
    return {"data": stored, "ext": ext, "width": width, "height": height, "original_width": original[0],
            "original_height": original[1], "crc32": zlib.crc32(stored)}
