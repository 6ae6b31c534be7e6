"""The trunks' ops: convolution and max-pool (the backend seam), and the fixed filters of
DISTS and ST-LPIPS.

The trunks call these and nothing backend-specific. Each is plain ``lax``/``jnp`` with
JAX's own derivatives: what GPU and TPU run. For the convolution and the max-pool on XLA:CPU,
where other forms measured faster (``docs/speed.md``), :func:`jax.lax.platform_dependent` swaps in
those of :mod:`lpips_jax._cpu` when the function is lowered, so the choice follows the
platform the computation is lowered for (right under ``jax.export`` with several
platforms, and for CPU arrays on a GPU host), never ``jax.default_backend()``.

The fast paths are on by default only with the jaxlib they were measured on (0.10.x); with
any other jaxlib the default is none of them, XLA:CPU's own forms.

Override (tests, benchmarks): the environment variable ``LPIPS_JAX_CPU_FAST_PATHS``
(``"all"``; ``"none"``; or a comma-separated subset of :data:`FAST_PATHS`) read at import,
or :func:`fast_paths` in code. Both act when a function is traced: a function already
jitted keeps the forms it was traced with.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax import lax

from lpips_jax import _cpu

# The CPU fast paths that can be switched on or off one by one.
FAST_PATHS = _cpu.FAST_PATHS


def _check(names: Iterable[str]) -> frozenset[str]:
    names = frozenset(names)
    unknown = sorted(names - set(FAST_PATHS))
    if unknown:
        raise ValueError(f"unknown CPU fast paths {unknown}: expected a subset of {', '.join(FAST_PATHS)}")
    return names


def _parse(text: str) -> frozenset[str]:
    text = text.strip()
    if text in ("", "all"):
        return frozenset(FAST_PATHS)
    if text == "none":
        return frozenset()
    try:
        return _check(t.strip() for t in text.split(",") if t.strip())
    except ValueError as e:
        raise ValueError(f"LPIPS_JAX_CPU_FAST_PATHS={text!r}: {e}, or 'all' or 'none'") from None


# The jaxlib releases (major.minor) the fast paths were measured faster on (docs/speed.md).
MEASURED_JAXLIB = ("0.10",)


def default_setting(jaxlib_version: str) -> str:
    """``LPIPS_JAX_CPU_FAST_PATHS``'s value when unset: ``"all"`` on a measured jaxlib
    (:data:`MEASURED_JAXLIB`), ``"none"`` on any other."""
    return "all" if ".".join(jaxlib_version.split(".")[:2]) in MEASURED_JAXLIB else "none"


_enabled: frozenset[str] = _parse(
    os.environ.get("LPIPS_JAX_CPU_FAST_PATHS", default_setting(jaxlib.__version__))
)


@contextlib.contextmanager
def fast_paths(enabled: bool | Iterable[str]) -> Iterator[None]:
    """Within the block, trace with all CPU fast paths (``True``), none (``False``) or the
    named subset of :data:`FAST_PATHS`."""
    global _enabled
    if isinstance(enabled, bool):
        names = frozenset(FAST_PATHS) if enabled else frozenset()
    else:
        names = _check(enabled)
    before, _enabled = _enabled, names
    try:
        yield
    finally:
        _enabled = before


def enabled() -> frozenset[str]:
    """The CPU fast paths that tracing uses now."""
    return _enabled


def conv2d(
    x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int, padding: int, precision: Any = None
) -> jax.Array:
    """NHWC x HWIO convolution plus bias, as torch's ``Conv2d`` (symmetric zero padding)."""

    def plain(x, kernel, bias):
        y = lax.conv_general_dilated(
            x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision,
        )  # fmt: skip
        return y + bias

    forms = _enabled & _cpu.CONV_PATHS
    if not forms:
        return plain(x, kernel, bias)

    def fast(x, kernel, bias):
        return _cpu.conv2d(x, kernel, stride, padding, precision, forms) + bias

    # fast where lowered for the CPU, plain elsewhere
    return lax.platform_dependent(x, kernel, bias, cpu=fast, default=plain)


