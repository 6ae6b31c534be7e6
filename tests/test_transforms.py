"""LPIPS under JAX transforms, as in a training step: each against the plain call.

jit, grad, value_and_grad, vmap (over pairs; over a leading axis of params),
jax.checkpoint and remat, lax.scan; no retrace for new values; features +
distance_from_features; unbatched input; the linen module; what the backward pass keeps.

Tolerances: a transformed call runs the same operations, compiled differently (fusion,
op order), so float32 results agree to rounding: 1e-6 relative (distances ~0.1-1) unless
said otherwise.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _loss_helpers import ENTRY_RTOL, image_and_feature_losses, kept_bytes, photo_pair, zero_biases

import lpips_jax

RTOL = ENTRY_RTOL
# Gradients pass through ~20 ops more than the values: agreement to 1e-5 of their scale.
GRAD_TOL = 1e-5
SIZE = 32  # alex needs 31
N = 3


@pytest.fixture(scope="module")
def pair():
    return photo_pair(N, SIZE, seed=21)


@pytest.fixture(scope="module")
def params():
    return lpips_jax.load("alex")


def _loss(p, x, y, **kw):
    return lpips_jax.distance(p, x, y, **kw).sum()


@functools.partial(jax.jit, static_argnames="remat")
def _jit_value_and_grad(p, x, y, remat=False):
    return jax.value_and_grad(_loss, (0, 1))(p, x, y, remat=remat)


@pytest.fixture(scope="module")
def plain(params, pair):
    """The reference: the un-transformed call, op by op (no jit), and the gradient as its
    own jitted ``jax.grad`` program (an op-by-op gradient costs ~30 s of dispatch here)."""
    x, y = pair
    return lpips_jax.distance(params, x, y), jax.jit(jax.grad(_loss, (0, 1)))(params, x, y)


def _close_grad(a, b, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(b).max()
    assert scale > 0, what
    np.testing.assert_allclose(a / scale, b / scale, rtol=0, atol=GRAD_TOL, err_msg=what)


def _close_tree(a, b, what):
    for (path, u), v in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
        _close_grad(u, v, f"{what} {jax.tree_util.keystr(path)}")


# ---------------------------------------------------------------------------------------
# jit, grad, value_and_grad


def test_jit_equals_plain(params, pair, plain):
    x, y = pair
    d_ref, _ = plain
    jitted = jax.jit(lpips_jax.distance)(params, x, y)
    assert d_ref.shape == jitted.shape == (N,)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(d_ref), rtol=RTOL)
    per = jax.jit(lpips_jax.layer_distances)(params, x, y)
    np.testing.assert_allclose(np.asarray(sum(per)), np.asarray(d_ref), rtol=RTOL)


def test_value_and_grad_equal_plain_grad(params, pair, plain):
    x, y = pair
    (v, (gp, gx)) = _jit_value_and_grad(params, x, y)
    d_ref, (gp_ref, gx_ref) = plain
    np.testing.assert_allclose(float(v), float(d_ref.sum()), rtol=RTOL)
    _close_grad(gx, gx_ref, "grad x")
    _close_tree(gp, gp_ref, "grad params")


def test_no_retrace_for_new_values(params, pair):
    """A jitted training step traces once for any values of the same shapes (images and
    params alike), and so does ``jax.jit(lpips_jax.distance)``."""
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
    assert dist._cache_size() == size


# ---------------------------------------------------------------------------------------
# vmap


def test_vmap_over_pairs_equals_batch(params, pair):
    x, y = pair
    batched = jax.jit(lpips_jax.distance)(params, x, y)
    mapped = jax.jit(jax.vmap(lpips_jax.distance, in_axes=(None, 0, 0)))(params, x, y)
    assert mapped.shape == (N,)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(batched), rtol=RTOL)


def test_vmap_over_stacked_heads(params, pair):
    """Several head sets on a leading axis (trunk shared): the distance is linear in the
    heads, so head set ``c * w`` gives ``c * distance`` (hand-computed reference); and each
    row equals the plain call with that head set."""
    x, y = pair
    factors = jnp.asarray([0.5, 1.0, 3.0], jnp.float32)
    heads = jax.tree_util.tree_map(lambda h: factors[:, None, None, None, None] * h, params.heads)
    stacked = params.replace(heads=heads)
    axes = lpips_jax.LPIPSParams(
        trunk=None, heads=0, net=params.net, version=params.version, lpips=params.lpips
    )
    out = jax.jit(jax.vmap(lpips_jax.distance, in_axes=(axes, None, None)))(stacked, x, y)
    base = lpips_jax.distance(params, x, y)
    assert out.shape == (3, N)
    np.testing.assert_allclose(np.asarray(out), np.asarray(factors)[:, None] * np.asarray(base), rtol=RTOL)
    one = params.replace(heads=jax.tree_util.tree_map(lambda h: h[2], heads))
    np.testing.assert_allclose(np.asarray(out[2]), np.asarray(lpips_jax.distance(one, x, y)), rtol=RTOL)


def test_vmap_over_stacked_params_and_grad(params, pair):
    """Whole params (trunk and heads) stacked: trained and zero-bias trunks; value and
    gradient w.r.t. x of each equal the loop over the two."""
    x, y = pair
    sets = [params, zero_biases(params)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *sets)
    vg = jax.vmap(jax.value_and_grad(_loss, 1), in_axes=(0, None, None))
    v, g = jax.jit(vg)(stacked, x, y)
    for i, p in enumerate(sets):
        v_ref, (_, g_ref) = _jit_value_and_grad(p, x, y)
        np.testing.assert_allclose(float(v[i]), float(v_ref), rtol=RTOL)
        _close_grad(g[i], g_ref, f"set {i}")


# ---------------------------------------------------------------------------------------
# checkpoint, remat, scan


def test_checkpoint_and_remat_equal_plain(params, pair, plain):
    """``jax.checkpoint`` around the loss, and ``remat=True`` (trunk blocks recomputed in the
    backward pass): same value and gradients as the plain call."""
    x, y = pair
    d_ref, (gp_ref, gx_ref) = plain
    v_ref = d_ref.sum()
    ckpt = jax.jit(jax.value_and_grad(jax.checkpoint(_loss), (0, 1)))
    for name, (v, (gp, gx)) in {
        "checkpoint": ckpt(params, x, y),
        "remat": _jit_value_and_grad(params, x, y, remat=True),
    }.items():
        np.testing.assert_allclose(float(v), float(v_ref), rtol=RTOL, err_msg=name)
        _close_grad(gx, gx_ref, f"{name} grad x")
        _close_tree(gp, gp_ref, f"{name} grad params")


def test_scan_training_loop_equals_python_loop(params, pair):
    """A few steps of gradient descent on an image under ``lax.scan`` equal the same jitted
    step called in a Python loop; the loss falls."""
    x, y = pair
    lr = 0.5

    def step(a, _):
        loss, g = jax.value_and_grad(lambda u: lpips_jax.distance(params, u, y).mean())(a)
        return a - lr * g, loss

    steps = 4
    a_scan, losses_scan = jax.jit(lambda a: jax.lax.scan(step, a, None, length=steps))(x)
    step_jit = jax.jit(step)
    a, losses = jnp.asarray(x), []
    for _ in range(steps):
        a, loss = step_jit(a, None)
        losses.append(loss)
    # Each step feeds the next: rounding differences compound over 4 steps.
    np.testing.assert_allclose(np.asarray(losses_scan), np.asarray(losses), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(a_scan), np.asarray(a), rtol=0, atol=1e-5)
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------
# features, unbatched input, the module


def test_features_then_distance_from_features(params, pair):
    """``distance_from_features(features(x), features(y)) == distance(x, y)``; one reference
    (batch 1) broadcasts against many candidates."""
    x, y = pair
    feats = jax.jit(lpips_jax.features)
    from_f = jax.jit(lpips_jax.distance_from_features)
    ref = jax.jit(lpips_jax.distance)(params, x, y)
    fx, fy = feats(params, x), feats(params, y)
    assert [f.shape[-1] for f in fx] == list(lpips_jax.tap_channels("alex"))
    np.testing.assert_allclose(np.asarray(from_f(params, fx, fy)), np.asarray(ref), rtol=RTOL)
    one = jax.tree_util.tree_map(lambda f: f[:1], fy)
    many = from_f(params, fx, one)
    assert many.shape == (N,)
    ref_one = jax.jit(lpips_jax.distance)(params, x, np.broadcast_to(y[:1], x.shape))
    np.testing.assert_allclose(np.asarray(many), np.asarray(ref_one), rtol=RTOL)


def test_unbatched_input(params, pair, plain):
    """(H, W, 3) input: scalar distance equal to the batched one; per-layer, map and
    features without the batch axis; gradient of the image's shape."""
    x, y = pair
    d_ref, (_, gx_ref) = plain

    @jax.jit
    def unbatched(p, a, b):
        return (
            jax.value_and_grad(lambda u: lpips_jax.distance(p, u, b))(a),
            lpips_jax.layer_distances(p, a, b),
            lpips_jax.distance_map(p, a, b),
            lpips_jax.features(p, a),
        )

    (d0, g0), per, m, f = unbatched(params, x[0], y[0])
    assert d0.shape == () and g0.shape == x[0].shape
    np.testing.assert_allclose(float(d0), float(d_ref[0]), rtol=RTOL)
    _close_grad(g0, gx_ref[0], "grad x[0]")
    assert all(p.shape == () for p in per)
    assert m.shape == (SIZE, SIZE)
    assert [t.ndim for t in f] == [3] * 5


def test_linen_module_equals_functions(params, pair):
    """``LPIPS(net).apply(params.variables(), x, y) == distance(params, x, y)``; its init
    makes params of the loaded shapes, and ``to_params`` goes back."""
    x, y = pair
    module = lpips_jax.LPIPS(net="alex")
    out = jax.jit(module.apply)(params.variables(), x, y)
    ref = jax.jit(lpips_jax.distance)(params, x, y)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=RTOL)
    shapes = jax.eval_shape(module.init, jax.random.key(0), x, y)
    assert jax.tree_util.tree_map(lambda a: a.shape, shapes) == jax.tree_util.tree_map(
        lambda a: a.shape, params.variables()
    )
    back = lpips_jax.to_params(params.variables(), net="alex")
    np.testing.assert_allclose(np.asarray(jax.jit(lpips_jax.distance)(back, x, y)), np.asarray(ref), rtol=0)


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
