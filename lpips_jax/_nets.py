"""The LPIPS trunks: torchvision's AlexNet, VGG16 and SqueezeNet-1.1 ``features``.

Each trunk is a Flax linen module taking ``(N, H, W, 3)`` images (already scaled) and
returning a tuple of taps, one ``(N, h_k, w_k, C_k)`` array per LPIPS layer.

Every trunk is described by a small table of layers indexed exactly like torchvision's
``features`` sequence, so parameter ``features_{i}`` here is ``features.{i}`` there. The
same table gives the shapes of the taps in pure Python (used for the minimum-size checks).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero


@dataclasses.dataclass(frozen=True)
class Conv:
    """``features.{index}``: a conv followed by ReLU (torchvision puts ReLU at index + 1)."""

    index: int
    features: int
    kernel: int
    stride: int = 1
    padding: int = 0


@dataclasses.dataclass(frozen=True)
class Pool:
    """A max-pool. ``ceil`` is PyTorch's ``ceil_mode``."""

    kernel: int
    stride: int
    ceil: bool = False


@dataclasses.dataclass(frozen=True)
class Fire:
    """SqueezeNet's Fire module at ``features.{index}``."""

    index: int
    squeeze: int
    expand: int  # each of expand1x1 and expand3x3; output has 2 * expand channels


@dataclasses.dataclass(frozen=True)
class Tap:
    """Record the current activation as an LPIPS tap."""


TAP = Tap()


def _convs(start: int, widths: Sequence[int]) -> list[Any]:
    # VGG blocks: 3x3 pad-1 convs, each followed by a ReLU (index + 1).
    return [Conv(start + 2 * i, w, 3, 1, 1) for i, w in enumerate(widths)]


ALEX_LAYERS = (
    Conv(0, 64, 11, 4, 2), TAP, Pool(3, 2),
    Conv(3, 192, 5, 1, 2), TAP, Pool(3, 2),
    Conv(6, 384, 3, 1, 1), TAP,
    Conv(8, 256, 3, 1, 1), TAP,
    Conv(10, 256, 3, 1, 1), TAP,
)  # fmt: skip

VGG_LAYERS = (
    *_convs(0, [64, 64]), TAP, Pool(2, 2),
    *_convs(5, [128, 128]), TAP, Pool(2, 2),
    *_convs(10, [256, 256, 256]), TAP, Pool(2, 2),
    *_convs(17, [512, 512, 512]), TAP, Pool(2, 2),
    *_convs(24, [512, 512, 512]), TAP,
)  # fmt: skip

SQUEEZE_LAYERS = (
    Conv(0, 64, 3, 2, 0), TAP, Pool(3, 2, ceil=True),
    Fire(3, 16, 64), Fire(4, 16, 64), TAP, Pool(3, 2, ceil=True),
    Fire(6, 32, 128), Fire(7, 32, 128), TAP, Pool(3, 2, ceil=True),
    Fire(9, 48, 192), TAP,
    Fire(10, 48, 192), TAP,
    Fire(11, 64, 256), TAP,
    Fire(12, 64, 256), TAP,
)  # fmt: skip

LAYERS = {"alex": ALEX_LAYERS, "vgg": VGG_LAYERS, "squeeze": SQUEEZE_LAYERS}


def _out_channels(layer: Any) -> int:
    return 2 * layer.expand if isinstance(layer, Fire) else layer.features


def tap_channels(net: str) -> tuple[int, ...]:
    """Channels of each tap, e.g. ``(64, 192, 384, 256, 256)`` for AlexNet."""
    out, channels = [], 3
    for layer in LAYERS[net]:
        if isinstance(layer, (Conv, Fire)):
            channels = _out_channels(layer)
        elif isinstance(layer, Tap):
            out.append(channels)
    return tuple(out)


def pool_output_size(n: int, kernel: int, stride: int, ceil: bool) -> int:
    """PyTorch's ``MaxPool2d`` output length (padding 0, dilation 1)."""
    if ceil:
        out = math.ceil((n - kernel) / stride) + 1
        # PyTorch: the last window must start inside the input.
        if (out - 1) * stride >= n:
            out -= 1
    else:
        out = (n - kernel) // stride + 1
    return out


