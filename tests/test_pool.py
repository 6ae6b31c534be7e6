"""The trunks' max-pool against PyTorch's ``max_pool2d``, in value and in gradient, floor
and ceil mode: the plain one (``lax.reduce_window`` with JAX's own derivative) and the
XLA:CPU fast path (a maximum of views, differentiated by selects); and the fixed 3x3
filters of DISTS and ST-LPIPS against their definition.

Where a window holds equal maxima (rounded inputs, constant images, ReLU zeros) the plain
gradient has no machine-independent answer: PyTorch keeps the first maximum, XLA's
select-and-scatter whichever its reduction order meets, and in a trunk which of two
mathematically equal values is larger depends on the conv kernels' last bit. There the
tests check what is defined: the value, and a valid gradient (each window's cotangent
goes, whole, to maxima of that window). The fast path keeps the first maximum by
construction, so on exact inputs it equals PyTorch's gradient even with ties.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lpips_jax import _metric, _ops

# (kernel, stride, ceil_mode, NHWC shape): vgg's 2x2/2, alex's 3x3/2, squeeze's ceil mode,
# ST-LPIPS's stride-1 pools.
CASES = [
    (2, 1, False, (1, 7, 6, 2)),
    (3, 1, False, (2, 9, 8, 3)),
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


@pytest.mark.parametrize("path", ["plain", "cpu-fast"])
@pytest.mark.parametrize("kind", ["random", "ties", "relu-zeros", "constant"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[0]}s{c[1]}{'ceil' if c[2] else ''}")
def test_max_pool_value_and_gradient(case, kind, path):
    """Value equal to torch's; gradient equal to torch's without ties, and a valid one
    with ties: per window, the cotangent lands on that window's maxima and sums to it.
    The CPU fast path (where JAX runs on the CPU) equals torch's gradient with ties too."""
    if path == "cpu-fast" and jax.default_backend() != "cpu":
        pytest.skip("the fast path is lowered for the CPU only")
    if path == "cpu-fast" and kind == "random":
        pytest.skip("the tied inputs check the same equality, on harder windows")
    kernel, stride, ceil, shape = case
    rng = np.random.default_rng(sum(shape) + kernel)
    x = _inputs(kind, shape, rng)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, kernel, stride, ceil_mode=ceil)
    g = rng.standard_normal(tuple(yt.shape)).transpose(0, 2, 3, 1)
    (yt * torch.tensor(g.transpose(0, 3, 1, 2))).sum().backward()
    with jax.enable_x64(), _ops.fast_paths(["pool"] if path == "cpu-fast" else []):
        y, vjp = jax.vjp(lambda a: _ops.max_pool(a, kernel, stride, ceil), jnp.asarray(x))
        (gx,) = vjp(jnp.asarray(g))
    y, gx = np.asarray(y), np.asarray(gx)
    np.testing.assert_array_equal(y, yt.detach().numpy().transpose(0, 2, 3, 1))
    if kind == "random" or path == "cpu-fast":
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


def _filter3_definition(x, taps, stride, pad, mode):
    """The padded map filtered by ``taps (x) taps`` per channel, window by window (float64)."""
    x = np.pad(x, ((0, 0), pad, pad, (0, 0)), mode=mode)
    k = np.outer(taps, taps)
    oh, ow = (x.shape[1] - 3) // stride + 1, (x.shape[2] - 3) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = np.einsum(
                "nhwc,hw->nc", x[:, i * stride : i * stride + 3, j * stride : j * stride + 3], k
            )
    return out


@pytest.mark.parametrize(("op", "mode", "pad"), [("blur", "reflect", 2), ("l2", "constant", 1)])
@pytest.mark.parametrize("size", [(2, 2), (5, 4), (8, 7)])
def test_fixed_filters_match_their_definition(op, mode, pad, size):
    """ST-LPIPS's blur pool (binomial 3x3, reflection padding 2, stride 2) and DISTS' L2
    pooling (Hanning 3x3 of x^2, zero padding 1, stride 2) against the padded-then-filtered
    definition, in float64: values, and the gradient as the adjoint of the linear map
    (built column by column from the definition), at even, odd and tiny sizes."""
    rng = np.random.default_rng(size[0] * 31 + size[1])
    x = rng.standard_normal((2, *size, 2))
    taps = (0.25, 0.5, 0.25)
    if op == "blur":
        want = _filter3_definition(x, taps, 2, (pad, pad), mode)
        f = lambda a: _ops.blur_pool(a, pad)  # noqa: E731
    else:
        want = np.sqrt(_filter3_definition(x * x, taps, 2, (pad, pad), mode) + 1e-12)
        f = _ops.l2_pool
    g = rng.standard_normal(want.shape)
    with jax.enable_x64():
        got, vjp = jax.vjp(f, jnp.asarray(x))
        (gx,) = vjp(jnp.asarray(g))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-13, atol=1e-13)
    # the filter F as a matrix: column k is F of the k-th unit input (all in one batch)
    unit = np.eye(x.size).reshape(x.size * x.shape[0], *x.shape[1:])
    matrix = _filter3_definition(unit, taps, 2, (pad, pad), mode).reshape(x.size, -1).T
    if op == "blur":
        want_gx = (matrix.T @ g.ravel()).reshape(x.shape)
    else:  # d sqrt(F(x^2) + eps) = F(2 x dx) / (2 sqrt(F(x^2) + eps))
        want_gx = (matrix.T @ (g / (2 * want)).ravel()).reshape(x.shape) * 2 * x
    np.testing.assert_allclose(np.asarray(gx), want_gx, rtol=1e-12, atol=1e-12)
