"""The XLA:CPU fast paths (``lpips_jax._cpu``) against the plain path: each conv form
against a direct float64 loop in NumPy (value and adjoints), the split forms' derivatives
of every order against XLA's conv, the per-layer rule, and the whole distance and its
gradient with and without the fast paths, in float64.

The parity tests reach each form only at the sizes where the rule picks it, so every form
is checked here on every kernel/stride/padding the three trunks use.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpips_jax import _cpu, _ops
from lpips_jax._cpu import _conv


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
    ((2, 17, 14, 3), 11, 1, 2, 6),  # ST-LPIPS alex conv1
    ((3, 7, 6, 5), 5, 1, 2, 4),  # alex conv2 on a small map
    ((2, 5, 5, 6), 3, 1, 1, 7),  # vgg / alex 3x3
    ((1, 9, 8, 3), 3, 2, 0, 4),  # squeeze conv1
    ((2, 4, 3, 6), 1, 1, 0, 5),  # squeeze 1x1
]


def _fast_conv(x, k, b, s, p, impl):
    """One form, or ``"auto"``: the CPU rule over all forms (``_cpu.conv2d``)."""
    if impl == "auto":
        return _cpu.conv2d(x, k, s, p, None, _cpu.CONV_PATHS) + b
    return _conv.conv(x, k, s, p, impl, None) + b


@pytest.mark.parametrize("impl", ["xla", "eigen", "im2col", "s2d", "rows", "auto"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[1]}x{c[1]}s{c[2]}p{c[3]}")
def test_conv_matches_direct_definition(case, impl):
    xs, kk, s, p, co = case
    if impl in ("eigen", "rows") and s != 1:
        with pytest.raises(ValueError, match="stride-1 convs: got stride"):
            _fast_conv(jnp.zeros(xs), jnp.zeros((kk, kk, xs[-1], co)), jnp.zeros(co), s, p, impl)
        return
    rng = np.random.default_rng(sum(xs) + kk)
    x = rng.standard_normal(xs)
    k = rng.standard_normal((kk, kk, xs[-1], co))
    b = rng.standard_normal(co)
    want = _direct_conv(x, k, b, s, p)
    with jax.enable_x64():
        got = _fast_conv(jnp.asarray(x), jnp.asarray(k), jnp.asarray(b), s, p, impl)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)

        # Gradient w.r.t. input and kernel of <conv(x, k), g>: the adjoints, by hand.
        g = rng.standard_normal(want.shape)

        def loss(x_, k_):
            return jnp.sum(_fast_conv(x_, k_, jnp.asarray(b), s, p, impl) * g)

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


def test_unknown_form_is_refused():
    x = jnp.zeros((1, 4, 4, 3))
    k = jnp.zeros((3, 3, 3, 2))
    with pytest.raises(ValueError, match="form 'fft'.*'eigen'.*'s2d'"):
        _conv.conv(x, k, 1, 1, "fft", None)
    with pytest.raises(ValueError, match="unknown CPU fast paths \\['fft'\\]"):
        with _ops.fast_paths(["im2col", "fft"]):
            pass


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rule is for XLA:CPU")
def test_rule_on_cpu():
    """The measured rule (lpips_jax/_cpu, bench/bench_layers.py), as (forward,
    derivatives): im2col for 1x1 convs and small outputs; XLA forward and im2col backward
    for mid-size outputs and the first conv; the "eigen" forms on maps of 30x30 and more,
    and of 8x8 and more past the split's rows (forward only for alex's 5x5 conv on small
    maps); XLA's conv otherwise; for alex's 11x11 stride-4 conv, XLA forward and the
    space-to-depth form for the derivatives; for ST-LPIPS's stride-1 one, XLA forward and
    the W-patches form ("rows")."""
    choose = lambda x, k, s: _cpu.choose(x, k, s, jnp.float32, _cpu.CONV_PATHS)  # noqa: E731
    both = ("im2col", "im2col")
    assert choose((1, 64, 64, 3), (1, 1, 3, 8), 1) == both
    assert choose((1, 68, 68, 3), (11, 11, 3, 64), 4) == ("xla", "s2d")
    assert choose((32, 68, 68, 3), (11, 11, 3, 64), 1) == ("xla", "rows")
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
    assert choose((32, 10, 10, 512), (3, 3, 512, 512), 1) == eigen  # 8x8 maps, 2048 rows
    assert choose((32, 19, 19, 256), (3, 3, 256, 256), 1) == eigen  # ST-LPIPS vgg 64 b32
    assert choose((32, 9, 9, 512), (3, 3, 512, 512), 1) == ("xla", "xla")  # 7x7 maps
    assert choose((128, 11, 11, 64), (5, 5, 64, 192), 1) == ("xla", "xla")  # 6272 rows
    assert choose((1, 65, 65, 3), (3, 3, 3, 64), 2) == ("xla", "xla")  # squeeze's first


def test_rule_without_some_forms():
    """A disabled form falls back to XLA's conv; without "split", the forward form serves
    the derivatives too; half precision never takes the Eigen forms."""
    f32 = jnp.float32
    assert _cpu.choose((1, 66, 66, 3), (3, 3, 3, 64), 1, f32, frozenset({"im2col"})) == ("xla", "xla")
    assert _cpu.choose((1, 68, 68, 3), (11, 11, 3, 64), 4, f32, frozenset({"split"})) == ("xla", "xla")
    k5 = ((32, 11, 11, 64), (5, 5, 64, 192), 1)
    assert _cpu.choose(*k5, f32, frozenset({"eigen", "im2col"})) == ("eigen", "eigen")
    assert _cpu.choose(*k5, jnp.bfloat16, _cpu.CONV_PATHS) == ("xla", "im2col")


# (forward form, derivative form, input shape, kernel, stride, padding, Cout, seed)
DERIVATIVE_CASES = [
    ("xla", "s2d", (2, 19, 17, 3), 11, 4, 2, 4, 7),  # alex's first conv
    ("xla", "rows", (2, 15, 13, 3), 11, 1, 2, 4, 9),  # ST-LPIPS alex's first conv
    ("eigen", "eigen", (2, 9, 7, 5), 3, 1, 1, 6, 3),  # its own input-gradient form
    ("eigen", "im2col", (2, 9, 7, 5), 5, 1, 2, 6, 5),
    ("xla", "im2col", (2, 9, 7, 5), 3, 1, 1, 6, 5),
]


@pytest.mark.parametrize("case", DERIVATIVE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}x{c[3]}s{c[4]}")
def test_split_conv_derivatives_of_every_order(case):
    """The convs whose derivatives take another form (a custom JVP): forward mode, reverse
    mode and second order all equal XLA's own conv, in float64."""
    fwd, jvp, xs, kk, s, p, co, seed = case
    rng = np.random.default_rng(seed)
    x, k = rng.standard_normal(xs), rng.standard_normal((kk, kk, xs[-1], co))
    with jax.enable_x64():
        x, k = jnp.asarray(x), jnp.asarray(k)
        split = lambda x_, k_: jnp.sum(jnp.tanh(_conv.split_conv(x_, k_, s, p, fwd, jvp, None)))  # noqa: E731
        plain = lambda x_, k_: jnp.sum(jnp.tanh(_conv.conv(x_, k_, s, p, "xla", None)))  # noqa: E731
        tx, tk = jnp.ones_like(x), jnp.full_like(k, 0.5)
        np.testing.assert_allclose(jax.jvp(split, (x, k), (tx, tk))[1], jax.jvp(plain, (x, k), (tx, tk))[1],
                                   rtol=1e-10)  # fmt: skip
        for g, w in zip(jax.grad(split, (0, 1))(x, k), jax.grad(plain, (0, 1))(x, k)):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
        hv = jax.jvp(jax.grad(split), (x, k), (tx, tk))[1]
        np.testing.assert_allclose(hv, jax.jvp(jax.grad(plain), (x, k), (tx, tk))[1], rtol=1e-9, atol=1e-12)


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
            return jnp.sum(_conv.split_conv(x_, k, 1, 1, impl, impl, None) ** 2)

        return jax.jit(jax.value_and_grad(loss)).lower(x).compile().as_text()

    def convs(text):  # (convs in the entry computation, convs in all)
        return text[text.index("ENTRY") :].count(" convolution("), text.count(" convolution(")

    in_entry, total = convs(hlo("xla"))
    if in_entry == total:
        pytest.skip("this XLA:CPU runs no conv through YNNPACK")
    assert convs(hlo("eigen")) == (2, 2)  # forward and input gradient, unfused: XLA's own


