"""Reading image files as float arrays for the LPIPS metric.

Contract: :func:`read_image` returns a ``(H, W, 3)`` float32 array with values in
``[0, 1]``, C-contiguous; pass it to the metric with ``normalize=True``.
:func:`read_pixels` is the same reading before that scaling (uint8, uint16 or float32,
``to_unit`` scales them): the command line reads every file with it and scales on the
device, so a value computed by ``lpips-jax`` equals
``lpips_jax.distance(params, read_image(a), read_image(b), normalize=True)``.

What is read (through Pillow):

- formats: anything Pillow opens (PNG, JPEG, BMP, WebP, TIFF, GIF, ...); the EXIF
  orientation tag is applied (``ImageOps.exif_transpose``), so an image reads the way a
  viewer shows it;
- 8-bit images are scaled by ``1 / 255``; 16-bit ones by ``1 / 65535``: grayscale
  (``I;16``), and RGB/RGBA whose low bytes Pillow drops (PNG, raw TIFF) are decoded at
  full precision; 32-bit integer (``I``) images are taken as 16-bit values (``/ 65535``,
  clipped) and float (``F``) images as values in ``[0, 1]`` (clipped);
- grayscale and bilevel images are replicated to 3 channels; palette, CMYK, YCbCr, LAB
  and HSV images are converted to RGB;
- an alpha channel (RGBA, LA, palette transparency) is dropped, not composited, as the
  official ``lpips.load_image`` does; :class:`ImageInfo` ``.alpha_dropped`` says so (this
  module never prints: the caller decides whether to tell the user).

Resizing (``resize=(width, height)``) is Pillow's bicubic filter applied to each float
channel (antialiased when shrinking), clipped to ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "PIXEL_SCALE",
    "ImageError",
    "ImageInfo",
    "image_extensions",
    "is_image_file",
    "read_image",
    "read_pixels",
    "resize_image",
    "to_unit",
]

# EXIF tag 0x0112: Orientation (1 = as stored).
_ORIENTATION = 0x0112
# Rawmodes of 16-bit colour images that Pillow decodes to 8 bits (it keeps the high byte).
# Decoding the same data once more with the byte order swapped yields the low bytes.
_SWAP16 = {
    "RGB;16B": "RGB;16L",
    "RGB;16L": "RGB;16B",
    "RGBA;16B": "RGBA;16L",
    "RGBA;16L": "RGBA;16B",
}
_GRAY16 = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageError(ValueError):
    """An image file cannot be read. ``path`` is the file; the message starts with it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What :func:`read_image` found in a file.

    Attributes:
      path: the file, as given.
      format: Pillow's format name (``"PNG"``, ``"JPEG"``, ...).
      mode: Pillow's mode of the file (``"RGB"``, ``"I;16"``, ``"P"``, ``"RGBA"``, ...).
      bits: bits per channel of the decoded values (8, 16 or 32).
      size: ``(width, height)`` after the EXIF orientation, before any resize.
      exif_transposed: the EXIF orientation tag turned or flipped the image.
      alpha_dropped: the file had an alpha channel (or palette transparency), ignored.
      resized: the returned array was resized to the ``resize`` argument.
    """

    path: str
    format: str | None
    mode: str
    bits: int
    size: tuple[int, int]
    exif_transposed: bool
    alpha_dropped: bool
    resized: bool


@functools.lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (``".png"``, ``".jpg"``, ...) of formats Pillow opens."""
    Image.init()
    exts = Image.registered_extensions()
    return frozenset(ext.lower() for ext, fmt in exts.items() if fmt in Image.OPEN)


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path``'s extension (any case) is one Pillow can open, e.g. ``.png``."""
    return os.path.splitext(os.fspath(path))[1].lower() in image_extensions()


