"""The NNX front end (lpips_jax.nnx): the module equals ``distance`` under NNX transforms,
its weights are not ``nnx.Param`` (an optimizer leaves them bit-identical), and the
``MeanDistance`` metric accumulates the mean of ``distance`` over batches."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _loss_helpers import assert_paths_agree, float64_truth, photo_pair
from flax import nnx

import lpips_jax
import lpips_jax.nnx as lnnx

SIZE = 32  # alex needs at least 31x31
SCRIPT = Path(__file__).resolve().parent / "_nnx_sharded_script.py"


@pytest.fixture(scope="module")
def pair():
    return photo_pair(4, SIZE, seed=3)


@pytest.fixture(scope="module")
def alex_module(alex_params):
    return lnnx.LPIPS(params=alex_params)


def _same_tree(a, b) -> bool:
    """The same pytree (static fields included, in the treedef), arrays bit-identical."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _optimizer_update(optimizer, model, grads) -> None:
    """``optimizer.update``: ``(model, grads)`` from flax 0.11 on, ``(grads)`` before."""
    if "model" in inspect.signature(nnx.Optimizer.update).parameters:
        optimizer.update(model, grads)
    else:
        optimizer.update(grads)


def _arrays(p) -> dict:
    """The array fields of LPIPS params, as the module holds them."""
    return {"trunk": p.trunk, "heads": p.heads}


# ---- the module ----------------------------------------------------------------------


def test_attribute_and_import():
    assert lpips_jax.nnx is lnnx
    assert issubclass(lnnx.LPIPSWeights, nnx.Variable)
    assert not issubclass(lnnx.LPIPSWeights, nnx.Param)


@pytest.mark.parametrize(
    "load_kw",
    [
        {"net": "alex"},
        {"net": "alex", "version": "0.0", "lpips": False},
        {"net": "vgg"},
        {"net": "alex", "variant": "shift_tolerant"},
        {"net": "dists"},
    ],
    ids=["alex", "alex-0.0-nolpips", "vgg", "alex-st", "dists"],
)
def test_module_params_are_the_loaded_params(load_kw):
    """The module loads what ``load`` loads and gives it back as the same pytree (type,
    static fields in the treedef, arrays bit-identical): as ``__call__`` is ``distance``
    of that pytree, the distances are those of ``distance``."""
    p = lpips_jax.load(**load_kw)
    for m in (lnnx.LPIPS(**load_kw), lnnx.LPIPS(params=p)):
        assert (m.net, m.version, m.variant) == (p.net, p.version, p.variant)
        assert type(m.params) is type(p) and _same_tree(m.params, p)


@pytest.fixture(scope="module")
def truth(alex_params, pair):
    """The pair's distances in float64 (the module loads float32 weights: its float32 paths
    are checked against these)."""
    return float64_truth(lpips_jax.distance, alex_params, *pair)


def test_module_equals_distance(alex_module, alex_params, pair, truth):
    """Batched and unbatched."""
    x, y = pair
    assert_paths_agree(alex_module(x, y), lpips_jax.distance(alex_params, x, y), truth, what="batched")
    want = lpips_jax.distance(alex_params, x[0], y[0])
    assert_paths_agree(alex_module(x[0], y[0]), want, truth[0], what="unbatched")


def test_call_options_reach_distance(alex_module, monkeypatch):
    """``__call__``'s options (test_api.py pins them to ``distance``'s) reach ``distance`` as
    given, with the module's params; so do ``MeanDistance``'s."""
    calls = []

    def recorder(params, x, y, **kw):
        calls.append((params, x, y, kw))
        return jnp.zeros((2,), jnp.float32)

    monkeypatch.setattr(lnnx, "distance", recorder)
    options = {"normalize": True, "dtype": jnp.bfloat16, "remat": True, "precision": "highest"}
    alex_module("x", "y", **options)
    metric_options = {k: v for k, v in options.items() if k != "remat"}
    metric = lnnx.MeanDistance(alex_module, **metric_options)
    assert metric.module is alex_module  # a module given is shared, not copied
    metric.update(x="x", y="y")
    assert int(metric.count[...]) == 2
    (p1, *xy1, kw1), (p2, *xy2, kw2) = calls
    assert xy1 == xy2 == ["x", "y"]
    draws = {"key": None, "samples": 1}  # a deterministic metric's
    assert kw1 == {**options, **draws} and kw2 == {**options, "remat": False, **draws}
    assert _same_tree(p1, alex_module.params) and _same_tree(p2, alex_module.params)


