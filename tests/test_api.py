"""The public API's contract: names, signatures, shapes, unbatched input, values, the linen
module and the params pytree.

References, computed another way: a numpy float64 re-computation of each layer from the
unit-normalised features; the quantity in float64 (``float64_truth``) where two float32
paths compute it (``assert_paths_agree``); the same program for unbatched input (a batch of
1) and for the linen module, which calls ``distance`` (bitwise). AlexNet with the shipped
weights on the entry-point pair (3 x 32x32).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _loss_helpers import assert_paths_agree, entry_pair, float64_truth

import lpips_jax

H, W = 64, 64  # test_shapes: abstract, no program runs


@pytest.fixture(scope="module")
def pair():
    return entry_pair()


def _truth(fn, params, x, y):
    return float64_truth(fn, params, x, y)


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


# Each module's public functions (its __all__) and these methods; E-LPIPS' own entry points
# (lpips_jax.distance calls them with a key). Not checked: the dataclass constructors
# (params, ImageInfo, the linen modules' fields) and LPIPSEvaluator, which keeps the 0.1.0
# port's signature for its users.
GROUPS = {
    "lpips_jax": ("lpips_jax.LPIPS.__call__",),
    "lpips_jax.io": (),
    "lpips_jax.bapps": (),
    "lpips_jax.nnx": (
        "lpips_jax.nnx.LPIPS.__init__",
        "lpips_jax.nnx.LPIPS.__call__",
        "lpips_jax.nnx.MeanDistance.__init__",
        "lpips_jax.nnx.MeanDistance.update",
    ),
    "lpips_jax._elpips": ("lpips_jax._elpips.distance", "lpips_jax._elpips.distance_at"),
}


def _resolve(dotted: str):
    """``lpips_jax.nnx.LPIPS.__call__`` -> the object; ``None`` where an optional extra is
    missing (``bapps.Bapps`` needs tensorflow-datasets)."""
    for i in range(1, dotted.count(".") + 1):  # the longest module name first
        mod, *attrs = dotted.rsplit(".", i)
        try:
            obj = importlib.import_module(mod)
        except ImportError:
            continue
        try:
            return functools.reduce(getattr, attrs, obj)
        except ImportError:
            return None
    raise ValueError(dotted)


def _functions(group: str) -> list[str]:
    out = list(GROUPS[group])
    for name in getattr(importlib.import_module(group), "__all__", ()):
        obj = _resolve(f"{group}.{name}")
        if callable(obj) and not inspect.isclass(obj):
            out.append(f"{group}.{name}")
    return out


# By the DESIGN contract ``load("vgg", "0.0", False)`` is allowed: net, version and lpips
# are positional (and so is the NNX module's net, and MeanDistance's metric). No other
# optional argument of the public API is.
POSITIONAL_OPTIONAL = {
    "lpips_jax.load": ("net", "version", "lpips"),
    "lpips_jax.nnx.LPIPS.__init__": ("net",),
    "lpips_jax.nnx.MeanDistance.__init__": ("metric",),
}
# nnx.MultiMetric hands every metric all its keywords: update takes and ignores the others.
VAR_KEYWORD = {"lpips_jax.nnx.MeanDistance.update"}
# Exact positional parameters, and the first keyword-only options with their defaults.
_METRIC_OPTIONS = {"normalize": False, "dtype": None}
PINNED = {
    "lpips_jax.distance": (("params", "x", "y"), _METRIC_OPTIONS),
    "lpips_jax.distance_map": (("params", "x", "y"), _METRIC_OPTIONS),
    "lpips_jax.layer_distances": (("params", "x", "y"), _METRIC_OPTIONS),
    "lpips_jax.features": (("params", "x"), _METRIC_OPTIONS),
    "lpips_jax.load": (("net", "version", "lpips"), {"variant": "vanilla", "path": None}),
    "lpips_jax._elpips.distance": (("params", "x", "y"), {}),
    "lpips_jax._elpips.distance_at": (("params", "x", "y", "transform"), {}),
}
# The same keyword-only options (names and defaults, in order) as another function.
SAME_OPTIONS = {"lpips_jax.nnx.LPIPS.__call__": "lpips_jax.distance"}


def _keyword_only(sig) -> list[tuple[str, object]]:
    return [(n, p.default) for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY]


def _signature_problems(name: str) -> list[str]:
    fn = _resolve(name)
    if fn is None:  # an optional extra is missing
        return []
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.name != "self"]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    problems = []
    optional = tuple(p.name for p in positional if p.default is not p.empty)
    if optional != POSITIONAL_OPTIONAL.get(name, ()):
        problems.append(f"{name}{sig}: optional arguments {optional} must come after '*'")
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        problems.append(f"{name}{sig}: *args")
    if any(p.kind is p.VAR_KEYWORD for p in params) != (name in VAR_KEYWORD):
        problems.append(f"{name}{sig}: **kwargs")
    if name in PINNED:
        names, options = PINNED[name]
        head = _keyword_only(sig)[: len(options)]
        if tuple(p.name for p in positional) != names or head != list(options.items()):
            problems.append(f"{name}{sig}: expected ({', '.join(names)}, *, {options} ...)")
    if name in SAME_OPTIONS:
        other = SAME_OPTIONS[name]
        if _keyword_only(sig) != _keyword_only(inspect.signature(_resolve(other))):
            problems.append(f"{name}{sig}: expected the keyword-only options of {other}")
    return problems


@pytest.mark.parametrize("group", list(GROUPS))
def test_signatures(group):
    """Every public function and method: optional arguments after ``*`` (checked with
    ``inspect``, as dm_pix's api_test), no ``*args`` or ``**kwargs``; the metric entry
    points' parameters pinned."""
    names = _functions(group)
    assert names, group
    problems = [p for name in names for p in _signature_problems(name)]
    assert not problems, "\n".join(problems)


# ---- shapes and unbatched input --------------------------------------------------------


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


def test_unbatched_is_a_batch_of_one_and_equals_the_batch(alex_params, pair):
    """An (H, W, 3) pair is a batch of 1 without its axis: the same program, so bitwise
    equal; computed alone, it equals its element of the batch (another program)."""
    x, y = pair
    for fn in (lpips_jax.distance, lpips_jax.distance_map, lpips_jax.layer_distances):
        alone, one = fn(alex_params, x[0], y[0]), fn(alex_params, x[:1], y[:1])
        for a, b in zip(jax.tree_util.tree_leaves(alone), jax.tree_util.tree_leaves(one)):
            assert a.shape == b.shape[1:] and b.shape[0] == 1, fn.__name__
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[0], err_msg=fn.__name__)
        batch = fn(alex_params, x, y)
        want = jax.tree_util.tree_map(lambda a: a[:1], batch)
        truth = jax.tree_util.tree_map(lambda a: a[:1], _truth(fn, alex_params, x, y))
        assert_paths_agree(one, want, truth, what=f"{fn.__name__}: alone vs in the batch")


