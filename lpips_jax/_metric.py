"""The metrics as pure functions of ``(params, x, y)``: LPIPS (and ST-LPIPS, the same
formula on shift-tolerant trunks) here, DISTS in :mod:`lpips_jax._dists`.

Contract: images are NHWC ``(N, H, W, 3)`` or unbatched ``(H, W, 3)`` float arrays with
values in ``[-1, 1]`` (``[0, 1]`` with ``normalize=True``); a batch of 1 ``(1, H, W, 3)``
broadcasts against a batch of N (its features computed once). ``distance`` returns ``(N,)``
(or ``()``), ``distance_map`` returns ``(N, H, W)`` (or ``(H, W)``), ``layer_distances``
a tuple of ``(N,)`` (or ``()``) arrays, one per tap. Results are float32.

The way through: scaling -> trunk -> unit-normalised taps -> heads -> spatial means ->
sum over taps. Checks of rank, channels, shapes, dtype and minimum size run at trace time.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lpips_jax import _checks, _dists, _nets, _ops
from lpips_jax._dists import DISTSParams

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
    ``lpips=False``. ``net``, ``version``, ``lpips`` and ``variant`` (``"vanilla"``, or
    ``"shift_tolerant"`` for ST-LPIPS) are static (not leaves), so jit, grad, vmap and
    optax see only the arrays.
    """

    trunk: Any
    heads: Any = None
    net: str = struct.field(pytree_node=False, default="alex")
    version: str = struct.field(pytree_node=False, default="0.1")
    lpips: bool = struct.field(pytree_node=False, default=True)
    variant: str = struct.field(pytree_node=False, default="vanilla")

    def variables(self) -> dict:
        """The ``{"params": ...}`` collection for :class:`LPIPS` ``.apply``."""
        p = {"trunk": self.trunk}
        if self.lpips:
            p["heads"] = self.heads
        return {"params": p}

    @property
    def trunk_net(self) -> str:
        """The trunk's layer table (``_nets.LAYERS``): ``net``, or ``net_st``."""
        return _nets.trunk_name(self.net, self.variant)


Params = LPIPSParams | DISTSParams