def test_under_nnx_jit(alex_module, alex_params, pair, truth):
    x, y = pair
    ours = nnx.jit(lambda m, a, b: m(a, b))(alex_module, x, y)
    assert_paths_agree(ours, lpips_jax.distance(alex_params, x, y), truth)


@jax.jit
def _value_and_grad_x(p, x, y):
    """``jax.value_and_grad`` of the mean ``distance`` w.r.t. ``x``, jitted (op by op, a
    gradient costs ~30 s of dispatch here)."""
    return jax.value_and_grad(lambda a: lpips_jax.distance(p, a, y).mean())(x)


@pytest.fixture(scope="module")
def ref_value_and_grad(alex_params, pair):
    """The reference (float32) and the truth (float64) of the value and gradient."""
    return _value_and_grad_x(alex_params, *pair), float64_truth(_value_and_grad_x, alex_params, *pair)


def test_value_and_grad_wrt_images(alex_module, pair, ref_value_and_grad):
    """``nnx.value_and_grad`` w.r.t. ``x`` (under ``nnx.jit``: op by op it costs ~30 s)
    equals ``jax.value_and_grad`` of ``distance``; the module itself (no ``nnx.Param``)
    gets an empty gradient."""
    x, y = pair

    def loss(m, a):
        return m(a, y).mean()

    value, (g_model, g_x) = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1)))(alex_module, x)
    assert_paths_agree((value, g_x), *ref_value_and_grad)
    assert jax.tree.leaves(g_model) == []


def test_jit_grad_remat(alex_module, pair, ref_value_and_grad):
    """``nnx.jit`` of ``nnx.value_and_grad`` of an ``nnx.remat`` loss (with the
    ``remat=True`` option too): value and gradient unchanged."""
    x, y = pair

    @nnx.remat
    def loss(m, a):
        return m(a, y, remat=True).mean()

    value, g_x = nnx.jit(nnx.value_and_grad(loss, argnums=1))(alex_module, x)
    assert_paths_agree((value, g_x), *ref_value_and_grad)


def _numpy_init(key, shape, dtype=jnp.float32):
    """He-normal kernels drawn by numpy: jax.random's first compile per shape costs
    seconds on a small CPU, and the values do not matter here."""
    fan_in = int(np.prod(shape[:-1]))
    return jnp.asarray(np.random.default_rng(shape[-1]).normal(0, np.sqrt(2 / fan_in), shape), dtype)


class TinyAE(nnx.Module):
    """32x32x3 -> 16x16x8 -> 32x32x3 in [-1, 1], with the LPIPS module as a member."""

    def __init__(self, lp: lnnx.LPIPS):
        rngs = nnx.Rngs(0)
        self.enc = nnx.Conv(3, 8, (3, 3), strides=(2, 2), kernel_init=_numpy_init, rngs=rngs)
        self.dec = nnx.ConvTranspose(8, 3, (3, 3), strides=(2, 2), kernel_init=_numpy_init, rngs=rngs)
        self.lp = lp

    def __call__(self, x):
        return jnp.tanh(self.dec(nnx.relu(self.enc(x))))


def test_optimizer_trains_model_not_weights(alex_params):
    """An NNX autoencoder holding the LPIPS module: ``nnx.state(model, nnx.Param)`` has
    its convs only; trained with L1 + LPIPS by ``nnx.Optimizer(..., wrt=nnx.Param)``, the
    loss falls and the LPIPS weights stay bit-identical (as ``nnx.Param`` they would
    move: their gradient is nonzero)."""
    ae = TinyAE(lnnx.LPIPS(params=alex_params))
    params = nnx.state(ae, nnx.Param)
    assert len(jax.tree.leaves(params)) == 4 and "lp" not in params  # kernels and biases
    weights = nnx.to_pure_dict(nnx.state(ae, lnnx.LPIPSWeights))
    assert _same_tree(weights, {"lp": {"weights": _arrays(alex_params)}})

    opt = nnx.Optimizer(ae, optax.adam(1e-2), wrt=nnx.Param)
    batch, _ = photo_pair(4, SIZE, seed=7)

    @nnx.jit
    def step(model, optimizer, b):
        def loss(m):
            r = m(b)
            return jnp.mean(jnp.abs(r - b)) + jnp.mean(m.lp(r, b))

        value, grads = nnx.value_and_grad(loss)(model)
        _optimizer_update(optimizer, model, grads)
        return value

    # optax's Adam computes ``b1 ** count`` (float ** int32), refused by conftest's strict
    # promotion: the training runs with JAX's default promotion, as users run it.
    with jax.numpy_dtype_promotion("standard"):
        losses = [float(step(ae, opt, batch)) for _ in range(10)]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
    assert _same_tree(ae.lp.params, alex_params)
    weights = nnx.to_pure_dict(nnx.state(ae, lnnx.LPIPSWeights))
    assert _same_tree(weights, {"lp": {"weights": _arrays(alex_params)}})


