"""2D raster images (PNG, JPEG, BMP, GIF) through Pillow: 8/16-bit, signed 32-bit, float, palette, RGB(A).

The whole image is one dask chunk (these formats cannot be read by region); a 2D source becomes
a (1, Y, X[, C]) volume. Palette and 1-bit images are expanded to 8-bit gray / RGB first.
"""
from __future__ import annotations

import dask
import dask.array as da
import numpy as np
from PIL import Image

from cem_pipeline.sources.readers.base import ReaderError, Volume

Image.MAX_IMAGE_PIXELS = None  # EM montages are legitimately huge; memory is bounded by block_mb elsewhere

_MODES = {
    "L": (np.uint8, 0), "I;16": (np.uint16, 0), "I;16L": (np.uint16, 0), "I;16B": (np.uint16, 0),
    "I": (np.int32, 0), "F": (np.float32, 0), "RGB": (np.uint8, 3), "RGBA": (np.uint8, 4), "LA": (np.uint8, 2),
    "P": (np.uint8, 3), "PA": (np.uint8, 4), "1": (np.uint8, 0), "CMYK": (np.uint8, 3), "YCbCr": (np.uint8, 3),
}


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as image:
        if image.mode == "1":
            image = image.convert("L")
        elif image.mode in ("P", "CMYK", "YCbCr"):
            image = image.convert("RGB")
        elif image.mode == "PA":
            image = image.convert("RGBA")
        array = np.asarray(image)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("="))
    return array[None]


def read(path: str) -> Volume:
    try:
        with Image.open(path) as image:
            width, height = image.size
            mode = image.mode
            image.verify()
    except Exception as exc:  # Pillow raises many types for bad files
        raise ReaderError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None
    if mode not in _MODES:
        raise ReaderError(path, f"unsupported image mode {mode!r}")
    dtype, channels = _MODES[mode]
    shape = (1, height, width) + ((channels,) if channels else ())
    data = da.from_delayed(dask.delayed(_pixels, pure=True)(path), shape=shape, dtype=dtype)
    return Volume(data, None, "image", path, channels=bool(channels), meta={"mode": mode})
