"""The LPIPS metric as pure functions of ``(params, x, y)``.

Contract: images are NHWC ``(N, H, W, 3)`` or unbatched ``(H, W, 3)`` float arrays with
values in ``[-1, 1]`` (``[0, 1]`` with ``normalize=True``). ``distance`` returns ``(N,)``
(or ``()``), ``distance_map`` returns ``(N, H, W)`` (or ``(H, W)``), ``layer_distances``
a tuple of ``(N,)`` (or ``()``) arrays, one per tap. Results are float32.

Checks of rank, channels, shapes, dtype and minimum size run at trace time.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.custom_derivatives import SymbolicZero

from lpips_jax import _checks, _nets

# v0.1 scaling layer, from the official lpips ScalingLayer.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# The official normalisation's epsilon: x / (||x|| + 1e-10).
NORM_EPS = 1e-10


@struct.dataclass
class LPIPSParams:
    """Params of one LPIPS model: a pytree whose static fields say which model it is.

    ``trunk`` is the Flax param tree of the trunk (``features_{i}/kernel``, ``bias``),
    ``heads`` a dict ``lin{k} -> {"kernel": (1, 1, C_k, 1)}`` or ``None`` when
    ``lpips=False``. ``net``, ``version`` and ``lpips`` are static (not leaves), so jit,
    grad, vmap and optax see only the arrays.
    """

    trunk: Any
    heads: Any = None
    net: str = struct.field(pytree_node=False, default="alex")
    version: str = struct.field(pytree_node=False, default="0.1")
    lpips: bool = struct.field(pytree_node=False, default=True)

    def variables(self) -> dict:
        """The ``{"params": ...}`` collection for :class:`LPIPS` ``.apply``."""
        p = {"trunk": self.trunk}
        if self.lpips:
            p["heads"] = self.heads
        return {"params": p}


def _validate_params(params: Any) -> LPIPSParams:
    if not isinstance(params, LPIPSParams):
        raise TypeError(
            f"params has type {type(params).__name__}: expected LPIPSParams, "
            "as returned by lpips_jax.load(...)"
        )
    _checks.check_net(params.net)
    _checks.check_version(params.version)
    _checks.check_lpips(params.lpips)
    if params.lpips and params.heads is None:
        raise ValueError("params.lpips is True but params.heads is None: load heads or set lpips=False")
    return params


def _as_batch(x: Any) -> tuple[jax.Array, bool]:
    x = jnp.asarray(x)
    if x.ndim == 3:
        return x[None], True
    return x, False


def scale_inputs(x: jax.Array, version: str, normalize: Any) -> jax.Array:
    """``normalize`` maps [0, 1] to [-1, 1]; v0.1 then applies the scaling layer.

    ``normalize`` is a Python bool, or a traced boolean when the caller jits ``distance``
    without marking it static (``jax.jit(distance)(p, x, y, normalize=True)``).
    """
    if isinstance(normalize, jax.core.Tracer):
        x = jnp.where(normalize, 2 * x - 1, x)
    elif normalize:
        x = 2 * x - 1
    if version == "0.1":
        # The official ScalingLayer holds these as float32 buffers: in float64 it uses the
        # float32-rounded values (e.g. -0.030 -> -0.029999999329447746), and so do we.
        shift = jnp.asarray(np.asarray(SHIFT, np.float32), x.dtype)
        scale = jnp.asarray(np.asarray(SCALE, np.float32), x.dtype)
        x = (x - shift) / scale
    return x


def normalize_channels(f: jax.Array) -> jax.Array:
    """``f / (sqrt(sum_c f^2) + 1e-10)`` over the last axis, with finite gradients.

    Equal in value to the official ``normalize_tensor``; where a feature vector is all
    zero the official derivative of ``sqrt`` is infinite (NaN after the chain rule), here
    the norm takes its exact value 0 through a branch whose gradient is zero. Computed in
    float32 (or wider, when the features are float64).
    """
    if _lead_one(f):
        return _normalize(f[0])[None]
    return _normalize_parts(f)[0]


def _lead_one(a) -> bool:
    """Whether channel sums over ``a`` should drop its leading 1 (a batch of 1 on the CPU).

    XLA:CPU's YNNPACK reductions split their work along the leading axis, and with a batch
    of 1 the normalisation's backward pass ran 7-25x slower (vgg 256x256 batch 1, first
    tap: 29 ms -> 4 ms). It costs memory (README, "Memory"), so only on the CPU.
    """
    return a.ndim > 2 and a.shape[0] == 1 and jax.default_backend() == "cpu"


@jax.custom_jvp
def _normalize(f):
    return _normalize_parts(f)[0]


@_normalize.defjvp
def _normalize_jvp(primals, tangents):
    (f,), (df,) = primals, tangents
    y, f, norm, den, positive = _normalize_parts(f)
    return y, _normalize_tangent(f, df.astype(f.dtype), norm, den, positive)


def _normalize_tangent(f, df, norm, den, positive):
    """The derivative of ``f / den``: ``df / den - f d(norm) / den^2`` with ``d(norm) =
    <f, df> / norm`` (0 where the norm is 0, the branch that keeps it finite), written as
    ``r df - k f <f, df>``. The same map as JAX's derivative of the expression, but
    symmetric, so that its transpose (the backward pass) is one channel sum and one
    elementwise pass: fewer XLA kernels than JAX's derivative of the expression (batch 1
    forward+backward: alex 64x64 93 -> 90, squeeze 122 -> 118). Only where the features
    have no batch axis (a batch of 1 on the CPU): with one, XLA:CPU compiled more kernels
    for it (alex 256x256 batch 8: 53 -> 69)."""
    r = 1 / den
    k = jnp.where(positive, r * r / jnp.where(positive, norm, 1), 0)
    return df * r - f * (k * jnp.sum(f * df, axis=-1, keepdims=True))


def _normalize_parts(f):
    """``(f / den, f, norm, den, positive)``: :func:`normalize_channels` and its residuals."""
    dt = jnp.float64 if f.dtype == jnp.float64 else jnp.float32
    f = f.astype(dt)
    sq = jnp.sum(f * f, axis=-1, keepdims=True)
    positive = sq > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)
    den = norm + jnp.asarray(NORM_EPS, dt)
    return f / den, f, norm, den, positive


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _normalize_rows(f, rows):
    """:func:`normalize_channels` of a batch of which only the first ``rows`` images carry
    a tangent (the one-pass derivative of :func:`_pair_taps`): the value over the whole
    batch at once, the derivative over those images alone (the others' tangent is zero)."""
    return normalize_channels(f)


@_normalize_rows.defjvp
def _normalize_rows_jvp(rows, primals, tangents):
    (f,), (df,) = primals, tangents
    y, f, norm, den, positive = _normalize_parts(f)
    parts = [a[:rows] for a in (f, df.astype(f.dtype), norm, den, positive)]
    if _lead_one(parts[0]):
        parts = [a[0] for a in parts]
    dy = _normalize_tangent(*parts).reshape((rows, *f.shape[1:]))
    return y, _nets.pad_rows(dy, f.shape[0])


def _trunk_module(
    params: LPIPSParams, dtype: Any, remat: bool, precision: Any, tangent_rows: int | None = None
) -> _nets.Trunk:
    return _nets.Trunk(
        net=params.net, dtype=dtype, remat=remat, precision=precision, tangent_rows=tangent_rows
    )


def _widen(x: jax.Array) -> jax.Array:
    """bfloat16/float16 images -> float32 (float64 stays): scaling runs at least in float32."""
    return x if x.dtype == jnp.float64 else x.astype(jnp.float32)


def _compute_dtype(dtype: Any, x: jax.Array, trunk_params: Any) -> Any:
    """The trunk's compute dtype: ``dtype`` if given, else float32 (float64 if x or params are).

    Chosen here rather than left to Flax's ``promote_dtype`` (``jnp.result_type``), which
    raises for bfloat16/float16 images and float32 params under strict dtype promotion.
    """
    if dtype is not None:
        return dtype
    leaves = [x, *jax.tree_util.tree_leaves(trunk_params)]
    wide = any(getattr(a, "dtype", None) == jnp.float64 for a in leaves)
    return jnp.float64 if wide else jnp.float32


def features(
    params: LPIPSParams,
    x: Any,
    *,
    normalize: bool = False,
    dtype: Any = None,
    remat: bool = False,
    precision: Any = None,
) -> tuple[jax.Array, ...]:
    """Unit-normalised taps of ``x``: a tuple of ``(N, h_k, w_k, C_k)`` float32 arrays.

    Compute once for a fixed reference and pass to :func:`distance_from_features`.
    ``x`` is ``(N, H, W, 3)`` or ``(H, W, 3)`` (then the taps have no batch axis).
    """
    params = _validate_params(params)
    _checks.check_images(x, x, params.net)
    _checks.check_range("x", x, normalize)
    xb, unbatched = _as_batch(x)
    taps = _taps(_trunk_fn(params, dtype, remat, precision), params.version, xb, normalize)
    if unbatched:
        taps = tuple(t[0] for t in taps)
    return taps


def _trunk_apply(params, dtype, remat, precision):
    """The trunk as a function of its params and scaled images (returns the raw taps)."""

    def apply(trunk_params, xs, tangent_rows=None):
        dt = _compute_dtype(dtype, xs, trunk_params)
        trunk = _trunk_module(params, dt, remat, precision, tangent_rows)
        return trunk.apply({"params": trunk_params}, xs)

    return apply


def _trunk_fn(params, dtype, remat, precision):
    """The trunk of ``params`` as a function of scaled images (returns the raw taps)."""
    apply = _trunk_apply(params, dtype, remat, precision)
    return lambda xs: apply(params.trunk, xs)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _pair_taps(raw, finish, one_pass_grad, trunk_params, xs, ys):
    """``(taps(xs), taps(ys))`` with ``taps = finish(raw(trunk_params, .))``, as one trunk
    pass over both images.

    ``raw(trunk_params, images, tangent_rows=None)``: the trunk's raw taps;
    ``finish(taps, tangent_rows=None)``: what follows per image (the normalisation). The
    value runs the trunk once on the two images stacked along the batch (for a batch of 1
    on the CPU: fewer, larger convs; vgg 64x64 forward 1.1-1.3x faster). With
    ``one_pass_grad``, so does a derivative w.r.t. one image (a loss's x, the reference y
    a constant): the trunk's convs, ReLUs and pools, and the normalisation, take their
    derivatives on that image's half of the batch alone (``tangent_rows``), so the
    constant image's trunk runs forward only and keeps nothing for a backward pass.
    Any other derivative (both images, the trunk's params, or without ``one_pass_grad``)
    runs the two trunks apart, as :func:`_pair_maps_with`.
    """
    n = xs.shape[0]
    taps = finish(raw(trunk_params, jnp.concatenate([xs, ys])))
    return tuple(t[:n] for t in taps), tuple(t[n:] for t in taps)


def _is_zero(t) -> bool:
    return isinstance(t, SymbolicZero)


@functools.partial(_pair_taps.defjvp, symbolic_zeros=True)
def _pair_taps_jvp(raw, finish, one_pass_grad, primals, tangents):
    p, xs, ys = primals
    dp, dxs, dys = tangents
    dp_leaves = jax.tree_util.tree_leaves(dp, is_leaf=_is_zero)
    p_const = all(_is_zero(t) for t in dp_leaves)
    if one_pass_grad and p_const and _is_zero(dys) != _is_zero(dxs):
        # One image differentiated: the one pass over both, the differentiated image first.
        flip = _is_zero(dxs)
        a, b, da = (ys, xs, dys) if flip else (xs, ys, dxs)
        n = a.shape[0]
        r, dr = jax.jvp(
            lambda s: raw(p, s, tangent_rows=n),
            (jnp.concatenate([a, b]),), (_nets.pad_rows(da, n + b.shape[0]),),
        )  # fmt: skip
        # The normalisation too: its value over both images at once, its derivative over
        # the first n (vgg 64x64 forward+backward 84 -> 75 XLA kernels, 256x256 85 -> 75).
        t, dt = jax.jvp(lambda u: finish(u, tangent_rows=n), (r,), (dr,))
        ta, tb, dta = (tuple(u[:n] for u in t), tuple(u[n:] for u in t), tuple(u[:n] for u in dt))
        dtb = tuple(jnp.zeros_like(u) for u in tb)
        return ((tb, ta), (dtb, dta)) if flip else ((ta, tb), (dta, dtb))

    if not p_const:  # some trunk params are differentiated: zeros for the others
        dp = jax.tree_util.tree_map(
            lambda t, v: jnp.zeros_like(v) if _is_zero(t) else t, dp, p, is_leaf=_is_zero
        )

    def apply(q, s):
        return finish(raw(q, s))

    def one(s, ds):
        if _is_zero(ds):
            if p_const:
                out = apply(p, s)
                return out, tuple(jnp.zeros_like(o) for o in out)
            return jax.jvp(lambda q: apply(q, s), (p,), (dp,))
        if p_const:
            return jax.jvp(lambda s_: apply(p, s_), (s,), (ds,))
        return jax.jvp(apply, (p, s), (dp, ds))

    tx, dtx = one(xs, dxs)
    ty, dty = one(ys, dys)
    return (tx, ty), (dtx, dty)


def _taps(trunk, version, xb, normalize):
    """Scaling layer, ``trunk`` (a function or a bound module), unit-normalised taps."""
    return _normalize_taps(trunk(scale_inputs(_widen(xb), version, normalize)))


def _normalize_taps(taps, tangent_rows=None):
    if tangent_rows is not None:
        return tuple(_normalize_rows(t, tangent_rows) for t in taps)
    return tuple(normalize_channels(t) for t in taps)


def head_map(d: jax.Array, kernel: jax.Array) -> jax.Array:
    """One head on ``d`` ``(..., C)``, the squared difference of normalised taps: the
    weighted channel sum ``(...)`` with ``kernel`` ``(1, 1, C, 1)`` (``lin{k}``), in ``d``'s dtype."""
    return jnp.sum(d * kernel.reshape(-1).astype(d.dtype), axis=-1)


def _head_maps(params: LPIPSParams, fx, fy) -> tuple[jax.Array, ...]:
    """Per tap, the ``(N, h, w)`` weighted squared difference of normalised features."""
    maps = []
    for k, (a, b) in enumerate(zip(fx, fy)):
        d = (a - b) ** 2
        if params.lpips:
            w = params.heads[f"lin{k}"]["kernel"].reshape(-1).astype(d.dtype)
            # A product and a channel sum, not a dot: XLA:CPU copies a dot's (C, 1) weight
            # operand into a buffer of its own, a compiled kernel per head (vgg 64x64
            # batch 1 forward+backward: 75 -> 70 kernels, speed within 0.97-1.04x). Exact
            # float32 on GPU too, where a dot's default precision is TF32.
            if _lead_one(d):
                maps.append(jnp.sum(d[0] * w, axis=-1)[None])
            else:
                maps.append(jnp.sum(d * w, axis=-1))
        else:
            maps.append(jnp.sum(d, axis=-1))
    return tuple(maps)


def _prepare(params, x, y, normalize):
    params = _validate_params(params)
    _checks.check_images(x, y, params.net)
    _checks.check_range("x", x, normalize)
    _checks.check_range("y", y, normalize)
    xb, unbatched = _as_batch(x)
    yb, _ = _as_batch(y)
    return params, xb, yb, unbatched


def _zero_identical(maps, xb, yb):
    """Exactly 0 (value and gradient) for pairs whose images are identical.

    Mathematically d(x, x) = 0 with gradient 0. Eagerly that holds to the bit; under jit
    XLA:CPU may compile x's and y's trunk passes with different summation orders, leaving
    ~1e-16. One comparison of the inputs restores the identity: max |x - y| == 0, a float
    reduction that XLA:CPU runs as one library call, where ``all(x == y)`` compiled to
    three kernels of its own (vgg 64x64 batch 1 forward+backward: 87 -> 84 kernels, about
    0.1 s of compile). A NaN anywhere leaves the pair as it is, as ``==`` did.
    """
    same = (jnp.max(jnp.abs(xb - yb), axis=(1, 2, 3)) == 0)[:, None, None]
    return tuple(jnp.where(same, jnp.zeros_like(m), m) for m in maps)


def _pair_maps_with(trunk, params, xb, yb, normalize):
    """Per-tap ``(N, h, w)`` maps of a batched pair; shared by the functions and ``LPIPS``."""
    fx = _taps(trunk, params.version, xb, normalize)
    fy = _taps(trunk, params.version, yb, normalize)
    return _zero_identical(_head_maps(params, fx, fy), xb, yb)


# The largest image area (pixels) at which a batch-1 derivative w.r.t. one image runs on
# the pair's single trunk pass (``one_pass_grad`` of _pair_taps): where it measured faster
# (interleaved A/B, forward+backward against the two passes apart: vgg 64x64 1.10x,
# 128x128 1.09x, 256x256 1.01-1.04x; alex 64x64 1.09-1.13x, 128x128 1.07-1.15x, 256x256
# 1.06x; squeeze 64x64 1.09x, 96x96 1.06x, 128x128 1.03-1.04x, but 160x160 0.75x and
# 256x256 0.87x). Not above 256x256, where XLA keeps the pass's buffers whole, both
# images, until the backward pass (vgg 512x512 grad temp 566 -> 718 MiB, for 1-4%).
_ONE_PASS_GRAD_AREA = {"alex": 256 * 256, "vgg": 256 * 256, "squeeze": 128 * 128}


def _pair_maps(params, x, y, normalize, dtype, remat, precision):
    params, xb, yb, unbatched = _prepare(params, x, y, normalize)
    if xb.shape[0] == 1 and xb.dtype == yb.dtype and jax.default_backend() == "cpu":
        # A batch of 1: one trunk pass over the pair (see _pair_taps). Only where it
        # was measured (the CPU); at larger batches it gained nothing there.
        trunk = _trunk_apply(params, dtype, remat, precision)

        def raw(trunk_params, images, tangent_rows=None):
            xs = scale_inputs(_widen(images), params.version, normalize)
            return trunk(trunk_params, xs, tangent_rows=tangent_rows)

        # The derivative through the one pass too, up to the sizes where it measured
        # faster (_ONE_PASS_GRAD_AREA); not with remat, whose blocks would keep both
        # images' inputs (vgg 512x512: kept 376 -> 499 MiB).
        small = xb.shape[1] * xb.shape[2] <= _ONE_PASS_GRAD_AREA[params.net]
        one_pass_grad = not remat and small
        fx, fy = _pair_taps(raw, _normalize_taps, one_pass_grad, params.trunk, xb, yb)
        maps = _zero_identical(_head_maps(params, fx, fy), xb, yb)
    else:
        trunk = _trunk_fn(params, dtype, remat, precision)
        maps = _pair_maps_with(trunk, params, xb, yb, normalize)
    return maps, xb.shape[1:3], unbatched


def _layer_means(maps) -> list[jax.Array]:
    return [jnp.mean(m, axis=(-2, -1)) for m in maps]


def _total(per) -> jax.Array:
    return sum(per[1:], per[0])


def _unbatch(a, unbatched):
    return a[0] if unbatched else a


def layer_distances(
    params: LPIPSParams,
    x: Any,
    y: Any,
    *,
    normalize: bool = False,
    dtype: Any = None,
    remat: bool = False,
    precision: Any = None,
) -> tuple[jax.Array, ...]:
    """Per-tap distances (official ``retPerLayer``): a tuple of ``(N,)`` or ``()`` arrays.

    Their sum is :func:`distance`.
    """
    maps, _, unbatched = _pair_maps(params, x, y, normalize, dtype, remat, precision)
    return tuple(_unbatch(d, unbatched) for d in _layer_means(maps))


def distance(
    params: LPIPSParams,
    x: Any,
    y: Any,
    *,
    normalize: bool = False,
    dtype: Any = None,
    remat: bool = False,
    precision: Any = None,
) -> jax.Array:
    """LPIPS distance between ``x`` and ``y``.

    Args:
      params: from :func:`lpips_jax.load`.
      x, y: ``(N, H, W, 3)`` or ``(H, W, 3)`` float images in ``[-1, 1]``.
      normalize: inputs are in ``[0, 1]`` instead.
      dtype: compute dtype of the trunk (e.g. ``jnp.bfloat16``) after its first conv,
        which stays float32; params stay float32, normalisation and reductions run in
        float32.
      remat: recompute trunk activations in the backward pass (less memory).
      precision: ``jax.lax.Precision`` for the convolutions (e.g. ``"highest"`` on GPU).

    Returns:
      ``(N,)`` float32 distances, or ``()`` for unbatched input.
    """
    per = layer_distances(params, x, y, normalize=normalize, dtype=dtype, remat=remat, precision=precision)
    return _total(per)


def distance_from_features(
    params: LPIPSParams, fx: tuple[jax.Array, ...], fy: tuple[jax.Array, ...]
) -> jax.Array:
    """:func:`distance` from precomputed :func:`features` (``(N,)`` or ``()``).

    ``fx`` and ``fy`` broadcast against each other, so one reference's features
    (batch 1) can be compared with many candidates.
    """
    params = _validate_params(params)
    n = len(_nets.tap_channels(params.net))
    if len(fx) != n or len(fy) != n:
        raise ValueError(f"expected {n} feature taps for net {params.net!r}: got {len(fx)} and {len(fy)}")
    return _total(_layer_means(_head_maps(params, fx, fy)))


def _upsample(m: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """Bilinear upsampling, align_corners=False (half-pixel centres), of ``(N, h, w)``."""
    n = m.shape[0]
    return jax.image.resize(m, (n, *hw), method="bilinear", antialias=False)


def distance_map(
    params: LPIPSParams,
    x: Any,
    y: Any,
    *,
    normalize: bool = False,
    dtype: Any = None,
    remat: bool = False,
    precision: Any = None,
) -> jax.Array:
    """Spatial LPIPS map (official ``spatial=True``): ``(N, H, W)`` or ``(H, W)``.

    Each tap's map is upsampled bilinearly (align_corners=False) to the input size and
    the taps are summed.
    """
    maps, hw, unbatched = _pair_maps(params, x, y, normalize, dtype, remat, precision)
    ups = [_upsample(m, hw) for m in maps]
    return _unbatch(sum(ups[1:], ups[0]), unbatched)


class _Lin(nn.Module):
    """One LPIPS head: a 1x1 conv to one channel, no bias (``lin{k}.model.1``)."""

    channels: int

    @nn.compact
    def __call__(self) -> jax.Array:
        init = nn.initializers.constant(1.0 / self.channels)
        return self.param("kernel", init, (1, 1, self.channels, 1))


class _Heads(nn.Module):
    channels: tuple[int, ...]

    @nn.compact
    def __call__(self) -> dict:
        return {f"lin{k}": {"kernel": _Lin(c, name=f"lin{k}")()} for k, c in enumerate(self.channels)}


class LPIPS(nn.Module):
    """LPIPS as a Flax linen module, for embedding in a larger module tree.

    ``LPIPS(net="alex")(x, y)`` returns ``(N,)`` or ``()`` distances. Its params are
    ``{"trunk": ..., "heads": {"lin0": (1, 1, C, 1), ...}}``; ``LPIPSParams.variables()``
    gives exactly that collection, and :func:`to_params` goes the other way. The forward
    is the same code as :func:`distance`.
    """

    net: str = "alex"
    version: str = "0.1"
    lpips: bool = True
    dtype: Any = None
    remat: bool = False
    precision: Any = None

    @nn.compact
    def __call__(self, x: Any, y: Any, *, normalize: bool = False) -> jax.Array:
        _checks.check_net(self.net)
        _checks.check_version(self.version)
        heads = None
        if self.lpips:
            heads = _Heads(_nets.tap_channels(self.net), name="heads")()
        # Build an LPIPSParams view with the trunk bound, then share the function path.
        params = LPIPSParams(trunk=None, heads=heads, net=self.net, version=self.version, lpips=self.lpips)
        params, xb, yb, unbatched = _prepare(params, x, y, normalize)
        trunk = _nets.Trunk(
            net=self.net, dtype=_compute_dtype(self.dtype, _widen(xb), None), remat=self.remat,
            precision=self.precision, name="trunk",
        )  # fmt: skip
        maps = _pair_maps_with(trunk, params, xb, yb, normalize)
        return _unbatch(_total(_layer_means(maps)), unbatched)


def to_params(variables: dict, *, net: str, version: str = "0.1", lpips: bool = True) -> LPIPSParams:
    """:class:`LPIPSParams` from an :class:`LPIPS` module's variables."""
    p = variables.get("params", variables)
    heads = p["heads"] if lpips else None
    return LPIPSParams(trunk=p["trunk"], heads=heads, net=net, version=version, lpips=lpips)