def tap_sizes(net: str, size: int) -> tuple[int, ...]:
    """Spatial length of each tap for an input of length ``size`` (one axis).

    A length below 1 anywhere means the input is too small for this trunk.
    """
    out = []
    n = size
    for layer in LAYERS[net]:
        if isinstance(layer, Conv):
            n = (n + 2 * layer.padding - layer.kernel) // layer.stride + 1
        elif isinstance(layer, Pool):
            n = pool_output_size(n, layer.kernel, layer.stride, layer.ceil) if n >= 1 else 0
        elif isinstance(layer, Tap):
            out.append(n)
        if n < 1:
            return tuple(out) + (0,)
    return tuple(out)


def min_size(net: str) -> int:
    """Smallest height/width for which every tap of ``net`` is non-empty."""
    n = 1
    while min(tap_sizes(net, n)) < 1 or len(tap_sizes(net, n)) < len(tap_channels(net)):
        n += 1
    return n


def max_pool(
    x: jax.Array, kernel: int, stride: int, ceil: bool, tangent_rows: int | None = None
) -> jax.Array:
    """NHWC max-pool matching PyTorch's floor or ceil mode (no padding).

    Its derivative is PyTorch's: each window's gradient goes to its first maximum in
    row-major order (see :func:`_window_max`). ``tangent_rows``: as in :func:`conv2d`.
    """
    h, w = x.shape[-3], x.shape[-2]
    oh = pool_output_size(h, kernel, stride, ceil)
    ow = pool_output_size(w, kernel, stride, ceil)
    # Extra right/bottom padding (with -inf) so that VALID windows give ceil-mode sizes.
    ph = max((oh - 1) * stride + kernel - h, 0)
    pw = max((ow - 1) * stride + kernel - w, 0)
    if ph or pw:
        pad = [(0, 0)] * (x.ndim - 3) + [(0, ph), (0, pw), (0, 0)]
        x = jnp.pad(x, pad, constant_values=-jnp.inf)
    return _window_max(x, kernel, stride, oh, ow, _rows(tangent_rows, x))


def _window_slices(x, kernel, stride, oh, ow):
    """The strided views ``x[..., dy::stride, dx::stride, :]`` of the windows, in (dy, dx)
    order; ``kernel`` is an int (square windows) or ``(kh, kw)``."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    out = []
    for dy in range(kh):
        for dx in range(kw):
            start = [0] * (x.ndim - 3) + [dy, dx, 0]
            limit = [*x.shape[:-3], dy + stride * (oh - 1) + 1, dx + stride * (ow - 1) + 1,
                     x.shape[-1]]  # fmt: skip
            step = [1] * (x.ndim - 3) + [stride, stride, 1]
            out.append(lax.slice(x, start, limit, step))
    return out


def _rows(tangent_rows, x):
    """``tangent_rows`` if it leaves some of ``x``'s images out, else None."""
    return tangent_rows if tangent_rows is not None and tangent_rows < x.shape[0] else None


def pad_rows(t: jax.Array, n: int) -> jax.Array:
    """``t`` (the tangent of the first images of a batch) zero-padded to ``n`` images."""
    return lax.pad(t, jnp.zeros((), t.dtype), ((0, n - t.shape[0], 0),) + ((0, 0, 0),) * (t.ndim - 1))


def relu(x: jax.Array, tangent_rows: int | None = None) -> jax.Array:
    """``jax.nn.relu``; with ``tangent_rows`` (as in :func:`conv2d`) its tangent is taken on
    the first ``tangent_rows`` images alone, and only their mask is kept for a backward
    pass."""
    rows = _rows(tangent_rows, x)
    return nn.relu(x) if rows is None else _relu_rows(x, rows)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _relu_rows(x, rows):
    return nn.relu(x)


