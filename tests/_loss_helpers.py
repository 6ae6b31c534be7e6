"""Helpers shared by the loss-use tests (gradients, transforms, precision).

Independent references live here: the official ``lpips`` model with our exact params
(trunk and heads copied in), and its autograd gradients mapped into our layouts.
"""

from __future__ import annotations

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
from conftest import distort, official_model, photo_crops, to_nchw, to_unit, trunk_state_dict

import lpips_jax

# The v0.1 scaling layer's shift: an image at this value is 0 after scaling, so with
# zero conv biases every tap's feature vector is exactly 0 there ("vanishing features").
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)


@functools.cache
def squeeze_params(seed: int = 0) -> lpips_jax.LPIPSParams:
    """SqueezeNet with a random trunk (``Trunk.init`` + small random biases) and random
    positive heads: for tests where the weights' values do not matter."""
    k_trunk, k_bias, k_heads = jax.random.split(jax.random.key(seed), 3)
    m = lpips_jax.min_size("squeeze")
    init = jax.jit(lpips_jax.Trunk(net="squeeze").init)
    trunk = init(k_trunk, jnp.zeros((1, m, m, 3)))["params"]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(trunk)
    keys = jax.random.split(k_bias, len(leaves))
    new = []
    for (path, leaf), k in zip(leaves, keys):
        if str(path[-1].key) == "bias":
            leaf = jax.random.uniform(k, leaf.shape, leaf.dtype, -0.05, 0.05)
        new.append(leaf)
    # float32 whatever the x64 mode (called under jax.enable_x64, init's params are
    # float64, and jit's cache then hands them out after the context too)
    trunk = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float32), jax.tree_util.tree_unflatten(treedef, new)
    )
    hk = jax.random.split(k_heads, len(lpips_jax.tap_channels("squeeze")))
    heads = {
        f"lin{i}": {"kernel": jax.random.uniform(hk[i], (1, 1, c, 1), jnp.float32, 0.01, 0.2)}
        for i, c in enumerate(lpips_jax.tap_channels("squeeze"))
    }
    return lpips_jax.LPIPSParams(trunk=trunk, heads=heads, net="squeeze")


def params_for(net: str) -> lpips_jax.LPIPSParams:
    return squeeze_params() if net == "squeeze" else _shipped(net)


@functools.cache
def _shipped(net: str) -> lpips_jax.LPIPSParams:
    return lpips_jax.load(net)


def zero_biases(params: lpips_jax.LPIPSParams) -> lpips_jax.LPIPSParams:
    """The same params with every trunk bias 0 (a trunk "being tuned" into dead units)."""

    def f(path, leaf):
        return jnp.zeros_like(leaf) if str(path[-1].key) == "bias" else leaf

    return params.replace(trunk=jax.tree_util.tree_map_with_path(f, params.trunk))


def to_f64(params):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)


