"""Input checks: every bad input raises with a message naming what came and what was expected.

Static checks (rank, channels, equal shapes, dtype, minimum size, net, version) run at
trace time, so they raise the same way eagerly and under ``jax.jit``. The value check
(``_checks.check_range``: 0..255 images, [-1, 1] with ``normalize=True``, NaN) runs only
on concrete arrays and is skipped under ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lpips_jax
from lpips_jax import _checks

# The smallest input each official torchvision trunk accepts (tests/test_parity.py
# checks these against torch: one pixel less fails there).
MIN_SIZES = {"alex": 31, "vgg": 16, "squeeze": 17}
NET_LIST = r"'alex', 'vgg', 'squeeze'"


def _img(shape, seed=0, lo=-1.0, hi=1.0, dtype=np.float32):
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(dtype)


def _shell(net: str) -> lpips_jax.LPIPSParams:
    """Params with no arrays: enough for checks that run before the trunk."""
    return lpips_jax.LPIPSParams(trunk={}, heads=None, net=net, version="0.1", lpips=False)


FUNCS = {
    "distance": lpips_jax.distance,
    "distance_map": lpips_jax.distance_map,
    "layer_distances": lpips_jax.layer_distances,
}


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def dist(request):
    return jax.jit(lpips_jax.distance) if request.param else lpips_jax.distance


@pytest.mark.parametrize("shape", [(64, 3), (64,), (1, 2, 64, 64, 3)])
def test_rank(dist, alex_params, shape):
    x = _img(shape)
    n = len(shape)
    msg = rf"x has shape \({', '.join(map(str, shape))},?\) \(rank {n}\): expected \(N, H, W, 3\)"
    with pytest.raises(ValueError, match=msg + r" or \(H, W, 3\)"):
        dist(alex_params, x, x)


@pytest.mark.parametrize(("shape", "fix"), [((2, 3, 64, 64), "(0, 2, 3, 1)"), ((3, 64, 64), "(1, 2, 0)")])
@pytest.mark.parametrize("fn", list(FUNCS))
def test_nchw_hint(alex_params, shape, fn, fix):
    x = _img(shape)
    y = _img(shape[:-3] + (64, 64, 3))
    for f in (FUNCS[fn], jax.jit(FUNCS[fn])):
        with pytest.raises(ValueError, match=r"expected \(\.\.\., H, W, 3\) NHWC.*looks like NCHW"):
            f(alex_params, x, x)
        with pytest.raises(ValueError, match=r"^x has shape .*e\.g\. x\.transpose" + re.escape(fix)):
            f(alex_params, x, y)
        with pytest.raises(ValueError, match=r"^y has shape .*e\.g\. y\.transpose" + re.escape(fix)):
            f(alex_params, y, x)


def test_nchw_hint_features(alex_params):
    with pytest.raises(ValueError, match=r"x has shape \(1, 3, 64, 64\).*looks like NCHW"):
        lpips_jax.features(alex_params, _img((1, 3, 64, 64)))


@pytest.mark.parametrize("c", [1, 4])
def test_channels_other_than_3(dist, alex_params, c):
    x = _img((1, 64, 64, c))
    with pytest.raises(ValueError, match=r"3 channels last; convert grayscale or RGBA") as e:
        dist(alex_params, x, x)
    assert "NCHW" not in str(e.value)


def test_wrong_channels_on_y(dist, alex_params):
    x = _img((64, 64, 3))
    with pytest.raises(ValueError, match=r"^y has shape \(64, 64, 2\)"):
        dist(alex_params, x, _img((64, 64, 2)))


@pytest.mark.parametrize(
    ("xs", "ys"),
    [
        ((2, 64, 64, 3), (3, 64, 64, 3)),
        ((64, 64, 3), (1, 64, 64, 3)),
        ((64, 64, 3), (2, 64, 64, 3)),
        ((1, 64, 64, 3), (2, 64, 72, 3)),
        ((64, 64, 3), (64, 72, 3)),
    ],
)
def test_unequal_shapes(dist, alex_params, xs, ys):
    """Shapes that are neither equal nor a batch of 1 against a batch of N (same H, W)."""
    msg = r"x and y must have the same shape, or one of them a batch of 1 .*: got x \(.*\) and y \(.*\)"
    with pytest.raises(ValueError, match=msg) as e:
        dist(alex_params, _img(xs), _img(ys))
    assert str(xs) in str(e.value) and str(ys) in str(e.value)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.bool_])
def test_integer_dtype_hint(dist, alex_params, dtype):
    x = _img((64, 64, 3))
    xi = np.zeros((64, 64, 3), dtype)
    name = np.dtype(dtype).name
    msg = rf"y has dtype {name}: expected a float array in \[-1, 1\].*/ 255 with normalize=True"
    with pytest.raises(TypeError, match=msg):
        dist(alex_params, x, xi)


@pytest.mark.parametrize("net", list(MIN_SIZES))
def test_too_small_states_minimum(net):
    m = MIN_SIZES[net]
    assert lpips_jax.min_size(net) == m
    p = _shell(net)
    for hw in [(m - 1, m - 1), (m - 1, 64), (64, m - 1)]:
        x = _img((1, *hw, 3))
        for f in (lpips_jax.distance, jax.jit(lpips_jax.distance)):
            msg = rf"x has spatial size {hw[0]}x{hw[1]}: net '{net}' needs at least {m}x{m}"
            with pytest.raises(ValueError, match=msg) as e:
                f(p, x, x)
            # and the minimum of every net, so the user can pick another one
            assert "alex 31, vgg 16, squeeze 17" in str(e.value)


@pytest.mark.parametrize("net", list(MIN_SIZES))
def test_minimum_size_is_accepted(net):
    """Exactly the minimum traces through the whole trunk (shapes only, nothing computed)."""
    m = MIN_SIZES[net]
    trunk = jax.eval_shape(
        lpips_jax.Trunk(net=net).init,
        jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
    )["params"]
    p = lpips_jax.LPIPSParams(trunk=trunk, heads=None, net=net, version="0.1", lpips=False)
    ok = jax.ShapeDtypeStruct((2, m, m + 5, 3), jnp.float32)
    out = jax.eval_shape(lpips_jax.distance, p, ok, ok)
    assert out.shape == (2,) and out.dtype == jnp.float32
    small = jax.ShapeDtypeStruct((2, m, m - 1, 3), jnp.float32)
    with pytest.raises(ValueError, match=rf"spatial size {m}x{m - 1}: net '{net}' needs"):
        jax.eval_shape(lpips_jax.distance, p, small, small)


@pytest.mark.parametrize("net", ["resnet", "Alex", "", 0.1])
def test_unknown_net(net):
    msg = re.escape(f"net={net!r} is not known: expected one of ") + NET_LIST
    with pytest.raises(ValueError, match=msg):
        lpips_jax.load(net)
    with pytest.raises(ValueError, match=msg):
        lpips_jax.load(net, lpips=False)
    x = _img((32, 32, 3))
    with pytest.raises(ValueError, match=msg):
        lpips_jax.LPIPS(net=net).init(jax.random.PRNGKey(0), x, x)


def test_unknown_net_in_params(dist, alex_params):
    p = dataclasses.replace(alex_params, net="resnet")
    x = _img((32, 32, 3))
    with pytest.raises(ValueError, match=r"net='resnet' is not known: expected one of " + NET_LIST):
        dist(p, x, x)


@pytest.mark.parametrize("version", [0.1, 0.0])
def test_version_as_float(dist, alex_params, version):
    msg = rf"version={version} is not known: expected one of '0.1', '0.0' "
    msg += rf"\(give the version as a string, e.g. version='{version}'\)"
    with pytest.raises(ValueError, match=msg):
        lpips_jax.load("alex", version)
    with pytest.raises(ValueError, match=msg):
        lpips_jax.load("alex", version=version, lpips=False)
    # params carrying a float version do not silently mean the other version either
    p = dataclasses.replace(alex_params, version=version)
    x = _img((32, 32, 3))
    with pytest.raises(ValueError, match=msg):
        dist(p, x, x)


@pytest.mark.parametrize("version", ["0.2", "v0.1", "1", 1])
def test_unknown_version(version):
    msg = rf"version={version!r} is not known: expected one of '0.1', '0.0'"
    with pytest.raises(ValueError, match=msg):
        lpips_jax.load("alex", version=version)
    with pytest.raises(ValueError, match=msg):
        lpips_jax.LPIPS(version=version).init(jax.random.PRNGKey(0), _img((32, 32, 3)), _img((32, 32, 3)))


@pytest.mark.parametrize("flag", [1, 0, "yes", None])
def test_lpips_flag_not_bool(flag):
    with pytest.raises(TypeError, match=rf"lpips={flag!r}: expected True or False"):
        lpips_jax.load("alex", lpips=flag)


@pytest.mark.parametrize("flag", [1, "no"])
def test_lpips_flag_not_bool_in_params(dist, alex_params, flag):
    """A truthy non-bool must not silently pick the heads (or a falsy one drop them)."""
    x = _img((32, 32, 3))
    p = dataclasses.replace(alex_params, lpips=flag)
    with pytest.raises(TypeError, match=rf"lpips={flag!r}: expected True or False"):
        dist(p, x, x)
    v = alex_params.variables()
    with pytest.raises(TypeError, match=rf"lpips={flag!r}: expected True or False"):
        lpips_jax.LPIPS(lpips=flag).apply(v, x, x)
    with pytest.raises(TypeError, match=rf"lpips={flag!r}: expected True or False"):
        dist(lpips_jax.to_params(v, net="alex", lpips=flag), x, x)


def test_params_type(dist):
    x = _img((32, 32, 3))
    with pytest.raises(TypeError, match=r"params has type dict: expected LPIPSParams"):
        dist({"params": {}}, x, x)


def test_lpips_true_without_heads(dist, alex_params):
    p = dataclasses.replace(alex_params, heads=None)
    x = _img((32, 32, 3))
    with pytest.raises(ValueError, match=r"params.lpips is True but params.heads is None"):
        dist(p, x, x)


# ---- the eager value check -----------------------------------------------------------


def test_range_0_255(alex_params):
    x = _img((64, 64, 3), lo=0, hi=255)
    msg = r"x has values in \[.*\]: expected \[-1, 1\]; it looks like 0\.\.255 pixel values: "
    with pytest.raises(ValueError, match=msg + r"divide by 255 and pass normalize=True"):
        lpips_jax.distance(alex_params, x, x / 255)
    with pytest.raises(ValueError, match=r"expected \[0, 1\] \(normalize=True\); it looks like 0"):
        lpips_jax.distance(alex_params, x, x, normalize=True)


def test_range_minus1_1_with_normalize(alex_params):
    x = _img((64, 64, 3))
    y = _img((64, 64, 3), lo=0, hi=1)
    msg = r"^x has values in \[-0\.99\d*, (0\.99\d*|1)\]: expected \[0, 1\] \(normalize=True\); "
    with pytest.raises(ValueError, match=msg + r"it looks like \[-1, 1\] input: drop normalize"):
        lpips_jax.distance(alex_params, x, y, normalize=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_range_nan_inf(alex_params, bad):
    x = _img((64, 64, 3))
    y = x.copy()
    y[3, 5, 1] = bad
    with pytest.raises(ValueError, match=r"^y contains NaN or inf values"):
        lpips_jax.distance(alex_params, x, y)
    with pytest.raises(ValueError, match=r"^y contains NaN or inf values"):
        lpips_jax.distance_map(alex_params, x, y)


class _Reached(Exception):
    """Raised by a stand-in trunk: the checks passed and the computation began."""


@pytest.fixture
def no_trunk(monkeypatch):
    def stop(*args, **kwargs):
        raise _Reached

    # every function path's computation starts in one of these, after the input checks
    for name in ("_features_program", "_layers_program", "_map_program"):
        monkeypatch.setattr(lpips_jax._metric, name, stop)


def test_range_small_overshoot_allowed(alex_params, no_trunk):
    """A decoder's output a little outside [-1, 1] is accepted (0.5 of slack)."""
    x = _img((64, 64, 3), lo=-1.4, hi=1.4)
    with pytest.raises(_Reached):
        lpips_jax.distance(alex_params, x, np.clip(x, -1, 1))
    with pytest.raises(_Reached):
        lpips_jax.distance(alex_params, x * 0.5 + 0.5, x * 0.5 + 0.5, normalize=True)
    with pytest.raises(ValueError, match=r"^x has values in \[-1\.6\d*, "):
        _checks.check_range("x", np.array([-1.6, 0.0], np.float32), False)
    _checks.check_range("x", np.array([-0.4, 1.4], np.float32), True)


