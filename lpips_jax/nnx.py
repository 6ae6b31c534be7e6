"""Flax NNX front end: the metrics as an NNX module and as an NNX evaluation metric.

    lp = lpips_jax.nnx.LPIPS("alex")  # or LPIPS(params=lpips_jax.load(...))
    d = lp(x, y)  # exactly lpips_jax.distance(lp.params, x, y): (N,) or ()

    mean = lpips_jax.nnx.MeanDistance("alex")  # an nnx.Metric: update, compute, reset
    mean.update(x=x, y=y)
    mean.compute()  # () float32: the mean over every pair given since the last reset

The weights are held in :class:`LPIPSWeights`, an ``nnx.Variable`` that is not an
``nnx.Param``: ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` and ``nnx.grad`` (whose
default is ``nnx.Param``) leave them as they are, and ``nnx.state(model, nnx.Param)``
leaves them out. Images follow the library's contract: NHWC ``(N, H, W, 3)`` or
``(H, W, 3)`` floats in ``[-1, 1]`` (``[0, 1]`` with ``normalize=True``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lpips_jax._dists import DISTSParams
from lpips_jax._metric import METRIC_METHODS, LPIPSParams, _validate_params, distance, variables
from lpips_jax._weights import load

__all__ = ["LPIPS", "LPIPSWeights", "MeanDistance"]


# The one place that knows both NNX APIs, chosen by feature: flax >= 0.12 reads and writes
# a Variable with get_value/set_value (``.value`` is deprecated there) and needs nnx.data
# for a dict of Variables held as an attribute; flax 0.10-0.11 has ``.value`` and no nnx.data.
if hasattr(nnx.Variable, "get_value"):
    _get, _set = nnx.Variable.get_value, nnx.Variable.set_value
else:

    def _get(v: nnx.Variable) -> Any:
        return v.value

    def _set(v: nnx.Variable, value: Any) -> None:
        v.value = value


_data = getattr(nnx, "data", lambda tree: tree)


class LPIPSWeights(nnx.Variable):
    """The frozen weights of a metric: an ``nnx.Variable`` that is not an ``nnx.Param``."""


def _is_variable(v: Any) -> bool:
    return isinstance(v, nnx.Variable)


def _resolve_params(net, version, lpips, variant, path, params) -> LPIPSParams | DISTSParams:
    """``params`` checked, or ``lpips_jax.load(net, version, lpips, ...)``; not both."""
    if params is None:
        return load(net, version, lpips, variant=variant, path=path)
    given = [
        f"{name}={value!r}"
        for name, value, default in (
            ("net", net, None),
            ("version", version, None),
            ("lpips", lpips, True),
            ("variant", variant, "vanilla"),
            ("path", path, None),
        )
        if not (value is default or (isinstance(value, str) and value == default))
    ]
    if given:
        raise TypeError(
            f"params= takes loaded params instead of the arguments of lpips_jax.load: "
            f"got params and {', '.join(given)}"
        )
    return _validate_params(params)


class LPIPS(nnx.Module):
    """A metric of the family (LPIPS, ST-LPIPS, DISTS, E-LPIPS) as a Flax NNX module.

    ``LPIPS(net, *, version, lpips, variant, path)`` loads with :func:`lpips_jax.load`;
    ``LPIPS(params=p)`` takes params already loaded. ``net``, ``version``, ``lpips`` and
    ``variant`` are plain (static) attributes (``None`` where the metric has none); the
    arrays are :class:`LPIPSWeights` variables under ``weights``, and :attr:`params`
    rebuilds the params pytree from them, so every function of the library applies to
    it. E-LPIPS takes its key per call: ``lp(x, y, key=key)``, or an ``nnx.Rngs``
    (``key=rngs``: its next key).
    """

    def __init__(
        self,
        net: str | None = None,
        *,
        version: str | None = None,
        lpips: bool = True,
        variant: str = "vanilla",
        path: Any = None,
        params: Any = None,
    ):
        params = _resolve_params(net, version, lpips, variant, path, params)
        self.net = params.net
        self.version = params.version
        self.lpips = getattr(params, "lpips", None)
        self.variant = params.variant
        # The params class and its static fields, to rebuild the pytree from the weights.
        self._kind = type(params)
        self._static = tuple(
            (f.name, getattr(params, f.name))
            for f in dataclasses.fields(params)
            if not f.metadata.get("pytree_node", True)
        )
        self.weights = _data(jax.tree.map(LPIPSWeights, variables(params)["params"]))

    @property
    def params(self) -> Any:
        """The params pytree of the current weights (tracers inside NNX transforms)."""
        arrays = jax.tree.map(_get, self.weights, is_leaf=_is_variable)
        return self._kind(**arrays, **dict(self._static))

    def __call__(
        self,
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
        """:func:`lpips_jax.distance` of ``x`` and ``y``: ``(N,)`` or ``()`` float32."""
        options = dict(normalize=normalize, dtype=dtype, remat=remat, precision=precision)
        if isinstance(key, nnx.Rngs):
            key = key()
        return distance(self.params, x, y, **options, key=key, samples=samples)


# Compute options of MeanDistance, fixed at construction (update's keywords are data).
_OPTIONS = ("normalize", "dtype", "precision")


class MeanDistance(nnx.Metric):
    """The mean distance over every pair given to :meth:`update` since the last reset.

    ``metric`` says which metric: a net name (``"alex"``, ``"dists"``, ... as for
    :func:`lpips_jax.load`), params already loaded, or an :class:`LPIPS` module (whose
    weights it then shares). ``normalize``, ``dtype`` and ``precision`` are the compute
    options of :func:`lpips_jax.distance`. The sum (float32) and count (int32) are
    ``nnx.metrics.MetricState`` variables; they are plain ``jnp`` reductions, so a batch
    sharded over devices adds up to the global sum. Works in ``nnx.MultiMetric``.
    """

    def __init__(
        self,
        metric: str | LPIPSParams | DISTSParams | LPIPS = "alex",
        *,
        normalize: bool = False,
        dtype: Any = None,
        precision: Any = None,
    ):
        if isinstance(metric, str):
            metric = LPIPS(metric)
        elif all(callable(getattr(metric, m, None)) for m in METRIC_METHODS):  # loaded params
            metric = LPIPS(params=metric)
        elif not isinstance(metric, LPIPS):
            raise TypeError(
                f"metric has type {type(metric).__name__}: expected a net name (str), "
                "LPIPSParams or DISTSParams, or an lpips_jax.nnx.LPIPS module"
            )
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize={normalize!r}: expected True or False")
        self.module = metric
        self.normalize = normalize
        self.dtype = dtype
        self.precision = precision
        self.total = nnx.metrics.MetricState(jnp.zeros((), jnp.float32))
        self.count = nnx.metrics.MetricState(jnp.zeros((), jnp.int32))

    def reset(self) -> None:
        """Forget every pair: the sum and count go back to 0."""
        _set(self.total, jnp.zeros((), jnp.float32))
        _set(self.count, jnp.zeros((), jnp.int32))

    def update(
        self,
        *,
        x: Any = None,
        y: Any = None,
        distances: Any = None,
        mask: Any = None,
        **others: Any,
    ) -> None:
        """Add pairs: images ``x`` and ``y`` (``(N, H, W, 3)``, or ``(H, W, 3)`` for one
        pair), or their ``distances`` ``(N,)`` or ``()`` computed elsewhere.

        ``mask`` (the distances' shape; nonzero = counted) leaves out e.g. a last batch's
        padding. Other keywords are ignored, as ``nnx.MultiMetric`` passes every metric
        all of its keywords; the compute options are refused here (they are set at
        construction).
        """
        options = sorted(set(others) & set(_OPTIONS))
        if options:
            raise TypeError(
                f"update got {', '.join(options)}: compute options are set at construction, "
                f"e.g. MeanDistance(..., {options[0]}=...)"
            )
        if distances is None:
            if x is None or y is None:
                got = "neither" if x is None and y is None else ("only y" if x is None else "only x")
                raise TypeError(f"update takes x= and y= (image pairs) or distances=: got {got}")
            d = self.module(x, y, normalize=self.normalize, dtype=self.dtype, precision=self.precision)
        else:
            if x is not None or y is not None:
                raise TypeError("update takes x= and y= (image pairs) or distances=: got both")
            d = jnp.asarray(distances)
            if d.ndim > 1:
                raise ValueError(f"distances has shape {d.shape}: expected (N,) or (), one value per pair")
        d = d.astype(jnp.float32)
        if mask is None:
            self._add(jnp.sum(d), d.size)
            return
        keep = jnp.asarray(mask)
        if keep.shape != d.shape:
            raise ValueError(f"mask has shape {keep.shape}: expected {d.shape}, one entry per pair")
        keep = keep.astype(bool)
        self._add(jnp.sum(jnp.where(keep, d, 0)), jnp.sum(keep, dtype=jnp.int32))

    def _add(self, total: Any, count: Any) -> None:
        _set(self.total, _get(self.total) + total)
        _set(self.count, _get(self.count) + count)

    def compute(self) -> jax.Array:
        """The mean distance, ``()`` float32 (NaN when no pair was given)."""
        return _get(self.total) / _get(self.count).astype(jnp.float32)
