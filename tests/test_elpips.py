"""E-LPIPS (``lpips_jax._elpips``): parity with the authors' TensorFlow code at fixed
transformations, its sampling against the official sampler's distribution, the contract.

References: ``tests/data/elpips/refs.npz``, written by ``tests/data/elpips/make_refs.py``
from mkettune/elpips (commit 9192007) under TensorFlow 2.21 ``tf.compat.v1``, with our
VGG16 trunk and the authors' own heads file: values and gradients w.r.t. x at
transformations and dropout masks chosen by the script, and count tables of 20000 draws
of the official ``sample_ensemble`` at batch sizes 5 and 1.

Live comparison (slow): where the official code (its ``elpips/`` folder named by
``$ELPIPS_REF``) and a Python with TensorFlow (this one, or ``$ELPIPS_TF_PYTHON``) are
present, a transformation drawn by our sampler is fed to both sides.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DATA
from scipy import stats

from lpips_jax import _elpips, _nets
from lpips_jax._elpips import Transform

REFS = DATA / "elpips" / "refs.npz"
_spec = importlib.util.spec_from_file_location("elpips_make_refs", DATA / "elpips" / "make_refs.py")
make_refs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_refs)

# Parity: |ours - official| <= 1e-5 (the bound, values and gradients), and the
# tighter bounds measured with margin: values relative 1e-5, gradients 3e-5 of max |g|
# (measured at most 2.5e-6 and 9.4e-6, float32 on both sides).
ATOL = 1e-5
VALUE_RTOL = 1e-5
GRAD_REL = 3e-5
# The statistical tests: each p-value above this (fixed seeds: deterministic). With 20000
# draws a side (z = 3.9) they catch a probability off by about 0.013 near 0.65 (against the
# exact law) or 0.019 (against the official draws), 0.01 near 0.07: a wrong law (1/s for
# 1/s^2, unstratified flips, one shuffle for all channels) fails by far.
ALPHA = 1e-4
DRAWS = 20000


@pytest.fixture(scope="module")
def refs():
    with np.load(REFS, allow_pickle=False) as f:
        return dict(f)


@pytest.fixture(scope="module")
def params():
    return _elpips.load()


def _small(params, levels=2):
    return params.replace(scale_levels=levels)


def _pair(seed=0, n=2, h=24, w=24):
    """A random pair in [-1, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, h, w, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


# --- parity with the official code ------------------------------------------------------


def _case(refs, name):
    x, y = make_refs.case_images(refs, name)
    t = Transform(**{k: jnp.asarray(refs[f"{name}/{k}"]) for k in make_refs.FIELDS})
    n, h, w, _ = x.shape
    masks, seed = None, int(refs[f"{name}/dropout_seed"])
    if seed >= 0:
        hw = make_refs.transformed_size(h, w, int(t.level), int(t.swap))
        masks = make_refs.keep_masks(seed, make_refs.conv_input_shapes(n, *hw))
    return x, y, t, masks


def _value_and_grad(params, x, y, t, masks):
    def f(x):
        d = _elpips.distance_at(params, x, y, t, masks=masks, normalize=True)
        return jnp.sum(d), d

    (_, d), g = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(x))
    return np.asarray(d), np.asarray(g)


def _assert_matches(name, d, g, ref):
    """Our value ``d`` and gradient ``g`` against the official ones in ``ref``."""
    want = ref[f"{name}/value"]
    err = np.abs(d - want)
    assert err.max() <= ATOL, (name, d, want)
    np.testing.assert_allclose(d, want, rtol=VALUE_RTOL, atol=0, err_msg=name)
    if f"{name}/grad" in ref:
        got, gw = g, ref[f"{name}/grad"]
    else:  # big images: the central crop and a projection of the whole gradient
        c0, c1 = (int(v) for v in ref[f"{name}/grad_crop_at"])
        got, gw = g[:, c0 : c0 + 64, c1 : c1 + 64], ref[f"{name}/grad_crop"]
        proj = np.sum(g.astype(np.float64) * make_refs.probe(0, g.shape))
        np.testing.assert_allclose(proj, ref[f"{name}/grad_probe"], rtol=1e-4, err_msg=name)
        np.testing.assert_allclose(np.abs(g).sum(), ref[f"{name}/grad_abs_sum"], rtol=1e-5, err_msg=name)
    gerr = np.abs(got - gw).max()
    assert gerr <= ATOL and gerr <= GRAD_REL * np.abs(gw).max(), (name, gerr, np.abs(gw).max())


FAST_CASES = ("photo64", "rand67x93")  # a photo pair; non-square with the x/y swap
SLOW_CASES = ("photo64_s3", "photo64_s8", "rand64", "rand128x96", "rand67x93_s6", "dists256_s2")


@pytest.mark.parametrize(
    "name", [*FAST_CASES, *(pytest.param(c, marks=pytest.mark.slow) for c in SLOW_CASES)]
)
def test_parity_at_fixed_transformations(refs, params, name):
    """Value and gradient w.r.t. x equal the official code's at the same transformation and
    dropout masks (or dropout off): photographs and random pairs, odd sizes, levels 1-8."""
    x, y, t, masks = _case(refs, name)
    d, g = _value_and_grad(params, x, y, t, masks)
    _assert_matches(name, d, g, refs)


