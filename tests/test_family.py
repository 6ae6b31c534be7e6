"""DISTS and ST-LPIPS: live parity with the official PyTorch packages (``DISTS_pytorch``
0.1, ``stlpips_pytorch`` 0.0.2, built offline in ``_family_refs``), their published values,
and the same API contract as LPIPS.

Tolerances: values 1e-5 absolute against the official float32 model (the project's parity
bound; measured spreads are far below it); gradients in float64 against the official
model run in float64 (same formula: 1e-10 of their scale).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _family_refs import official_dists, official_stlpips, run_official
from _loss_helpers import assert_grad_close, assert_paths_agree, float64_truth, photo_pair, to_f64
from conftest import DISTS_EXAMPLES, EXAMPLES, read_rgb01

import lpips_jax

ATOL = 1e-5
TOL_F64 = 1e-10


@pytest.fixture(scope="module")
def dists():
    return lpips_jax.load("dists")


def _st(net):
    return lpips_jax.load(net, variant="shift_tolerant")


def _random_pair(n, h, w, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, h, w, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
    return x, y


# ---- published values --------------------------------------------------------------------


def test_dists_published_value(dists):
    """The official script's closing comment: 0.3347 for r0.png vs r1.png (read as RGB in
    [0, 1], no resizing)."""
    r0, r1 = (read_rgb01(DISTS_EXAMPLES / f"{n}.png") for n in ("r0", "r1"))
    d = float(jax.jit(lpips_jax.distance, static_argnames="normalize")(dists, r0, r1, normalize=True))
    assert abs(d - 0.3347) <= 5e-5, d


def test_stlpips_published_value():
    """ST-LPIPS's README: alex, ex_p0.png vs ex_ref.png = 0.7777554988861084."""
    p0, ref = (read_rgb01(EXAMPLES / f"{n}.png") for n in ("ex_p0", "ex_ref"))
    d = float(lpips_jax.distance(_st("alex"), p0, ref, normalize=True))
    assert abs(d - 0.7777554988861084) <= ATOL, d


# ---- parity ------------------------------------------------------------------------------

SIZES = [(2, 64, 64), (1, 37, 53), (2, 96, 80)]


# random pairs at every size, photographs at an even and an odd one
CASES = [("random", *s) for s in SIZES] + [("photo", *s) for s in SIZES[:2]]


@pytest.mark.torch
@pytest.mark.parametrize(("kind", "n", "h", "w"), CASES)
def test_dists_parity(dists, n, h, w, kind):
    x, y = _random_pair(n, h, w, h + w) if kind == "random" else photo_pair(n, (h, w), seed=h)
    x01, y01 = (x + 1) / 2, (y + 1) / 2
    ref, _ = run_official(official_dists(), x01, y01)
    ref = np.asarray(ref.detach().numpy(), np.float64).reshape(-1)
    got = np.asarray(lpips_jax.distance(dists, x, y))
    np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)
    # eager: distance (their sum) and layer_distances share one compiled program
    assert len(lpips_jax.layer_distances(dists, x, y)) == 6


@pytest.mark.torch
@pytest.mark.parametrize("net", ["alex", "vgg"])
@pytest.mark.parametrize(("kind", "n", "h", "w"), CASES)
def test_stlpips_parity(net, n, h, w, kind):
    """distance, layer_distances (retPerLayer) and distance_map (spatial=True)."""
    x, y = _random_pair(n, h, w, h + w) if kind == "random" else photo_pair(n, (h, w), seed=h)
    p = _st(net)
    (ref, ref_per), _ = run_official(official_stlpips(net), x, y, retPerLayer=True)
    d = np.asarray(lpips_jax.distance(p, x, y))  # eager: one program with layer_distances
    np.testing.assert_allclose(d, ref.detach().numpy().reshape(-1), rtol=0, atol=ATOL)
    per = lpips_jax.layer_distances(p, x, y)
    ref_per = [b.detach().numpy().reshape(-1).astype(np.float64) for b in ref_per]
    # stlpips sums its taps with ``val = res[0]; val += res[l]``, in place: the res[0] it
    # returns is the total, so its layer 0 is the total less the others.
    np.testing.assert_allclose(ref_per[0], ref.detach().numpy().reshape(-1), rtol=1e-6)
    ref_per[0] = ref_per[0] - sum(ref_per[1:])
    for k, (a, b) in enumerate(zip(per, ref_per)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=ATOL, err_msg=k)
    ref_map, _ = run_official(official_stlpips(net, spatial=True), x, y)
    m = np.asarray(lpips_jax.distance_map(p, x, y))
    np.testing.assert_allclose(m, ref_map.detach().numpy()[:, 0], rtol=0, atol=ATOL)


