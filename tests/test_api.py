"""The public API's contract: names, keyword-only options, shapes, jit, pytree params.

Numbers here are checked against references computed another way: a numpy float64
re-computation of each layer from the unit-normalised features, and the same call with
the arguments swapped or unbatched. AlexNet at 64x64 with the shipped weights.
"""

from __future__ import annotations

import dataclasses
import inspect
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _loss_helpers import ENTRY_RTOL

import lpips_jax

H, W = 64, 64


def _pair(n=None, seed=0, h=H, w=W):
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if n is None else (n, h, w, 3)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, shape), -1, 1).astype(np.float32)
    return x, y


# ---- names and signatures ------------------------------------------------------------


def test_all_is_complete_and_importable():
    names = lpips_jax.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(lpips_jax, name) is not None, name
    public = {
        n for n, v in vars(lpips_jax).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public == set(names)
    ns: dict = {}
    exec("from lpips_jax import *", ns)
    assert set(names) <= set(ns)


# By the DESIGN contract ``load("vgg", "0.0", False)`` is allowed: net, version and
# lpips are positional. No other optional argument of the public API is.
POSITIONAL_OPTIONAL = {"load": ("net", "version", "lpips")}
# Known departures, reported to their owners; strict, so a fix turns them into failures
# here until the mark is removed.
KNOWN_POSITIONAL: dict[str, str] = {}
FUNCTIONS = [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_POSITIONAL[n]))
    if n in KNOWN_POSITIONAL
    else n
    for n in sorted(lpips_jax.__all__)
    if inspect.isfunction(getattr(lpips_jax, n))
]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_optional_args_keyword_only(name):
    sig = inspect.signature(getattr(lpips_jax, name))
    positional_optional = tuple(
        p.name for p in sig.parameters.values() if p.default is not p.empty and p.kind is not p.KEYWORD_ONLY
    )
    assert positional_optional == POSITIONAL_OPTIONAL.get(name, ()), (
        f"{name}{sig}: optional arguments must come after '*'"
    )
    assert not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()), name


def test_load_signature():
    sig = inspect.signature(lpips_jax.load)
    kinds = [(p.name, p.kind, p.default) for p in sig.parameters.values()]
    pk, ko = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    assert kinds == [
        ("net", pk, None),
        ("version", pk, None),
        ("lpips", pk, True),
        ("variant", ko, "vanilla"),
        ("path", ko, None),
    ]
    p = lpips_jax.load("alex", "0.0", False)
    assert (p.net, p.version, p.lpips) == ("alex", "0.0", False)


@pytest.mark.parametrize("fn", ["distance", "distance_map", "layer_distances", "features"])
def test_metric_options(fn):
    sig = inspect.signature(getattr(lpips_jax, fn))
    ko = [n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY]
    assert ko[:2] == ["normalize", "dtype"]
    assert sig.parameters["normalize"].default is False
    assert sig.parameters["dtype"].default is None


# ---- shapes --------------------------------------------------------------------------


@pytest.mark.parametrize("batched", [False, True])
def test_shapes(alex_params, batched):
    x = jax.ShapeDtypeStruct((2, H, W + 16, 3) if batched else (H, W + 16, 3), jnp.float32)
    lead = (2,) if batched else ()
    d = jax.eval_shape(lpips_jax.distance, alex_params, x, x)
    assert (d.shape, d.dtype) == (lead, jnp.float32)
    m = jax.eval_shape(lpips_jax.distance_map, alex_params, x, x)
    assert (m.shape, m.dtype) == ((*lead, H, W + 16), jnp.float32)
    per = jax.eval_shape(lpips_jax.layer_distances, alex_params, x, x)
    assert [(a.shape, a.dtype) for a in per] == [(lead, jnp.float32)] * 5
    f = jax.eval_shape(lpips_jax.features, alex_params, x)
    assert [a.shape[-1] for a in f] == list(lpips_jax.tap_channels("alex"))
    assert all(a.shape[: len(lead)] == lead and a.ndim == len(lead) + 3 for a in f)