def max_pool(x: jax.Array, kernel: int, stride: int, ceil: bool) -> jax.Array:
    """NHWC max-pool (no padding) with PyTorch's floor or ceil mode output size."""
    h, w = x.shape[-3], x.shape[-2]
    oh, ow = pool_output_size(h, kernel, stride, ceil), pool_output_size(w, kernel, stride, ceil)
    # Right/bottom padding with -inf so that VALID windows give the ceil-mode sizes.
    ph, pw = max((oh - 1) * stride + kernel - h, 0), max((ow - 1) * stride + kernel - w, 0)
    if ph or pw:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(0, ph), (0, pw), (0, 0)], constant_values=-jnp.inf)
    lead = (1,) * (x.ndim - 3)
    window, strides = (*lead, kernel, kernel, 1), (*lead, stride, stride, 1)

    def plain(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, "VALID")

    if "pool" not in _enabled:
        return plain(x)
    return lax.platform_dependent(x, cpu=lambda x: _cpu.max_pool(x, kernel, stride), default=plain)


def _filter3(x: jax.Array, taps, stride: int, pad: tuple[int, int], mode: str) -> jax.Array:
    """The separable 3x3 filter ``taps (x) taps`` of each channel, padded by ``pad`` (before,
    after) on H and W in ``mode`` (``"constant"``: zeros, or ``"reflect"``), with ``stride``."""
    if mode == "constant":  # a zero pad fuses into XLA:CPU's filter loops; a reflection does not
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [pad, pad, (0, 0)])
        pad = (0, 0)
    for axis in (x.ndim - 3, x.ndim - 2):
        x = _filter3_axis(x, taps, stride, pad, axis)
    return x


def _filter3_axis(x: jax.Array, taps, stride: int, pad: tuple[int, int], axis: int) -> jax.Array:
    """``_filter3`` along one axis with reflection padding ``pad``, without a padded copy: the
    outputs whose window lies in ``x`` from three strided views, the few at the borders from
    single rows (a reflection pad, then filtering, was 2-10x slower forward and 2-7x
    backward on XLA:CPU, ST-LPIPS's maps; with zero padding the padded form was the
    faster, 10 vs 36 ms backward)."""
    n = x.shape[axis]
    src = np.pad(np.arange(n), pad, mode="reflect").tolist()  # source row of each padded one
    m = (len(src) - 3) // stride + 1
    # outputs lo..hi-1 have their windows inside x (padded rows pad[0] .. pad[0] + n - 1)
    lo = -(-pad[0] // stride)
    hi = max(lo, min(m, (pad[0] + n - 3) // stride + 1))
    t = [jnp.asarray(v, x.dtype) for v in taps]

    def row(i):  # one border output from single rows
        views = (lax.slice_in_dim(x, q, q + 1, 1, axis) for q in src[stride * i : stride * i + 3])
        return functools.reduce(lax.add, [tap * v for tap, v in zip(t, views)])

    parts = [row(i) for i in range(min(lo, m))]
    if hi > lo:
        start = stride * lo - pad[0]
        a, b, c = (
            lax.slice_in_dim(x, start + k, start + k + stride * (hi - lo - 1) + 1, stride, axis)
            for k in range(3)
        )
        parts.append(t[0] * a + t[1] * b + t[2] * c)
    parts += [row(i) for i in range(hi, m)]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis)


# DISTS' L2 pooling window: np.hanning(5)[1:-1] = (0.5, 1, 0.5) in each direction, the 3x3
# outer product normalised to sum 1, i.e. (1, 2, 1) / 4 on each axis.
_HANNING3 = (0.25, 0.5, 0.25)


def l2_pool(x: jax.Array) -> jax.Array:
    """DISTS' L2 pooling: ``sqrt(hanning * x^2 + 1e-12)`` per channel, stride 2, zero
    padding 1 (``ceil(n / 2)`` outputs)."""
    return jnp.sqrt(_filter3(x * x, _HANNING3, 2, (1, 1), "constant") + jnp.asarray(1e-12, x.dtype))


# The blur pool's filter (Zhang, ICML 2019; ST-LPIPS uses size 3): the binomial (1, 2, 1) / 4
# on each axis.
_BINOMIAL3 = (0.25, 0.5, 0.25)


def blur_pool(x: jax.Array, pad: int) -> jax.Array:
    """Anti-aliased downsampling: the 3x3 binomial blur per channel on the input padded by
    reflection (``pad`` on each side), then every second pixel."""
    return _filter3(x, _BINOMIAL3, 2, (pad, pad), "reflect")


def pool_output_size(n: int, kernel: int, stride: int, ceil: bool) -> int:
    """PyTorch's ``MaxPool2d`` output length (padding 0, dilation 1)."""
    if not ceil:
        return (n - kernel) // stride + 1
    out = -(-(n - kernel) // stride) + 1
    return out - 1 if (out - 1) * stride >= n else out  # the last window starts inside