def _canvas_value_and_grad(params, x, y, t, masks):
    """As :func:`_value_and_grad`, on the canvas program (levels 2 .. L on level 2's size)
    instead of the level's own shape: the official masks placed on it."""
    level = int(t.level)
    n, h, w, _ = x.shape
    if masks is not None:
        masks = _elpips._official_masks(masks, t, level, n, _elpips.transformed_size(h, w, level))

    def f(x, masks):
        run = _elpips._canvas_branch(params.scale_levels, (None, False, None), level=level, given_masks=masks)
        d = jnp.sum(run(params.trunk, params.heads, x, jnp.asarray(y), t, None), axis=0)
        return jnp.sum(d), d

    (_, d), g = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(x), masks)
    return np.asarray(d), np.asarray(g)


# The cases at levels >= 2: level 2 (the canvas itself), non-square; level 3; then the slow ones.
CANVAS_CASES = ("rand67x93", "photo64_s3")
SLOW_CANVAS_CASES = ("photo64_s8", "rand128x96", "rand67x93_s6", "dists256_s2")


@pytest.mark.parametrize(
    "name", [*CANVAS_CASES, *(pytest.param(c, marks=pytest.mark.slow) for c in SLOW_CANVAS_CASES)]
)
def test_parity_on_the_canvas(refs, params, name):
    """The levels >= 2 of a draw run on one canvas (zero outside the level's region, means
    over it): value and gradient there equal the official code's at the same bounds."""
    x, y, t, masks = _case(refs, name)
    assert int(t.level) >= 2
    d, g = _canvas_value_and_grad(params, x, y, t, masks)
    _assert_matches(name, d, g, refs)


def _keys_per_level(levels, n):
    """Seeds whose single draws (``distance(..., key=jax.random.key(seed))``) fall on
    levels 1 .. ``levels``, one each: the first of 4000 seeds for each level."""
    level = jax.jit(jax.vmap(lambda s: _elpips._sample(jax.random.key(s), n, levels, True)[0].level))
    drawn = np.asarray(level(jnp.arange(4000)))
    return [int(np.argmax(drawn == s)) for s in range(1, levels + 1)]


def _per_level_distance(p, x, y, key):
    """One draw of ``distance`` the old way: its transformation and dropout bits, run by
    the level's own-shape program (``distance_at`` with the masks in the official frame)."""
    n, h, w, _ = x.shape
    t, dkey = _elpips._sample(key, n, p.scale_levels, True)
    level = int(t.level)
    hs, ws = _elpips.transformed_size(h, w, level)
    masks = _elpips._sampled_masks(dkey, n, hs, ws)  # in the frame _branch runs in
    if hs != ws and int(t.swap):
        masks = {i: m.transpose(0, 2, 1, 3) for i, m in masks.items()}
    return _elpips.distance_at(p, x, y, t, masks=[masks[i] for i in _elpips.CONV_INDICES]), level


@pytest.mark.parametrize(
    "hw",
    [
        (58, 59),  # a square canvas, non-square levels 1, 3, ...: their masks turned where swapped
        pytest.param((58, 60), marks=pytest.mark.slow),  # non-square canvas, square levels 4, 5, ...
        pytest.param((60, 60), marks=pytest.mark.slow),
    ],
)
def test_distance_equals_the_per_level_programs(params, hw):
    """``distance(p, x, y, key=k, samples=n)`` for fixed keys equals the old per-level
    implementation (each level its own-shape program, the same transformation and dropout
    bits) at every level 1 .. 8 and for a scan of draws, in float64: within float32
    rounding of the distance (what is left is float64 rounding, some 1e-15 of it)."""
    with jax.enable_x64():
        p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        x, y = (jnp.asarray(a, jnp.float64) for a in _pair(seed=8, n=2, h=hw[0], w=hw[1]))
        dist = jax.jit(lambda p, x, y, k: _elpips.distance(p, x, y, key=k))
        levels = set()
        for seed in _keys_per_level(p.scale_levels, x.shape[0]):
            key = jax.random.key(seed)
            old, level = _per_level_distance(p, x, y, key)
            levels.add(level)
            got = dist(p, x, y, key)
            bound = np.finfo(np.float32).eps * np.abs(old)
            assert np.all(np.abs(got - old) <= bound), (level, got, old)
        assert levels == set(range(1, 9))
        key = jax.random.key(31)
        got = _elpips.distance(p, x, y, key=key, samples=3)
        old = np.mean([_per_level_distance(p, x, y, k)[0] for k in jax.random.split(key, 3)], axis=0)
        assert np.all(np.abs(got - old) <= np.finfo(np.float32).eps * np.abs(old)), (got, old)