def x64():
    """A block computing in float64 (the jit cache keys on it): ``jax.enable_x64`` from jax
    0.8 on, ``jax.experimental.enable_x64`` before (the floor, jax 0.5.3)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64

    return enable_x64(True)


# ---------------------------------------------------------------------------------------
# Two paths to one quantity, and the quantity in float64

EPS32 = float(np.finfo(np.float32).eps)
_TRUTHS: dict = {}


def float64_truth(fn, params, *arrays):
    """``fn(params, *arrays)`` with the params and arrays in float64 (under :func:`x64`), as
    float64 numpy: once per params object and array values (compiled once per shape)."""
    arrays = [np.asarray(a) for a in arrays]
    key = (fn, id(params), *((a.shape, hashlib.sha1(np.ascontiguousarray(a)).digest()) for a in arrays))
    if key not in _TRUTHS:
        with x64():
            out = fn(to_f64(params), *(jnp.asarray(a, jnp.float64) for a in arrays))
            out = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), out)
        _TRUTHS[key] = (params, out)  # params kept: its id stays its own
    return _TRUTHS[key][1]


def assert_paths_agree(got, want, truth=None, *, what: str = "") -> None:
    """Two paths to one quantity agree: broadcast or repeated, batched or alone, jit or
    eager, a module or the function, features + distance_from_features or distance, a
    transform or none. Pytrees of one structure, leaf by leaf, each relative to its scale
    ``max|truth|`` (``max|want|`` without a truth), never element by element.

    float32 paths, ``truth`` the quantity in float64 (:func:`float64_truth`): ``got`` is no
    further from it than 4x ``want``'s error plus 8 ulp of the scale (``truth=want`` takes
    ``want`` as exact: the floor alone, for one program on equal inputs where no float64
    twin exists). float64 paths (no ``truth``): within 1e-12 of the scale.
    """
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want), what
    gots, wants = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
    truths = wants if truth is None else jax.tree_util.tree_leaves(truth)
    assert len(truths) == len(wants), what
    for k, (g, w, t) in enumerate(zip(gots, wants, truths)):
        name = f"{what} leaf {k}" if len(truths) > 1 else what
        if truth is None:
            assert np.asarray(g).dtype == np.float64, f"{name}: float32 paths need a float64 truth"
        g, w, t = (np.asarray(a, np.float64) for a in (g, w, t))
        assert g.shape == w.shape == t.shape, (name, g.shape, w.shape, t.shape)
        assert np.all(np.isfinite(g)), f"{name}: not finite"
        scale, err, err_want = np.abs(t).max(), np.abs(g - t).max(), np.abs(w - t).max()
        if truth is None:
            # float64 rounds the sums that float32 rounds to <= 1e3 ulp to 2e-13 of the scale
            bound = 1e-12 * scale
        else:
            # the guard: want is a float32 rounding of the quantity, or the bound means
            # nothing (the largest float32 departure measured, a kink flip: 1e-2, test_grad)
            assert err_want <= 3e-2 * scale, f"{name}: the reference is {err_want / scale:.3g} of scale off"
            # got rounds the same sums in another order (fusion, batch size, conv form):
            # its error is of want's size (4x: an unlucky draw), and not bounded below the
            # rounding of the last reductions (channel sums of <= 512 terms, ~sqrt(512)/2
            # ulp in a random order; then space and taps): 8 ulp of the scale
            bound = 4 * err_want + 8 * EPS32 * scale
        assert err <= bound, (
            f"{name}: |got - truth| = {err:.3g} > {bound:.3g} (scale {scale:.3g}, want off {err_want:.3g})"
        )


# ---------------------------------------------------------------------------------------
# Images


def photo_pair(n: int, size: int | tuple[int, int], seed: int = 0):
    """``n`` real photo crops in [-1, 1] and real distortions of them (noise, blur, jpeg)."""
    hw = (size, size) if isinstance(size, int) else size
    imgs = photo_crops(hw, n, seed)
    kinds = ["noise", "blur", "jpeg"]
    dist = np.stack([distort(im, kinds[i % 3], seed + i) for i, im in enumerate(imgs)])
    return to_unit(imgs), to_unit(dist)


@functools.cache
def entry_pair() -> tuple[np.ndarray, np.ndarray]:
    """The pair of the entry-point tests: 3 photo crops of 32x32 (alex needs 31) and their
    distortions. One shape wherever the size does not matter (each program traces and
    compiles once), and small: the floor's jax 0.5.3 runs float64 convs ~40x slower than
    float32 (alex 64x64: 4 s a forward pass), and the truths are float64."""
    return photo_pair(3, 32, seed=21)


EDGE_CASES = (
    "photo vs distorted",
    "x == y (photo)",
    "-1 vs photo",
    "0 vs photo",
    "+1 vs photo",
    "-1 == -1",
    "0 == 0",
    "+1 == +1",
    "-1 vs +1",
    "half at shift vs photo",
    "all at shift vs photo",
    "all at shift == all at shift",
)


def edge_batch(size: int) -> tuple[np.ndarray, np.ndarray]:
    """One pair per :data:`EDGE_CASES` entry, ``(len(EDGE_CASES), size, size, 3)`` float32.

    "at shift" regions scale to exactly 0: with :func:`zero_biases` params every feature
    vector whose receptive field lies there is all zero (checked in the tests).
    """
    p, d = photo_pair(2, size, seed=11)
    const = {v: np.full((size, size, 3), v, np.float32) for v in (-1.0, 0.0, 1.0)}
    shift = np.broadcast_to(SHIFT, (size, size, 3)).astype(np.float32)
    half = p[1].copy()
    half[:, : (size + 1) // 2] = SHIFT
    pairs = [
        (p[0], d[0]),
        (p[1], p[1]),
        (const[-1.0], p[0]),
        (const[0.0], p[0]),
        (const[1.0], p[0]),
        (const[-1.0], const[-1.0]),
        (const[0.0], const[0.0]),
        (const[1.0], const[1.0]),
        (const[-1.0], const[1.0]),
        (half, p[0]),
        (shift, p[0]),
        (shift, shift),
    ]
    assert len(pairs) == len(EDGE_CASES)
    return np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs])


# ---------------------------------------------------------------------------------------
# The official model with our params, and its autograd in our layouts


def official_with(params: lpips_jax.LPIPSParams):
    """The official ``lpips.LPIPS`` holding exactly ``params`` (trunk and heads)."""
    import torch

    m = official_model(params.net, params.version, params.lpips, trunk_state_dict(params))
    if params.lpips:
        with torch.no_grad():
            for k, lin in enumerate(m.lins):
                w = np.asarray(params.heads[f"lin{k}"]["kernel"], np.float32)  # (1, 1, C, 1)
                lin.model[1].weight.copy_(torch.from_numpy(w.transpose(3, 2, 0, 1).copy()))
    return m


def _our_name(torch_name: str) -> str:
    """``net.slice2.3.squeeze.weight`` -> ``features_3/squeeze/kernel``; ``lin0.model.1.weight``
    -> ``lin0/kernel``."""
    parts = torch_name.split(".")
    if parts[0] == "net":
        idx, *sub, kind = parts[2:]
        return "/".join([f"features_{idx}", *sub, "kernel" if kind == "weight" else "bias"])
    return f"{parts[0]}/kernel"


def flat_params(tree) -> dict[str, np.ndarray]:
    """``{"features_0/kernel": ..., "lin0/kernel": ...}`` from an LPIPSParams-shaped tree."""
    out = {}
    for part in (tree.trunk, tree.heads):
        if part is None:
            continue
        for path, leaf in jax.tree_util.tree_flatten_with_path(part)[0]:
            out["/".join(str(p.key) for p in path)] = np.asarray(leaf, np.float64)
    return out


def official_value_and_grads(m, x: np.ndarray, y: np.ndarray, double: bool):
    """Official distances ``(N,)`` and autograd gradients of their sum w.r.t. x, y (NHWC)
    and every parameter (our names and layouts: HWIO kernels, (1, 1, C, 1) heads)."""
    import torch

    dt = torch.float64 if double else torch.float32
    m = m.to(dt)
    try:
        for p in m.parameters():
            p.requires_grad_(True)
            p.grad = None
        tx = to_nchw(x).to(dt).requires_grad_(True)
        ty = to_nchw(y).to(dt).requires_grad_(True)
        d = m(tx, ty).reshape(-1)
        d.sum().backward()
        grads = {}
        for name, p in m.named_parameters():
            g = p.grad.detach().numpy().astype(np.float64)
            grads[_our_name(name)] = g.transpose(2, 3, 1, 0) if g.ndim == 4 else g
        nhwc = (0, 2, 3, 1)
        gx = tx.grad.numpy().transpose(nhwc).astype(np.float64)
        gy = ty.grad.numpy().transpose(nhwc).astype(np.float64)
        return d.detach().numpy().astype(np.float64), gx, gy, grads
    finally:
        for p in m.parameters():
            p.requires_grad_(False)
            p.grad = None
        m.float()


def assert_grad_close(ours, ref, *, q99: float, worst: float, what: str) -> None:
    """Compare gradients relative to their scale ``max|ref|``: 99% of the elements within
    ``q99``, every element within ``worst``."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    assert np.all(np.isfinite(ours)), f"{what}: non-finite gradient"
    scale = np.abs(ref).max()
    if scale == 0:
        assert np.abs(ours).max() == 0, f"{what}: reference is 0, ours {np.abs(ours).max()}"
        return
    err = np.abs(ours - ref) / scale
    q = float(np.quantile(err, 0.99))
    assert q <= q99, f"{what}: 99th percentile of |ours - ref| / max|ref| = {q:.3g} > {q99:g}"
    assert err.max() <= worst, f"{what}: max |ours - ref| / max|ref| = {err.max():.3g} > {worst:g}"


