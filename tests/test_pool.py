"""The trunks' max-pool against PyTorch's ``max_pool2d``, in value and in gradient.

On the CPU, XLA expands JAX's own max-pool derivative (a select-and-scatter) into index
arithmetic and a scatter, so the pool has a custom JVP (``lpips_jax._nets._window_max``):
a chain of selects over the window's strided views (for windows that tile the input, the
same rule over a reshape of the windows). Its derivative must be PyTorch's,
including where a window holds equal values (PyTorch keeps the first maximum in row-major
order): the inputs below are rounded to integers so that ties are everywhere, and
constant and all-ReLU-zero inputs are among them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lpips_jax import _metric, _nets

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


@pytest.mark.parametrize("kind", ["random", "ties", "relu-zeros", "constant"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[0]}s{c[1]}{'ceil' if c[2] else ''}")
def test_max_pool_value_and_gradient_equal_torch(case, kind):
    kernel, stride, ceil, shape = case
    rng = np.random.default_rng(sum(shape) + kernel)
    x = _inputs(kind, shape, rng)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, kernel, stride, ceil_mode=ceil)
    g = rng.standard_normal(tuple(yt.shape))
    (yt * torch.tensor(g)).sum().backward()
    with jax.enable_x64():
        y, vjp = jax.vjp(lambda a: _nets.max_pool(a, kernel, stride, ceil), jnp.asarray(x))
        (gx,) = vjp(jnp.asarray(g.transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(gx), xt.grad.numpy().transpose(0, 2, 3, 1))


# (kernel, stride, ceil, the -inf padding of W that makes VALID windows give ceil mode):
# the strided-views tangent (3x3/2) and the tiled one (2x2/2, on 9 rows: the last unused).
@pytest.mark.parametrize("kernel, stride, ceil, pad_w", [(3, 2, True, 1), (2, 2, False, 0)])
def test_max_pool_forward_mode_and_second_order(kernel, stride, ceil, pad_w):
    """Without ties the pool's derivatives of every order equal JAX's own reduce-window's."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 8, 3))
    with jax.enable_x64():
        x = jnp.asarray(x)

        def ours(a):
            return jnp.sum(jnp.tanh(_nets.max_pool(a, kernel, stride, ceil)) ** 2)

        def theirs(a):
            a = jnp.pad(a, ((0, 0), (0, 0), (0, pad_w), (0, 0)), constant_values=-jnp.inf)
            window, step = (1, kernel, kernel, 1), (1, stride, stride, 1)
            y = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, window, step, "VALID")
            return jnp.sum(jnp.tanh(y) ** 2)

        assert ours(x) == theirs(x)
        t = jnp.asarray(rng.standard_normal(x.shape))
        np.testing.assert_allclose(jax.jvp(ours, (x,), (t,))[1], jax.jvp(theirs, (x,), (t,))[1])
        hv = jax.jvp(jax.grad(ours), (x,), (t,))[1]
        np.testing.assert_allclose(hv, jax.jvp(jax.grad(theirs), (x,), (t,))[1], rtol=1e-12)


def test_normalize_channels_batch_of_one_is_the_same_function():
    """normalize_channels drops a leading batch of 1 on the CPU (for XLA:CPU's
    reductions) and there takes a hand-written derivative (``_metric._normalize``): same
    value and same gradient as the same row inside a larger batch (JAX's own derivative of
    the expression). In float64 to 1e-13 of the gradient's largest element; in float32 to
    2 units in the last place of it (a different formula of the same map: where a gradient
    element nearly cancels, the two round differently; seen: 1 ulp of 76.8)."""
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