@_relu_rows.defjvp
def _relu_rows_jvp(rows, primals, tangents):
    (x,), (dx,) = primals, tangents
    t = dx[:rows]
    dy = lax.select(x[:rows] > 0, t, lax.full_like(t, 0))  # jax.nn.relu's own rule
    return _relu_rows(x, rows), pad_rows(dy, x.shape[0])


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4, 5))
def _window_max(x, kernel, stride, oh, ow, rows=None):
    """VALID max-pool of ``x`` whose derivative routes each window to its first maximum.

    The value is XLA's reduce-window. JAX's own derivative of a reduce-window max is a
    select-and-scatter, which XLA:CPU expands into index arithmetic and a scatter (vgg
    256x256 batch 1: ~80 ms of a ~600 ms forward+backward for its first pool alone);
    here the tangent is a chain of selects over the window's strided views, whose
    transpose is padding and adds (for windows that tile the input, the same rule over a
    reshape: :func:`_tiled_max_tangent`). "First maximum" is PyTorch's rule (its CPU and CUDA
    kernels keep the first of equal values), which matters where a window holds ties.
    ``rows``: the tangent is taken on the first ``rows`` images alone (see ``conv2d``).
    """
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1,) * (x.ndim - 3) + (kernel, kernel, 1),
        (1,) * (x.ndim - 3) + (stride, stride, 1), "VALID",
    )  # fmt: skip


@_window_max.defjvp
def _window_max_jvp(kernel, stride, oh, ow, rows, primals, tangents):
    (x,), (dx,) = primals, tangents
    y = _window_max(x, kernel, stride, oh, ow, rows)
    if rows is not None:
        dy = _max_tangent(x[:rows], dx[:rows], y[:rows], kernel, stride, oh, ow)
        return y, pad_rows(dy, x.shape[0])
    return y, _max_tangent(x, dx, y, kernel, stride, oh, ow)


def _max_tangent(x, dx, y, kernel, stride, oh, ow):
    if kernel == stride:
        return _tiled_max_tangent(x, dx, y, kernel, oh, ow)
    views = _window_slices(x, kernel, stride, oh, ow)
    tviews = _window_slices(dx, kernel, stride, oh, ow)
    # Walk the window backwards so that the earliest maximum has the last word.
    dy = tviews[-1]
    for v, t in zip(views[-2::-1], tviews[-2::-1]):
        dy = jnp.where(v == y, t, dy)
    return dy


def _tiled_max_tangent(x, dx, y, k, oh, ow):
    """The tangent of a max-pool whose windows tile the input (kernel == stride: vgg's
    2x2 pools): the first maximum of each window, in row-major order, takes the window's
    tangent.

    The same derivative as the chain of selects over strided views, written over a
    ``(.., oh, k, ow, k, C)`` reshape so that its transpose is a broadcast of the pool's
    cotangent rather than k*k interior paddings. Measured on XLA:CPU: there, the input
    gradient of an im2col conv after the pool (a sum of nine padded views) got fused into
    the paddings' consumer with each view left as a kernel of its own; with this form it
    compiles to fewer kernels (vgg 64x64 batch 1 forward+backward: 154 -> 131 in the
    compiled HLO; lower+compile 3.0-3.7 s -> 2.5-3.3 s, vgg 64x64 batch 32 2.1-2.5 s ->
    1.9 s, in a slow hour), at the same speed and with the same gradients to the bit.
    """
    lead, c = x.shape[:-3], x.shape[-1]
    nl = len(lead)
    shape = (*lead, oh, k, ow, k, c)

    def tiles(a):  # the part of a that the windows cover, one window per (oh, ow) cell
        return lax.slice(a, (0,) * (nl + 3), (*lead, oh * k, ow * k, c)).reshape(shape)

    hit = tiles(x) == y.reshape(*lead, oh, 1, ow, 1, c)
    ishape = (1,) * nl + (1, k, 1, k, 1)
    rank = lax.broadcasted_iota(jnp.int32, ishape, nl + 1) * k + lax.broadcasted_iota(
        jnp.int32, ishape, nl + 3
    )  # a position's row-major rank in its window
    first = jnp.min(jnp.where(hit, rank, k * k), axis=(nl + 1, nl + 3), keepdims=True)
    t = tiles(dx)
    # The zeros are t - t, not a constant: a constant array here is known to the forward
    # pass and JAX keeps it as a residual (the pool input's size in float32: vgg 512x512
    # grad kept 613 -> 740 MiB); t - t lives in the backward pass (kept: 620 MiB).
    return jnp.sum(jnp.where(rank == first, t, t - t), axis=(nl + 1, nl + 3))