def test_trunk_matches_the_module_with_jax_derivatives(params):
    """E-LPIPS' trunk walk (its convs with their own VJP) equals ``_nets.Trunk("vgg_avg")``
    (JAX's derivatives): the taps, and gradients w.r.t. the input and the weights."""
    from lpips_jax import _nets

    x = jax.random.uniform(jax.random.key(0), (1, 18, 20, 3), jnp.float32, -2, 2)

    def loss(taps):  # a scalar of every tap
        return sum(jnp.sum(jnp.sin(t)) * (k + 1) for k, t in enumerate(taps))

    ours = jax.jit(
        jax.value_and_grad(lambda a, tr: loss(_elpips._taps(tr, a, None, None, False, None)), (0, 1))
    )
    ref = jax.jit(
        jax.value_and_grad(lambda a, tr: loss(_nets.Trunk(net="vgg_avg").apply({"params": tr}, a)), (0, 1))
    )
    (v, (gx, gt)), (vr, (gxr, gtr)) = ours(x, params.trunk), ref(x, params.trunk)
    np.testing.assert_allclose(v, vr, rtol=1e-5)
    np.testing.assert_allclose(gx, gxr, rtol=1e-4, atol=1e-6 * np.abs(gxr).max())
    for name in ("features_0", "features_7", "features_28"):
        for leaf in ("kernel", "bias"):
            a, b = gt[name][leaf], gtr[name][leaf]
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max(), err_msg=f"{name}/{leaf}")


def test_refs_cover_the_script_cases(refs):
    """refs.npz holds exactly the cases make_refs.py defines (so the script regenerates it)."""
    cases = make_refs.cases()
    assert sorted(str(c) for c in refs["cases"]) == sorted(cases)
    assert set(SLOW_CASES + FAST_CASES) == set(cases)
    for name, c in cases.items():
        for k, v in c.items():
            np.testing.assert_array_equal(refs[f"{name}/{k}"], np.asarray(v), err_msg=f"{name}/{k}")


def test_apply_transform_matches_official(refs):
    """Our transformation of the images equals the official ``apply_ensemble`` output."""
    x, _, t, _ = _case(refs, "rand67x93")
    got = np.asarray(_elpips.apply_transform(t, jnp.asarray(x)))
    np.testing.assert_allclose(got, refs["rand67x93/transformed"], atol=1e-6, rtol=0)


def _shared_elpips() -> Path | None:
    path = os.environ.get("ELPIPS_REF")  # the authors' elpips/ folder (not in a clone)
    return Path(path) if path and (Path(path) / "elpips.py").is_file() else None


def _tf_python() -> str | None:
    if importlib.util.find_spec("tensorflow") is not None:
        return sys.executable
    return os.environ.get("ELPIPS_TF_PYTHON")


@pytest.mark.slow
def test_live_parity_with_official(params, tmp_path):
    """A transformation drawn by our sampler and random masks, fed to the official code
    (run now, in a subprocess) and to ours: values, gradients, transformed images."""
    ref_dir, python = _shared_elpips(), _tf_python()
    if ref_dir is None or python is None:
        pytest.skip("needs the official elpips code ($ELPIPS_REF) and TensorFlow ($ELPIPS_TF_PYTHON)")
    n, h, w, levels = 2, 71, 83, 4
    t = _elpips.sample_transform(jax.random.key(2024), n, levels)
    t = t.replace(level=jnp.asarray(3, jnp.int32), swap=jnp.asarray(1, jnp.int32))
    t = t.replace(scale_offset=jnp.asarray([2, 1], jnp.int32))  # inside 0..level-1
    x, y = make_refs._rand_pair(99, n, h, w)
    case = {"x": x, "y": y, "dropout_seed": 21, **{k: np.asarray(getattr(t, k)) for k in make_refs.FIELDS}}
    flat = make_refs.flatten_cases({"live": case})
    np.savez(tmp_path / "cases.npz", **flat)
    cmd = [python, str(DATA / "elpips" / "make_refs.py"), "--elpips", str(ref_dir), "--cases",
           str(tmp_path / "cases.npz"), "--out", str(tmp_path / "out.npz")]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    with np.load(tmp_path / "out.npz") as f:
        out = dict(f)
    xs, ys, tt, masks = _case(flat, "live")
    d, g = _value_and_grad(params.replace(scale_levels=levels), xs, ys, tt, masks)
    _assert_matches("live", d, g, out)
    got = np.asarray(_elpips.apply_transform(tt, jnp.asarray(xs)))
    np.testing.assert_allclose(got, out["live/transformed"], atol=1e-6, rtol=0)


def test_heads_are_the_authors(params):
    """The shipped heads equal the authors' vgg_full_avg.npy (read by convert/)."""
    ref_dir = _shared_elpips()
    if ref_dir is None:
        pytest.skip("needs the official elpips code ($ELPIPS_REF)")
    from convert import elpips_heads

    flat = elpips_heads.convert(elpips_heads.read_npy_dict(ref_dir / "vgg_full_avg.npy"))
    assert len(flat) == 14
    for name, v in flat.items():
        _, lin, _ = name.split("/")
        np.testing.assert_array_equal(np.asarray(params.heads[lin]["kernel"]), v, err_msg=name)


# --- the sampler, statistically -------------------------------------------------------


