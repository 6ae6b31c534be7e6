"""DISTS (Ding, Ma, Wang, Simoncelli, TPAMI 2020) as pure functions of ``(params, x, y)``.

The same contract as LPIPS: NHWC ``(N, H, W, 3)`` or ``(H, W, 3)`` float images in
``[-1, 1]`` (``[0, 1]`` with ``normalize=True``); ``(N,)`` or ``()`` float32 results.

VGG16 with its max-pools replaced by L2 pooling, on ImageNet-normalised ``[0, 1]``
images; per stage (the image itself, then relu1_2 .. relu5_3) and channel, a structure
term (means) and a texture term (variances and covariance), weighted by the learned
``alpha`` and ``beta`` normalised by their sum: ``distance = 1 - sum``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lpips_jax import _checks, _nets

MEAN = (0.485, 0.456, 0.406)  # ImageNet, as torchvision
STD = (0.229, 0.224, 0.225)
C1 = C2 = 1e-6
# Stage channels: the image, then relu1_2 .. relu5_3; alpha and beta have sum(...) = 1475.
CHANNELS = (3, *_nets.tap_channels("vgg"))


@struct.dataclass
class DISTSParams:
    """Params of DISTS: a pytree whose static ``net`` says which metric it is.

    ``trunk`` is the VGG16 param tree (the LPIPS vgg trunk's names and shapes), ``alpha``
    and ``beta`` the ``(1475,)`` per-channel weights of the structure and texture terms.
    """

    trunk: Any
    alpha: Any
    beta: Any
    net: str = struct.field(pytree_node=False, default="dists")

    # What LPIPSParams says of itself, for code that describes either kind of params.
    version = None
    variant = "vanilla"
    trunk_net = "dists"
    feature_channels = CHANNELS

    # The metric interface of lpips_jax._metric (METRIC_METHODS).

    def validate(self) -> DISTSParams:
        return validate(self)

    def variables(self) -> dict:
        """The ``{"params": ...}`` collection of ``lpips_jax.LPIPS(net="dists")``."""
        return {"params": {"trunk": self.trunk, "alpha": self.alpha, "beta": self.beta}}

    def features(self, xb, normalize, dtype, remat, precision) -> tuple[jax.Array, ...]:
        return features(self, xb, normalize, dtype, remat, precision)

    def layer_terms(self, fx, fy) -> tuple[jax.Array, ...]:
        return stage_terms(self, fx, fy)

    def spatial_terms(self, fx, fy):
        raise ValueError("distance_map is not defined for DISTS (its terms are global statistics per stage)")


def init(rng: jax.Array) -> DISTSParams:
    """Fresh DISTS params: the trunk's Flax init, alpha and beta ~ N(0.1, 0.01) as the
    official module initialises them."""
    trunk = _nets.Trunk(net="dists").init(rng, jnp.zeros((1, 16, 16, 3), jnp.float32))["params"]
    ka, kb = jax.random.split(jax.random.fold_in(rng, 1))
    n = sum(CHANNELS)
    alpha, beta = (0.1 + 0.01 * jax.random.normal(k, (n,), jnp.float32) for k in (ka, kb))
    return DISTSParams(trunk=trunk, alpha=alpha, beta=beta)


def validate(params: Any) -> DISTSParams:
    if not isinstance(params, DISTSParams):
        raise TypeError(f"params has type {type(params).__name__}: expected DISTSParams")
    if params.net != "dists":
        raise ValueError(f"DISTSParams has net={params.net!r}: expected 'dists'")
    n = sum(CHANNELS)
    for name in ("alpha", "beta"):
        shape = tuple(np.shape(getattr(params, name)))
        if shape != (n,):
            raise ValueError(f"DISTSParams.{name} has shape {shape}: expected ({n},)")
    return params


def features(params: DISTSParams, xb: jax.Array, normalize: Any, dtype: Any, remat: bool, precision: Any):
    """The stages of a batch: the ``[0, 1]`` image itself, then the five VGG stages."""
    x01 = _checks.widen(xb)
    if isinstance(normalize, jax.core.Tracer):
        x01 = jnp.where(normalize, x01, (x01 + 1) / 2)
    elif not normalize:
        x01 = (x01 + 1) / 2
    mean = jnp.asarray(np.asarray(MEAN, np.float32), x01.dtype)
    std = jnp.asarray(np.asarray(STD, np.float32), x01.dtype)
    h = (x01 - mean) / std
    dt = _nets.compute_dtype(dtype, h, params.trunk)
    trunk = _nets.Trunk(net="dists", dtype=dt, remat=remat, precision=precision)
    stages = trunk.apply({"params": params.trunk}, h)
    return (x01, *(s.astype(jnp.float64 if s.dtype == jnp.float64 else jnp.float32) for s in stages))


def stage_terms(params: DISTSParams, fx, fy) -> tuple[jax.Array, ...]:
    """Per stage, its share of the distance ``(N,)``: ``w_k - sum_c (alpha S1 + beta S2)``
    with ``w_k`` the stage's share of the normalised weights; they sum to the distance."""
    total = jnp.sum(params.alpha) + jnp.sum(params.beta)
    bounds = np.cumsum((0, *CHANNELS))
    out = []
    for k, (a, b) in enumerate(zip(fx, fy)):
        dt = jnp.promote_types(a.dtype, b.dtype)
        alpha = (params.alpha[bounds[k] : bounds[k + 1]] / total).astype(dt)
        beta = (params.beta[bounds[k] : bounds[k + 1]] / total).astype(dt)
        a, b = a.astype(dt), b.astype(dt)
        ma, mb = jnp.mean(a, axis=(-3, -2)), jnp.mean(b, axis=(-3, -2))
        va = jnp.mean((a - ma[..., None, None, :]) ** 2, axis=(-3, -2))
        vb = jnp.mean((b - mb[..., None, None, :]) ** 2, axis=(-3, -2))
        cov = jnp.mean(a * b, axis=(-3, -2)) - ma * mb
        s1 = (2 * ma * mb + C1) / (ma**2 + mb**2 + C1)
        s2 = (2 * cov + C2) / (va + vb + C2)
        out.append(jnp.sum(alpha + beta, axis=-1) - jnp.sum(alpha * s1 + beta * s2, axis=-1))
    return tuple(out)
