"""LPIPS under JAX transforms, as in a training step: each against the plain call.

jit, value_and_grad (of an unbatched image too), vmap (over pairs, each an unbatched call;
over a leading axis of heads or of whole params), jax.checkpoint and remat, lax.scan; no
retrace for new values; what the backward pass keeps; no host callbacks in the step.

A transform computes the plain call's algebra: checked in float64 (params and images
widened, under x64), where float32 rounding and the kink flips it causes in gradients are
gone (``assert_paths_agree``: 1e-12 of the scale). jit is checked in float32 as well,
against the float64 value.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _loss_helpers import (
    assert_paths_agree,
    entry_pair,
    float64_truth,
    image_and_feature_losses,
    kept_bytes,
    to_f64,
    x64,
    zero_biases,
)

import lpips_jax

N = 3


@pytest.fixture(scope="module")
def pair():
    return entry_pair()


@pytest.fixture(scope="module")
def params():
    return lpips_jax.load("alex")


def _loss(p, x, y, **kw):
    return lpips_jax.distance(p, x, y, **kw).sum()


@functools.partial(jax.jit, static_argnames="remat")
def _jit_value_and_grad(p, x, y, remat=False):
    return jax.value_and_grad(_loss, (0, 1))(p, x, y, remat=remat)


@pytest.fixture(scope="module")
def f64(params, pair):
    """The params and images in float64 (use under ``x64()``)."""
    with x64():
        return to_f64(params), *(jnp.asarray(a, jnp.float64) for a in pair)


@pytest.fixture(scope="module")
def plain(params, pair, f64):
    """The reference, in float64: the un-transformed call (its own one-program jit) and the
    value and gradient w.r.t. params and x as one jitted program (op by op, a gradient costs
    ~30 s of dispatch here)."""
    d = float64_truth(lpips_jax.distance, params, *pair)
    with x64():
        v, g = jax.tree_util.tree_map(np.asarray, _jit_value_and_grad(*f64))
    return d, v, g


# ---------------------------------------------------------------------------------------
# jit, value_and_grad


def test_jit_and_value_and_grad_equal_plain(params, pair, plain):
    """``jax.jit(distance)`` (float32, against the float64 value); the value of
    ``value_and_grad`` is the summed distance (float64)."""
    x, y = pair
    d, v, _ = plain
    jitted = jax.jit(lpips_jax.distance)(params, x, y)
    assert jitted.shape == (N,) and jitted.dtype == jnp.float32
    assert_paths_agree(jitted, lpips_jax.distance(params, x, y), d, what="jit")
    assert_paths_agree(v, d.sum(), what="value_and_grad")


def test_no_retrace_for_new_values(params, pair):
    """A jitted training step traces once for any values of the same shapes (images and
    params alike), and so does ``jax.jit(lpips_jax.distance)``; identical inputs give
    exactly 0 under jit too (without the identity guard, _metric._zero_identical, XLA:CPU
    left ~6e-16 at 64x64)."""
    x, y = pair
    traces = []

    @jax.jit
    def step(p, a, b):
        traces.append(1)
        return jax.value_and_grad(lambda u: lpips_jax.distance(p, u, b).mean())(a)

    rng = np.random.default_rng(0)
    other = params.replace(heads=jax.tree_util.tree_map(lambda h: 2 * h, params.heads))
    for p in (params, other, params):
        a = np.clip(x + rng.normal(0, 0.1, x.shape), -1, 1).astype(np.float32)
        jax.block_until_ready(step(p, a, y))
    assert len(traces) == 1

    # jit's cache is shared by every jax.jit(lpips_jax.distance) in the session (other
    # tests add their shapes): count what these calls add.
    dist = jax.jit(lpips_jax.distance)
    dist(params, x, y)
    size = dist._cache_size()
    for k in range(1, 4):
        dist(params, x * (1 - 0.1 * k), y)
    assert np.all(np.asarray(dist(params, x, x)) == 0)
    assert dist._cache_size() == size


# ---------------------------------------------------------------------------------------
# vmap


def test_vmap_over_pairs_equals_batch(f64, plain):
    """Each pair an unbatched ``(H, W, 3)`` call under vmap: the batch's distances."""
    p, x, y = f64
    d, _, _ = plain
    with x64():
        got = jax.jit(jax.vmap(lambda a, b: lpips_jax.distance(p, a, b)))(x, y)
    assert got.shape == (N,)
    assert_paths_agree(got, d, what="vmap over pairs")


def test_gradient_of_an_unbatched_image(f64, plain):
    """``(H, W, 3)`` images: a scalar value, and the gradient of the image's shape, equal to
    the batch's first row (the pairs of a batch are independent)."""
    p, x, y = f64
    d, _, (_, gx) = plain
    with x64():
        v, g = jax.jit(jax.value_and_grad(lambda a, b: lpips_jax.distance(p, a, b)))(x[0], y[0])
    assert v.shape == () and g.shape == x.shape[1:]
    assert_paths_agree((v, g), (d[0], gx[0]), what="unbatched")


