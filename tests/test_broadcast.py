"""A batch of 1 against a batch of N, as the official package broadcasts: each metric's
broadcast (LPIPS and ST-LPIPS share one; DISTS has its own) and every entry point that
takes two image batches gives the N distances, equal to the call with the single image
repeated N times, and runs the single image's trunk once (every metric).

Reference: the same call on the repeated batch. That is another program (the trunk runs at
batch 1 instead of N, which XLA may block differently): the float32 paths agree against
the quantity in float64 (``assert_paths_agree``); the gradient's algebra is checked in
float64.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _loss_helpers import assert_paths_agree, float64_truth, to_f64, x64

import lpips_jax
from lpips_jax import _ops

N = 3
# Each metric's params and image size: small, for the truths are float64 and the floor's jax
# runs float64 convs ~40x (alex) to ~300x (DISTS' VGG) slower than float32; alex needs 31.
METRICS = {
    "alex": ({"net": "alex"}, 32),
    "alex_st": ({"net": "alex", "variant": "shift_tolerant"}, 32),
    "dists": ({"net": "dists"}, 16),
}
# The broadcast itself is each params class's (LPIPSParams: alex; DISTSParams): ST-LPIPS is
# LPIPSParams with another trunk, which runs once at batch 1 (test_single_image_trunk_...).
BROADCASTERS = ("alex", "dists")


@functools.cache
def _metric(name):
    kwargs, size = METRICS[name]
    return lpips_jax.load(**kwargs), size


def _batches(size, seed=0):
    rng = np.random.default_rng(seed)
    one = rng.uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    many = np.clip(one + rng.normal(0, 0.3, (N, size, size, 3)), -1, 1).astype(np.float32)
    return one, many


def _truths(params, rep, many) -> dict:
    """The float64 values of the repeated pair (``rep``, ``many``), by function name: one
    float64 program for the layers (the distance is their sum) and one for the map. They
    serve (``many``, ``rep``) too: the metrics are symmetric in their two images."""
    per = float64_truth(lpips_jax.layer_distances, params, rep, many)
    out = {"layer_distances": per, "distance": sum(per)}
    if params.net != "dists":
        out["distance_map"] = float64_truth(lpips_jax.distance_map, params, rep, many)
    return out


@pytest.mark.parametrize(("one_first", "jit"), [(True, False), (False, True)], ids=["x_one", "y_one-jit"])
@pytest.mark.parametrize("name", BROADCASTERS)
def test_functions_broadcast_a_batch_of_one(name, one_first, jit):
    """On either side; eagerly (each function its own program) and under the caller's jit
    (one program for the three)."""
    params, size = _metric(name)
    one, many = _batches(size)
    rep = np.repeat(one, N, axis=0)
    pair, repeated = ((one, many), (rep, many)) if one_first else ((many, one), (many, rep))
    truths = _truths(params, rep, many)
    fns = [lpips_jax.distance, lpips_jax.layer_distances]
    if params.net != "dists":
        fns.append(lpips_jax.distance_map)

    def every(p, a, b):
        return tuple(fn(p, a, b) for fn in fns)

    for fn, got in zip(fns, (jax.jit(every) if jit else every)(params, *pair)):
        assert jax.tree_util.tree_leaves(got)[0].shape[0] == N, fn.__name__
        assert_paths_agree(got, fn(params, *repeated), truths[fn.__name__], what=fn.__name__)


def test_gradient_of_the_single_image_sums_over_the_batch():
    """d/d(one) of sum_n d(one, many_n): the sum over n of the repeated batch's gradients
    (in float64: the algebra, without float32's kink flips)."""
    one, many = _batches(METRICS["alex"][1], seed=1)
    with x64():
        p = to_f64(lpips_jax.load("alex"))
        one, many = jnp.asarray(one, jnp.float64), jnp.asarray(many, jnp.float64)
        grad = jax.jit(jax.grad(lambda a, b: lpips_jax.distance(p, a, b).sum()))
        g = grad(one, many)
        g_rep = grad(jnp.repeat(one, N, axis=0), many).sum(0, keepdims=True)
    assert g.shape == one.shape
    assert_paths_agree(g, g_rep, what="gradient of the single image")


def _conv_batches(jaxpr) -> list[int]:
    """The batch size of every convolution's input in ``jaxpr`` and its sub-jaxprs."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            out.append(eqn.invars[0].aval.shape[0])
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
                if hasattr(sub, "eqns"):
                    out += _conv_batches(sub)
    return out


@pytest.mark.parametrize("name", sorted(METRICS))
def test_single_image_trunk_runs_once(name):
    """The traced program runs each conv once at batch 1 and once at batch N: the single
    image's features are computed once, not N times."""
    params, size = _metric(name)
    one, many = _batches(size)
    with _ops.fast_paths(False):
        jaxpr = jax.make_jaxpr(lambda a, b: lpips_jax.distance(params, a, b))(one, many).jaxpr
    batches = _conv_batches(jaxpr)
    assert batches and sorted(set(batches)) == [1, N]
    assert batches.count(1) == batches.count(N)


def test_modules_broadcast():
    """The linen and NNX modules and ``MeanDistance`` take a batch of 1 against N too."""
    from lpips_jax import nnx as lnnx

    p = lpips_jax.load("alex")
    one, many = _batches(METRICS["alex"][1])
    rep = np.repeat(one, N, axis=0)
    truth = _truths(p, rep, many)["distance"]
    want = lpips_jax.distance(p, rep, many)
    module = lpips_jax.LPIPS(net="alex")
    assert_paths_agree(module.apply(p.variables(), one, many), want, truth, what="linen")
    assert_paths_agree(lnnx.LPIPS(params=p)(many, one), lpips_jax.distance(p, many, rep), truth, what="nnx")
    mean = lnnx.MeanDistance(p)
    mean.update(x=one, y=many)
    assert_paths_agree(mean.compute(), jnp.mean(want), truth.mean(), what="MeanDistance")