def _validate_params(params: Any) -> Params:
    if isinstance(params, DISTSParams):
        return _dists.validate(params)
    if not isinstance(params, LPIPSParams):
        raise TypeError(
            f"params has type {type(params).__name__}: expected LPIPSParams or DISTSParams, "
            "as returned by lpips_jax.load(...)"
        )
    _checks.check_net(params.net)
    _checks.check_version(params.version)
    _checks.check_lpips(params.lpips)
    _checks.check_variant(params.variant, params.net)
    if params.lpips and params.heads is None:
        raise ValueError("params.lpips is True but params.heads is None: load heads or set lpips=False")
    return params


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
    the norm takes its exact value 0 through a branch whose gradient is zero (the double
    ``where`` of ``optax.safe_norm``). Computed in float32 (float64 for float64 features).
    """
    dt = jnp.float64 if f.dtype == jnp.float64 else jnp.float32
    f = f.astype(dt)
    sq = jnp.sum(f * f, axis=-1, keepdims=True)
    positive = sq > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)
    return f / (norm + jnp.asarray(NORM_EPS, dt))


def head_map(d: jax.Array, kernel: jax.Array) -> jax.Array:
    """One head on ``d`` ``(..., C)``, the squared difference of normalised taps: the
    weighted channel sum ``(...)`` with ``kernel`` ``(1, 1, C, 1)`` (``lin{k}``), in ``d``'s
    dtype. A product and a sum, not a dot: exact float32 on GPU too (a dot's default
    precision there is TF32)."""
    return jnp.sum(d * kernel.reshape(-1).astype(d.dtype), axis=-1)


def _trunk_fn(params: LPIPSParams, dtype: Any, remat: bool, precision: Any):
    """The trunk of ``params`` as a function of scaled images, returning the raw taps."""

    def apply(xs):
        dt = _nets.compute_dtype(dtype, xs, params.trunk)
        trunk = _nets.Trunk(net=params.trunk_net, dtype=dt, remat=remat, precision=precision)
        return trunk.apply({"params": params.trunk}, xs)

    return apply


def _taps(trunk, version, xb, normalize):
    """Scaling layer, ``trunk`` (a function or a bound module), unit-normalised taps."""
    return tuple(normalize_channels(t) for t in trunk(scale_inputs(_checks.widen(xb), version, normalize)))


def _features_core(params: Params, xb, *, normalize, dtype, remat, precision):
    """What the metric compares, of a batch: LPIPS's unit-normalised taps, DISTS' stages."""
    if isinstance(params, DISTSParams):
        return _dists.features(params, xb, normalize, dtype, remat, precision)
    return _taps(_trunk_fn(params, dtype, remat, precision), params.version, xb, normalize)


def _one_program(core):
    """``core(params, *arrays, normalize=, dtype=, remat=, precision=)`` as one jitted
    program per static setting when called eagerly: op by op, the metric would dispatch
    and compile each op (several times the first-call time of one program). The CPU
    fast-path setting is part of the key, as it acts at trace time. Under a trace (the
    caller's jit, grad, vmap) ``core`` runs inline, in the caller's program."""

    def keyed(*arrays, normalize, dtype, remat, precision, fast):
        del fast  # only a cache key
        return core(*arrays, normalize=normalize, dtype=dtype, remat=remat, precision=precision)

    jitted = jax.jit(keyed, static_argnames=("normalize", "dtype", "remat", "precision", "fast"))

    @functools.wraps(core)
    def call(*arrays, normalize, dtype, remat, precision):
        leaves = jax.tree_util.tree_leaves((arrays, normalize))
        if any(isinstance(a, jax.core.Tracer) for a in leaves):
            return core(*arrays, normalize=normalize, dtype=dtype, remat=remat, precision=precision)
        return jitted(
            *arrays, normalize=bool(normalize), dtype=dtype, remat=remat, precision=precision,
            fast=_ops.enabled(),
        )  # fmt: skip

    return call


def features(
    params: Params,
    x: Any,
    *,
    normalize: bool = False,
    dtype: Any = None,
    remat: bool = False,
    precision: Any = None,
) -> tuple[jax.Array, ...]:
    """What the metric compares, of ``x``: a tuple of ``(N, h_k, w_k, C_k)`` arrays (LPIPS:
    the unit-normalised taps; DISTS: the ``[0, 1]`` image and the five VGG stages).

    Compute once for a fixed reference and pass to :func:`distance_from_features`.
    ``x`` is ``(N, H, W, 3)`` or ``(H, W, 3)`` (then the features have no batch axis).
    """
    params = _validate_params(params)
    _checks.check_images(x, x, params.trunk_net)
    _checks.check_range("x", x, normalize)
    xb, unbatched = _checks.as_batch(x)
    feats = _features_program(params, xb, normalize=normalize, dtype=dtype, remat=remat, precision=precision)
    return tuple(f[0] for f in feats) if unbatched else feats


def _head_maps(params: LPIPSParams, fx, fy) -> tuple[jax.Array, ...]:
    """Per tap, the ``(N, h, w)`` weighted squared difference of normalised features."""
    maps = []
    for k, (a, b) in enumerate(zip(fx, fy)):
        d = (a - b) ** 2
        if params.lpips:
            maps.append(head_map(d, params.heads[f"lin{k}"]["kernel"]))
        else:
            maps.append(jnp.sum(d, axis=-1))
    return tuple(maps)


def _prepare(params, x, y, normalize):
    params = _validate_params(params)
    _checks.check_images(x, y, params.trunk_net)
    _checks.check_range("x", x, normalize)
    _checks.check_range("y", y, normalize)
    xb, unbatched = _checks.as_batch(x)
    yb, _ = _checks.as_batch(y)
    return params, xb, yb, unbatched


def _zero_identical(values, xb, yb):
    """Exactly 0 (value and gradient) for pairs whose images are identical.

    Mathematically d(x, x) = 0 with gradient 0; under jit XLA may compile x's and y's
    trunk passes with different summation orders, leaving ~1e-16 (and DISTS' texture
    term is 1 only up to rounding). One comparison of the inputs restores the identity
    (a NaN anywhere leaves the pair as it is). ``values``: ``(N, ...)`` arrays.
    """
    same = jnp.max(jnp.abs(xb - yb), axis=(1, 2, 3)) == 0
    return tuple(jnp.where(same.reshape(-1, *(1,) * (v.ndim - 1)), jnp.zeros_like(v), v) for v in values)


def _maps(trunk, params, xb, yb, normalize):
    """Per-tap ``(N, h, w)`` maps of a batched LPIPS pair: the one path of every entry point."""
    fx = _taps(trunk, params.version, xb, normalize)
    fy = _taps(trunk, params.version, yb, normalize)
    return _zero_identical(_head_maps(params, fx, fy), xb, yb)


def _layer_means(maps) -> list[jax.Array]:
    return [jnp.mean(m, axis=(-2, -1)) for m in maps]


def _total(per) -> jax.Array:
    return sum(per[1:], per[0])


def _unbatch(a, unbatched):
    return a[0] if unbatched else a


def _layers_core(params, xb, yb, *, normalize, dtype, remat, precision):
    """Per-layer ``(N,)`` distances of a batched pair."""
    if isinstance(params, DISTSParams):
        fx = _dists.features(params, xb, normalize, dtype, remat, precision)
        fy = _dists.features(params, yb, normalize, dtype, remat, precision)
        return _zero_identical(_dists.stage_terms(params, fx, fy), xb, yb)
    maps = _maps(_trunk_fn(params, dtype, remat, precision), params, xb, yb, normalize)
    return tuple(_layer_means(maps))


def _map_core(params, xb, yb, *, normalize, dtype, remat, precision):
    """The ``(N, H, W)`` spatial map of a batched LPIPS pair."""
    maps = _maps(_trunk_fn(params, dtype, remat, precision), params, xb, yb, normalize)
    ups = [_upsample(m, xb.shape[1:3]) for m in maps]
    return sum(ups[1:], ups[0])


_features_program = _one_program(_features_core)
_layers_program = _one_program(_layers_core)
_map_program = _one_program(_map_core)


def layer_distances(
    params: Params,
    x: Any,
    y: Any,
    *,
    normalize: bool = False,
    dtype: Any = None,
    remat: bool = False,
    precision: Any = None,
) -> tuple[jax.Array, ...]:
    """Per-layer distances: a tuple of ``(N,)`` or ``()`` arrays whose sum is :func:`distance`.

    LPIPS: one per tap (official ``retPerLayer``). DISTS: one per stage (the image, then
    relu1_2 .. relu5_3), the stage's share ``w_k - sum_c (alpha S1 + beta S2)`` with ``w_k``
    its share of the normalised weights.
    """
    params, xb, yb, unbatched = _prepare(params, x, y, normalize)
    per = _layers_program(params, xb, yb, normalize=normalize, dtype=dtype, remat=remat, precision=precision)
    return tuple(_unbatch(d, unbatched) for d in per)


def distance(
    params: Params,
    x: Any,
    y: Any,
    *,
    normalize: bool = False,
    dtype: Any = None,
    remat: bool = False,
    precision: Any = None,
) -> jax.Array:
    """The distance between ``x`` and ``y`` (LPIPS, ST-LPIPS or DISTS, as ``params`` says).

    Args:
      params: from :func:`lpips_jax.load`.
      x, y: ``(N, H, W, 3)`` or ``(H, W, 3)`` float images in ``[-1, 1]``; either may
        be a batch of 1 ``(1, H, W, 3)`` against the other's N (broadcast).
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


def distance_from_features(params: Params, fx: tuple[jax.Array, ...], fy: tuple[jax.Array, ...]) -> jax.Array:
    """:func:`distance` from precomputed :func:`features` (``(N,)`` or ``()``).

    ``fx`` and ``fy`` broadcast against each other, so one reference's features
    (batch 1) can be compared with many candidates.
    """
    params = _validate_params(params)
    n = len(_dists.CHANNELS) if isinstance(params, DISTSParams) else len(_nets.tap_channels(params.trunk_net))
    if len(fx) != n or len(fy) != n:
        raise ValueError(f"expected {n} feature taps for net {params.net!r}: got {len(fx)} and {len(fy)}")
    if isinstance(params, DISTSParams):
        return _total(_dists.stage_terms(params, fx, fy))
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
    the taps are summed. Not defined for DISTS (``ValueError``).
    """
    params, xb, yb, unbatched = _prepare(params, x, y, normalize)
    if isinstance(params, DISTSParams):
        raise ValueError("distance_map is not defined for DISTS (its terms are global statistics per stage)")
    m = _map_program(params, xb, yb, normalize=normalize, dtype=dtype, remat=remat, precision=precision)
    return _unbatch(m, unbatched)


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
            net=self.net, dtype=_nets.compute_dtype(self.dtype, _checks.widen(xb), None), remat=self.remat,
            precision=self.precision, name="trunk",
        )  # fmt: skip
        maps = _maps(trunk, params, xb, yb, normalize)
        return _unbatch(_total(_layer_means(maps)), unbatched)


def to_params(variables: dict, *, net: str, version: str = "0.1", lpips: bool = True) -> LPIPSParams:
    """:class:`LPIPSParams` from an :class:`LPIPS` module's variables."""
    p = variables.get("params", variables)
    heads = p["heads"] if lpips else None
    return LPIPSParams(trunk=p["trunk"], heads=heads, net=net, version=version, lpips=lpips)