def test_vmap_over_stacked_heads(params, pair, f64, plain):
    """Several head sets on a leading axis (trunk shared): the distance is linear in the
    heads, so head set ``c * w`` gives ``c * distance`` (hand-computed reference); and each
    row equals the plain call with that head set."""
    p, x, y = f64
    d, _, _ = plain
    with x64():
        factors = jnp.asarray([0.5, 1.0, 3.0], jnp.float64)
        heads = jax.tree_util.tree_map(lambda h: factors[:, None, None, None, None] * h, p.heads)
        axes = lpips_jax.LPIPSParams(trunk=None, heads=0, net=p.net, version=p.version, lpips=p.lpips)
        out = jax.jit(jax.vmap(lpips_jax.distance, in_axes=(axes, None, None)))(p.replace(heads=heads), x, y)
        one = lpips_jax.distance(p.replace(heads=jax.tree_util.tree_map(lambda h: h[2], heads)), x, y)
    assert out.shape == (3, N)
    assert_paths_agree(out, np.asarray(factors)[:, None] * d, what="linear in the heads")
    assert_paths_agree(out[2], one, what="head set 2")


def test_vmap_over_stacked_params_and_grad(f64):
    """Whole params (trunk and heads) stacked: trained and zero-bias trunks; value and
    gradient w.r.t. x of each equal the loop over the two."""
    p, x, y = f64
    with x64():
        sets = [p, zero_biases(p)]
        stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *sets)
        vg = jax.vmap(jax.value_and_grad(_loss, 1), in_axes=(0, None, None))
        v, g = jax.jit(vg)(stacked, x, y)
        for i, s in enumerate(sets):
            v_ref, (_, g_ref) = _jit_value_and_grad(s, x, y)
            assert_paths_agree((v[i], g[i]), (v_ref, g_ref), what=f"set {i}")


# ---------------------------------------------------------------------------------------
# checkpoint, remat, scan


def test_checkpoint_and_remat_equal_plain(f64, plain):
    """``jax.checkpoint`` around the loss, and ``remat=True`` (trunk blocks recomputed in the
    backward pass): same value and gradients as the plain call."""
    _, v, g = plain
    with x64():
        ckpt = jax.jit(jax.value_and_grad(jax.checkpoint(_loss), (0, 1)))(*f64)
        remat = _jit_value_and_grad(*f64, remat=True)
    for name, got in {"checkpoint": ckpt, "remat": remat}.items():
        assert_paths_agree(got, (v, g), what=name)


def test_scan_training_loop_equals_python_loop(f64):
    """A few steps of gradient descent on an image under ``lax.scan`` equal the same steps in
    a Python loop (each the plain value-and-grad program: the mean's gradient is the sum's
    over N); the loss falls."""
    p, x, y = f64
    lr = 0.5

    def step(a, _):
        loss, g = jax.value_and_grad(lambda u: lpips_jax.distance(p, u, y).mean())(a)
        return a - lr * g, loss

    steps = 4
    with x64():
        a_scan, losses_scan = jax.jit(lambda a: jax.lax.scan(step, a, None, length=steps))(x)
        a, losses = x, []
        for _ in range(steps):
            total, (_, g) = _jit_value_and_grad(p, a, y)
            a, loss = a - lr * g / N, total / N
            losses.append(float(loss))
    assert_paths_agree((losses_scan, a_scan), (np.asarray(losses), a), what="scan")
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------
# What the backward pass keeps, and what the compiled step contains


@pytest.mark.parametrize("n", [1, 2])
def test_backward_keeps_no_activations_of_y(params, n):
    """With only x differentiated, the residuals are those of the same loss with y's
    features precomputed and passed in (so y's trunk keeps nothing), and smaller than
    when y is differentiated too. Same for remat; remat keeps less than no remat."""
    img = jax.ShapeDtypeStruct((n, 128, 128, 3), jnp.float32)
    fy = jax.eval_shape(lpips_jax.features, params, img)
    kept = {}
    for remat in (False, True):
        loss, loss_f = image_and_feature_losses(remat)
        kx = kept_bytes(loss, params, img, img, argnums=(1,))
        kxy = kept_bytes(loss, params, img, img, argnums=(1, 2))
        kf = kept_bytes(loss_f, params, img, fy, argnums=(1,))
        # Equal but for the identity guard's boolean masks (_metric._zero_identical: one
        # (N, h, w) mask per tap, here 13 kB); y's activations would be megabytes.
        assert 0 <= kx - kf <= 32 * 1024, (remat, kx, kf)
        assert kxy > 1.5 * kx, (remat, kxy, kx)
        kept[remat] = kx
    assert kept[True] < kept[False]


def _primitives(jaxpr) -> set[str]:
    out = set()
    for eqn in jaxpr.eqns:
        out.add(eqn.primitive.name)
        for v in eqn.params.values():
            for sub in v if isinstance(v, (list, tuple)) else [v]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    out |= _primitives(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    out |= _primitives(sub)
    return out


def test_training_step_has_no_host_callbacks(params, pair):
    """What runs on TPU: the jitted value-and-grad (with remat and bfloat16 too) contains no
    host callback; that it traces under jit at all shows there is no Python control flow on
    array values."""
    x, y = pair
    for kw in ({}, {"remat": True, "dtype": jnp.bfloat16}):
        jaxpr = jax.make_jaxpr(jax.value_and_grad(functools.partial(_loss, **kw), (0, 1)))(params, x, y)
        prims = _primitives(jaxpr.jaxpr)
        assert "conv_general_dilated" in prims or "dot_general" in prims  # the walk works
        assert not [p for p in prims if "callback" in p or p in ("debug_print",)], prims