@pytest.fixture(scope="module")
def ours():
    """Count tables of our sampler: 20000 draws at N = 5 and N = 1 (fixed keys)."""
    out = {}
    for n in (5, 1):
        keys = jax.random.split(jax.random.key(1000 + n), DRAWS)
        t = jax.jit(jax.vmap(lambda k, n=n: _elpips.sample_transform(k, n, 8)))(keys)
        out[n] = make_refs.summarize({k: np.asarray(getattr(t, k)) for k in make_refs.FIELDS})
    return out


def _official(refs, n):
    return {k.split("/", 1)[1]: v for k, v in refs.items() if k.startswith(f"official_n{n}/")}


def _homogeneous(a, b, what):
    """Two-sample chi-square: count tables ``a`` and ``b`` (same cells) from one law."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    keep = (a + b) > 0
    if keep.sum() < 2:  # one cell: nothing random to compare
        return
    p = stats.chi2_contingency(np.stack([a[keep], b[keep]]))[1]
    assert p > ALPHA, f"{what}: p = {p:.2e}\nours     {a}\nofficial {b}"


def _fits(counts, probs, what):
    """Chi-square goodness of fit of ``counts`` to ``probs`` (exact law)."""
    counts, probs = np.asarray(counts, float).ravel(), np.asarray(probs, float).ravel()
    if len(counts) < 2:
        return
    p = stats.chisquare(counts, counts.sum() * probs / probs.sum())[1]
    assert p > ALPHA, f"{what}: p = {p:.2e}: {counts}"


@pytest.mark.parametrize("n", [5, 1])
def test_sampler_matches_official_distribution(refs, ours, n):
    """Each count table of our draws and the official draws: the same law (two-sample
    chi-square), and both the exact law where it is known."""
    mine, theirs = ours[n], _official(refs, n)
    assert int(theirs["draws"]) == int(mine["draws"]) == DRAWS
    level_p = 1.0 / np.arange(1, 9) ** 2
    for side, tab in (("ours", mine), ("official", theirs)):
        _fits(tab["level"], level_p, f"{side} levels ~ 1/s^2")
        _fits(tab["swap"], [1, 1], f"{side} swap")
        _fits(tab["offset"].sum(0), np.ones((8, 2)), f"{side} offsets 0..7")
        _fits(tab["offset_joint"], np.ones((8, 8)), f"{side} (y, x) offsets independent")
        _fits(tab["flips"], np.ones_like(tab["flips"]), f"{side} flips per image")
        _fits(tab["perms"], np.ones_like(tab["perms"]), f"{side} permutations per image")
        _fits(tab["color_hist"], np.ones_like(tab["color_hist"]), f"{side} colour scales")
        _fits(tab["color_frac_hist"], np.ones(10), f"{side} colour within strata")
        _fits(
            tab["color_rg_strata"], np.ones_like(tab["color_rg_strata"]), f"{side} r, g shuffles independent"
        )
        for s in range(2, 9):  # scale offsets uniform on 0..s-1, nothing beyond
            so = tab["scale_offset"][s - 1]
            assert so[s:].sum() == 0, (side, s, so)
            if so.sum() >= 5 * s:
                _fits(so[:s], np.ones((s, 2)), f"{side} scale offsets at level {s}")
        assert tab["scale_offset"][0, 1:].sum() == 0
        assert 0.2 <= float(tab["color_min"]) and float(tab["color_max"]) <= 1.0
        assert abs(int(tab["color_strata_ok"]) - 3 * DRAWS) <= 3, side  # per draw and channel; float32 edges
    for k in ("level", "swap", "offset", "offset_joint", "flips", "flip_state_counts", "perms",
              "perm_state_counts", "color_hist", "color_frac_hist", "color_rg_strata"):  # fmt: skip
        _homogeneous(mine[k], theirs[k], f"n={n} {k}")
    sl = mine["scale_offset"][1:4, :4]  # the levels with enough draws
    _homogeneous(sl, theirs["scale_offset"][1:4, :4], f"n={n} scale offsets, levels 2-4")


@pytest.mark.parametrize("n", [1, 4, 5, 12, 13])
def test_sampler_stratification_is_exact(n):
    """As the official code: the flip states tiled to ``4 ceil(n / 4)`` entries, shuffled,
    the first ``n`` kept (each state at most ``ceil(n / 4)`` times, at least that minus the
    entries left out; exactly ``n / 4`` for a multiple of 4); the colour permutations alike
    with 6; each channel's scales one per stratum of ``[0.2, 1]``; offsets, levels and scale
    offsets in range."""
    keys = jax.random.split(jax.random.key(7), 500)
    t = jax.jit(jax.vmap(lambda k: _elpips.sample_transform(k, n, 8)))(keys)
    flips, perms, colors = np.asarray(t.flips), np.asarray(t.perms), np.asarray(t.colors)
    codes = perms @ np.asarray([9, 3, 1])
    for values, states in ((flips, range(4)), (codes, make_refs.PERMUTATIONS @ np.asarray([9, 3, 1]))):
        reps = -(-n // len(states))
        left_out = reps * len(states) - n
        counts = np.stack([(values == s).sum(1) for s in states], axis=1)
        assert np.all(counts.sum(1) == n) and counts.max() <= reps and counts.min() >= reps - left_out
        if left_out == 0:
            assert np.all(counts == reps)
    assert np.all(np.sort(perms, axis=-1) == np.arange(3))
    strata = np.floor((colors.astype(np.float64) - 0.2) / 0.8 * n).clip(0, n - 1)
    assert np.mean(np.all(np.sort(strata, axis=1) == np.arange(n)[:, None], axis=1)) > 0.99
    assert colors.min() >= 0.2 and colors.max() <= 1.0
    level, so, off = np.asarray(t.level), np.asarray(t.scale_offset), np.asarray(t.offset)
    assert level.min() >= 1 and level.max() <= 8 and np.all(so < level[:, None]) and so.min() >= 0
    assert off.min() >= 0 and off.max() <= 7
    assert set(np.unique(np.asarray(t.swap))) <= {0, 1}


# --- the contract ---------------------------------------------------------------------
# Small images and 1 or 2 scale levels (2: the lax.switch), so that the programs compile
# in seconds; params are passed as arguments (closed over, the weights would be constants).


@jax.jit
def _grad(p, x, y, key):
    return jax.grad(lambda a: jnp.sum(_elpips.distance(p, a, y, key=key)))(x)


def test_same_key_same_value_other_keys_differ(params):
    p = _small(params)
    x, y = _pair()
    d = [np.asarray(_elpips.distance(p, x, y, key=jax.random.key(k))) for k in range(4)]
    again = np.asarray(_elpips.distance(p, x, y, key=jax.random.key(0)))
    np.testing.assert_array_equal(d[0], again)
    assert d[0].shape == (2,) and d[0].dtype == np.float32
    assert np.all(np.isfinite(d)) and np.all(np.asarray(d) > 0)
    assert len({tuple(v) for v in d}) == 4  # four keys, four different draws
    raw = _elpips.distance(p, x, y, key=jax.random.PRNGKey(0))  # a raw uint32 key too
    assert raw.shape == (2,)


def test_samples_is_the_mean_of_single_draws_with_split_keys(params):
    """``samples=n``: the mean of the single draws on ``jax.random.split(key, n)``; a single
    draw: ``sample_transform`` on ``split(key)[0]``, dropout from ``split(key)[1]``."""
    p = _small(params)
    x, y = _pair()
    key = jax.random.key(5)
    d3 = _elpips.distance(p, x, y, key=key, samples=3)
    singles = [_elpips.distance(p, x, y, key=k) for k in jax.random.split(key, 3)]
    np.testing.assert_allclose(d3, np.mean(singles, axis=0), rtol=1e-6)
    kt, _ = jax.random.split(key)
    t = _elpips.sample_transform(kt, 2, p.scale_levels)
    off = _elpips.distance(p, x, y, key=key, dropout=False)
    np.testing.assert_allclose(off, _elpips.distance_at(p, x, y, t), rtol=1e-6)
    assert not np.allclose(off, _elpips.distance(p, x, y, key=key))  # dropout acts


def test_jit_grad_vmap(params):
    p = _small(params)
    x, y = _pair()
    key = jax.random.key(3)
    eager = _elpips.distance(p, x, y, key=key)
    jitted = jax.jit(_elpips.distance, static_argnames=("samples",))(p, x, y, key=key)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    g = _grad(p, x, y, key)
    assert g.shape == x.shape and np.all(np.isfinite(g)) and np.any(g != 0)
    # vmap over images (one key: the level stays a switch) equals a loop
    xs, ys = jnp.stack([x, x[::-1]]), jnp.stack([y, y[::-1]])
    v = jax.jit(jax.vmap(lambda p, a, b: _elpips.distance(p, a, b, key=key), (None, 0, 0)))(p, xs, ys)
    np.testing.assert_allclose(v, [_elpips.distance(p, a, b, key=key) for a, b in zip(xs, ys)], rtol=1e-5)


@pytest.mark.slow
def test_vmap_over_keys(params):
    """vmap over keys (the level batched: every branch runs, one is selected) equals a loop."""
    p = _small(params)
    x, y = _pair()
    keys = jax.random.split(jax.random.key(3), 3)
    vk = jax.jit(jax.vmap(lambda p, a, b, k: _elpips.distance(p, a, b, key=k), (None, None, None, 0)))(
        p, x, y, keys
    )
    np.testing.assert_allclose(vk, [_elpips.distance(p, x, y, key=k) for k in keys], rtol=1e-5)


def test_shapes_broadcast_normalize(params):
    p = _small(params, 1)
    x, y = _pair(n=3)
    key = jax.random.key(1)
    d = _elpips.distance(p, x, y, key=key)
    assert d.shape == (3,) and _elpips.distance(p, x[0], y[0], key=key).shape == ()
    # a batch of 1 against 3, in [0, 1]: as the broadcast batch in [-1, 1]
    b01 = _elpips.distance(p, (x[:1] + 1) / 2, (y + 1) / 2, key=key, normalize=True)
    np.testing.assert_allclose(
        b01, _elpips.distance(p, jnp.broadcast_to(x[:1], y.shape), y, key=key), rtol=1e-5
    )


def test_identical_and_flat_images(params):
    """d(x, x) = 0 exactly; gradients finite on flat and identical images."""
    p = _small(params, 1)
    x, _ = _pair(n=3)
    key = jax.random.key(0)
    np.testing.assert_array_equal(_elpips.distance(p, x, x, key=key), 0)
    flat = jnp.zeros_like(x[0])
    a, b = jnp.stack([flat, x[0], flat]), jnp.stack([x[0], x[0], flat])  # flat-photo, identical, both flat
    g = _grad(p, a, b, key)
    assert np.all(np.isfinite(g)) and np.any(g[0] != 0)


def test_too_small_names_the_option(params):
    x = jnp.zeros((1, 30, 40, 3))
    with pytest.raises(ValueError, match=r"30x40: E-LPIPS with scale_levels=8 needs at least 58x58") as e:
        _elpips.distance(params, x, x, key=jax.random.key(0))
    assert "max(1, min(H, W) // 64)" in str(e.value) and "params.replace(scale_levels=1)" in str(e.value)
    small = jnp.zeros((8, 8, 3))
    with pytest.raises(ValueError, match="at least 9x9 even with scale_levels=1"):
        _elpips.distance(params.replace(scale_levels=1), small, small, key=jax.random.key(0))
    # 7 L + 2 is enough: at level 2, 16 pixels become 9 (16 with the offset pad)
    ok = jnp.zeros((1, 16, 17, 3))
    t = _elpips.sample_transform(jax.random.key(0), 1, 2).replace(level=jnp.asarray(2, jnp.int32))
    assert _elpips.distance_at(params.replace(scale_levels=2), ok, ok + 0.5, t).shape == (1,)
    assert _elpips.min_size(8) == 58 and _elpips.levels_for_size(256, 300) == 4


def test_errors(params):
    x, y = _pair()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="E-LPIPS is random: pass key="):
        _elpips.distance(params, x, y, key=None)
    with pytest.raises(TypeError, match="expected a jax.random key"):
        _elpips.distance(params, x, y, key=3)
    with pytest.raises(ValueError, match="samples=0"):
        _elpips.distance(params, x, y, key=key, samples=0)
    with pytest.raises(ValueError, match="scale_levels=0"):
        _elpips.distance(params.replace(scale_levels=0), x, y, key=key)
    with pytest.raises(ValueError, match="NCHW"):
        _elpips.distance(params, x.transpose(0, 3, 1, 2), y.transpose(0, 3, 1, 2), key=key)
    t = _elpips.sample_transform(key, 2, 2)
    with pytest.raises(ValueError, match="masks: expected 13"):
        _elpips.distance_at(_small(params), x, y, t, masks=[])
    with pytest.raises(ValueError, match="transform.level=3: expected 1 .. scale_levels=2"):
        _elpips.distance_at(_small(params), x, y, t.replace(level=jnp.asarray(3)))
    with pytest.raises(TypeError, match="expected ELPIPSParams"):
        _elpips.distance({"trunk": None}, x, y, key=key)


def test_default_levels_and_many_samples(params):
    """The default 8 levels at 64x64 (the official example size): 4 draws, and the
    gradient of one."""
    x = jnp.asarray(make_refs.read_png("lpips_examples/ex_p0.png"), jnp.float32)[None] / 127.5 - 1
    y = jnp.asarray(make_refs.read_png("lpips_examples/ex_ref.png"), jnp.float32)[None] / 127.5 - 1
    key = jax.random.key(0)
    d = _elpips.distance(params, x, y, key=key, samples=4)
    singles = [_elpips.distance(params, x, y, key=k) for k in jax.random.split(key, 4)]
    np.testing.assert_allclose(d, np.mean(singles, axis=0), rtol=1e-5)
    assert 0 < float(d[0]) < 1
    g = _grad(params, x, y, key)
    assert np.all(np.isfinite(g)) and np.any(g != 0)


@pytest.mark.slow
def test_remat_and_dtype(params):
    """``remat=True``: the same value and gradient; ``dtype=bfloat16``: close, finite."""
    p = _small(params, 1)
    x, y = _pair()
    key = jax.random.key(2)

    def vg(**kw):
        f = jax.jit(jax.value_and_grad(lambda a, p, b: jnp.sum(_elpips.distance(p, a, b, key=key, **kw))))
        return f(x, p, y)

    (v, g), (vr, gr) = vg(), vg(remat=True)
    np.testing.assert_allclose(vr, v, rtol=1e-6)
    np.testing.assert_allclose(gr, g, rtol=1e-5, atol=1e-6 * np.abs(g).max())
    vb, gb = vg(dtype=jnp.bfloat16)
    assert np.isfinite(vb) and np.all(np.isfinite(gb)) and abs(float(vb) - float(v)) < 0.05 * float(v)


@pytest.mark.slow
def test_memory_does_not_grow_with_samples(params):
    """Under grad, the compiled program's temporary memory for 16 draws is about that of 2
    (the scan body is rematerialised), not 8 times it."""
    p = _small(params)
    x, y = _pair(n=1, h=32, w=32)

    def temp(samples):
        f = jax.jit(
            jax.grad(
                lambda a, p, b: jnp.sum(_elpips.distance(p, a, b, key=jax.random.key(0), samples=samples))
            )
        )
        return f.lower(x, p, y).compile().memory_analysis().temp_size_in_bytes

    assert temp(16) < 1.5 * temp(2)


# ---- the public API ---------------------------------------------------------------------


def test_public_load_and_distance(params):
    """``lpips_jax.load("elpips")`` and ``lpips_jax.distance(p, x, y, key=, samples=)`` are
    this module's metric; the deterministic metrics refuse a key and samples; the entry
    points that E-LPIPS cannot define raise saying why."""
    import lpips_jax

    p = lpips_jax.load("elpips")
    assert isinstance(p, _elpips.ELPIPSParams) and p.scale_levels == 8
    p = p.replace(scale_levels=2)  # 24x24 images
    x, y = _pair()
    key = jax.random.key(3)
    want = _elpips.distance(p, x, y, key=key, samples=2)
    np.testing.assert_array_equal(lpips_jax.distance(p, x, y, key=key, samples=2), want)
    d = jax.jit(lambda a, b, k: lpips_jax.distance(p, a, b, key=k))(x, y, key)
    np.testing.assert_array_equal(d, _elpips.distance(p, x, y, key=key))
    with pytest.raises(ValueError, match="E-LPIPS is random: pass key="):
        lpips_jax.distance(p, x, y)
    alex = lpips_jax.load("alex")
    with pytest.raises(ValueError, match="net 'alex' is deterministic: it takes no key"):
        lpips_jax.distance(alex, x, y, key=key)
    with pytest.raises(ValueError, match="deterministic.*samples=4"):
        lpips_jax.distance(alex, x, y, samples=4)
    with pytest.raises(ValueError, match="features is not defined for E-LPIPS: each draw transforms"):
        lpips_jax.features(p, x)
    with pytest.raises(ValueError, match="distance_map is not defined for E-LPIPS"):
        lpips_jax.distance_map(p, x, y)
    with pytest.raises(ValueError, match="E-LPIPS is random: pass key="):
        lpips_jax.layer_distances(p, x, y)
    with pytest.raises(ValueError, match="net 'alex' is deterministic"):
        lpips_jax.layer_distances(alex, x, y, key=key)
    with pytest.raises(ValueError, match="net='elpips' takes no version"):
        lpips_jax.load("elpips", version="0.1")
    with pytest.raises(ValueError, match="save writes LPIPS and DISTS params; net='elpips' ships"):
        lpips_jax.save(p, "unused.safetensors")
    from flax import nnx

    from lpips_jax import nnx as lnnx

    module = lnnx.LPIPS(params=p)  # NNX: the key (or an nnx.Rngs) per call
    assert module.net == "elpips" and module.params.scale_levels == 2
    np.testing.assert_array_equal(module(x, y, key=key, samples=2), want)
    rngs = nnx.Rngs(7)
    np.testing.assert_array_equal(module(x, y, key=rngs), _elpips.distance(p, x, y, key=nnx.Rngs(7)()))
    with pytest.raises(ValueError, match="E-LPIPS is random: pass key="):
        module(x, y)


def test_layer_distances_are_the_mean_per_tap_of_the_draws(params):
    """Per tap, the mean over draws of the single draws' terms (split keys), 14 of them,
    each >= 0 (the heads are >= 0), summing to the distance; unbatched gives ``()``."""
    import lpips_jax

    p = params.replace(scale_levels=2)
    x, y = _pair()
    key = jax.random.key(11)
    per = lpips_jax.layer_distances(p, x, y, key=key, samples=3)
    assert len(per) == _elpips.N_TAPS and all(t.shape == (x.shape[0],) for t in per)
    singles = [lpips_jax.layer_distances(p, x, y, key=k) for k in jax.random.split(key, 3)]
    for k in range(_elpips.N_TAPS):
        mean = np.mean([s[k] for s in singles], axis=0)
        np.testing.assert_allclose(per[k], mean, rtol=1e-5, atol=1e-9)
        assert np.all(np.asarray(per[k]) >= 0)
    np.testing.assert_allclose(sum(per), lpips_jax.distance(p, x, y, key=key, samples=3), rtol=1e-6)
    one = lpips_jax.layer_distances(p, x[0], y[0], key=key)
    assert all(t.shape == () for t in one)


def test_linen_module(params):
    """``LPIPS(net="elpips")``: fresh params of the loaded ones' shapes; with the loaded
    variables it is :func:`distance` (key per call, or drawn from the "elpips" stream);
    ``scale_levels`` and :func:`to_params` carry the level count."""
    import lpips_jax

    x, y = _pair()
    key = jax.random.key(5)
    p = params.replace(scale_levels=2)
    module = lpips_jax.LPIPS(net="elpips", scale_levels=2)
    fresh = module.init(jax.random.key(0), x, y)
    shapes = lambda t: jax.tree_util.tree_map(np.shape, t)  # noqa: E731
    assert shapes(fresh) == shapes(p.variables())
    want = _elpips.distance(p, x, y, key=key, samples=2)
    np.testing.assert_array_equal(module.apply(p.variables(), x, y, key=key, samples=2), want)
    a = module.apply(p.variables(), x, y, rngs={"elpips": key})
    np.testing.assert_array_equal(a, module.apply(p.variables(), x, y, rngs={"elpips": key}))
    assert not np.array_equal(a, module.apply(p.variables(), x, y, rngs={"elpips": jax.random.key(6)}))
    with pytest.raises(ValueError, match="net='elpips' is random: call with key="):
        module.apply(p.variables(), x, y)
    back = lpips_jax.to_params(p.variables(), net="elpips", scale_levels=2)
    assert isinstance(back, _elpips.ELPIPSParams) and back.scale_levels == 2
    with pytest.raises(ValueError, match="scale_levels=2 is an E-LPIPS option: net='alex'"):
        lpips_jax.LPIPS(net="alex", scale_levels=2).init(jax.random.key(0), x, y)
    with pytest.raises(ValueError, match="net='elpips' takes no version"):
        lpips_jax.LPIPS(net="elpips", version="0.1").init(jax.random.key(0), x, y)


def test_image_gradient_computed_with_the_value(params):
    """``distance``'s gradient w.r.t. the images (computed draw by draw with the value, no
    network in the backward pass) equals JAX's own derivative of the same draws (through
    ``layer_distances``' path: the switch of rematerialised branches) for weighted pairs,
    two draws and a broadcast reference; w.r.t. the heads too (the params differentiated:
    the plain derivative). Values are those of the forward alone. (One draw, in float64:
    the finite-difference test below.)"""
    import lpips_jax

    p = params.replace(scale_levels=2)
    x, y = _pair(seed=4, n=2, h=24, w=28)
    key = jax.random.key(21)
    w = jnp.asarray([0.3, -1.7])

    def fast(a, b, q=p):
        return jnp.sum(w * lpips_jax.distance(q, a, b, key=key, samples=2))

    def plain(a, b, q=p):
        return jnp.sum(w * sum(lpips_jax.layer_distances(q, a, b, key=key, samples=2)))

    (v, g), (vp, gp) = jax.value_and_grad(fast, (0, 1))(x[:1], y), jax.value_and_grad(plain, (0, 1))(x[:1], y)
    np.testing.assert_allclose(v, vp, rtol=1e-6)
    np.testing.assert_allclose(v, jnp.sum(w * lpips_jax.distance(p, x[:1], y, key=key, samples=2)), rtol=1e-6)
    for a, b in zip(g, gp):
        assert float(jnp.abs(a - b).max() / jnp.abs(b).max()) < 1e-5
    heads = lambda f: jax.grad(lambda h: f(x, y, p.replace(heads=h)))(p.heads)  # noqa: E731
    for a, b in zip(jax.tree_util.tree_leaves(heads(fast)), jax.tree_util.tree_leaves(heads(plain))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))  # float32 sums


def test_image_gradient_matches_finite_differences_in_float64(params):
    """In float64 the draw-by-draw image gradient equals central finite differences
    (``jax.test_util.check_grads``), through two draws of mixed levels and dropout."""
    from jax.test_util import check_grads

    with jax.enable_x64():
        p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params.replace(scale_levels=2))
        x, y = (jnp.asarray(a, jnp.float64) for a in _pair(seed=6, n=2, h=17, w=19))
        key = jax.random.key(5)
        f = lambda a: jnp.sum(jnp.asarray([1.0, -0.5]) * _elpips.distance(p, a, y, key=key, samples=2))  # noqa: E731
        check_grads(f, (x,), order=1, modes=("rev",), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_dropout_masks_keep_99_percent():
    """The sampled keep masks: one per conv, of its input's shape, each kept with probability
    0.99 (64881 / 2^16; within 5 binomial standard deviations over ~1.3M draws), from both
    16-bit halves of the words alike; another key gives other masks."""
    n, h, w = 2, 71, 71
    masks = jax.jit(lambda k: _elpips._sampled_masks(k, n, h, w))(jax.random.key(0))
    shapes = {i: (n, *s) for i, s in _nets.conv_input_shapes(_elpips.NET, h, w).items()}
    assert {i: m.shape for i, m in masks.items()} == shapes and all(m.dtype == bool for m in masks.values())
    flat = np.concatenate([np.asarray(m).ravel() for m in masks.values()])
    p = _elpips.KEEP_16 / 2**16
    assert abs(p - 0.99) < 6e-6
    half = flat.size // 2
    for part in (flat[:half], flat[half:]):  # low 16 bits, then high 16 bits
        sd = np.sqrt(p * (1 - p) / part.size)
        assert abs(part.mean() - p) < 5 * sd, (part.mean(), p, sd)
    other = jax.jit(lambda k: _elpips._sampled_masks(k, n, h, w))(jax.random.key(1))
    assert not np.array_equal(np.asarray(masks[0]), np.asarray(other[0]))


def test_too_many_pairs_for_one_draw_is_refused():
    """The canvas's dropout masks are indexed in int32: a batch past that is refused at
    trace time, naming the batch (not silently given other masks)."""
    p = _elpips.load()
    big = jax.ShapeDtypeStruct((700, 256, 256, 3), jnp.float32)
    with pytest.raises(ValueError, match="700 pairs of 256x256 images are too many for one draw"):
        jax.eval_shape(lambda a, b: _elpips.distance(p, a, b, key=jax.random.key(0)), big, big)