# The conv implementation of each layer on XLA:CPU, chosen for the forward pass and for
# the derivatives separately (a custom JVP, :func:`_split_conv`, joins the two), from
# per-layer timings of every conv of alex and vgg at 64x64 batch 1 and 32, 256x256 batch 1
# and 8, each variant interleaved in one process on a 2-core x86 CPU (bench/bench_layers.py
# prints such a table). What they showed:
# - im2col (explicit patches and one matmul) beats XLA's conv, forward and backward, when
#   the output has few positions: <= 128 rows (N*oh*ow), or maps of <= 4x4 per image up to
#   512 rows (vgg's deepest block at 64x64, alex's 3x3 maps at batch 32; backward up to
#   3x faster). For alex's 5x5 conv on maps of <= 8x8 up to 4096 rows: im2col for the
#   derivatives (the whole alex 64x64 batch-32 distance 9-10% faster than XLA's conv),
#   and the "eigen" form (below) forward: 4.6 -> 3.8 ms for that layer at batch 32, the
#   whole distance +8% forward and +17% forward+backward (interleaved A/B, 9 rounds).
# - From 225 to 1024 rows with patches of <= 10 MB (16x16 maps at batch 1, alex 256x256 at
#   batch 1), XLA's conv wins the forward pass and im2col the backward: 10-30% less time
#   for that layer's forward+backward than either alone.
# - The first conv (3 input channels) is cheapest forward in XLA, backward in im2col
#   (vgg 64x64 batch 32: 49 -> 38 ms for that layer's forward+backward); capped at 16 MB
#   of patches, so that large images don't pay in memory (1024x1024: 108 MB).
# - Maps of 30x30 and more (stride 1, float32): XLA's conv kept on its Eigen kernel both
#   ways (impl "eigen"). XLA:CPU (jaxlib 0.10) hands a float32 conv to YNNPACK unless its
#   output is larger than its input (among other exclusions), and on these maps YNNPACK's
#   conv is 1.5-2x slower forward and 1.5-3x slower for the input gradient than XLA's own
#   (vgg 64x64 batch 32, second conv: forward 96 -> 56 ms, forward+input gradient
#   202 -> 107 ms; alex 256x256 batch 8, 5x5 conv: 54 -> 35 ms). The "eigen" forward
#   computes one extra output row and crops it; its input gradient is JAX's transpose of
#   a conv over an input with one extra zero row (_conv_tangent_x), a conv whose output
#   is taller than its input. Whole model: vgg 64x64 batch 32 forward +11%, forward+
#   backward +15%; alex 256x256 batch 8 forward+backward +14%; vgg 256x256 batch 1
#   forward +16%. On 16x16 and 8x8 maps both convs are within the noise of each other.
# - Larger outputs otherwise: XLA's conv, both ways (im2col's patches cost more than they save).
# - Kernels larger than 5 (alex's 11x11 stride-4 first conv): XLA's conv forward; for the
#   derivatives, the space-to-depth form (see _split_conv).
_IM2COL_MAX_KERNEL = 5
_SMALL_ROWS = 128
_TINY_MAP, _TINY_MAP_ROWS = 16, 512
_K5_MAP, _K5_ROWS = 64, 4096
_SPLIT_ROWS, _SPLIT_PATCH = 1024, 10 * 2**20 // 4  # rows; patch elements (10 MB float32)
_STEM_PATCH = 16 * 2**20 // 4  # the first conv's patches up to 16 MB (e.g. 256x256 batch 2)
_EIGEN_AREA = 900  # output maps of 30x30 and more


