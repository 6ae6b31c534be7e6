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

import dataclasses
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
        return variables(self)

    @property
    def trunk_net(self) -> str:
        """The trunk's layer table (``_nets.LAYERS``): ``net``, or ``net_st``."""
        return _nets.trunk_name(self.net, self.variant)

    # The metric interface (see METRIC_METHODS below).

    @property
    def feature_channels(self) -> tuple[int, ...]:
        return _nets.tap_channels(self.trunk_net)

    def validate(self) -> LPIPSParams:
        _checks.check_net(self.net)
        _checks.check_version(self.version)
        _checks.check_lpips(self.lpips)
        _checks.check_variant(self.variant, self.net)
        if self.lpips and self.heads is None:
            raise ValueError("params.lpips is True but params.heads is None: load heads or set lpips=False")
        return self

    def features(self, xb, normalize, dtype, remat, precision) -> tuple[jax.Array, ...]:
        """The unit-normalised taps of a batch, ``(N, h_k, w_k, C_k)`` each."""
        return _taps(_trunk_fn(self, dtype, remat, precision), self.version, xb, normalize)

    def layer_terms(self, fx, fy) -> tuple[jax.Array, ...]:
        """Per tap, the ``(N,)`` spatial mean of its head map (``retPerLayer``)."""
        return tuple(_layer_means(self.spatial_terms(fx, fy)))

    def spatial_terms(self, fx, fy) -> tuple[jax.Array, ...]:
        """Per tap, the ``(N, h, w)`` weighted squared difference of normalised features."""
        return _head_maps(self, fx, fy)


# The metric interface. Each metric's params class (``LPIPSParams`` here, ``DISTSParams``
# in ``_dists``) is a pytree with a static ``net``, ``trunk_net`` (the layer table the size
# checks use) and ``feature_channels`` (C of each feature), and these methods; the entry
# points and modules call through them and never ask which metric they hold:
#   validate() -> self                     static checks of the params (ValueError/TypeError)
#   features(xb, normalize, dtype, remat, precision) -> tuple of (N, ...) arrays
#   layer_terms(fx, fy) -> tuple of (N,) arrays whose sum is the distance
#   spatial_terms(fx, fy) -> tuple of (N, h_k, w_k) maps, or ValueError where undefined
# A random metric (E-LPIPS) also sets ``random = True`` and has ``sampled_distance(x, y, *,
# key, samples, **options)`` and ``sampled_layer_distances`` (the same, per layer), which
# ``distance`` and ``layer_distances`` call. A new metric is one module with such
# a class, a branch of ``_weights.load`` and an entry in :data:`FAMILY`.
METRIC_METHODS = ("validate", "features", "layer_terms", "spatial_terms")
Params = LPIPSParams | DISTSParams


def _validate_params(params: Any) -> Params:
    if not all(callable(getattr(params, m, None)) for m in METRIC_METHODS):
        raise TypeError(
            f"params has type {type(params).__name__}: expected LPIPSParams or DISTSParams (the "
            "params of a metric), as returned by lpips_jax.load(...)"
        )
    return params.validate()


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
    return params.features(xb, normalize, dtype, remat, precision)


OPTIONS = ("normalize", "dtype", "remat", "precision")


def _one_program(core, static: tuple[str, ...] = OPTIONS):
    """``core(params, *arrays, **options)`` (``options``: the keywords ``static``, which
    include ``normalize``) as one jitted program per static setting when called eagerly:
    op by op, the metric would dispatch and compile each op (several times the first-call
    time of one program). The CPU fast-path setting is part of the key, as it acts at
    trace time. Under a trace (the caller's jit, grad, vmap) ``core`` runs inline, in the
    caller's program."""

    def keyed(*arrays, fast, **options):
        del fast  # only a cache key
        return core(*arrays, **options)

    jitted = jax.jit(keyed, static_argnames=(*static, "fast"))

    @functools.wraps(core)
    def call(*arrays, **options):
        leaves = jax.tree_util.tree_leaves((arrays, options["normalize"]))
        if any(isinstance(a, jax.core.Tracer) for a in leaves):
            return core(*arrays, **options)
        options["normalize"] = bool(options["normalize"])
        return jitted(*arrays, fast=_ops.enabled(), **options)

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


def _pair_features(params, xb, yb, normalize, dtype, remat, precision):
    """The features of both sides of a batched pair (a batch of 1 computed once)."""
    return tuple(params.features(b, normalize, dtype, remat, precision) for b in (xb, yb))


def _layer_means(maps) -> list[jax.Array]:
    return [jnp.mean(m, axis=(-2, -1)) for m in maps]


def _total(per) -> jax.Array:
    return sum(per[1:], per[0])


def _unbatch(a, unbatched):
    return a[0] if unbatched else a


def _layers_core(params, xb, yb, *, normalize, dtype, remat, precision):
    """Per-layer ``(N,)`` distances of a batched pair: the one path of every entry point."""
    fx, fy = _pair_features(params, xb, yb, normalize, dtype, remat, precision)
    return _zero_identical(params.layer_terms(fx, fy), xb, yb)