@pytest.mark.torch
@pytest.mark.parametrize("metric", ["dists", "alex", pytest.param("vgg", marks=pytest.mark.slow)])
def test_gradient_parity_float64(dists, metric):
    """Gradient w.r.t. x (the loss's use) in float64 against the official model in float64,
    on random and photographic pairs at an odd size."""
    x, y = _random_pair(1, 33, 41, 5)
    px, py = photo_pair(1, (33, 41), seed=9)
    x, y = np.concatenate([x, px]), np.concatenate([y, py])
    if metric == "dists":
        # [0, 1] in float64: (x + 1) / 2 in float32 would round what we compute exactly
        xs, ys = (x.astype(np.float64) + 1) / 2, (y.astype(np.float64) + 1) / 2
        params, model, kw = dists, official_dists(), {"require_grad": True}
    else:
        params, model, xs, ys, kw = _st(metric), official_stlpips(metric), x, y, {}
    ref, ref_g = run_official(model, xs, ys, dtype="float64", grad=True, **kw)
    with jax.enable_x64(True):
        loss = lambda p, a: lpips_jax.distance(p, a, jnp.asarray(y, jnp.float64)).sum()  # noqa: E731
        v, g = jax.jit(jax.value_and_grad(loss, argnums=1))(to_f64(params), jnp.asarray(x, jnp.float64))
        v, g = float(v), np.asarray(g)
    assert abs(v - float(ref.detach().sum())) <= 1e-10
    if metric == "dists":
        ref_g = ref_g / 2  # the official gradient is w.r.t. the [0, 1] image, ours w.r.t. [-1, 1]
    assert_grad_close(g, ref_g, q99=TOL_F64, worst=TOL_F64, what=f"{metric} grad x")


# ---- the contract ------------------------------------------------------------------------


_dist = jax.jit(lpips_jax.distance, static_argnames=("normalize", "dtype"))
_feats = jax.jit(lpips_jax.features)
_from_feats = jax.jit(lpips_jax.distance_from_features)


@pytest.mark.parametrize("metric", ["dists", "alex-st"])
def test_entry_points_agree(dists, metric):
    """features + distance_from_features, vmap, a reference's features broadcast against a
    batch: the same number (float32 paths, against the float64 value); identical pairs give
    exactly 0 with a zero gradient; gradients are finite; normalize=True takes [0, 1].
    (Unbatched input is the metric-independent wrapper: test_api.py.)"""
    p = dists if metric == "dists" else _st("alex")
    x, y = photo_pair(2, 40, seed=3)
    d = np.asarray(_dist(p, x, y))
    assert d.shape == (2,) and d.dtype == np.float32
    truth = float64_truth(lpips_jax.distance, p, x, y)
    fx, fy = _feats(p, x), _feats(p, y)
    assert_paths_agree(_from_feats(p, fx, fy), d, truth, what="from features")
    one = jax.jit(jax.vmap(lambda a, b: lpips_jax.distance(p, a, b)))(x, y)
    assert_paths_agree(one, d, truth, what="vmap")
    many = _from_feats(p, fx, _feats(p, y[:1]))
    assert_paths_agree(many[0], d[0], truth[0], what="broadcast features")
    yy = np.stack([x[0], y[1]])  # pair 0 identical
    v, g = jax.jit(jax.value_and_grad(lambda a: lpips_jax.distance(p, a, yy).sum()))(x)
    assert np.all(np.isfinite(np.asarray(g)))
    assert float(_dist(p, x, yy)[0]) == 0.0 and not np.any(np.asarray(g[0]))
    d01 = np.asarray(_dist(p, (x + 1) / 2, (y + 1) / 2, normalize=True))
    # (x + 1) / 2 rounds the images by up to half an ulp: the distance moves far less
    np.testing.assert_allclose(d01, d, rtol=1e-5, atol=1e-6)


def test_dists_no_distance_map_and_options(dists):
    x, y = photo_pair(2, 40, seed=3)  # test_entry_points_agree's: its float32 program
    with pytest.raises(ValueError, match="distance_map is not defined for DISTS"):
        lpips_jax.distance_map(dists, x, y)
    with pytest.raises(ValueError, match="net='dists' takes no version"):
        lpips_jax.load("dists", version="0.0")
    with pytest.raises(ValueError, match="shift_tolerant.*'alex' and 'vgg', not 'squeeze'"):
        lpips_jax.load("squeeze", variant="shift_tolerant")
    with pytest.raises(ValueError, match="variant='tolerant' is not known"):
        lpips_jax.load("alex", variant="tolerant")
    d32 = float(_dist(dists, x, y)[0])
    d16 = float(_dist(dists, x, y, dtype=jnp.bfloat16)[0])
    assert abs(d16 - d32) <= 1e-2 * d32  # bf16 trunk: docs/precision.md has the measured error


def test_shift_tolerant_small_and_odd_sizes_are_checked():
    p = _st("alex")
    m = lpips_jax.min_size("alex_st")
    x = np.zeros((m - 1, m - 1, 3), np.float32)
    with pytest.raises(ValueError, match=f"needs at least {m}x{m}"):
        lpips_jax.distance(p, x, x)
    x, y = _random_pair(1, m, m + 3, 0)
    assert np.isfinite(float(_dist(p, x, y)[0]))


def test_save_and_load_round_trip(tmp_path, dists):
    for p in (dists, _st("alex")):
        path = tmp_path / f"{p.net}.safetensors"
        lpips_jax.save(p, path)
        q = lpips_jax.load(path=path)
        assert (
            type(q) is type(p)
            and q.net == p.net
            and getattr(q, "variant", None) == getattr(p, "variant", None)
        )
        for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(q)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
