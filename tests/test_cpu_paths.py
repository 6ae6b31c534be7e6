"""The XLA:CPU fast paths (``lpips_jax._cpu``) against the plain path: each conv form
against a direct float64 loop in NumPy (value and adjoints), the split forms' derivatives
of every order against XLA's conv, the per-layer rule by what it does (for every conv of
every trunk at the benchmark sizes it picks forms defined for that conv, and each pair it
may pick equals XLA's conv there, value and gradients), and the whole distance and its
gradient with and without the fast paths, in float64.

The parity tests reach each form only at the sizes where the rule picks it, so every form
is checked here on every kernel/stride/padding the trunks use.
"""

from __future__ import annotations

import functools
import itertools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lpips_jax import _cpu, _nets, _ops
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


# The benchmark configurations of bench/bench_speed.py, (size, batch), and every trunk of
# _nets.LAYERS: LPIPS' alex, vgg and squeeze, DISTS' VGG16 (its L2 pools change the map
# sizes), the shift-tolerant alex_st and vgg_st, and any other the table holds.
BENCH_CONFIGS = ((64, 1), (64, 32), (256, 1), (256, 8))
TRUNKS = tuple(_nets.LAYERS)
DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64)
# Every subset of the conv forms a user can enable (LPIPS_JAX_CPU_FAST_PATHS).
_FORMS = sorted(_cpu.CONV_PATHS)
FORM_SETS = [frozenset(c) for r in range(len(_FORMS) + 1) for c in itertools.combinations(_FORMS, r)]


@functools.cache
def _trunk_convs(net, size, batch):
    """``(input shape, kernel shape, stride, padding)`` of each conv the trunk runs on
    ``(batch, size, size, 3)`` images, as it calls ``_ops.conv2d``: recorded under
    ``jax.eval_shape`` (shapes only, nothing computed)."""
    seen, conv2d = [], _ops.conv2d

    def record(x, kernel, bias, stride, padding, precision=None):
        seen.append((x.shape, kernel.shape, stride, padding))
        return conv2d(x, kernel, bias, stride, padding, precision)

    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    with mock.patch.object(_ops, "conv2d", record):
        jax.eval_shape(lambda x: _nets.Trunk(net=net).init(jax.random.PRNGKey(0), x), x)
    return tuple(seen)


def _padded(x_shape, padding):
    n, h, w, c = x_shape
    return (n, h + 2 * padding, w + 2 * padding, c)


@pytest.mark.parametrize("net", TRUNKS)
def test_rule_picks_valid_forms_for_every_layer(net):
    """For every conv of the trunk at the benchmark sizes, with any subset of the forms
    enabled and in any dtype, the rule picks (forward, derivative) forms that exist for
    that conv: enabled ones or XLA's; "eigen" and "rows" only at stride 1 and "s2d" only
    at stride > 1 (they are defined there); one form both ways without "split"; never
    "eigen" outside float32 (half-precision convs don't go to YNNPACK, float64 must)."""
    layers = _nets.LAYERS[net]
    n_convs = sum(isinstance(ly, _nets.Conv) + 3 * isinstance(ly, _nets.Fire) for ly in layers)
    for size, batch in BENCH_CONFIGS:
        convs = _trunk_convs(net, size, batch)
        assert len(convs) == n_convs, (net, size, batch)
        for x_shape, k_shape, stride, padding in convs:
            for forms, dtype in itertools.product(FORM_SETS, DTYPES):
                pair = _cpu.choose(_padded(x_shape, padding), k_shape, stride, dtype, forms)
                where = f"{net} {size}x{size} b{batch}: x {x_shape}, kernel {k_shape}, stride {stride}"
                where += f", forms {sorted(forms)}, {jnp.dtype(dtype).name}: {pair}"
                assert len(pair) == 2 and set(pair) <= forms | {"xla"}, where
                assert stride == 1 or not {"eigen", "rows"} & set(pair), where
                assert stride > 1 or "s2d" not in pair, where
                assert "split" in forms or pair[0] == pair[1], where
                assert dtype == jnp.float32 or "eigen" not in pair, where


