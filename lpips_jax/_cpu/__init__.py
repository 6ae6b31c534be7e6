"""XLA:CPU fast paths behind :mod:`lpips_jax._ops`: the only backend-specific code.

Each conv form computes the same conv as the plain one in ``_ops``, and :func:`max_pool`
the same max-pool (tests compare them in float64); each is kept because an interleaved
A/B of the whole distance showed it pays >= 15% on some benchmark row (``docs/speed.md``).
Conv forms are chosen per layer from the shapes, which are static; the thresholds were
measured on AVX-512 and re-checked by that A/B on an AVX2-only 2-core x86 CPU, except
``_EIGEN_BATCH_AREA``, measured on AVX-512 alone.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from lpips_jax._cpu import _conv

# im2col: patches and one matmul; eigen: XLA's conv kept off YNNPACK; s2d: alex's strided
# first conv differentiated as a space-to-depth conv; rows: ST-LPIPS alex's stride-1 first
# conv differentiated as W-patches and a kh x 1 conv; split: forward and derivatives in
# different forms; pool: the max-pool as a maximum of views, differentiated by selects.
# (Measured and removed: channel sums without a leading batch of 1: <= 8% on every row.)
FAST_PATHS = ("im2col", "eigen", "s2d", "rows", "split", "pool")
CONV_PATHS = frozenset(FAST_PATHS) - {"pool"}

# Per-layer choice (forward form, derivative form), by output rows (N*oh*ow), map area,
# kernel and patch size; see docs/speed.md for the per-layer timings behind each rule.
_SMALL_ROWS = 128  # im2col both ways for small outputs ...
_TINY_MAP, _TINY_MAP_ROWS = 16, 512  # ... or maps of <= 4x4 up to 512 rows
_K5_MAP, _K5_ROWS = 64, 4096  # alex's 5x5 conv on maps of <= 8x8
_SPLIT_ROWS, _SPLIT_PATCH = 1024, 10 * 2**20 // 4  # XLA forward, im2col derivatives
_STEM_PATCH = 16 * 2**20 // 4  # the first conv (3 channels): im2col derivatives up to 16 MB
_EIGEN_AREA = 900  # maps of 30x30 and more: Eigen both ways ...
_EIGEN_BATCH_AREA = 64  # ... and of 8x8 and more past the split's rows (batched small maps)


def choose(x_shape, k_shape, stride, dtype, forms: frozenset[str]) -> tuple[str, str]:
    """``(forward form, derivative form)`` of a conv on a (padded) input of ``x_shape``,
    among the enabled ``forms`` (``"xla"`` is always there)."""
    fwd, jvp = _choose_all(x_shape, k_shape, stride)
    if dtype != jnp.float32:
        # Half-precision convs never go to YNNPACK; float64 must stay there (its Eigen
        # forms fall to a generic loop, 15x slower).
        fwd, jvp = ("xla" if f == "eigen" else f for f in (fwd, jvp))
    fwd, jvp = (f if f in forms else "xla" for f in (fwd, jvp))
    if fwd != jvp and "split" not in forms:
        jvp = fwd
    return fwd, jvp


def _choose_all(x_shape, k_shape, stride) -> tuple[str, str]:
    n, h, w, ci = x_shape
    kh, kw = k_shape[0], k_shape[1]
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    rows, area = n * oh * ow, oh * ow
    if kh == 1 and kw == 1:
        return "im2col", "im2col"  # a plain matmul
    if kh > 5:  # alex's 11x11 first conv: stride 4, or 1 in ST-LPIPS
        return "xla", ("s2d" if stride > 1 else "rows")
    if rows <= _SMALL_ROWS or (area <= _TINY_MAP and rows <= _TINY_MAP_ROWS):
        return "im2col", "im2col"
    if kh == 5 and area <= _K5_MAP and rows <= _K5_ROWS:
        return "eigen", "im2col"
    patch = rows * kh * kw * ci  # elements of im2col's patch matrix
    if stride == 1 and ci <= 4 and patch <= _STEM_PATCH:
        return "xla", "im2col"
    if stride == 1 and area >= _EIGEN_AREA:
        return "eigen", "eigen"
    if stride == 1 and rows <= _SPLIT_ROWS and patch <= _SPLIT_PATCH:
        return "xla", "im2col"
    if stride == 1 and area >= _EIGEN_BATCH_AREA:
        return "eigen", "eigen"
    return "xla", "xla"


def conv2d(x, kernel, stride: int, padding: int, precision: Any, forms: frozenset[str]) -> jax.Array:
    """The conv of ``_ops.conv2d`` (without bias) in the forms chosen for its shapes."""
    n, h, w, ci = x.shape
    padded = (n, h + 2 * padding, w + 2 * padding, ci)
    dtype = jnp.result_type(x, kernel)
    fwd, jvp = choose(padded, kernel.shape, stride, dtype, forms)
    if fwd == jvp and fwd != "eigen":  # one form, JAX's own derivatives
        return _conv.conv(x, kernel, stride, padding, fwd, precision)
    return _conv.split_conv(x, kernel, stride, padding, fwd, jvp, precision)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def max_pool(x, kernel: int, stride: int) -> jax.Array:
    """The VALID max-pool of ``_ops.max_pool`` as the maximum of the windows' strided views.
    Its derivative goes to each window's first maximum in row-major order, as JAX's own
    (select-and-scatter, which XLA:CPU ran 5-7x slower than these selects on ST-LPIPS's
    stride-1 pools, and its forward ``reduce_window`` 4-8x slower)."""
    return functools.reduce(jnp.maximum, _pool_views(x, kernel, stride))


@max_pool.defjvp
def _max_pool_jvp(kernel, stride, primals, tangents):
    (x,), (dx,) = primals, tangents
    views = _pool_views(x, kernel, stride)
    y = functools.reduce(jnp.maximum, views)
    first = jnp.full(y.shape, len(views) - 1, jnp.int8)  # each window's first maximum
    for k in range(len(views) - 2, -1, -1):
        first = jnp.where(views[k] == y, jnp.int8(k), first)
    # Materialised: fused into the transposed selects (nine pads), XLA:CPU recomputed the
    # window maximum per pad and element (squeeze 64x64 batch 32: one loop, 420 ms).
    y, first = lax.optimization_barrier((y, first))
    tangent_views = _pool_views(dx, kernel, stride)
    picked = [jnp.where(first == k, t, jnp.zeros_like(t)) for k, t in enumerate(tangent_views)]
    return y, functools.reduce(lax.add, picked)


def _pool_views(x, kernel, stride):
    oh, ow = (x.shape[-3] - kernel) // stride + 1, (x.shape[-2] - kernel) // stride + 1
    return _conv.window_slices(x, (kernel, kernel), stride, oh, ow)