def _map_core(params, xb, yb, *, normalize, dtype, remat, precision):
    """The ``(N, H, W)`` spatial map of a batched pair."""
    fx, fy = _pair_features(params, xb, yb, normalize, dtype, remat, precision)
    maps = _zero_identical(params.spatial_terms(fx, fy), xb, yb)
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
    key: Any = None,
    samples: int = 1,
) -> tuple[jax.Array, ...]:
    """Per-layer distances: a tuple of ``(N,)`` or ``()`` arrays whose sum is :func:`distance`.

    LPIPS: one per tap (official ``retPerLayer``). DISTS: one per stage (the image, then
    relu1_2 .. relu5_3), the stage's share ``w_k - sum_c (alpha S1 + beta S2)`` with ``w_k``
    its share of the normalised weights. E-LPIPS: one per tap, each averaged over the draws
    of ``key`` and ``samples`` (as :func:`distance`).
    """
    options = dict(normalize=normalize, dtype=dtype, remat=remat, precision=precision)
    if getattr(params, "random", False):
        return params.sampled_layer_distances(x, y, key=key, samples=samples, **options)
    _check_deterministic(f"net {getattr(params, 'net', params)!r}", key, samples)
    params, xb, yb, unbatched = _prepare(params, x, y, normalize)
    per = _layers_program(params, xb, yb, normalize=normalize, dtype=dtype, remat=remat, precision=precision)
    return tuple(_unbatch(d, unbatched) for d in per)


def _check_deterministic(what: str, key, samples) -> None:
    """``what`` (e.g. ``"net 'alex'"``), a deterministic metric, takes no key and samples=1."""
    if key is not None or not (isinstance(samples, int) and samples == 1):
        raise ValueError(
            f"{what} is deterministic: it takes no key and samples=1 "
            f"(got key={'given' if key is not None else None}, samples={samples!r}); they are for E-LPIPS"
        )