def _check_size(resize: Any) -> tuple[int, int] | None:
    if resize is None:
        return None
    ok = (
        isinstance(resize, (tuple, list))
        and len(resize) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in resize)
        and all(v > 0 for v in resize)
    )
    if not ok:
        raise ValueError(f"resize={resize!r}: expected (width, height), two positive integers")
    return int(resize[0]), int(resize[1])


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``(H, W, C)`` float image to ``size = (width, height)``.

    Pillow's bicubic filter on each float32 channel (antialiased when shrinking), clipped
    to ``[0, 1]``. Returns ``(height, width, C)`` float32; the input itself when the size
    is already right.
    """
    w, h = _check_size(size)
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image has shape {image.shape}: expected (H, W, C)")
    if image.shape[:2] == (h, w):
        return image
    chans = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize(
                (w, h), Image.Resampling.BICUBIC
            )
        )
        for c in range(image.shape[-1])
    ]
    return np.clip(np.stack(chans, axis=-1), 0.0, 1.0).astype(np.float32)


def _rawmode(im: Image.Image) -> str | None:
    tile = getattr(im, "tile", None)
    if not tile or len(tile) != 1:
        return None
    args = tile[0].args if hasattr(tile[0], "args") else tile[0][3]
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _low_bytes(path: str, rawmode: str) -> Image.Image | None:
    """The low bytes of a 16-bit colour image that Pillow decodes to its high bytes."""
    try:
        lo = Image.open(path)
        t = lo.tile[0]
        args = t.args
        new = _SWAP16[rawmode] if isinstance(args, str) else (_SWAP16[rawmode], *args[1:])
        lo.tile = [t._replace(args=new)]
        lo.load()
        return lo
    except Exception:  # an unusual layout: keep Pillow's 8-bit decoding
        return None


def _as_pixels(im: Image.Image, lo: Image.Image | None) -> tuple[np.ndarray, int, bool]:
    """``(H, W, 3)`` pixels (uint8, uint16 or float32), bits per channel, alpha dropped."""
    mode = im.mode
    alpha = False
    if lo is not None:  # 16-bit RGB or RGBA
        a = (np.asarray(im, np.uint16) << 8) | np.asarray(lo, np.uint16)
        return _rgb(a[..., :3], np.uint16), 16, a.shape[-1] == 4
    if mode in _GRAY16:
        return _rgb(np.asarray(im), np.uint16), 16, False
    if mode == "I":
        a = np.clip(np.asarray(im).astype(np.float32) / np.float32(65535), 0.0, 1.0)
        return _rgb(a, np.float32), 32, False
    if mode == "F":
        return _rgb(np.clip(np.asarray(im, np.float32), 0.0, 1.0), np.float32), 32, False
    if mode == "P":
        has_alpha = "transparency" in im.info or im.palette.mode == "RGBA"
        im, alpha = im.convert("RGBA" if has_alpha else "RGB"), has_alpha
    elif mode == "PA":
        im, alpha = im.convert("RGBA"), True
    elif mode in ("LA", "La"):
        im, alpha = im.convert("LA").getchannel(0), True
    elif mode == "1":
        im = im.convert("L")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode not in ("L", "RGB", "RGBA", "RGBX"):
        im = im.convert("RGB")
    if im.mode == "RGBA":
        alpha = True
    a = np.asarray(im, np.uint8)
    if a.ndim == 3:
        a = a[..., :3]
    return _rgb(a, np.uint8), 8, alpha


def _rgb(a: np.ndarray, dtype: Any) -> np.ndarray:
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return np.ascontiguousarray(a, dtype=dtype)


#: Pixel dtypes of :func:`read_pixels` and the divisor that maps each to ``[0, 1]``.
PIXEL_SCALE = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535, np.dtype(np.float32): 1}


def to_unit(pixels: np.ndarray) -> np.ndarray:
    """Pixels of :func:`read_pixels` as float32 in ``[0, 1]`` (``/ 255``, ``/ 65535``).

    Works on NumPy and JAX arrays alike (e.g. inside ``jax.jit``, so that images travel to
    the device as 8 or 16-bit integers). Any shape; the dtype sets the scale.
    """
    scale = PIXEL_SCALE.get(np.dtype(pixels.dtype))
    if scale is None:
        raise TypeError(f"pixels have dtype {np.dtype(pixels.dtype).name}: expected uint8, uint16 or float32")
    x = pixels.astype(np.float32)
    return x if scale == 1 else x / np.float32(scale)


def _decode(path: str) -> tuple[np.ndarray, ImageInfo]:
    with Image.open(path) as im:
        fmt, mode = im.format, im.mode
        raw = _rawmode(im)  # before getexif(), which may decode a PNG (and clear its tile)
        orientation = im.getexif().get(_ORIENTATION, 1)
        lo = _low_bytes(path, raw) if raw in _SWAP16 else None
        im.load()
        try:
            if orientation not in (None, 1):
                im_t = ImageOps.exif_transpose(im)
                lo = ImageOps.exif_transpose(lo) if lo is not None else None
            else:
                im_t = im
            a, bits, alpha = _as_pixels(im_t, lo)
        finally:
            if lo is not None:
                lo.close()
    info = ImageInfo(
        path=path,
        format=fmt,
        mode=mode,
        bits=bits,
        size=(a.shape[1], a.shape[0]),
        exif_transposed=orientation not in (None, 1),
        alpha_dropped=alpha,
        resized=False,
    )
    return a, info


def read_pixels(
    path: str | os.PathLike,
    *,
    resize: tuple[int, int] | None = None,
    return_info: bool = False,
) -> np.ndarray | tuple[np.ndarray, ImageInfo]:
    """Read an image file as ``(H, W, 3)`` pixels, before scaling to ``[0, 1]``.

    The dtype says the scale: uint8 (8-bit files, ``/ 255``), uint16 (16-bit files,
    ``/ 65535``) or float32 (already in ``[0, 1]``: resized images, 32-bit files).
    ``to_unit(read_pixels(p, ...))`` equals ``read_image(p, ...)`` exactly; the command
    line reads this way so that images go to the device as integers. Arguments, modes
    and errors as :func:`read_image`.
    """
    size = _check_size(resize)
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ImageError(p, "no such file")
    if os.path.isdir(p):
        raise ImageError(p, "is a folder, expected an image file")
    try:
        a, info = _decode(p)
    except ImageError:
        raise
    except Exception as e:  # Pillow raises many types for damaged files
        reason = str(e) or type(e).__name__
        raise ImageError(p, f"cannot read image ({type(e).__name__}: {reason})") from e
    if size is not None and (a.shape[1], a.shape[0]) != size:
        a = resize_image(to_unit(a), size)
        info = dataclasses.replace(info, resized=True)
    return (a, info) if return_info else a


def read_image(
    path: str | os.PathLike,
    *,
    resize: tuple[int, int] | None = None,
    return_info: bool = False,
) -> np.ndarray | tuple[np.ndarray, ImageInfo]:
    """Read an image file as a ``(H, W, 3)`` float32 array in ``[0, 1]``.

    Args:
      path: the image file (any format Pillow opens; see the module docstring for modes).
      resize: ``(width, height)``: resize to this size when the image has another
        (bicubic, see :func:`resize_image`). ``None`` keeps the file's size.
      return_info: also return an :class:`ImageInfo` (mode, bits, whether the alpha
        channel was dropped, the size before resizing, ...).

    Returns:
      ``(H, W, 3)`` float32 in ``[0, 1]``, or ``(array, ImageInfo)`` with ``return_info``.

    Raises:
      ImageError: the file is missing, not an image, truncated or otherwise unreadable;
        the message starts with the path.
      ValueError: ``resize`` is not two positive integers.
    """
    a, info = read_pixels(path, resize=resize, return_info=True)
    a = np.ascontiguousarray(to_unit(a))
    return (a, info) if return_info else a