def test_adaptive_weight_step_with_diff_state(alex_params):
    """A step that weighs its loss terms as a VQGAN's adaptive weight does: gradients of the
    LPIPS term (through the module) and of a second term w.r.t. the decoder alone
    (``nnx.DiffState``) and w.r.t. the input image, the ratio of their norms as the
    weight, then an optimizer step on the weighted sum. The decoder's gradient is the
    decoder's part of the whole model's one, the image's is finite and nonzero, the
    model moves and the LPIPS weights stay bit-identical."""
    ae = TinyAE(lnnx.LPIPS(params=alex_params))
    opt = nnx.Optimizer(ae, optax.sgd(1e-2), wrt=nnx.Param)
    x, target = photo_pair(4, SIZE, seed=8)
    decoder = nnx.DiffState(0, nnx.All(nnx.Param, nnx.PathContains("dec")))

    def norm(grads):
        return jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))

    @nnx.jit
    def step(model, optimizer, a, b):
        def perceptual(m, a):
            return jnp.mean(m.lp(m(a), b))

        def other(m, a):  # stands for a discriminator's term
            return -jnp.mean(m(a))

        g_lp, g_image = nnx.grad(perceptual, argnums=(decoder, 1))(model, a)
        g_other = nnx.grad(other, argnums=decoder)(model, a)
        weight = jax.lax.stop_gradient(norm(g_lp) / (norm(g_other) + 1e-4))
        g_whole = nnx.grad(perceptual)(model, a)
        grads = nnx.grad(lambda m: perceptual(m, a) + weight * other(m, a))(model)
        _optimizer_update(optimizer, model, grads)
        return g_lp, g_image, g_whole, weight

    before = nnx.to_pure_dict(nnx.state(ae, nnx.Param))
    g_lp, g_image, g_whole, weight = step(ae, opt, x, target)
    g_lp, g_whole = nnx.to_pure_dict(g_lp), nnx.to_pure_dict(g_whole)
    assert set(g_lp) == {"dec"} and set(g_lp["dec"]) == {"kernel", "bias"}
    assert set(g_whole) == {"enc", "dec"}  # nnx.Param only: no LPIPS weights
    # one program computing one gradient two ways (bitwise equal here): no float64 twin of
    # the autoencoder, so g_whole is taken as exact (the float32 rounding floor alone)
    assert_paths_agree(g_lp["dec"], g_whole["dec"], g_whole["dec"], what="decoder")
    assert float(jnp.abs(g_lp["dec"]["kernel"]).max()) > 0
    assert np.all(np.isfinite(g_image)) and float(jnp.abs(g_image).max()) > 0
    assert np.isfinite(float(weight)) and float(weight) > 0
    after = nnx.to_pure_dict(nnx.state(ae, nnx.Param))
    assert not np.array_equal(after["dec"]["kernel"], before["dec"]["kernel"])
    assert _same_tree(ae.lp.params, alex_params)


def test_module_errors(alex_params):
    with pytest.raises(TypeError, match=r"got params and net='vgg', path='x\.safetensors'"):
        lnnx.LPIPS("vgg", path="x.safetensors", params=alex_params)
    with pytest.raises(TypeError, match="got params and lpips=False"):
        lnnx.LPIPS(lpips=False, params=alex_params)
    with pytest.raises(TypeError, match="params has type str: expected LPIPSParams or DISTSParams"):
        lnnx.LPIPS(params="alex")
    with pytest.raises(ValueError, match="net='alexnet' is not known"):
        lnnx.LPIPS("alexnet")
    with pytest.raises(ValueError, match="x has shape"):
        nchw = np.zeros((1, 3, 32, 32), np.float32)
        lnnx.LPIPS(params=alex_params)(nchw, nchw)


# ---- the metric ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def batches():
    return [photo_pair(4, SIZE, seed=10 + i) for i in range(3)]


def _means(params, pairs) -> tuple[float, float]:
    """The mean distance over ``pairs``: of the float32 distances (the reference path), and
    in float64 (the truth). The metric's float32 running sum of n values rounds by at most
    n / 2 ulp of the total, within assert_paths_agree's floor for the n here (<= 12)."""
    d = [np.asarray(lpips_jax.distance(params, x, y), np.float64) for x, y in pairs]
    t = [float64_truth(lpips_jax.distance, params, x, y) for x, y in pairs]
    return float(np.concatenate(d).mean()), float(np.concatenate(t).mean())


