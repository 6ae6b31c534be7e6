"""The trunks' max-pool (``lax.reduce_window`` with JAX's own derivative) against
PyTorch's ``max_pool2d``, in value and in gradient, floor and ceil mode.

Where a window holds equal maxima (rounded inputs, constant images, ReLU zeros) the
gradient has no machine-independent answer: PyTorch keeps the first maximum, XLA's
select-and-scatter whichever its reduction order meets, and in a trunk which of two
mathematically equal values is larger depends on the conv kernels' last bit. There the
tests check what is defined: the value, and a valid gradient (each window's cotangent
goes, whole, to maxima of that window).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lpips_jax import _metric, _ops

# (kernel, stride, ceil_mode, NHWC shape): vgg's 2x2/2, alex's 3x3/2, squeeze's ceil mode.
CASES = [
    (2, 2, False, (2, 8, 6, 3)),
    (2, 2, False, (1, 7, 9, 2)),
    (3, 2, False, (2, 9, 11, 2)),
    (3, 2, True, (1, 10, 8, 2)),
    (3, 2, True, (2, 7, 7, 3)),
]


def _inputs(kind, shape, rng):
    if kind == "random":
        return rng.standard_normal(shape)
    if kind == "ties":
        return np.round(rng.standard_normal(shape))
    if kind == "relu-zeros":
        return np.maximum(np.round(rng.standard_normal(shape)), 0)
    return np.full(shape, 0.5)  # constant


def _windows(shape, kernel, stride, ceil):
    """Per output position (n, i, j, c), the input rows and columns of its window."""
    h, w = shape[1:3]
    oh, ow = (_ops.pool_output_size(s, kernel, stride, ceil) for s in (h, w))
    for i in range(oh):
        for j in range(ow):
            yield (
                i,
                j,
                slice(i * stride, min(i * stride + kernel, h)),
                slice(j * stride, min(j * stride + kernel, w)),
            )


@pytest.mark.parametrize("kind", ["random", "ties", "relu-zeros", "constant"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[0]}s{c[1]}{'ceil' if c[2] else ''}")
def test_max_pool_value_and_gradient(case, kind):
    """Value equal to torch's; gradient equal to torch's without ties, and a valid one
    with ties: per window, the cotangent lands on that window's maxima and sums to it."""
    kernel, stride, ceil, shape = case
    rng = np.random.default_rng(sum(shape) + kernel)
    x = _inputs(kind, shape, rng)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, kernel, stride, ceil_mode=ceil)
    g = rng.standard_normal(tuple(yt.shape)).transpose(0, 2, 3, 1)
    (yt * torch.tensor(g.transpose(0, 3, 1, 2))).sum().backward()
    with jax.enable_x64():
        y, vjp = jax.vjp(lambda a: _ops.max_pool(a, kernel, stride, ceil), jnp.asarray(x))
        (gx,) = vjp(jnp.asarray(g))
    y, gx = np.asarray(y), np.asarray(gx)
    np.testing.assert_array_equal(y, yt.detach().numpy().transpose(0, 2, 3, 1))
    if kind == "random":
        np.testing.assert_array_equal(gx, xt.grad.numpy().transpose(0, 2, 3, 1))
        return
    # Split gx into its windows' shares: with ties, a window's share lies on its maxima.
    # Each input element's gradient is the sum of the shares of the windows that chose it,
    # so check the totals: all of it lies on elements that are a maximum of some window
    # holding them, and it adds up to the cotangent's total.
    is_max = np.zeros(x.shape, bool)
    for i, j, rs, cs in _windows(shape, kernel, stride, ceil):
        is_max[:, rs, cs] |= x[:, rs, cs] == y[:, i : i + 1, j : j + 1]
    assert np.all(np.isfinite(gx))
    assert not np.any(gx[~is_max]), "gradient on an element that is no window's maximum"
    np.testing.assert_allclose(gx.sum(axis=(1, 2)), g.sum(axis=(1, 2)), rtol=1e-12, atol=1e-12)


def test_normalize_channels_batch_of_one_is_the_same_function():
    """normalize_channels of a batch of 1 (whose channel sums drop the leading 1 on the
    CPU, for XLA:CPU's reductions) gives the same value and gradient as the same row
    inside a larger batch: in float64 to 1e-13 of the gradient's largest element; in
    float32 to 2 units in the last place of it (where a gradient element nearly cancels,
    two reduction shapes may round differently)."""
    rng = np.random.default_rng(5)
    f64 = np.maximum(rng.standard_normal((3, 5, 4, 6)), 0)
    g64 = rng.standard_normal(f64.shape)

    def vg(a, b):
        return jax.value_and_grad(lambda a_: jnp.sum(_metric.normalize_channels(a_) * b))(a)

    for dtype, ulps in ((np.float64, None), (np.float32, 2)):
        with jax.enable_x64(dtype == np.float64):
            f, g = jnp.asarray(f64.astype(dtype)), jnp.asarray(g64.astype(dtype))
            whole = vg(f, g)
            scale = float(jnp.abs(whole[1]).max())
            atol = 1e-13 * scale if ulps is None else ulps * np.finfo(dtype).eps * scale
            for i in range(3):
                one = vg(f[i : i + 1], g[i : i + 1])
                np.testing.assert_allclose(one[1], whole[1][i : i + 1], rtol=0, atol=atol)
    f, g = jnp.asarray(f64.astype(np.float32)), jnp.asarray(g64.astype(np.float32))
    whole = vg(f, g)
    np.testing.assert_allclose(sum(vg(f[i : i + 1], g[i : i + 1])[0] for i in range(3)), whole[0], rtol=1e-5)
