"""Gradients of LPIPS used as a loss: finite by construction, and equal to the official ones.

References: the official ``lpips`` 0.1.4 autograd (torch float64 and float32) with the
same params copied in; the closed-form Jacobian of the normalisation; finite differences
(``jax.test_util.check_grads``) in float64.

Float64 runs inside ``jax.enable_x64(True)`` (a context manager in this JAX), so x64 does
not leak into other tests: the jit cache keys on it.
"""

from __future__ import annotations

import functools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from _loss_helpers import (
    EDGE_CASES,
    assert_grad_close,
    edge_batch,
    flat_params,
    official_value_and_grads,
    official_with,
    params_for,
    photo_pair,
    squeeze_params,
    to_f64,
    zero_biases,
)
from hypothesis import HealthCheck, given, settings
from jax.test_util import check_grads

import lpips_jax

NETS = ("alex", "vgg", "squeeze")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# Core parity tolerance of the distance (tests/test_parity.py).
ATOL_VALUE = 1e-5
# Float64 gradients against torch float64 autograd: same formula, both exact to ~1e-15
# (measured: 2e-15 alex, 3e-15 vgg, relative to the gradient's max); the bound.
TOL_F64 = 1e-10
# Float32 gradients against torch float32 autograd. The gradient is piecewise (ReLU,
# max-pool): float32 rounding may flip one unit's side of a kink, which changes the
# gradient inside that unit's receptive field. Measured with the official model itself,
# float32 vs float64 autograd: up to 1.0e-2 of max|grad| (vgg 32x32 photo and noise pairs;
# the same flip in ours), 3.4e-3 between ours and official at vgg 16x16; elsewhere ours vs
# official <= 3e-6. So: every element within 3e-2 (3x the largest flip measured), and
# 99% of the elements within 1e-4 (a wrong stride, pool or scale moves most elements).
F32_Q99, F32_WORST = 1e-4, 3e-2


def _loss(params, x, y, dtype):
    return lpips_jax.distance(params, x, y, dtype=dtype).sum()


@functools.partial(jax.jit, static_argnames="dtype")
def _value_and_grads(params, x, y, dtype=None):
    """Per-pair distances and the gradient of their sum w.r.t. params, x and y."""

    def loss(p, a, b):
        d = lpips_jax.distance(p, a, b, dtype=dtype)
        return d.sum(), d

    (_, d), g = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(params, x, y)
    return d, g


def _finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(tree))


# ---------------------------------------------------------------------------------------
# The normalisation on its own


def test_normalize_channels_jacobian_at_zero_is_identity_over_eps():
    """At an all-zero feature vector, ``f / (||f|| + eps)`` has Jacobian ``I / eps``: the
    norm's kink is multiplied by f = 0. Hand-computed reference; the official formula's
    autograd gives NaN there (the hazard this guards against)."""
    f0 = jnp.zeros((5,), jnp.float32)
    jac = jax.jacobian(lpips_jax.normalize_channels)(f0)
    np.testing.assert_allclose(np.asarray(jac), np.eye(5) / 1e-10, rtol=1e-6)
    jvp = jax.jvp(lpips_jax.normalize_channels, (f0,), (jnp.arange(5.0, dtype=jnp.float32),))[1]
    np.testing.assert_allclose(np.asarray(jvp), np.arange(5.0) / 1e-10, rtol=1e-6)

    import lpips

    t = torch.zeros(1, 5, 1, 1, requires_grad=True)
    lpips.normalize_tensor(t).sum().backward()
    assert torch.isnan(t.grad).all()