@functools.cache
def _form_cases():
    """``{size: {geometry: pairs}}``: the distinct conv geometries of the trunks at the
    benchmark sizes, each with every (forward, derivative) pair the rule picks for it in
    float32 with any subset of the forms (XLA's both ways, the plain conv itself, left
    out); under 256 only those that the 64x64 configurations lack. A geometry keeps the
    map size, kernel, stride and padding, and reduces the batch to 2 and the channels to
    at most 4 in and 5 out: the forms' index arithmetic depends on the former; the latter
    make a float64 case cost milliseconds to seconds instead of minutes."""
    cases = {size: {} for size, _ in BENCH_CONFIGS}
    for net, (size, batch) in itertools.product(TRUNKS, BENCH_CONFIGS):
        for x_shape, k_shape, stride, padding in _trunk_convs(net, size, batch):
            padded = _padded(x_shape, padding)
            pairs = {_cpu.choose(padded, k_shape, stride, jnp.float32, forms) for forms in FORM_SETS}
            (_, h, w, ci), (kh, kw, _, co) = x_shape, k_shape
            key = ((2, h, w, min(ci, 4)), (kh, kw, min(ci, 4), min(co, 5)), stride, padding)
            cases[size].setdefault(key, set()).update(pairs - {("xla", "xla")})
    for key, pairs in cases[64].items():
        cases[256].get(key, set()).difference_update(pairs)
    return cases


@pytest.mark.parametrize("size", [64, pytest.param(256, marks=pytest.mark.slow)])
def test_every_picked_form_equals_the_plain_conv(size):
    """Each pair of forms the rule may pick, run through ``_cpu.conv2d`` (its dispatch to
    one form or to the split conv) on each distinct layer geometry, equals
    ``lax.conv_general_dilated`` in float64: the value and the gradients w.r.t. the input
    and the kernel. (256: the 256x256 configurations' geometries, the 11x11 convs on the
    full image among them: about 25 s on 2 cores.)"""
    picked = [pair for cases in _form_cases().values() for pairs in cases.values() for pair in pairs]
    assert set(itertools.chain(*picked)) == _cpu.CONV_PATHS - {"split"} | {"xla"}  # every form, somewhere
    rng = np.random.default_rng(size)
    for (x_shape, k_shape, stride, padding), pairs in sorted(_form_cases()[size].items(), key=str):
        if not pairs:  # XLA's conv both ways: the plain conv itself
            continue
        pairs = sorted(pairs)

        def conv_and_vjps(x, k, g, s=stride, p=padding, pairs=pairs):
            # (value, d/dx, d/dkernel) of the plain conv, then of each pair's
            y, vjp = jax.vjp(lambda x_, k_: _conv.conv(x_, k_, s, p, "xla", None), x, k)
            out = [(y, *vjp(g))]
            for pair in pairs:
                with mock.patch.object(_cpu, "choose", lambda *_, pair=pair: pair):
                    y, vjp = jax.vjp(lambda x_, k_: _cpu.conv2d(x_, k_, s, p, None, _cpu.CONV_PATHS), x, k)
                out.append((y, *vjp(g)))
            return out

        (n, h, w, _), (kh, kw, _, co) = x_shape, k_shape
        y_shape = (n, (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1, co)
        x, k, g = (rng.standard_normal(shape) for shape in (x_shape, k_shape, y_shape))
        with jax.enable_x64():
            want, *got = jax.jit(conv_and_vjps)(jnp.asarray(x), jnp.asarray(k), jnp.asarray(g))
            assert want[0].dtype == jnp.float64
        for pair, results in zip(pairs, got):
            where = f"{pair} on x {x_shape}, kernel {k_shape}, stride {stride}, padding {padding}"
            for name, a, b in zip(("value", "d/dx", "d/dkernel"), results, want):
                np.testing.assert_allclose(
                    a, b, rtol=1e-10, atol=1e-12 * float(np.abs(b).max()), err_msg=f"{name}: {where}"
                )


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
        with _ops.fast_paths(True):  # on by default only on the measured jaxlib
            fast = jax.jit(f)(p, x, y)
        with _ops.fast_paths(False):
            plain = jax.jit(lambda *a: f(*a))(p, x, y)
    for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * float(np.abs(b).max()))