def kept_bytes(loss, *args, argnums=(0,)) -> int:
    """Bytes of the residuals ``jax.vjp`` keeps for the backward pass of ``loss(*args)``
    w.r.t. ``args[i] for i in argnums`` (abstract: nothing runs), leaving out those shaped
    like a leaf of ``args[0]`` (the params: weights are kept whatever the images)."""

    def residuals(*a):
        def f(*diff):
            full = list(a)
            for i, d in zip(argnums, diff):
                full[i] = d
            return loss(*full)

        return jax.vjp(f, *(a[i] for i in argnums))[1]

    leaves = jax.tree_util.tree_leaves(jax.eval_shape(residuals, *args))
    param_like = {(p.dtype, p.size) for p in jax.tree_util.tree_leaves(args[0])}
    return sum(a.size * a.dtype.itemsize for a in leaves if (a.dtype, a.size) not in param_like)


def image_and_feature_losses(remat: bool):
    """``loss(p, x, y)``: the summed distance; ``loss_f(p, x, fy)``: the same with y's
    :func:`lpips_jax.features` precomputed. Both with the given ``remat``."""

    def loss(p, x, y):
        return lpips_jax.distance(p, x, y, remat=remat).sum()

    def loss_f(p, x, fy):
        fx = lpips_jax.features(p, x, remat=remat)
        return lpips_jax.distance_from_features(p, fx, fy).sum()

    return loss, loss_f
