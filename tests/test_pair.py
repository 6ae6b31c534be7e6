"""The batch-1 pair pass (``_metric._pair_taps``): on the CPU, with a batch of 1, the value
runs one trunk pass over x and y stacked; up to a size per net (``_ONE_PASS_GRAD_AREA``) a
derivative w.r.t. one image (a loss's x, with y a constant) runs on that pass too, the
convs', ReLUs', pools' and normalisation's derivatives on the differentiated image's half
alone (``tangent_rows``); any other derivative runs the two trunks apart.

Reference: the two-pass path that every other batch size takes (``_pair_maps_with``). In
float64 every derivative must agree with it to rounding: w.r.t. x, y, both, the trunk's
params (all of them, or one layer's kernel alone, the others held fixed), forward mode,
and the JVP of the gradient. And the loss's gradient w.r.t. x against finite differences
(float64, ``check_grads``): a scaling of the one-pass ReLU tangent by 1.001 fails it.
"""

from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _loss_helpers import squeeze_params
from jax.test_util import check_grads

import lpips_jax
from lpips_jax import _metric

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the pair pass is taken on the CPU only"
)
TOL = 1e-12  # relative to the largest element, float64


def _paired(p, x, y, remat=False):
    return lpips_jax.distance(p, x, y, remat=remat).sum()


def _two_pass(p, x, y, remat=False):
    params, xb, yb, _ = _metric._prepare(p, x, y, False)
    trunk = _metric._trunk_fn(params, None, remat, None)
    maps = _metric._pair_maps_with(trunk, params, xb, yb, False)
    return _metric._total(_metric._layer_means(maps)).sum()


def _close(a, b, what):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        u, v = np.asarray(u), np.asarray(v)
        scale = np.abs(v).max()
        assert scale > 0, what
        np.testing.assert_allclose(u / scale, v / scale, rtol=0, atol=TOL, err_msg=what)


@pytest.fixture(
    scope="module", params=[("alex", 48), ("vgg", 32), ("squeeze", 32)], ids=["alex", "vgg", "squeeze"]
)
def case(request):
    net, size = request.param
    with jax.enable_x64():
        p = squeeze_params() if net == "squeeze" else lpips_jax.load(net)
        p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), p)
        rng = np.random.default_rng(5)
        x = jnp.asarray(rng.uniform(-1, 1, (1, size, size, 3)))
        y = jnp.asarray(np.clip(np.asarray(x) + rng.normal(0, 0.3, x.shape), -1, 1))
        return p, x, y


def _matmuls_by_batch(f, *args):
    """{leading dim of the first operand: count} of the convs and dot_generals that ``f``
    lowers to (trunk convs, im2col matmuls, the heads' dots, their derivatives)."""
    counts = collections.Counter()
    for line in jax.jit(f).lower(*args).as_text().splitlines():
        m = re.search(r"stablehlo\.(?:convolution|dot_general).*:\s*\(tensor<(\d+)x", line)
        if m:
            counts[int(m.group(1))] += 1
    return counts


def _convs(p):
    return sum(1 for path, _ in jax.tree_util.tree_leaves_with_path(p.trunk) if path[-1].key == "kernel")


def test_the_pair_pass_is_taken(case):
    """The value: one trunk pass over the pair (batch 2). A gradient w.r.t. one image: the
    same single pass forward, its derivative on the differentiated image alone (batch 1)
    -- the two-pass path's gradient less the two forward passes of x and y. W.r.t. both:
    the two passes apart, as on the two-pass path; so with remat."""
    p, x, y = case
    convs = _convs(p)
    with jax.enable_x64():
        assert _matmuls_by_batch(_paired, p, x, y)[2] == convs
        for argnums in (1, 2):
            paired = _matmuls_by_batch(jax.grad(_paired, argnums), p, x, y)
            two = _matmuls_by_batch(jax.grad(_two_pass, argnums), p, x, y)
            assert two[2] == 0, argnums
            assert paired[2] == convs and paired[1] == two[1] - 2 * convs, argnums
        remat = _matmuls_by_batch(jax.grad(lambda a: _paired(p, a, y, True)), x)
        assert remat == _matmuls_by_batch(jax.grad(lambda a: _two_pass(p, a, y, True)), x)
        both = (jax.grad(_paired, (1, 2)), jax.grad(_two_pass, (1, 2)))
        assert _matmuls_by_batch(both[0], p, x, y) == _matmuls_by_batch(both[1], p, x, y)