# ---- values --------------------------------------------------------------------------


def test_identical_inputs_give_exactly_zero(alex_params, vgg_params, pair):
    x = pair[0][0]
    for p, img in ((alex_params, x), (vgg_params, x[:32, :32])):
        d = lpips_jax.distance(p, img, img)
        assert float(d) == 0.0, p.net
        assert np.all(np.asarray(lpips_jax.distance_map(p, img, img)) == 0), p.net
        assert all(float(a) == 0.0 for a in lpips_jax.layer_distances(p, img, img)), p.net


def test_symmetry(alex_params, pair):
    """d(y, x) is d(x, y) (x's and y's trunk passes may round differently)."""
    x, y = pair
    for fn in (lpips_jax.distance, lpips_jax.distance_map):
        want = fn(alex_params, x, y)
        assert_paths_agree(fn(alex_params, y, x), want, _truth(fn, alex_params, x, y), what=fn.__name__)
    assert np.all(np.asarray(want) >= 0)
    assert float(np.asarray(lpips_jax.distance(alex_params, x, y)).min()) > 0.01


def test_layers_against_numpy_reference(alex_params, pair):
    """Each layer = spatial mean of sum_c w_c (fx - fy)^2, recomputed here in float64 from
    the float32 features; distance_from_features of them is the distance."""
    x, y = pair
    fx = lpips_jax.features(alex_params, x)
    fy = lpips_jax.features(alex_params, y)
    per = lpips_jax.layer_distances(alex_params, x, y)
    assert len(per) == len(fx) == 5
    ref = []
    for k, (a, b) in enumerate(zip(fx, fy)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        # unit-normalised over channels (up to the official 1e-10 epsilon); float32 sums of
        # at most 384 squares: a few ulp
        np.testing.assert_allclose(np.sqrt((a * a).sum(-1)), 1.0, rtol=1e-5)
        w = np.asarray(alex_params.heads[f"lin{k}"]["kernel"], np.float64).reshape(-1)
        ref.append((((a - b) ** 2) * w).sum(-1).mean(axis=(1, 2)))
    assert_paths_agree(tuple(ref), per, _truth(lpips_jax.layer_distances, alex_params, x, y), what="layers")
    d = lpips_jax.distance(alex_params, x, y)
    truth = _truth(lpips_jax.distance, alex_params, x, y)
    assert_paths_agree(lpips_jax.distance_from_features(alex_params, fx, fy), d, truth, what="from features")


# ---- the Flax module and the params pytree ------------------------------------------


LINEN = {
    "alex": {"net": "alex"},
    "alex-nolpips": {"net": "alex", "lpips": False},
    "dists": {"net": "dists"},
    "alex-st": {"net": "alex", "variant": "shift_tolerant"},
}


# Jitted too (inlined: another program, against the float64 value), once: the module's code
# is the same for every metric, and the floor's jax runs a float64 VGG for minutes.
JITTED = ("alex",)


@pytest.mark.parametrize("name", list(LINEN))
def test_linen_module(name, pair):
    """``LPIPS(net=..., variant=..., lpips=...)`` is every metric of the family: applied to
    loaded params' ``variables()`` it calls :func:`distance` with those params, so eagerly it
    runs the very program of ``distance`` (bitwise equal); its init has the loaded shapes,
    and ``to_params`` goes back to the same arrays."""
    kwargs = LINEN[name]
    params = lpips_jax.load(**kwargs)
    module = lpips_jax.LPIPS(**kwargs)
    x, y = pair
    got = module.apply(params.variables(), x, y)
    assert got.shape == (x.shape[0],) and got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(lpips_jax.distance(params, x, y)))
    if name in JITTED:
        jitted = jax.jit(module.apply)(params.variables(), x, y)
        assert_paths_agree(jitted, got, _truth(lpips_jax.distance, params, x, y), what="jit")
    shapes = jax.eval_shape(module.init, jax.random.key(0), x, y)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params.variables())
    assert jax.tree_util.tree_map(lambda a: a.shape, shapes) == jax.tree_util.tree_map(
        lambda a: a.shape, params.variables()
    )
    back = lpips_jax.to_params(params.variables(), **kwargs)
    assert type(back) is type(params) and back.net == params.net and back.variant == params.variant
    assert getattr(back, "lpips", None) == getattr(params, "lpips", None)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)))
    if kwargs.get("lpips") is False:  # the trunk alone
        assert back.heads is None and len(jax.tree_util.tree_leaves(back)) == 10


def test_params_pytree(alex_params):
    leaves = jax.tree_util.tree_leaves(alex_params)
    assert len(leaves) == 10 + 5  # 5 convs (kernel, bias) + 5 heads: net/version/lpips are not leaves
    assert all(isinstance(a, jax.Array) for a in leaves)
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