def test_unbatched_equals_batch_of_one(alex_params):
    x, y = _pair()
    d = lpips_jax.distance(alex_params, x, y)
    d1 = lpips_jax.distance(alex_params, x[None], y[None])
    assert d.shape == () and d1.shape == (1,)
    np.testing.assert_allclose(np.asarray(d), np.asarray(d1)[0], rtol=ENTRY_RTOL, atol=0)
    m = lpips_jax.distance_map(alex_params, x, y)
    m1 = lpips_jax.distance_map(alex_params, x[None], y[None])
    assert m.shape == (H, W) and m1.shape == (1, H, W)
    np.testing.assert_allclose(np.asarray(m), np.asarray(m1)[0], rtol=ENTRY_RTOL, atol=1e-9)
    per = lpips_jax.layer_distances(alex_params, x, y)
    assert all(a.shape == () for a in per)


# ---- values --------------------------------------------------------------------------


def test_identical_inputs_give_exactly_zero(alex_params, vgg_params):
    x, _ = _pair()
    for p, img in ((alex_params, x), (vgg_params, x[:32, :32])):
        d = lpips_jax.distance(p, img, img)
        assert float(d) == 0.0, p.net
        assert np.all(np.asarray(lpips_jax.distance_map(p, img, img)) == 0), p.net
        assert all(float(a) == 0.0 for a in lpips_jax.layer_distances(p, img, img)), p.net


def test_symmetry(alex_params):
    x, y = _pair()
    a = float(lpips_jax.distance(alex_params, x, y))
    b = float(lpips_jax.distance(alex_params, y, x))
    assert a > 0.01
    assert abs(a - b) <= 1e-7
    ma = np.asarray(lpips_jax.distance_map(alex_params, x, y))
    mb = np.asarray(lpips_jax.distance_map(alex_params, y, x))
    np.testing.assert_allclose(ma, mb, rtol=0, atol=1e-7)


def test_layers_against_numpy_reference(alex_params):
    """Each layer = spatial mean of sum_c w_c (fx - fy)^2, recomputed here in float64."""
    x, y = _pair()
    fx = lpips_jax.features(alex_params, x)
    fy = lpips_jax.features(alex_params, y)
    per = lpips_jax.layer_distances(alex_params, x, y)
    assert len(per) == len(fx) == 5
    for k, (a, b) in enumerate(zip(fx, fy)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        # unit-normalised over channels (up to the official 1e-10 epsilon)
        np.testing.assert_allclose(np.sqrt((a * a).sum(-1)), 1.0, rtol=1e-5)
        w = np.asarray(alex_params.heads[f"lin{k}"]["kernel"], np.float64).reshape(-1)
        ref = (((a - b) ** 2) * w).sum(-1).mean()
        np.testing.assert_allclose(float(per[k]), ref, rtol=1e-5, atol=1e-9, err_msg=f"layer {k}")
    d = float(lpips_jax.distance(alex_params, x, y))
    np.testing.assert_allclose(d, sum(float(a) for a in per), rtol=ENTRY_RTOL, atol=0)
    np.testing.assert_allclose(
        float(lpips_jax.distance_from_features(alex_params, fx, fy)), d, rtol=ENTRY_RTOL, atol=0
    )


def test_jit_traces_once_and_matches_eager(alex_params):
    traces = []

    def f(p, x, y):
        traces.append(x.shape)
        return lpips_jax.distance(p, x, y)

    jf = jax.jit(f)
    outs = []
    for seed in range(3):
        x, y = _pair(n=2, seed=seed)
        outs.append((x, y, np.asarray(jf(alex_params, x, y))))
    # new values of the params (same structure and static fields) do not retrace either
    scaled = jax.tree_util.tree_map(lambda a: a * 1.0, alex_params)
    same = np.asarray(jf(scaled, x, x))
    assert len(traces) == 1
    assert all(d.shape == (2,) for _, _, d in outs)
    # Identical inputs give exactly 0 under jit too (without the identity guard in
    # _metric._zero_identical, XLA:CPU left about 6e-16 at 64x64).
    assert np.all(same == 0)
    # the batch elements are independent: each equals the unbatched eager value
    x, y, d = outs[0]
    for i in range(2):
        ref = float(lpips_jax.distance(alex_params, x[i], y[i]))
        np.testing.assert_allclose(d[i], ref, rtol=ENTRY_RTOL, atol=0)


# ---- the Flax module and the params pytree ------------------------------------------


def test_linen_module_equals_distance(alex_params):
    x, y = _pair()
    ref = float(lpips_jax.distance(alex_params, x, y))
    got = lpips_jax.LPIPS(net="alex").apply(alex_params.variables(), x, y)
    assert got.shape == ()
    np.testing.assert_allclose(float(got), ref, rtol=ENTRY_RTOL, atol=0)
    base = lpips_jax.load("alex", lpips=False)
    got = lpips_jax.LPIPS(net="alex", lpips=False).apply(base.variables(), x, y)
    np.testing.assert_allclose(float(got), float(lpips_jax.distance(base, x, y)), rtol=ENTRY_RTOL, atol=0)


def test_to_params_round_trip(alex_params):
    back = lpips_jax.to_params(alex_params.variables(), net="alex")
    assert (back.net, back.version, back.lpips) == ("alex", "0.1", True)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(alex_params)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(alex_params)):
        assert a is b
    # the module's own init gives the same tree as the loaded params
    x = jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32)
    shapes = jax.eval_shape(lpips_jax.LPIPS(net="alex").init, jax.random.PRNGKey(0), x, x)
    init = lpips_jax.to_params(shapes, net="alex")
    assert jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(alex_params)
    assert [a.shape for a in jax.tree_util.tree_leaves(init)] == [
        a.shape for a in jax.tree_util.tree_leaves(alex_params)
    ]
    base = lpips_jax.to_params({"params": {"trunk": alex_params.trunk}}, net="alex", lpips=False)
    assert base.heads is None and len(jax.tree_util.tree_leaves(base)) == 10