def _choose_impls(x_shape, k_shape, stride) -> tuple[str, str]:
    """``(forward impl, derivative impl)`` of a conv on a (padded) input of ``x_shape``."""
    if jax.default_backend() != "cpu":
        return "xla", "xla"
    n, h, w, ci = x_shape
    kh, kw = k_shape[0], k_shape[1]
    oh = (h - kh) // stride + 1
    ow = (w - kw) // stride + 1
    rows, area = n * oh * ow, oh * ow
    if kh == 1 and kw == 1:
        return "im2col", "im2col"  # a plain matmul
    if kh > _IM2COL_MAX_KERNEL:
        return "xla", ("s2d" if stride > 1 else "xla")
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
    return "xla", "xla"


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    stride: int,
    padding: int,
    *,
    impl: str = "auto",
    precision: Any = None,
    tangent_rows: int | None = None,
) -> jax.Array:
    """NHWC x HWIO convolution plus bias, as torch's ``Conv2d`` (symmetric zero padding).

    ``impl``: ``"xla"`` (``lax.conv_general_dilated``), ``"eigen"`` (stride 1 only: the
    same conv in forms that XLA:CPU runs on its Eigen conv rather than YNNPACK's, forward
    and input gradient; see :func:`_choose_impls`), ``"im2col"`` (explicit patches and
    one matmul), ``"s2d"`` (a strided conv rewritten as a stride-1 conv over
    space-to-depth blocks) or ``"auto"``: per layer, by backend and shapes, for the forward
    pass and for the derivatives separately (see :func:`_choose_impls`, :func:`_split_conv`).

    ``tangent_rows``: a promise that only the first ``tangent_rows`` images of the batch
    carry a tangent w.r.t. ``x`` (the others' are zero): the derivative w.r.t. ``x`` then
    runs on those images alone. Used by the one-pass pair of :mod:`lpips_jax._metric`,
    whose second half (the reference image) is not differentiated.
    """
    p = padding
    n, h, w, ci = x.shape
    rows = _rows(tangent_rows, x)
    if impl == "auto":
        padded = (n, h + 2 * p, w + 2 * p, ci)
        fwd, jvp = _choose_impls(padded, kernel.shape, stride)
        if rows is not None:  # the derivatives' form for the batch they run on
            jvp = _choose_impls((rows, *padded[1:]), kernel.shape, stride)[1]
        if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
            # bfloat16/float16 convs never go to YNNPACK; a float64 conv stays where XLA
            # puts it (YNNPACK): its "eigen" forms fall to a generic loop (15x slower).
            fwd, jvp = ("xla" if i == "eigen" else i for i in (fwd, jvp))
        if fwd != jvp or jvp == "eigen" or rows is not None:
            return _split_conv(x, kernel, stride, p, fwd, jvp, precision, rows) + bias
        impl = fwd
    if impl == "eigen" or rows is not None:  # (eigen: its derivatives need their own form)
        return _split_conv(x, kernel, stride, p, impl, impl, precision, rows) + bias
    return _conv(x, kernel, stride, p, impl, precision) + bias


