"""Reading images for comparison, and the jitted computations every command runs.

Every image is read by :func:`lpips_jax.io.read_pixels` (what :func:`lpips_jax.read_image`
reads, before the scaling to ``[0, 1]``) and compared by one ``jax.jit`` of
``lpips_jax.distance(params, to_unit(x), to_unit(y), normalize=True)`` (``distance_map``
for ``map``; E-LPIPS in ``dirs`` and ``allpairs``: each pair alone with its row's key,
:func:`_row_distances01`), so the numbers printed equal the library's on ``read_image``
arrays. 8-bit pairs travel to the device as uint8 (a quarter of the bytes) and are scaled
there.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

import lpips_jax
from lpips_jax import _elpips
from lpips_jax import io as lio
from lpips_jax._sharding import row_distances
from lpips_jax.cli._common import err


class PairFailure(Exception):
    """One pair (or image) of a run failed; the message names the file(s)."""


# The jitted computations: params are an argument (not constants); one compile per shape.


def _distance01(params: Any, x: jax.Array, y: jax.Array, key: Any = None, *, samples: int = 1) -> jax.Array:
    """``(N,)`` distances of ``(N, H, W, 3)`` pixels (uint8, or float32 in ``[0, 1]``); a
    random metric (E-LPIPS) takes ``key`` and ``samples`` (its draws are over the batch)."""
    return lpips_jax.distance(
        params, lio.to_unit(x), lio.to_unit(y), normalize=True, key=key, samples=samples
    )


def _row_distances01(
    params: Any, x: jax.Array, y: jax.Array, rows: jax.Array, key: Any, *, samples: int, mesh: Any
) -> jax.Array:
    """A random metric's ``(N,)`` distances of ``(N, H, W, 3)`` pixels split over ``mesh``:
    pair ``n`` alone with the key ``fold_in(key, rows[n])`` (:func:`lpips_jax._sharding.row_distances`)."""
    xy = (lio.to_unit(x), lio.to_unit(y))
    (d,) = row_distances(params, key, rows, xy, samples=samples, normalize=True, mesh=mesh)
    return d


def _map01(params: lpips_jax.LPIPSParams, x: jax.Array, y: jax.Array) -> jax.Array:
    """``(N, H, W)`` distance maps of ``(N, H, W, 3)`` pixels."""
    return lpips_jax.distance_map(params, lio.to_unit(x), lio.to_unit(y), normalize=True)


def features01(params: lpips_jax.LPIPSParams, x: jax.Array) -> tuple[jax.Array, ...]:
    """Normalised taps, each ``(N, h, w, C)``, of ``(N, H, W, 3)`` pixels."""
    return lpips_jax.features(params, lio.to_unit(x), normalize=True)


def _cross(params: lpips_jax.LPIPSParams, fa: tuple, fb: tuple) -> jax.Array:
    """``(B, B')`` distances between every image of ``fa`` and every image of ``fb``.

    ``fa``, ``fb``: feature taps of ``B`` and ``B'`` images. One row at a time
    (``lax.map``), so the memory held is that of ``B'`` pairs, not ``B * B'``.
    """

    def row(f_i):
        return lpips_jax.distance_from_features(params, tuple(t[None] for t in f_i), fb)

    return jax.lax.map(row, fa)


distance_jit = jax.jit(_distance01, static_argnames="samples")
row_distance_jit = jax.jit(_row_distances01, static_argnames=("samples", "mesh"))
map_jit = jax.jit(_map01)
features_jit = jax.jit(features01)
cross_jit = jax.jit(_cross)


def reading_options() -> argparse.ArgumentParser:
    """``--resize``, for every command that compares two images."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--resize",
        type=parse_resize,
        metavar="{a,b,WxH}",
        help="when sizes differ: resize B to A's size (a), A to B's (b), or both to WxH "
        "(Pillow bicubic); default: different sizes are an error",
    )
    return parent


def _wxh(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]}"


def parse_resize(text: str) -> str | tuple[int, int]:
    """``--resize`` value: ``"a"``, ``"b"`` or ``(width, height)`` from ``"WxH"``."""
    t = text.strip().lower()
    if t in ("a", "b"):
        return t
    m = re.fullmatch(r"(\d+)x(\d+)", t)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a (resize B to A's size), b (A to B's size) or WxH, e.g. 256x256"
        )
    return int(m[1]), int(m[2])