@pytest.mark.parametrize("net", ["squeeze", "alex"])
def test_one_pass_derivative_stops_above_its_area(net):
    """Above the largest area where it measured faster (squeeze 128x128, alex and vgg
    256x256), a gradient w.r.t. x runs the two passes apart; the value keeps the one pass."""
    side = {"squeeze": 128, "alex": 256}[net]
    p = squeeze_params() if net == "squeeze" else lpips_jax.load(net)
    for size, one_pass in ((side, True), (side + 8, False)):
        x = jnp.zeros((1, size, size, 3), jnp.float32)
        paired = _matmuls_by_batch(jax.grad(_paired, 1), p, x, x)
        two = _matmuls_by_batch(jax.grad(_two_pass, 1), p, x, x)
        assert (paired[2] == _convs(p)) == one_pass and (paired == two) != one_pass, size
        assert _matmuls_by_batch(_paired, p, x, x)[2] == _convs(p)


@pytest.mark.slow  # ~50 s: float64 gradients op by op
@pytest.mark.parametrize("remat", [False, True])
def test_value_and_derivatives_equal_two_passes(case, remat):
    p, x, y = case
    if remat and p.net != "alex":
        pytest.skip("with remat every derivative runs the two passes (checked above): one net")
    with jax.enable_x64():
        for argnums in (1, 2, (1, 2)):
            a = jax.value_and_grad(_paired, argnums)(p, x, y, remat)
            b = jax.value_and_grad(_two_pass, argnums)(p, x, y, remat)
            _close(a, b, f"value_and_grad {argnums}")
        _close(
            jax.grad(_paired)(p, x, y, remat).trunk,
            jax.grad(_two_pass)(p, x, y, remat).trunk,
            "grad w.r.t. the trunk",
        )
        t = jnp.asarray(np.random.default_rng(6).normal(size=x.shape))
        _close(
            jax.jvp(lambda a, b: _paired(p, a, b, remat), (x, y), (t, -t)),
            jax.jvp(lambda a, b: _two_pass(p, a, b, remat), (x, y), (t, -t)),
            "jvp",
        )
        _close(
            jax.jvp(jax.grad(lambda a: _paired(p, a, y, remat)), (x,), (t,)),
            jax.jvp(jax.grad(lambda a: _two_pass(p, a, y, remat)), (x,), (t,)),
            "jvp of grad",
        )


@pytest.mark.slow  # ~50 s: float64 gradients through the trunk, twice
def test_one_trunk_leaf_differentiated(case):
    """Only one kernel of the trunk is an argument (the rest are constants): symbolic zero
    tangents for the others."""
    p, x, y = case
    if p.net != "alex":
        pytest.skip("a trunk leaf differentiated runs the two passes, for every net: one net")
    name = sorted(p.trunk)[1]

    def with_kernel(f):
        def g(k, x):
            trunk = dict(p.trunk)
            trunk[name] = {**trunk[name], "kernel": k}
            return f(p.replace(trunk=trunk), x, y)

        return g

    k = p.trunk[name]["kernel"]
    with jax.enable_x64():
        for argnums in (0, (0, 1)):
            _close(
                jax.grad(with_kernel(_paired), argnums)(k, x),
                jax.grad(with_kernel(_two_pass), argnums)(k, x),
                f"grad {argnums}",
            )


@pytest.mark.slow  # ~30 s: float64, finite differences in a few directions
def test_loss_gradient_matches_finite_differences(case):
    """The loss's derivative w.r.t. x alone (y and params constant: the case the one-pass
    derivative serves) against central finite differences, forward and reverse
    mode (``jax.test_util.check_grads``), in float64 with the real trunk. An independent
    check of the one-pass derivative, beside its equality with the two-pass path above.
    Step 1e-7, as in test_grad.py: the trunk is piecewise linear, and larger steps can
    cross a ReLU/max-pool kink."""
    p, x, y = case
    with jax.enable_x64():
        check_grads(jax.jit(lambda x: _paired(p, x, y)), (x,), order=1, modes=("fwd", "rev"), eps=1e-7)


def test_float32_value_equals_two_passes():
    p = lpips_jax.load("vgg")
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.uniform(-1, 1, (1, 64, 64, 3)), jnp.float32)
    y = jnp.asarray(rng.uniform(-1, 1, (1, 64, 64, 3)), jnp.float32)
    a = jax.jit(_paired)(p, x, y)
    b = jax.jit(_two_pass)(p, x, y)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
