"""The trunks: torchvision's AlexNet, VGG16 and SqueezeNet-1.1 ``features`` (LPIPS), VGG16
with L2 pooling (DISTS), the shift-tolerant AlexNet and VGG16 (ST-LPIPS) and VGG16 with
average pooling and 14 taps (E-LPIPS).

Each trunk is a Flax linen module taking ``(N, H, W, 3)`` images (already scaled) and
returning a tuple of taps, one ``(N, h_k, w_k, C_k)`` array per metric layer.

Every trunk is described by a small table of layers indexed exactly like torchvision's
``features`` sequence, so parameter ``features_{i}`` here is ``features.{i}`` there. The
same table gives the shapes of the taps in pure Python (used for the minimum-size checks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lpips_jax import _ops
from lpips_jax._ops import pool_output_size


@dataclasses.dataclass(frozen=True)
class Conv:
    """``features.{index}``: a conv followed by ReLU (torchvision puts ReLU at index + 1),
    or by nothing (``relu=False``: ST-LPIPS's first conv, blurred before its ReLU)."""

    index: int
    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    relu: bool = True


@dataclasses.dataclass(frozen=True)
class ReLU:
    """A ReLU of its own (after ST-LPIPS's first blur)."""


@dataclasses.dataclass(frozen=True)
class Blur:
    """Blur pool (anti-aliased stride-2 downsampling): 3x3 binomial blur, reflection
    padding ``pad`` on each side."""

    pad: int = 2


@dataclasses.dataclass(frozen=True)
class Pool:
    """A max-pool. ``ceil`` is PyTorch's ``ceil_mode``."""

    kernel: int
    stride: int
    ceil: bool = False


@dataclasses.dataclass(frozen=True)
class AvgPool:
    """An average pool, no padding, floor mode (E-LPIPS' VGG16: 2x2, stride 2)."""

    kernel: int = 2
    stride: int = 2


@dataclasses.dataclass(frozen=True)
class L2Pool:
    """DISTS' L2 pooling: ``sqrt(hanning3x3 * x^2 + 1e-12)``, stride 2, zero padding 1."""


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

# DISTS: VGG16 with each max-pool replaced by L2 pooling (same conv indices and params).
DISTS_LAYERS = tuple(L2Pool() if isinstance(layer, Pool) else layer for layer in VGG_LAYERS)

# ST-LPIPS (Ghildyal and Liu, ECCV 2022): each stride-2 step an anti-aliasing blur pool;
# alex's first conv at stride 1, blurred before its ReLU; max-pools at stride 1, each
# followed by a blur pool. Indexed like their ``features`` sequences (the weights' names).
ALEX_ST_LAYERS = (
    Conv(0, 64, 11, 1, 2, relu=False), Blur(), ReLU(), TAP,
    Pool(3, 1), Blur(), Conv(5, 192, 5, 1, 2), TAP,
    Pool(3, 1), Blur(), Conv(9, 384, 3, 1, 1), TAP,
    Conv(11, 256, 3, 1, 1), TAP,
    Conv(13, 256, 3, 1, 1), TAP,
)  # fmt: skip

VGG_ST_LAYERS = (
    *_convs(0, [64, 64]), TAP, Pool(2, 1), Blur(),
    *_convs(6, [128, 128]), TAP, Pool(2, 1), Blur(),
    *_convs(12, [256, 256, 256]), TAP, Pool(2, 1), Blur(),
    *_convs(20, [512, 512, 512]), TAP, Pool(2, 1), Blur(),
    *_convs(28, [512, 512, 512]), TAP,
)  # fmt: skip

# E-LPIPS (Kettunen et al. 2019): VGG16 with its max-pools replaced by 2x2 average pools;
# 14 taps, the (scaled) input itself and every conv's ReLU. Same conv indices and params.
VGG_AVG_LAYERS = (
    TAP,
    Conv(0, 64, 3, 1, 1), TAP, Conv(2, 64, 3, 1, 1), TAP, AvgPool(),
    Conv(5, 128, 3, 1, 1), TAP, Conv(7, 128, 3, 1, 1), TAP, AvgPool(),
    Conv(10, 256, 3, 1, 1), TAP, Conv(12, 256, 3, 1, 1), TAP, Conv(14, 256, 3, 1, 1), TAP, AvgPool(),
    Conv(17, 512, 3, 1, 1), TAP, Conv(19, 512, 3, 1, 1), TAP, Conv(21, 512, 3, 1, 1), TAP, AvgPool(),
    Conv(24, 512, 3, 1, 1), TAP, Conv(26, 512, 3, 1, 1), TAP, Conv(28, 512, 3, 1, 1), TAP,
)  # fmt: skip

LAYERS = {
    "alex": ALEX_LAYERS, "vgg": VGG_LAYERS, "squeeze": SQUEEZE_LAYERS, "dists": DISTS_LAYERS,
    "alex_st": ALEX_ST_LAYERS, "vgg_st": VGG_ST_LAYERS, "vgg_avg": VGG_AVG_LAYERS,
}  # fmt: skip


def trunk_name(net: str, variant: str = "vanilla") -> str:
    """The layer table of ``net`` (``"alex"``, ...) in ``variant`` (``"vanilla"`` or
    ``"shift_tolerant"``): a key of :data:`LAYERS`."""
    return net if variant == "vanilla" else f"{net}_st"


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
        elif isinstance(layer, L2Pool):
            n = (n - 1) // 2 + 1 if n >= 1 else 0
        elif isinstance(layer, AvgPool):
            n = (n - layer.kernel) // layer.stride + 1 if n >= layer.kernel else 0
        elif isinstance(layer, Blur):  # reflection needs more pixels than its padding
            n = (n + 2 * layer.pad - 3) // 2 + 1 if n > layer.pad else 0
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


class _Conv(nn.Module):
    """``torch.nn.Conv2d`` in NHWC: params ``kernel`` (kh, kw, in, out) and ``bias`` (out,)."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dtype: Any = None
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        dtype = self.dtype or x.dtype
        x, kernel, bias = x.astype(dtype), kernel.astype(dtype), bias.astype(dtype)
        return _ops.conv2d(x, kernel, bias, self.stride, self.padding, self.precision)


class _FireModule(nn.Module):
    """SqueezeNet's Fire: squeeze 1x1, then concat[expand 1x1, expand 3x3 pad 1], ReLUs."""

    squeeze: int
    expand: int
    dtype: Any = None
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda f, k, p, name: _Conv(f, k, 1, p, self.dtype, self.precision, name=name)  # noqa: E731
        s = nn.relu(conv(self.squeeze, 1, 0, "squeeze")(x))
        e1 = nn.relu(conv(self.expand, 1, 0, "expand1x1")(s))
        e3 = nn.relu(conv(self.expand, 3, 1, "expand3x3")(s))
        return jnp.concatenate([e1, e3], axis=-1)


def avg_pool(x: jax.Array, kernel: int, stride: int) -> jax.Array:
    """NHWC average pool, no padding, floor mode (TensorFlow's ``avg_pool`` ``VALID``)."""
    lead = (1,) * (x.ndim - 3)
    window, strides = (*lead, kernel, kernel, 1), (*lead, stride, stride, 1)
    # a concrete zero init makes this reduce_window_sum, which has a transpose (grad) rule
    total = lax.reduce_window(x, np.zeros((), x.dtype), lax.add, window, strides, "VALID")
    return total / jnp.asarray(kernel * kernel, x.dtype)


def conv_input_shapes(net: str, h: int, w: int) -> dict[int, tuple[int, int, int]]:
    """``{index: (h, w, C_in)}`` of each conv's input for an ``h x w`` input (``net``'s
    table; convs and pools only): the shapes of E-LPIPS' dropout masks."""
    out, channels = {}, 3
    for layer in LAYERS[net]:
        if isinstance(layer, Conv):
            out[layer.index] = (h, w, channels)
            h = (h + 2 * layer.padding - layer.kernel) // layer.stride + 1
            w = (w + 2 * layer.padding - layer.kernel) // layer.stride + 1
            channels = layer.features
        elif isinstance(layer, AvgPool):
            h, w = (h - layer.kernel) // layer.stride + 1, (w - layer.kernel) // layer.stride + 1
        elif not isinstance(layer, Tap):
            raise ValueError(f"conv_input_shapes: net {net!r} has a {type(layer).__name__} layer")
    return out


def compute_dtype(dtype: Any, x: jax.Array, trunk_params: Any) -> Any:
    """The trunk's compute dtype: ``dtype`` if given, else float32 (float64 if x or params are).

    Chosen here rather than left to Flax's ``promote_dtype`` (``jnp.result_type``), which
    raises for bfloat16/float16 images and float32 params under strict dtype promotion.
    """
    if dtype is not None:
        return dtype
    leaves = [x, *jax.tree_util.tree_leaves(trunk_params)]
    wide = any(getattr(a, "dtype", None) == jnp.float64 for a in leaves)
    return jnp.float64 if wide else jnp.float32


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
    """One of the trunks; ``net`` is a key of :data:`LAYERS` (``"alex"``, ``"vgg"``,
    ``"squeeze"``, ``"dists"``, ``"alex_st"``, ``"vgg_st"``).

    ``__call__(x)`` takes ``(N, H, W, 3)`` and returns the tuple of taps.
    ``dtype`` is the compute dtype (params stay float32); ``remat`` wraps each
    tap-to-tap block in ``jax.checkpoint`` to save memory in the backward pass.
    """

    net: str = "alex"
    dtype: Any = None
    precision: Any = None
    remat: bool = False

    def setup(self):
        layers = {}
        for layer in LAYERS[self.net]:
            if isinstance(layer, Conv):
                dtype = _stem_dtype(self.dtype) if layer.index == 0 else self.dtype
                layers[layer.index] = _Conv(
                    layer.features, layer.kernel, layer.stride, layer.padding, dtype, self.precision,
                    name=f"features_{layer.index}",
                )  # fmt: skip
            elif isinstance(layer, Fire):
                layers[layer.index] = _FireModule(
                    layer.squeeze, layer.expand, self.dtype, self.precision, name=f"features_{layer.index}"
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
                x = self.layers[layer.index](x)
                x = nn.relu(x) if layer.relu else x
            elif isinstance(layer, ReLU):
                x = nn.relu(x)
            elif isinstance(layer, Blur):
                x = _ops.blur_pool(x, layer.pad)
            elif isinstance(layer, Fire):
                x = self.layers[layer.index](x)
            elif isinstance(layer, L2Pool):
                x = _ops.l2_pool(x)
            elif isinstance(layer, AvgPool):
                x = avg_pool(x, layer.kernel, layer.stride)
            else:
                x = _ops.max_pool(x, layer.kernel, layer.stride, layer.ceil)
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