def _conv(x, kernel, stride, p, impl, precision):
    kh, kw, ci, co = kernel.shape
    if impl == "xla":
        return lax.conv_general_dilated(
            x, kernel, (stride, stride), ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision,
        )  # fmt: skip
    if impl == "eigen":
        # XLA's conv with one extra output row, cropped: an output taller than its input
        # keeps XLA:CPU on its own (Eigen) conv instead of YNNPACK's (see _choose_impls).
        _check_eigen(stride)
        oh = x.shape[1] + 2 * p - kh + 1
        extra = max(0, x.shape[1] - oh + 1)
        y = lax.conv_general_dilated(
            x, kernel, (1, 1), ((p, p + extra), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision,
        )  # fmt: skip
        return y[:, :oh]
    if impl == "s2d":
        return _space_to_depth_conv(x, kernel, stride, p, precision)
    if impl != "im2col":
        raise ValueError(f"impl={impl!r}: expected 'auto', 'xla', 'eigen', 'im2col' or 's2d'")
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x
    n, h, w, _ = xp.shape
    oh = (h - kh) // stride + 1
    ow = (w - kw) // stride + 1
    if kh == 1 and kw == 1 and stride == 1:
        patches = xp
    elif kh * kw <= 9:
        # The patch matrix, channel order (dy, dx, c) like the HWIO kernel reshaped to
        # (kh*kw*ci, co), as a sum of the kh*kw strided window views, each zero-padded
        # into its block of channels: XLA fuses the whole sum into one loop (and its
        # transpose, the input gradient's col2im, likewise), where a concatenation
        # compiles to a kernel per view (per layer 12 -> 4 kernels; vgg 64x64 batch 32
        # forward+backward compiles in 1.7 s instead of 2.0, at the same speed). Not for
        # larger kernels: each output element is a sum over all kh*kw views (alex's 5x5
        # conv: 25 terms, 1.3-1.7x slower).
        k = kh * kw
        zero = jnp.zeros((), xp.dtype)
        patches = None
        for j, view in enumerate(_window_slices(xp, (kh, kw), stride, oh, ow)):
            block = lax.pad(view, zero, ((0, 0, 0),) * 3 + ((j * ci, (k - 1 - j) * ci, 0),))
            patches = block if patches is None else patches + block  # (N, oh, ow, k*ci)
    else:
        # Patches in two passes (kw slices along W, then kh along H): channel order
        # (dy, dx, c), the order of the HWIO kernel reshaped to (kh*kw*ci, co).
        wide = jnp.concatenate(
            [lax.slice_in_dim(xp, dx, dx + stride * (ow - 1) + 1, stride, axis=2) for dx in range(kw)],
            axis=-1,
        )  # (N, h, ow, kw*ci)
        patches = jnp.concatenate(
            [lax.slice_in_dim(wide, dy, dy + stride * (oh - 1) + 1, stride, axis=1) for dy in range(kh)],
            axis=-1,
        )  # (N, oh, ow, kh*kw*ci)
    return lax.dot_general(
        patches, kernel.reshape(kh * kw * ci, co),
        (((3,), (0,)), ((), ())), precision=precision,
    )  # fmt: skip


def _space_to_depth_conv(x, kernel, stride, p, precision):
    """A stride-``s`` conv as a stride-1 conv over ``s x s`` blocks (space-to-depth).

    The padded image is cut into ``s x s`` blocks stacked on the channel axis
    (``s*s*C`` channels) and the kernel, zero-padded to a multiple of ``s``, likewise:
    the same sums, over a ``ceil(k/s)``-wide kernel with stride 1.
    """
    n, h, w, c = x.shape
    kh, kw, _, co = kernel.shape
    oh = (h + 2 * p - kh) // stride + 1
    ow = (w + 2 * p - kw) // stride + 1
    bh, bw = -(-kh // stride), -(-kw // stride)  # kernel size in blocks
    hb, wb = oh + bh - 1, ow + bw - 1  # blocks of input needed
    # Pad to at least hb*s x wb*s (anything past the last window is never read).
    xp = jnp.pad(x, ((0, 0), (p, max(hb * stride - h - p, 0)), (p, max(wb * stride - w - p, 0)), (0, 0)))
    step = (1, stride, stride, 1)
    last_h, last_w = stride * (hb - 1) + 1, stride * (wb - 1) + 1
    # Strided slices rather than a reshape of the image: a reshape that splits H and W
    # has no sharding rule under explicit (shard_map / mesh) sharding of the batch.
    xs = jnp.concatenate(
        [
            lax.slice(xp, (0, i, j, 0), (n, i + last_h, j + last_w, c), step)
            for i in range(stride)
            for j in range(stride)
        ],
        axis=-1,
    )  # (N, hb, wb, s*s*C), channels in (i, j, c) order like the kernel below
    kp = jnp.pad(kernel, ((0, bh * stride - kh), (0, bw * stride - kw), (0, 0), (0, 0)))
    ks = kp.reshape(bh, stride, bw, stride, c, co).transpose(0, 2, 1, 3, 4, 5)
    ks = ks.reshape(bh, bw, stride * stride * c, co)
    return _conv(xs, ks, 1, 0, "xla", precision)


def _check_eigen(stride):
    if stride != 1:
        raise ValueError(f"impl='eigen' is for stride-1 convs: got stride {stride}")


def _conv_tangent_x(dx, kernel, p, precision):
    """The conv as a linear map of its input, written so that JAX's transpose of it (the
    input gradient) is a conv whose output is taller than its input, which XLA:CPU runs
    on its own (Eigen) conv instead of YNNPACK's: ``dx`` gets ``extra`` zero rows at the
    bottom and the conv as many fewer rows of bottom padding (same result)."""
    h = dx.shape[1]
    oh = h + 2 * p - kernel.shape[0] + 1
    extra = max(1, oh - h + 1)
    dxp = jnp.pad(dx, ((0, 0), (0, extra), (0, 0), (0, 0)))
    return lax.conv_general_dilated(
        dxp, kernel, (1, 1), ((p, p - extra), (p, p)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision,
    )  # fmt: skip


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _split_conv(x, kernel, stride, p, impl, jvp_impl, precision, rows=None):
    """A conv whose value is computed by ``impl`` and its derivatives by ``jvp_impl``.

    Both compute the same linear map, so the JVP (and the VJP, JAX's transpose of it) is
    exact either way; the split lets the forward pass and the backward pass each run the
    implementation that is fastest for them. On the CPU: alex's 11x11 stride-4 first conv
    differentiates through its space-to-depth form (JAX's own transpose of a stride-4 conv
    w.r.t. its input is a conv over a 4-dilated input, which XLA:CPU runs slowly: that
    layer's forward+backward at 256x256 batch 8 went from 63 ms to 25 ms, at 64x64 batch
    32 from 10.8 to 4.8 ms).

    ``rows`` (if not None): only the first ``rows`` images of ``x`` have a nonzero tangent
    (see :func:`conv2d`'s ``tangent_rows``); the derivative w.r.t. ``x`` runs on them alone.
    """
    return _conv(x, kernel, stride, p, impl, precision)


@functools.partial(_split_conv.defjvp, symbolic_zeros=True)
def _split_conv_jvp(stride, p, impl, jvp_impl, precision, rows, primals, tangents):
    x, kernel = primals
    dx, dk = tangents
    y = _conv(x, kernel, stride, p, impl, precision)
    dy = None
    if not isinstance(dx, SymbolicZero):
        if rows is not None:
            dx = dx[:rows]
        if jvp_impl == "eigen":
            _check_eigen(stride)
            dy = _conv_tangent_x(dx, kernel, p, precision)
        else:
            dy = _conv(dx, kernel, stride, p, jvp_impl, precision)
        if rows is not None:  # the other images' tangents are zero
            dy = pad_rows(dy, y.shape[0])
    if not isinstance(dk, SymbolicZero):
        # (for "eigen": the kernel gradient is JAX's own transpose of XLA's conv)
        t = _conv(x, dk, stride, p, "xla" if jvp_impl == "eigen" else jvp_impl, precision)
        dy = t if dy is None else dy + t
    return y, (jnp.zeros_like(y) if dy is None else dy)


class _Conv(nn.Module):
    """``torch.nn.Conv2d`` in NHWC: params ``kernel`` (kh, kw, in, out) and ``bias`` (out,)."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dtype: Any = None
    precision: Any = None
    impl: str = "auto"
    tangent_rows: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        dtype = self.dtype or x.dtype
        return conv2d(
            x.astype(dtype), kernel.astype(dtype), bias.astype(dtype), self.stride, self.padding,
            impl=self.impl, precision=self.precision, tangent_rows=self.tangent_rows,
        )  # fmt: skip


class _FireModule(nn.Module):
    squeeze: int
    expand: int
    dtype: Any = None
    precision: Any = None
    impl: str = "auto"
    tangent_rows: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda f, k, p, name: _Conv(  # noqa: E731
            f, k, 1, p, dtype=self.dtype, precision=self.precision, impl=self.impl,
            tangent_rows=self.tangent_rows, name=name,
        )  # fmt: skip
        rows = self.tangent_rows
        s = relu(conv(self.squeeze, 1, 0, "squeeze")(x), rows)
        e1 = relu(conv(self.expand, 1, 0, "expand1x1")(s), rows)
        e3 = relu(conv(self.expand, 3, 1, "expand3x3")(s), rows)
        return jnp.concatenate([e1, e3], axis=-1)


def _stem_dtype(dtype: Any) -> Any:
    """Compute dtype of the first conv: at least float32.

    With a bfloat16/float16 trunk, the first conv (on the image itself, 3 input channels)
    still runs in float32 and hands its output on in ``dtype``. Rounding that layer's
    weights to bfloat16 alone moves the 64x64 distance by up to 4e-2 (alex) and 1e-2 (vgg)
    on photographs, more than all the other layers together; its cost is a small share of
    the trunk (alex 13%, vgg <1% of the MACs at 64x64).
    """
    if dtype is None:
        return None
    return dtype if jnp.dtype(dtype) == jnp.float64 else jnp.float32


class Trunk(nn.Module):
    """One of the LPIPS trunks; ``net`` is ``"alex"``, ``"vgg"`` or ``"squeeze"``.

    ``__call__(x)`` takes ``(N, H, W, 3)`` and returns the tuple of taps.
    ``dtype`` is the compute dtype (params stay float32); ``remat`` wraps each
    tap-to-tap block in ``jax.checkpoint`` to save memory in the backward pass.
    ``tangent_rows``: a promise that only the first ``tangent_rows`` images carry a
    tangent; the convs, ReLUs and pools then differentiate those alone (see
    :func:`conv2d`).
    """

    net: str = "alex"
    dtype: Any = None
    precision: Any = None
    remat: bool = False
    impl: str = "auto"
    tangent_rows: int | None = None

    def setup(self):
        layers = {}
        for layer in LAYERS[self.net]:
            if isinstance(layer, Conv):
                layers[layer.index] = _Conv(
                    layer.features,
                    layer.kernel,
                    layer.stride,
                    layer.padding,
                    dtype=_stem_dtype(self.dtype) if layer.index == 0 else self.dtype,
                    precision=self.precision,
                    impl=self.impl,
                    tangent_rows=self.tangent_rows,
                    name=f"features_{layer.index}",
                )
            elif isinstance(layer, Fire):
                layers[layer.index] = _FireModule(
                    layer.squeeze,
                    layer.expand,
                    dtype=self.dtype,
                    precision=self.precision,
                    impl=self.impl,
                    tangent_rows=self.tangent_rows,
                    name=f"features_{layer.index}",
                )
        self.layers = layers

    def _blocks(self) -> list[list[Any]]:
        blocks, current = [], []
        for layer in LAYERS[self.net]:
            if isinstance(layer, Tap):
                blocks.append(current)
                current = []
            else:
                current.append(layer)
        return blocks

    def _run_block(self, block: Sequence[Any], x: jax.Array) -> jax.Array:
        for layer in block:
            if isinstance(layer, Conv):
                x = relu(self.layers[layer.index](x), self.tangent_rows)
            elif isinstance(layer, Fire):
                x = self.layers[layer.index](x)
            else:
                x = max_pool(x, layer.kernel, layer.stride, layer.ceil, self.tangent_rows)
        return x

    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        if self.dtype is not None:
            x = x.astype(_stem_dtype(self.dtype))
        taps = []
        for block in self._blocks():
            if self.remat:
                x = nn.remat(lambda mdl, v, b=block: mdl._run_block(b, v))(self, x)
            else:
                x = self._run_block(block, x)
            taps.append(x)
        return tuple(taps)