# (net, batch, size): each takes a mix of the forms (im2col, split, eigen for the 30x30+
# maps of vgg at 64; alex's s2d first conv; ST-LPIPS alex's rows first conv), and the pool.
WHOLE = [
    ("alex", 2, 64),
    ("vgg", 1, 64),
    ("alex_st", 1, 40),
    pytest.param("squeeze", 1, 40, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("net", "n", "size"), WHOLE)
def test_distance_and_gradient_equal_plain_path(net, n, size):
    """The whole distance and its gradient w.r.t. x and y with every CPU fast path equal
    the plain path (``fast_paths(False)``), in float64 on random images (no ties)."""
    from _loss_helpers import params_for, to_f64

    import lpips_jax

    rng = np.random.default_rng(3)
    x, y = (rng.uniform(-1, 1, (n, size, size, 3)) for _ in range(2))
    with jax.enable_x64():
        p = to_f64(lpips_jax.load("alex", variant="shift_tolerant") if net == "alex_st" else params_for(net))
        x, y = jnp.asarray(x), jnp.asarray(y)
        f = lambda p, x, y: jax.value_and_grad(lambda a, b: lpips_jax.distance(p, a, b).sum(), (0, 1))(x, y)  # noqa: E731
        fast = jax.jit(f)(p, x, y)
        with _ops.fast_paths(False):
            plain = jax.jit(lambda *a: f(*a))(p, x, y)
    for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * float(np.abs(b).max()))