def check_min_size(path: str, a: np.ndarray, params: Any) -> None:
    """Fail (:class:`PairFailure`) when image ``a`` of ``path`` is smaller than the metric allows."""
    if getattr(params, "random", False):  # E-LPIPS: the size depends on --scale-levels
        _check_elpips_size(path, a, params.scale_levels)
        return
    m = lpips_jax.min_size(params.trunk_net)
    if a.shape[0] < m or a.shape[1] < m:
        raise PairFailure(
            f"{path} is {_wxh(a)}: net {params.net!r} needs images of at least {m}x{m} pixels "
            f"(minimum sizes: " + ", ".join(f"{n} {lpips_jax.min_size(n)}" for n in lpips_jax.NETS) + ")"
        )


def _check_elpips_size(path: str, a: np.ndarray, levels: int) -> None:
    side, m, least = min(a.shape[:2]), _elpips.min_size(levels), _elpips.min_size(1)
    if side >= m:
        return
    if side < least:
        hint = f"E-LPIPS needs at least {least}x{least} even with --scale-levels 1"
    else:
        rule = _elpips.levels_for_size(*a.shape[:2])
        hint = (  # the most levels that fit: 7 L + 2 <= side
            f"give --scale-levels {(side - 2) // 7} or fewer (the official rule, "
            f"max(1, min(H, W) // 64), gives {rule})"
        )
    raise PairFailure(
        f"{path} is {_wxh(a)}: E-LPIPS with --scale-levels {levels} needs images of at least "
        f"{m}x{m} pixels (7 * levels + 2); {hint}"
    )


def device_pixels(a: np.ndarray) -> np.ndarray:
    """8-bit pixels stay uint8 (scaled on the device); others become float32 in [0, 1]."""
    return a if a.dtype == np.uint8 else lio.to_unit(a)


def read_pair(
    path_a: str, path_b: str, *, resize: Any, params: Any
) -> tuple[np.ndarray, np.ndarray, list[lio.ImageInfo]]:
    """Read two images for comparison: two ``(H, W, 3)`` arrays of the same shape and dtype.

    Both uint8 (8-bit files) or both float32 in ``[0, 1]``; ``lio.to_unit`` of each is
    ``read_image`` of its file. ``resize``: ``None`` (sizes must match), ``"a"`` (B
    resized to A's size), ``"b"`` (A to B's) or ``(width, height)`` (both). Raises
    :class:`lpips_jax.io.ImageError` or :class:`PairFailure` (different sizes, smaller
    than the minimum of the metric ``params``).
    """
    if resize == "b":
        b, ib = lio.read_pixels(path_b, return_info=True)
        a, ia = lio.read_pixels(path_a, resize=(b.shape[1], b.shape[0]), return_info=True)
    else:
        size = resize if isinstance(resize, tuple) else None
        a, ia = lio.read_pixels(path_a, resize=size, return_info=True)
        if resize == "a":
            size = (a.shape[1], a.shape[0])
        b, ib = lio.read_pixels(path_b, resize=size, return_info=True)
    if a.dtype != b.dtype or a.dtype != np.uint8:
        a, b = lio.to_unit(a), lio.to_unit(b)
    if a.shape != b.shape:
        raise PairFailure(
            f"sizes differ: {path_a} is {_wxh(a)} but {path_b} is {_wxh(b)} (width x height); "
            "pass --resize a (B to A's size), --resize b (A to B's) or --resize WxH"
        )
    check_min_size(path_a, a, params)
    return a, b, [ia, ib]


class Notes:
    """Things to tell the user once per run (alpha channels dropped)."""

    def __init__(self) -> None:
        self.alpha: list[str] = []

    def add(self, infos: Iterable[lio.ImageInfo]) -> None:
        self.add_paths(info.path for info in infos if info.alpha_dropped)

    def add_paths(self, paths: Iterable[str]) -> None:
        """Images whose alpha channel was dropped, each noted once."""
        for path in paths:
            if path not in self.alpha:
                self.alpha.append(path)

    def report(self) -> None:
        if self.alpha:
            n = len(self.alpha)
            more = f" and {n - 1} more" if n > 1 else ""
            err(
                f"note: ignored the alpha channel of {n} image{'s' if n > 1 else ''} "
                f"({self.alpha[0]}{more}): LPIPS compares RGB only"
            )