def test_normalize_channels_value_and_grad_match_official_elsewhere():
    """Away from zero: equal to the official ``normalize_tensor`` and its float64 autograd,
    including tiny (1e-20) and huge (1e15) vectors."""
    import lpips

    rng = np.random.default_rng(0)
    f = rng.normal(size=(6, 3, 3, 7))
    f[1] *= 1e-20
    f[2] *= 1e15
    f[3, 0, 0] = 0.0  # one all-zero vector: official value is 0 there as well
    r = rng.normal(size=f.shape)
    t = torch.from_numpy(f.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    ref = lpips.normalize_tensor(t)
    (ref * torch.from_numpy(r.transpose(0, 3, 1, 2).copy())).sum().backward()
    ref_v = ref.detach().numpy().transpose(0, 2, 3, 1)
    ref_g = t.grad.numpy().transpose(0, 2, 3, 1)
    with jax.enable_x64(True):
        fj = jnp.asarray(f)
        v = lpips_jax.normalize_channels(fj)
        g = jax.grad(lambda a: jnp.sum(lpips_jax.normalize_channels(a) * jnp.asarray(r)))(fj)
        v, g = np.asarray(v), np.asarray(g)
    assert v.dtype == np.float64
    np.testing.assert_allclose(v, ref_v, rtol=1e-13, atol=0)
    nonzero = np.any(f != 0, axis=-1)
    assert np.isnan(ref_g[~nonzero]).all()  # official: NaN at the zero vector
    np.testing.assert_allclose(g[nonzero], ref_g[nonzero], rtol=1e-10, atol=0)
    np.testing.assert_allclose(g[~nonzero], r[~nonzero] / 1e-10, rtol=1e-12)


def test_normalize_channels_float16_features():
    """float16 features: the official formula's eps underflows (1e-10 -> 0 in float16) and
    gives 0/0 = NaN at a zero vector; ours normalises in float32."""
    f = np.zeros((2, 4), np.float16)
    f[1] = [1, 2, 2, 0]
    with np.errstate(invalid="ignore"):
        official = f / (np.sqrt(np.sum(f * f, -1, keepdims=True)) + np.float16(1e-10))
    assert np.isnan(official[0]).all()
    ours = lpips_jax.normalize_channels(jnp.asarray(f))
    assert ours.dtype == jnp.float32
    # float32 division: exact up to float32 rounding.
    np.testing.assert_allclose(np.asarray(ours), [[0, 0, 0, 0], [1 / 3, 2 / 3, 2 / 3, 0]], rtol=1e-7, atol=0)
    g = jax.grad(lambda a: jnp.sum(lpips_jax.normalize_channels(a) ** 2))(jnp.asarray(f))
    assert g.dtype == jnp.float16 and _finite(g)


@pytest.mark.parametrize("net", ["alex", pytest.param("squeeze", marks=pytest.mark.slow)])
def test_gradient_wrt_raw_taps_without_relu(net):
    """A tap with no ReLU in front (a trunk being tuned, another trunk): features with
    exact zeros and negative values, through normalisation, squared difference and heads.
    Ours is finite everywhere and equals the official autograd wherever that is finite;
    the official one is NaN at the zero vectors."""
    import lpips

    params = params_for(net)
    chans = lpips_jax.tap_channels(net)
    rng = np.random.default_rng(1)
    fx = [rng.normal(size=(2, 3, 4, c)).astype(np.float32) for c in chans]
    fy = [rng.normal(size=(2, 3, 4, c)).astype(np.float32) for c in chans]
    for f in fx:
        f[0, 1, :2] = 0.0  # zero vectors at two locations of every tap

    def ours(raw):
        feats = tuple(lpips_jax.normalize_channels(r) for r in raw)
        fyn = tuple(lpips_jax.normalize_channels(jnp.asarray(r)) for r in fy)
        return lpips_jax.distance_from_features(params, feats, fyn).sum()

    grads = jax.jit(jax.grad(ours))(tuple(jnp.asarray(f) for f in fx))

    m = official_with(params)
    tx = [torch.from_numpy(f.transpose(0, 3, 1, 2).copy()).requires_grad_(True) for f in fx]
    total = 0
    for k, (a, b) in enumerate(zip(tx, fy)):
        nb = lpips.normalize_tensor(torch.from_numpy(b.transpose(0, 3, 1, 2).copy()))
        diff = (lpips.normalize_tensor(a) - nb) ** 2
        total = total + lpips.spatial_average(m.lins[k](diff), keepdim=True).sum()
    total.backward()
    for k, (g, t) in enumerate(zip(grads, tx)):
        ref = t.grad.numpy().transpose(0, 2, 3, 1)
        zero = np.all(fx[k] == 0, axis=-1)
        assert np.isnan(ref[zero]).all(), k
        assert _finite(g), k
        # float32 both sides, same formula: agreement to rounding of O(1) values.
        np.testing.assert_allclose(np.asarray(g)[~zero], ref[~zero], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------
# The whole metric on the edge cases, at the smallest allowed size


_features = jax.jit(lpips_jax.features)


def _edge_inputs(net):
    params = params_for(net)
    x, y = edge_batch(lpips_jax.min_size(net))
    return params, x, y


NETS_SLOW = [
    "alex",
    pytest.param("vgg", marks=pytest.mark.slow),
    pytest.param("squeeze", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("net", NETS_SLOW)
def test_edge_batch_has_vanishing_features(net):
    """Guard for the cases below: with zero biases, "at shift" pixels give all-zero
    feature vectors (everywhere for the constant image, in tap 0 for the half image),
    and with the real biases they don't."""
    params, x, _ = _edge_inputs(net)
    i_half, i_all = (
        EDGE_CASES.index("half at shift vs photo"),
        EDGE_CASES.index("all at shift vs photo"),
    )
    feats = _features(zero_biases(params), x)
    for k, f in enumerate(feats):
        assert bool(jnp.all(f[i_all] == 0)), (net, k)
    assert bool(jnp.any(jnp.all(feats[0][i_half] == 0, axis=-1))), net
    assert not bool(jnp.all(feats[0][i_half] == 0)), net
    raw = _features(params, x)
    assert not any(bool(jnp.any(jnp.all(f == 0, axis=-1))) for f in raw), net


@pytest.mark.parametrize("biases", ["trained", "zero"])
@pytest.mark.parametrize("net", NETS_SLOW)
def test_edge_cases_match_official_float32(net, biases):
    """Values and gradients (w.r.t. x, y and every param) on the edge cases at the smallest
    size equal the official ones. "zero" biases make features vanish (see above): the
    official float32 gradient there is finite only because ReLU's backward masks the NaN
    of its normalisation; ours is finite without that."""
    params, x, y = _edge_inputs(net)
    if biases == "zero":
        params = zero_biases(params)
    d, (gp, gx, gy) = _value_and_grads(params, x, y)
    ref_d, ref_gx, ref_gy, ref_gp = official_value_and_grads(official_with(params), x, y, False)
    np.testing.assert_allclose(np.asarray(d), ref_d, rtol=0, atol=ATOL_VALUE)
    tol = dict(q99=F32_Q99, worst=F32_WORST)
    _assert_image_grads(gx, gy, ref_gx, ref_gy, tol)
    ours_gp = flat_params(gp)
    assert ours_gp.keys() == ref_gp.keys()
    for name, g in ours_gp.items():
        assert_grad_close(g, ref_gp[name], what=name, **tol)
    _assert_equal_pairs_vanish(d, gx, gy)


# Pairs with a constant image: its conv outputs are equal across the map (but near the
# borders), so max-pool windows hold exact ties, and which one is "first" depends on the
# last bit of the conv kernels (the official CPU code keeps the first, XLA's select-and-
# scatter whichever its reduction order meets). That image's gradient has no machine-
# independent value; what is defined: its sum over pixels per channel (moving every pixel
# alike keeps the ties tied, so all choices agree), the other image's gradient, the
# params' gradients and the value.
CONSTANT_SIDES = {"-1 vs photo": "x", "0 vs photo": "x", "+1 vs photo": "x", "-1 vs +1": "xy"}


def _assert_image_grads(gx, gy, ref_gx, ref_gy, tol):
    """Gradients w.r.t. x and y of the edge batch against the official ones: whole, but for
    the constant images of :data:`CONSTANT_SIDES`, compared by their per-channel sums."""
    for side, g, ref in (("x", gx, ref_gx), ("y", gy, ref_gy)):
        g, ref = np.asarray(g, np.float64), np.asarray(ref, np.float64)
        tied = [i for i, c in enumerate(EDGE_CASES) if side in CONSTANT_SIDES.get(c, "")]
        rest = [i for i in range(len(EDGE_CASES)) if i not in tied]
        assert_grad_close(g[rest], ref[rest], what=f"grad {side}", **tol)
        sums, ref_sums = g[tied].sum(axis=(1, 2)), ref[tied].sum(axis=(1, 2))
        assert_grad_close(sums, ref_sums, what=f"grad {side} of constant images, summed", **tol)


def _assert_equal_pairs_vanish(d, gx, gy):
    """x == y: distance 0 and zero gradient (hand-computed), exactly. (Before the identity
    guard in _metric._zero_identical, x's and y's separately compiled trunk passes left
    d = 3e-16 for a photo pair and a gradient ~1e-8 of its usual scale.)"""
    gx, gy = np.asarray(gx, np.float64), np.asarray(gy, np.float64)
    for i, case in enumerate(EDGE_CASES):
        if "==" in case:
            assert float(d[i]) == 0.0, case
            assert np.all(gx[i] == 0), case
            assert np.all(gy[i] == 0), case


EDGE_TOL = {
    "bfloat16": dict(rtol=1e-2, atol=4e-3),
    "float16": dict(rtol=2.5e-3, atol=1.3e-3),
}


# Each net once, and each dtype's worst net (measured, see the docstring): alex bfloat16, vgg float16.
@pytest.mark.parametrize(
    "net, dtype",
    [
        ("alex", "float16"),
        pytest.param("alex", "bfloat16", marks=pytest.mark.slow),
        pytest.param("vgg", "float16", marks=pytest.mark.slow),
        pytest.param("squeeze", "bfloat16", marks=pytest.mark.slow),
    ],
)
def test_edge_cases_finite_low_precision(net, dtype):
    """bfloat16/float16 trunk: distances and gradients w.r.t. x, y and params are finite on
    every edge case, with trained and with zero biases (vanishing features: the official
    formula gives 0/0 in float16 there), and the distances stay near float32's.

    Reference: our float32 run (checked against the official model above). Tolerance:
    half-precision rounding through 5-18 layers; measured on these cases, largest
    |d - d32| over nets and biases: bfloat16 2.1e-3 (alex, zero biases), float16 6.4e-4
    (vgg); so |d - d32| <= EDGE_TOL[dtype] = (2x those, plus a relative term). Inputs stay
    float32, so "at shift" pixels still scale to exactly 0."""
    dt = DTYPES[dtype]
    params, x, y = _edge_inputs(net)
    for p in (params, zero_biases(params)):
        d32, _ = _value_and_grads(p, x, y)
        d, (gp, gx, gy) = _value_and_grads(p, x, y, dtype=dt)
        assert d.dtype == jnp.float32 and gx.dtype == jnp.float32
        assert _finite(d) and _finite(gx) and _finite(gy) and _finite(gp)
        np.testing.assert_allclose(np.asarray(d), np.asarray(d32), **EDGE_TOL[dtype])
        _assert_equal_pairs_vanish(d, gx, gy)


@pytest.mark.parametrize("dtype", ["bfloat16", pytest.param("float16", marks=pytest.mark.slow)])
def test_low_precision_inputs(dtype):
    """Images given in bfloat16/float16 (e.g. a decoder's output): scaled in float32, trunk
    in the requested dtype (here the same), gradient returned in the input's dtype, finite
    on the edge cases."""
    dt = DTYPES[dtype]
    params, x, y = _edge_inputs("alex")
    d, (gp, gx, gy) = _value_and_grads(params, x.astype(dt), y.astype(dt), dtype=dt)
    assert d.dtype == jnp.float32 and gx.dtype == dt and gy.dtype == dt
    assert _finite(d) and _finite(gx) and _finite(gy) and _finite(gp)
    d32, _ = _value_and_grads(params, x, y)
    # Input rounding to bfloat16 (8 bits) adds to the trunk's rounding: 2x looser.
    tol = {k: 2 * v for k, v in EDGE_TOL[dtype].items()}
    np.testing.assert_allclose(np.asarray(d), np.asarray(d32), **tol)


# ---------------------------------------------------------------------------------------
# Float64: equal to the official autograd to 1e-10


@pytest.mark.parametrize("net", NETS_SLOW)
def test_grad_parity_float64(net):
    """jax x64 vs torch float64 autograd, w.r.t. x, y and every param, on the edge cases
    (photo pairs, constants, x == y), with trained and with zero biases (vanishing
    features); constant images by their summed gradient (see CONSTANT_SIDES)."""
    params, x, y = _edge_inputs(net)
    for p in (params, zero_biases(params)):
        ref_d, ref_gx, ref_gy, ref_gp = official_value_and_grads(official_with(p), x, y, True)
        with jax.enable_x64(True):
            d, (gp, gx, gy) = _value_and_grads(
                to_f64(p), jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
            )
            assert d.dtype == jnp.float64 and gx.dtype == jnp.float64
            d, gx, gy, gp = np.asarray(d), np.asarray(gx), np.asarray(gy), flat_params(gp)
        np.testing.assert_allclose(d, ref_d, rtol=TOL_F64, atol=1e-15)
        tol = dict(q99=TOL_F64, worst=TOL_F64)
        _assert_image_grads(gx, gy, ref_gx, ref_gy, tol)
        for name, g in gp.items():
            assert_grad_close(g, ref_gp[name], what=name, **tol)


@pytest.mark.parametrize("net", [pytest.param("alex", marks=pytest.mark.slow), "vgg"])
def test_grad_parity_float32_photos(net):
    """Real weights, real photo pairs at 32x48: float32 gradient w.r.t. x against the
    official float32 autograd, with the float32 tolerance explained at the top."""
    params = params_for(net)
    x, y = photo_pair(3, (32, 48), seed=5)
    d, (_, gx, gy) = _value_and_grads(params, x, y)
    ref_d, ref_gx, ref_gy, _ = official_value_and_grads(official_with(params), x, y, False)
    np.testing.assert_allclose(np.asarray(d), ref_d, rtol=0, atol=ATOL_VALUE)
    assert_grad_close(gx, ref_gx, q99=F32_Q99, worst=F32_WORST, what="grad x")
    assert_grad_close(gy, ref_gy, q99=F32_Q99, worst=F32_WORST, what="grad y")


# ---------------------------------------------------------------------------------------
# Property-based: shapes, value ranges, nets


@functools.partial(jax.jit, static_argnames="normalize")
def _value_and_grad_x(params, x, y, normalize=False):
    def loss(a):
        d = lpips_jax.distance(params, a, y, normalize=normalize)
        return d.sum(), d

    (_, d), g = jax.value_and_grad(loss, has_aux=True)(x)
    return d, g


@functools.cache
def _official_for(net):
    return official_with(params_for(net))


@st.composite
def _cases(draw):
    net = draw(st.sampled_from(NETS))
    m = lpips_jax.min_size(net)
    h = draw(st.integers(m, m + 9))
    w = draw(st.integers(m, m + 9))
    lo = draw(st.floats(-1.0, 0.8))
    hi = draw(st.floats(lo + 0.05, 1.0))
    seed = draw(st.integers(0, 2**16))
    normalize = draw(st.booleans())
    return net, h, w, lo, hi, seed, normalize


_PROPERTY_SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@settings(max_examples=3, **_PROPERTY_SETTINGS)
@given(_cases())
def test_property_value_and_grad_match_official(case):
    """Any net, any size from the minimum up, images filling any sub-range of [-1, 1]
    (or [0, 1] with normalize=True): value equals the official, gradient w.r.t. x is
    finite and equals the official float64 autograd (in norm, F32_NORM); the pair (x, x)
    in the same batch has distance 0 and gradient 0. (Each example compiles anew: 3 here,
    more in the slow variant.)"""
    _check_property_case(case)


@pytest.mark.slow
@settings(max_examples=6, **_PROPERTY_SETTINGS)
@given(_cases())
def test_property_value_and_grad_match_official_many(case):
    _check_property_case(case)


def _check_property_case(case):
    net, h, w, lo, hi, seed, normalize = case
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo, hi, (h, w, 3))
    y = np.clip(x + rng.normal(0, 0.2, x.shape), lo, hi)
    if normalize:
        x, y = (x + 1) / 2, (y + 1) / 2
    xb = np.stack([x, x]).astype(np.float32)
    yb = np.stack([y, x]).astype(np.float32)
    params = params_for(net)
    d, g = _value_and_grad_x(params, xb, yb, normalize=normalize)
    m = _official_for(net)
    ref_d, ref_g = _official_value_and_grad_x(m, xb, yb, normalize, torch.float32)
    np.testing.assert_allclose(np.asarray(d), ref_d, rtol=0, atol=ATOL_VALUE)
    # (x, x): distance and gradient 0 (the identity guard).
    assert float(d[1]) == 0 and not np.any(np.asarray(g[1]))
    # Gradient against the official float64 autograd, in norm: at these tiny sizes (vgg's
    # last taps are 1x1) one float32 flip of a ReLU or pool kink moves a large share of the
    # elements (seen on an AVX2 CPU: 99th percentile 1.0e-3 of max|grad| at vgg 18x21),
    # but the gradient as a whole moves by that unit's share.
    _, ref_g64 = _official_value_and_grad_x(m, xb, yb, normalize, torch.float64)
    g, ref_g64 = np.asarray(g, np.float64)[0], ref_g64[0]
    assert np.all(np.isfinite(g))
    rel = np.linalg.norm(g - ref_g64) / np.linalg.norm(ref_g64)
    assert rel <= F32_NORM, f"{case}: |ours - official64| / |official64| = {rel:.3g} > {F32_NORM:g}"


# Float32 gradient vs float64, relative in norm: one kink flip moves the gradient by that
# unit's share (the largest element-wise flip measured was 1e-2 of max|grad|); a wrong
# stride, pool or scale moves it by O(1).
F32_NORM = 2e-2


def _official_value_and_grad_x(m, xb, yb, normalize, dtype):
    """The official distances and gradient of their sum w.r.t. x (NHWC), in ``dtype``."""
    m = m.to(dtype)
    try:
        tx = torch.from_numpy(xb.transpose(0, 3, 1, 2).copy()).to(dtype).requires_grad_(True)
        ty = torch.from_numpy(yb.transpose(0, 3, 1, 2).copy()).to(dtype)
        ref = m(tx, ty, normalize=normalize).reshape(-1)
        ref.sum().backward()
        return ref.detach().numpy().astype(np.float64), tx.grad.numpy().transpose(0, 2, 3, 1).astype(
            np.float64
        )
    finally:
        m.float()


# ---------------------------------------------------------------------------------------
# Finite differences in float64


@pytest.mark.parametrize(
    "point",
    [
        pytest.param("random and nearly flat x", marks=pytest.mark.slow),  # each ~35 s
        pytest.param("other size", marks=pytest.mark.slow),
    ],
)
def test_check_grads_float64_random_squeeze(point):
    """``jax.test_util.check_grads`` (forward and reverse mode against central finite
    differences, in random directions of x, y and params together) at a few points (two
    pairs of one batch share a compile): random-weight SqueezeNet, random positive heads,
    float64.

    Step 1e-7: the trunk is piecewise linear and a step of 1e-4 (check_grads' default)
    or even 1e-6 crosses a ReLU/max-pool kink at some of these points (seen: 2% off),
    1e-7 does not; float64 rounding stays ~1e-9 at that step. Points with vanishing
    features are not checked here: there pre-activations are exactly 0, i.e. on a kink,
    where finite differences have no limit (the gradient there is autograd's convention,
    ReLU'(0) = 0, and equals the official one: test_grad_parity_float64). Nor exactly
    constant images: equal values tie in every max-pool window, another kink (seen: 0.8%
    off); a nearly flat one is checked instead."""
    m = lpips_jax.min_size("squeeze")
    rng = np.random.default_rng(2)
    size = (m + 3, m + 6) if point == "other size" else (m, m)
    x = rng.uniform(-1, 1, (1, *size, 3))
    y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1)
    if point != "other size":  # pair 1: a dark, almost constant x (exactly constant: see above)
        x, y = np.concatenate([x, -0.9 + 0.01 * x]), np.concatenate([y, y])
    with jax.enable_x64(True):
        args = (to_f64(squeeze_params()), jnp.asarray(x), jnp.asarray(y))
        check_grads(_sum_distance, args, order=1, modes=("fwd", "rev"), eps=1e-7)


@jax.jit
def _sum_distance(params, x, y):
    return lpips_jax.distance(params, x, y).sum()


def test_check_grads_float64_normalize_channels_second_order():
    """Second order of the normalisation (JAX's own derivatives of its double ``where``)
    near (not at) zero and at ordinary vectors, on a batch-1 map: the channel sum is over
    the last axis whatever the leading ones."""
    rng = np.random.default_rng(3)
    shape = (1, 2, 3, 6)
    with jax.enable_x64(True):
        for scale in (1e-3, 1.0, 1e3):
            f = jnp.asarray(rng.normal(size=shape) * scale)
            r = jnp.asarray(rng.normal(size=shape))
            check_grads(
                lambda a, r=r: jnp.sum(lpips_jax.normalize_channels(a) * r),
                (f,),
                order=2,
                modes=("fwd", "rev"),
                eps=1e-4 * scale,
            )
