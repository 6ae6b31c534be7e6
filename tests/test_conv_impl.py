"""The two convolution implementations of the trunks (XLA's conv and im2col + matmul)
against a direct float64 loop in NumPy, in value and in gradient, and the per-layer rule
that picks between them.

The trunk chooses per layer (``impl="auto"``, lpips_jax._nets._choose_impls); the parity
tests reach each implementation only at the sizes where the rule picks it, so both are
checked here on every kernel/stride/padding the three trunks use.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpips_jax import _nets


def _direct_conv(x, k, b, stride, pad):
    """torch.nn.Conv2d's definition, written out: NHWC x HWIO, zero padding, float64."""
    x = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    n, h, w, _ = x.shape
    kh, kw, _, co = k.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((n, oh, ow, co))
    for i in range(oh):
        for j in range(ow):
            win = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j, :] = np.einsum("nhwc,hwco->no", win, k.astype(np.float64))
    return out + b.astype(np.float64)


# (input N, H, W, C), kernel, stride, padding, Cout: the trunks' layer kinds at odd sizes.
CASES = [
    ((2, 23, 19, 3), 11, 4, 2, 8),  # alex conv1
    ((3, 7, 6, 5), 5, 1, 2, 4),  # alex conv2 on a small map
    ((2, 5, 5, 6), 3, 1, 1, 7),  # vgg / alex 3x3
    ((1, 9, 8, 3), 3, 2, 0, 4),  # squeeze conv1
    ((2, 4, 3, 6), 1, 1, 0, 5),  # squeeze 1x1
]


