"""A batch of 1 against a batch of N, as the official package broadcasts: every metric and
every entry point that takes two image batches gives the N distances, equal to the call
with the single image repeated N times, and runs the single image's trunk once.

Reference: the same call on the repeated batch (the same arithmetic per image; the trunk
runs at batch 1 instead of N, which XLA may block differently: ``ENTRY_RTOL``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _loss_helpers import ENTRY_RTOL

import lpips_jax
from lpips_jax import _ops

N, H, W = 3, 64, 64
METRICS = {
    "alex": lambda: lpips_jax.load("alex"),
    "alex_st": lambda: lpips_jax.load("alex", variant="shift_tolerant"),
    "dists": lambda: lpips_jax.load("dists"),
}


@pytest.fixture(scope="module", params=sorted(METRICS))
def params(request):
    return METRICS[request.param]()


def _batches(seed=0):
    rng = np.random.default_rng(seed)
    one = rng.uniform(-1, 1, (1, H, W, 3)).astype(np.float32)
    many = np.clip(one + rng.normal(0, 0.3, (N, H, W, 3)), -1, 1).astype(np.float32)
    return one, many


def _close(got, want):
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=ENTRY_RTOL, atol=1e-7)


@pytest.mark.parametrize("one_first", [True, False], ids=["x_one", "y_one"])
def test_functions_broadcast_a_batch_of_one(params, one_first):
    one, many = _batches()
    pair = (one, many) if one_first else (many, one)
    repeated = tuple(np.repeat(a, N, axis=0) if a.shape[0] == 1 else a for a in pair)
    fns = [lpips_jax.distance, lpips_jax.layer_distances]
    if params.net != "dists":
        fns.append(lpips_jax.distance_map)
    for fn in fns:
        got, want = fn(params, *pair), fn(params, *repeated)
        assert jax.tree_util.tree_leaves(got)[0].shape[0] == N, fn.__name__
        _close(got, want)
    d = jax.jit(lpips_jax.distance)(params, *pair)
    _close(d, lpips_jax.distance(params, *repeated))


def test_gradient_of_the_single_image_sums_over_the_batch():
    """d/d(one) of sum_n d(one, many_n): the sum over n of the repeated batch's gradients."""
    p = lpips_jax.load("alex")
    one, many = _batches(1)
    g = jax.jit(jax.grad(lambda a: lpips_jax.distance(p, a, many).sum()))(one)
    g_rep = jax.jit(jax.grad(lambda a: lpips_jax.distance(p, a, many).sum()))(np.repeat(one, N, axis=0))
    assert g.shape == one.shape
    scale = float(np.abs(np.asarray(g)).max())
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_rep).sum(0, keepdims=True), atol=1e-5 * scale)


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


def test_single_image_trunk_runs_once(params):
    """The traced program runs each conv once at batch 1 and once at batch N: the single
    image's features are computed once, not N times."""
    one, many = _batches()
    with _ops.fast_paths(False):
        jaxpr = jax.make_jaxpr(lambda a, b: lpips_jax.distance(params, a, b))(one, many).jaxpr
    batches = _conv_batches(jaxpr)
    assert batches and sorted(set(batches)) == [1, N]
    assert batches.count(1) == batches.count(N)


def test_modules_broadcast():
    """The linen and NNX modules and ``MeanDistance`` take a batch of 1 against N too."""
    from lpips_jax import nnx as lnnx

    p = lpips_jax.load("alex")
    one, many = _batches(2)
    want = lpips_jax.distance(p, np.repeat(one, N, axis=0), many)
    module = lpips_jax.LPIPS(net="alex")
    _close(module.apply(p.variables(), one, many), want)
    _close(lnnx.LPIPS(params=p)(many, one), lpips_jax.distance(p, many, np.repeat(one, N, axis=0)))
    mean = lnnx.MeanDistance(p)
    mean.update(x=one, y=many)
    np.testing.assert_allclose(float(mean.compute()), float(jnp.mean(want)), rtol=ENTRY_RTOL)