def test_metric_mean_over_batches(alex_params, batches):
    metric = lnnx.MeanDistance("alex")
    assert isinstance(metric, nnx.Metric)
    for x, y in batches:
        metric.update(x=x, y=y)
    assert int(metric.count[...]) == 12
    assert_paths_agree(metric.compute(), *_means(alex_params, batches))
    metric.reset()
    assert int(metric.count[...]) == 0 and float(metric.total[...]) == 0
    assert np.isnan(float(metric.compute()))
    x, y = batches[0]
    metric.update(x=x[0], y=y[0])  # one unbatched pair counts 1
    assert int(metric.count[...]) == 1
    truth = float64_truth(lpips_jax.distance, alex_params, x, y)
    assert_paths_agree(metric.compute(), lpips_jax.distance(alex_params, x[0], y[0]), truth[0])


def test_metric_under_nnx_jit_with_distances_and_mask(alex_params, batches):
    """``update`` inside ``nnx.jit`` (the state carried out), ``distances=`` and a
    ``mask`` that leaves out padded pairs give the same mean as the images."""
    metric = lnnx.MeanDistance(alex_params)

    @nnx.jit
    def eval_step(m, x, y):
        m.update(x=x, y=y)

    for x, y in batches:
        eval_step(metric, x, y)
    means = _means(alex_params, batches)
    assert_paths_agree(metric.compute(), *means, what="under nnx.jit")

    by_value = lnnx.MeanDistance(alex_params)
    for x, y in batches:
        d = np.asarray(lpips_jax.distance(alex_params, x, y))
        padded = np.concatenate([d, np.full(3, 1e3, np.float32)])
        by_value.update(distances=padded, mask=np.arange(padded.size) < d.size)
    assert int(by_value.count[...]) == 12
    assert_paths_agree(by_value.compute(), *means, what="distances=")


def test_metric_in_multimetric(alex_params, batches):
    """In ``nnx.MultiMetric`` every metric gets all keywords: each takes its own."""
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), lpips=lnnx.MeanDistance(alex_params))
    x, y = batches[0]
    metrics.update(loss=jnp.asarray([1.0, 3.0]), x=x, y=y)
    with jax.numpy_dtype_promotion("standard"):  # flax's Average divides float32 by int32
        out = metrics.compute()
    assert float(out["loss"]) == 2.0
    assert_paths_agree(out["lpips"], *_means(alex_params, batches[:1]))


def test_metric_errors(alex_params, batches):
    metric = lnnx.MeanDistance(alex_params)
    x, y = batches[0]
    with pytest.raises(TypeError, match="x= and y= .* or distances=: got neither"):
        metric.update()
    with pytest.raises(TypeError, match="got only x"):
        metric.update(x=x)
    with pytest.raises(TypeError, match="got both"):
        metric.update(x=x, y=y, distances=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"distances has shape \(4, 1\): expected \(N,\) or \(\)"):
        metric.update(distances=np.zeros((4, 1), np.float32))
    with pytest.raises(ValueError, match=r"mask has shape \(3,\): expected \(4,\)"):
        metric.update(x=x, y=y, mask=np.ones(3, bool))
    with pytest.raises(TypeError, match=r"update got normalize: .*MeanDistance\(\.\.\., normalize=\.\.\.\)"):
        metric.update(x=x, y=y, normalize=True)
    with pytest.raises(TypeError, match="metric has type int: expected a net name"):
        lnnx.MeanDistance(3)
    with pytest.raises(ValueError, match="net='alexnet' is not known"):
        lnnx.MeanDistance("alexnet")
    with pytest.raises(TypeError, match="normalize='yes': expected True or False"):
        lnnx.MeanDistance(alex_params, normalize="yes")
    assert int(metric.count[...]) == 0  # no failed update counted


# ---- sharded ---------------------------------------------------------------------------


@pytest.mark.multidevice
def test_metric_sharded_over_eight_devices(alex_params, batches):
    """A batch of 8 pairs split over 8 simulated CPU devices (``NamedSharding``), under
    ``nnx.jit`` and eagerly: the metric's mean is the mean of the one-device distances
    (a subprocess: the device count is fixed when JAX starts)."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, str(SCRIPT), "10", "11"]  # the seeds of batches[0] and batches[1]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (r["devices"], r["input_shards"], r["count"]) == (8, 8, 8), r
    means = _means(alex_params, batches[:2])
    assert_paths_agree(r["mean_jit"], *means, what="jit")
    assert_paths_agree(r["mean_eager"], *means, what="eager")