@pytest.mark.parametrize("impl", ["xla", "eigen", "im2col", "s2d", "auto"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[1]}x{c[1]}s{c[2]}p{c[3]}")
def test_conv_matches_direct_definition(case, impl):
    xs, kk, s, p, co = case
    if impl == "eigen" and s != 1:
        with pytest.raises(ValueError, match="stride-1 convs: got stride"):
            _nets.conv2d(jnp.zeros(xs), jnp.zeros((kk, kk, xs[-1], co)), jnp.zeros(co), s, p,
                         impl=impl)  # fmt: skip
        return
    rng = np.random.default_rng(sum(xs) + kk)
    x = rng.standard_normal(xs)
    k = rng.standard_normal((kk, kk, xs[-1], co))
    b = rng.standard_normal(co)
    want = _direct_conv(x, k, b, s, p)
    with jax.enable_x64():
        got = _nets.conv2d(jnp.asarray(x), jnp.asarray(k), jnp.asarray(b), s, p, impl=impl)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)

        # Gradient w.r.t. input and kernel of <conv(x, k), g>: the adjoints, by hand.
        g = rng.standard_normal(want.shape)

        def loss(x_, k_):
            return jnp.sum(_nets.conv2d(x_, k_, jnp.asarray(b), s, p, impl=impl) * g)

        gx, gk = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(k))
    # d/dk[a,b,c,o] = sum_{n,i,j} xpad[n, i*s+a, j*s+b, c] * g[n,i,j,o]; d/dx by scatter.
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    want_gk = np.zeros_like(k)
    want_gxp = np.zeros_like(xp)
    oh, ow = want.shape[1:3]
    for i in range(oh):
        for j in range(ow):
            win = xp[:, i * s : i * s + kk, j * s : j * s + kk, :]
            want_gk += np.einsum("nhwc,no->hwco", win, g[:, i, j, :])
            want_gxp[:, i * s : i * s + kk, j * s : j * s + kk, :] += np.einsum(
                "hwco,no->nhwc", k, g[:, i, j, :]
            )
    want_gx = want_gxp[:, p : p + xs[1], p : p + xs[2], :]
    np.testing.assert_allclose(np.asarray(gk), want_gk, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(np.asarray(gx), want_gx, rtol=1e-11, atol=1e-11)


def test_unknown_impl_is_refused():
    x = jnp.zeros((1, 4, 4, 3))
    k = jnp.zeros((3, 3, 3, 2))
    with pytest.raises(ValueError, match="impl='fft'.*'eigen'.*'s2d'"):
        _nets.conv2d(x, k, jnp.zeros(2), 1, 1, impl="fft")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rule is for XLA:CPU")
def test_rule_on_cpu():
    """The measured rule (lpips_jax/_nets.py, bench/bench_layers.py), as (forward,
    derivatives): im2col for 1x1 convs and small outputs; XLA forward and im2col backward
    for mid-size outputs and the first conv; the "eigen" forms on maps of 30x30 and more
    (and forward for alex's 5x5 conv on small maps); XLA's conv otherwise; for alex's
    11x11 stride-4 conv, XLA forward and the space-to-depth form for the derivatives."""
    choose = _nets._choose_impls
    both = ("im2col", "im2col")
    assert choose((1, 64, 64, 3), (1, 1, 3, 8), 1) == both
    assert choose((1, 68, 68, 3), (11, 11, 3, 64), 4) == ("xla", "s2d")
    assert choose((1, 10, 10, 512), (3, 3, 512, 512), 1) == both  # 8x8 output, 64 rows
    assert choose((32, 6, 6, 512), (3, 3, 512, 512), 1) == both  # 4x4 maps, 512 rows
    assert choose((32, 11, 11, 64), (5, 5, 64, 192), 1) == ("eigen", "im2col")  # alex 64 b32
    assert choose((1, 18, 18, 256), (3, 3, 256, 256), 1) == ("xla", "im2col")  # 16x16 b1
    assert choose((1, 66, 66, 3), (3, 3, 3, 64), 1) == ("xla", "im2col")  # vgg's first conv
    eigen = ("eigen", "eigen")  # maps of 30x30 and more
    assert choose((1, 1026, 1026, 3), (3, 3, 3, 64), 1) == eigen  # ... up to 16 MB
    assert choose((1, 35, 35, 64), (5, 5, 64, 192), 1) == eigen  # alex 256 b1
    assert choose((1, 34, 34, 512), (3, 3, 512, 512), 1) == eigen
    assert choose((32, 66, 66, 64), (3, 3, 64, 64), 1) == eigen
    assert choose((32, 10, 10, 512), (3, 3, 512, 512), 1) == ("xla", "xla")  # 2048 rows
    assert choose((128, 11, 11, 64), (5, 5, 64, 192), 1) == ("xla", "xla")  # 6272 rows
    assert choose((1, 65, 65, 3), (3, 3, 3, 64), 2) == ("xla", "xla")  # squeeze's first


# (impl, input shape, kernel, stride, padding, Cout, seed): the custom-JVP forms.
DERIVATIVE_CASES = [
    ("auto", (2, 19, 17, 3), 11, 4, 2, 4, 7),  # strided: space-to-depth derivatives
    ("s2d", (2, 19, 17, 3), 11, 4, 2, 4, 7),
    ("eigen", (2, 9, 7, 5), 3, 1, 1, 6, 3),  # its own input-gradient form
    ("eigen", (2, 9, 7, 5), 5, 1, 2, 6, 5),
]


def _random_conv(xs, kk, co, seed):
    """A generator, a standard-normal input of shape ``xs`` and a ``kk x kk`` kernel to ``co``."""
    rng = np.random.default_rng(seed)
    return rng, rng.standard_normal(xs), rng.standard_normal((kk, kk, xs[-1], co))


@pytest.mark.parametrize("case", DERIVATIVE_CASES, ids=lambda c: f"{c[0]}-{c[2]}x{c[2]}s{c[3]}")
def test_custom_jvp_conv_derivatives_of_every_order(case):
    """The convs with a custom JVP (on the CPU, a strided conv through its space-to-depth
    form; impl="eigen" through its own input-gradient form): forward mode, reverse mode and
    second order all equal XLA's own conv, in float64."""
    impl, xs, kk, s, p, co, seed = case
    rng, x, k = _random_conv(xs, kk, co, seed)
    b = np.zeros(co)
    with jax.enable_x64():
        x, k, b = jnp.asarray(x), jnp.asarray(k), jnp.asarray(b)

        def f(impl_):
            return lambda x_, k_: jnp.sum(jnp.tanh(_nets.conv2d(x_, k_, b, s, p, impl=impl_)))

        tx, tk = jnp.ones_like(x), jnp.full_like(k, 0.5)
        got = jax.jvp(f(impl), (x, k), (tx, tk))
        want = jax.jvp(f("xla"), (x, k), (tx, tk))
        np.testing.assert_allclose(got[1], want[1], rtol=1e-10)
        grads = jax.grad(f(impl), argnums=(0, 1))(x, k)
        grads_want = jax.grad(f("xla"), argnums=(0, 1))(x, k)
        for g, w in zip(grads, grads_want):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
        hv = jax.jvp(jax.grad(f(impl)), (x, k), (tx, tk))[1]
        hv_want = jax.jvp(jax.grad(f("xla")), (x, k), (tx, tk))[1]
        np.testing.assert_allclose(hv, hv_want, rtol=1e-9, atol=1e-12)


def _derivative(what, f):
    if what == "jvp":
        return lambda a, t: jax.jvp(f, (a,), (t,))
    if what == "grad":
        return lambda a, t: jax.grad(f)(a)
    return lambda a, t: jax.jvp(jax.grad(f), (a,), (t,))[1]


_SLOW = pytest.mark.slow  # ~10 s each: XLA:CPU compiles float64 convs slowly
ROWS_CASES = [("auto", c) for c in CASES] + [
    ("im2col", CASES[2]), ("s2d", CASES[0]),
    pytest.param("xla", CASES[2], marks=_SLOW), pytest.param("eigen", CASES[2], marks=_SLOW),
]  # fmt: skip


@pytest.mark.parametrize(
    ("impl", "case"), ROWS_CASES, ids=lambda c: c if isinstance(c, str) else f"{c[1]}x{c[1]}s{c[2]}"
)
def test_tangent_rows_derivatives_equal_full_batch(impl, case):
    """``tangent_rows=n`` (only the first n images carry a tangent w.r.t. x): with such a
    tangent, forward mode, the gradient w.r.t. those images and the second order equal the
    conv's own derivatives on the whole batch, in float64; the others' cotangent is zero
    by that promise."""
    xs, kk, s, p, co = case
    xs = (xs[0] + 2, *xs[1:])  # 2 more images than the differentiated ones
    n = xs[0] - 2
    rng, x, k = _random_conv(xs, kk, co, 11)
    b = rng.standard_normal(co)
    with jax.enable_x64():
        x, k, b = jnp.asarray(x), jnp.asarray(k), jnp.asarray(b)

        def f(rows):
            def loss(head):  # the first n images as the argument, the rest constant
                full = jnp.concatenate([head, x[n:]])
                out = _nets.conv2d(full, k, b, s, p, impl=impl, tangent_rows=rows)
                w = jnp.arange(out.size, dtype=out.dtype).reshape(out.shape) / out.size
                return jnp.sum(jnp.tanh(out) * w)

            return loss

        head = x[:n]
        t = jnp.asarray(rng.standard_normal(head.shape))
        for what in ("jvp", "grad", "jvp of grad"):
            got, want = (jax.jit(_derivative(what, f(rows)))(head, t) for rows in (n, None))
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13, err_msg=what)

        # The promise: the other images' cotangent is dropped, not computed.
        def total(rows):
            return lambda a: jnp.sum(_nets.conv2d(a, k, b, s, p, impl=impl, tangent_rows=rows))

        g, g_full = (jax.jit(jax.grad(total(rows)))(x) for rows in (n, None))
        np.testing.assert_allclose(g[:n], g_full[:n], rtol=1e-12)
        assert np.any(np.asarray(g_full[n:])) and not np.any(np.asarray(g[n:]))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="about XLA:CPU")
def test_eigen_form_keeps_convs_off_ynnpack():
    """What the "eigen" forms are for: XLA:CPU (jaxlib 0.10) runs a float32 conv through
    YNNPACK, which is 1.5-3x slower than its own Eigen conv on the trunks' large maps
    (bench/bench_layers.py); the forward pass and the input gradient of impl="eigen" stay
    on XLA's conv. Skipped where this XLA does not use YNNPACK at all."""
    x = jnp.ones((2, 20, 20, 32))
    k = jnp.ones((3, 3, 32, 32))

    def hlo(impl):
        def loss(x_):
            return jnp.sum(_nets.conv2d(x_, k, jnp.zeros(32), 1, 1, impl=impl) ** 2)

        return jax.jit(jax.value_and_grad(loss)).lower(x).compile().as_text()

    def convs(text):  # (convs in the entry computation, convs in all)
        return text[text.index("ENTRY") :].count(" convolution("), text.count(" convolution(")

    in_entry, total = convs(hlo("xla"))
    if in_entry == total:
        pytest.skip("this XLA:CPU runs no conv through YNNPACK")
    assert convs(hlo("eigen")) == (2, 2)  # forward and input gradient, unfused: XLA's own