def distance(
    params: Params,
    x: Any,
    y: Any,
    *,
    normalize: bool = False,
    dtype: Any = None,
    remat: bool = False,
    precision: Any = None,
    key: Any = None,
    samples: int = 1,
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
      key: a ``jax.random`` key: required by a random metric (E-LPIPS: one draw of its
        input transformations and dropout per key), refused by the others.
      samples: a random metric's number of draws (their mean); 1 for the others.

    Returns:
      ``(N,)`` float32 distances, or ``()`` for unbatched input.
    """
    options = dict(normalize=normalize, dtype=dtype, remat=remat, precision=precision)
    if getattr(params, "random", False):
        return params.sampled_distance(x, y, key=key, samples=samples, **options)
    return _total(layer_distances(params, x, y, key=key, samples=samples, **options))


def distance_from_features(params: Params, fx: tuple[jax.Array, ...], fy: tuple[jax.Array, ...]) -> jax.Array:
    """:func:`distance` from precomputed :func:`features` (``(N,)`` or ``()``).

    ``fx`` and ``fy`` broadcast against each other, so one reference's features
    (batch 1) can be compared with many candidates.
    """
    params = _validate_params(params)
    n = len(params.feature_channels)
    if len(fx) != n or len(fy) != n:
        raise ValueError(f"expected {n} feature taps for net {params.net!r}: got {len(fx)} and {len(fy)}")
    return _total(params.layer_terms(fx, fy))


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
    the taps are summed. Not defined for DISTS or E-LPIPS (``ValueError`` saying why).
    """
    params, xb, yb, unbatched = _prepare(params, x, y, normalize)
    params.spatial_terms((), ())  # no features, no maps; raises for a metric without maps, saying why
    m = _map_program(params, xb, yb, normalize=normalize, dtype=dtype, remat=remat, precision=precision)
    return _unbatch(m, unbatched)


def _init_lpips(rng: jax.Array, net: str, version: str | None, lpips: bool, variant: str) -> LPIPSParams:
    """Fresh LPIPS params: the trunk's Flax init, heads at ``1 / C``."""
    _checks.check_net(net)
    version = _checks.check_version(version or "0.1")
    _checks.check_lpips(lpips)
    trunk_net = _nets.trunk_name(net, _checks.check_variant(variant, net))
    trunk, heads = init_trunk_and_heads(rng, trunk_net)
    return LPIPSParams(
        trunk=trunk, heads=heads if lpips else None, net=net, version=version, lpips=lpips, variant=variant
    )


def init_trunk_and_heads(rng: jax.Array, trunk_net: str) -> tuple[Any, dict]:
    """Flax's init of the trunk ``trunk_net``, and heads ``lin{k}`` at ``1 / C`` (a channel mean)."""
    m = _nets.min_size(trunk_net)
    trunk = _nets.Trunk(net=trunk_net).init(rng, jnp.zeros((1, m, m, 3), jnp.float32))["params"]
    heads = {
        f"lin{k}": {"kernel": jnp.full((1, 1, c, 1), 1 / c, jnp.float32)}
        for k, c in enumerate(_nets.tap_channels(trunk_net))
    }
    return trunk, heads


def _no_lpips_options(net: str, version, lpips, variant) -> None:
    if version is not None or lpips is not True or variant != "vanilla":
        raise ValueError(
            f"net={net!r} takes no version, lpips or variant: got version={version!r}, "
            f"lpips={lpips!r}, variant={variant!r}"
        )


def _init_dists(rng: jax.Array, net: str, version: str | None, lpips: bool, variant: str) -> DISTSParams:
    _no_lpips_options(net, version, lpips, variant)
    return _dists.init(rng)


def _init_elpips(rng: jax.Array, net: str, version: str | None, lpips: bool, variant: str):
    from lpips_jax import _elpips  # it builds on this module

    _no_lpips_options(net, version, lpips, variant)
    return _elpips.init(rng)


# The metric family by ``net``: each entry makes fresh params of that metric (the linen
# module's init; the params class implements METRIC_METHODS). LPIPS serves every other net.
FAMILY = {"dists": _init_dists, "elpips": _init_elpips}


def _initializer(net, version, lpips, variant, scale_levels=None):
    init = FAMILY.get(net, _init_lpips)
    init = functools.partial(init, net=net, version=version, lpips=lpips, variant=variant)
    if scale_levels is None:
        return init
    if net != "elpips":
        raise ValueError(f"scale_levels={scale_levels!r} is an E-LPIPS option: net={net!r} takes none")
    return lambda rng: init(rng).replace(scale_levels=scale_levels).validate()


class LPIPS(nn.Module):
    """Any metric of the family as a Flax linen module, for embedding in a module tree.

    ``LPIPS(net="alex")(x, y)`` returns ``(N,)`` or ``()`` distances; ``net``,
    ``version``, ``lpips`` and ``variant`` are those of :func:`lpips_jax.load`
    (``LPIPS(net="dists")``, ``LPIPS(net="vgg", variant="shift_tolerant")``). Its params are
    the params pytree's array fields (LPIPS: ``{"trunk": ..., "heads": {"lin0": (1, 1, C,
    1), ...}}``; DISTS: ``trunk``, ``alpha``, ``beta``); ``params.variables()`` gives
    exactly that collection, and :func:`to_params` goes the other way. The forward is
    :func:`distance`.

    E-LPIPS (``net="elpips"``, ``scale_levels`` its level count, default 8) is random: its
    key is ``key=`` of the call, else one drawn from the module's ``"elpips"`` RNG stream
    (``.apply(v, x, y, rngs={"elpips": key})``); ``samples=`` the number of draws.
    """

    net: str = "alex"
    version: str | None = None
    lpips: bool = True
    variant: str = "vanilla"
    dtype: Any = None
    remat: bool = False
    precision: Any = None
    scale_levels: int | None = None

    @nn.compact
    def __call__(
        self, x: Any, y: Any, *, normalize: bool = False, key: Any = None, samples: int = 1
    ) -> jax.Array:
        init = _initializer(self.net, self.version, self.lpips, self.variant, self.scale_levels)
        template = jax.eval_shape(init, jax.random.PRNGKey(0))  # the fields and static data
        arrays = {
            name: self.param(name, lambda rng, name=name: getattr(init(rng), name))
            for name in _array_fields(template)
        }
        params = dataclasses.replace(template, **arrays)
        if getattr(params, "random", False) and key is None:
            if not (self.has_rng("elpips") or self.is_initializing()):
                raise ValueError(
                    f"net={self.net!r} is random: call with key=jax.random.key(seed), or "
                    '.apply(variables, x, y, rngs={"elpips": key})'
                )
            key = self.make_rng("elpips" if self.has_rng("elpips") else "params")
        options = dict(dtype=self.dtype, remat=self.remat, precision=self.precision)
        return distance(params, x, y, normalize=normalize, key=key, samples=samples, **options)


def _array_fields(params) -> list[str]:
    """The names of ``params``' pytree fields that hold arrays (not ``None``)."""
    return [
        f.name
        for f in dataclasses.fields(params)
        if f.metadata.get("pytree_node", True) and getattr(params, f.name) is not None
    ]


def variables(params) -> dict:
    """The ``{"params": ...}`` collection of :class:`LPIPS` holding ``params``' arrays."""
    return {"params": {name: getattr(params, name) for name in _array_fields(params)}}


def to_params(
    variables: dict,
    *,
    net: str,
    version: str | None = None,
    lpips: bool = True,
    variant: str = "vanilla",
    scale_levels: int | None = None,
) -> Params:
    """The params of an :class:`LPIPS` module's variables (the module's ``net``, ``version``,
    ``lpips``, ``variant`` and ``scale_levels``)."""
    p = variables.get("params", variables)
    template = jax.eval_shape(_initializer(net, version, lpips, variant, scale_levels), jax.random.PRNGKey(0))
    return dataclasses.replace(template, **{name: p[name] for name in _array_fields(template)}).validate()