def test_params_pytree(alex_params):
    leaves = jax.tree_util.tree_leaves(alex_params)
    assert len(leaves) == 10 + 5  # 5 convs (kernel, bias) + 5 heads: net/version/lpips are not leaves
    assert all(isinstance(a, jax.Array) for a in leaves)
    assert len(jax.tree_util.tree_leaves(lpips_jax.load("alex", lpips=False))) == 10
    doubled = jax.tree_util.tree_map(lambda a: 2 * a, alex_params)
    assert isinstance(doubled, lpips_jax.LPIPSParams)
    assert (doubled.net, doubled.version, doubled.lpips) == ("alex", "0.1", True)
    np.testing.assert_array_equal(
        np.asarray(doubled.heads["lin0"]["kernel"]),
        2 * np.asarray(alex_params.heads["lin0"]["kernel"]),
    )
    # the static fields are part of the tree's structure (a change retraces, as it must)
    other = dataclasses.replace(alex_params, version="0.0")
    assert jax.tree_util.tree_structure(other) != jax.tree_util.tree_structure(alex_params)


@pytest.mark.parametrize(
    "kwargs", [{"net": "dists"}, {"net": "alex", "variant": "shift_tolerant"}], ids=["dists", "alex_st"]
)
def test_linen_module_covers_the_family(kwargs):
    """``LPIPS(net=..., variant=...)`` is every metric of the family: applied to loaded
    params' ``variables()`` it equals :func:`distance`; its init has the loaded shapes,
    and ``to_params`` goes back."""
    params = lpips_jax.load(**kwargs)
    x, y = _pair(2, seed=5)
    module = lpips_jax.LPIPS(**kwargs)
    got = jax.jit(module.apply)(params.variables(), x, y)
    np.testing.assert_allclose(got, lpips_jax.distance(params, x, y), rtol=ENTRY_RTOL, atol=1e-7)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x, y)
    same = jax.tree_util.tree_map(lambda a, b: a.shape == b.shape, shapes, params.variables())
    assert all(jax.tree_util.tree_leaves(same))
    back = lpips_jax.to_params(params.variables(), **kwargs)
    assert type(back) is type(params) and back.net == params.net and back.variant == params.variant
    assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)))