def test_range_check_direct():
    _checks.check_range("x", np.zeros((0,), np.float32), False)  # empty: nothing to check
    _checks.check_range("x", jnp.ones((4, 4, 3)), True)
    with pytest.raises(ValueError, match=r"^img has values in \[0, 200\]"):
        _checks.check_range("img", jnp.asarray([0.0, 200.0]), False)


def test_range_skipped_under_jit(alex_params):
    """Under jit the values are not known at trace time: no check, no error.

    The check is trace-time Python, so tracing (``.lower``) is the whole of it: the
    compiled program holds no check.
    """
    x = _img((64, 64, 3), lo=0, hi=255)
    y = x.copy()
    y[0, 0, 0] = np.nan
    out = jax.jit(lpips_jax.distance).lower(alex_params, x, y).out_info
    assert out.shape == () and out.dtype == jnp.float32
    with pytest.raises(ValueError, match=r"looks like 0\.\.255"):
        lpips_jax.distance(alex_params, x, x)  # the same call, eager
    seen = []

    def probe(a):
        seen.append(_checks.check_range("a", a, False))
        return a

    jax.jit(probe)(jnp.full((3,), 300.0))
    jax.jit(probe)(jnp.full((4,), np.nan))
    assert seen == [None, None]
    # the static checks still run under jit: the same call with ints fails
    with pytest.raises(TypeError, match=r"x has dtype uint8"):
        jax.jit(lpips_jax.distance)(alex_params, x.astype(np.uint8), y)


def test_range_check_of_a_device_array_closed_over_in_jit(alex_params):
    """A concrete device array closed over by a jitted (and differentiated) function is
    checked as an eager one: valid values pass, 0..255 values raise at trace time."""
    x = jnp.asarray(_img((1, 32, 32, 3)))
    y = jnp.asarray(_img((1, 32, 32, 3), seed=1))
    g = jax.jit(jax.grad(lambda a: lpips_jax.distance(alex_params, a, y).sum()))(x)
    assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))
    y255 = y * 255
    with pytest.raises(ValueError, match="looks like 0..255"):
        jax.jit(lambda a: lpips_jax.distance(alex_params, a, y255))(x)
