"""E-LPIPS (Kettunen, Härkönen, Lehtinen 2019) as pure functions of ``(params, x, y)`` and
an explicit ``jax.random`` key.

Contract, as for every metric: images are NHWC ``(N, H, W, 3)`` or ``(H, W, 3)`` float
arrays in ``[-1, 1]`` (``[0, 1]`` with ``normalize=True``); a batch of 1 broadcasts
against a batch of N; :func:`distance` returns ``(N,)`` (or ``()``) float32. E-LPIPS is
random: each draw samples input transformations and dropout from ``key``, and the same
key gives the same value.

One draw, as the authors' ``elpips.py`` (``sample_ensemble``, ``apply_ensemble``, config
``elpips_vgg``), on the images in ``[0, 1]``:

- a scale level ``s`` in ``1..L`` with ``P(s) ~ 1 / s^2`` (``L = params.scale_levels``,
  default 8); for ``s > 1`` the images are reflect-padded to a multiple of ``s`` (the
  padding split at a random offset ``0..s-1`` per axis, one for the batch) and box-averaged
  ``s x s``;
- per image: a reflect pad of 7 on each axis split at a random offset ``0..7``; a flip
  (none, x, y or both: stratified over the batch); a colour permutation (6, stratified);
  per-channel colour scales ``0.2 + 0.8 u`` (a Latin hypercube over the batch per
  channel); one x/y swap (transpose) for the whole draw;
- ``2 x - 1``, the LPIPS v0.1 scaling layer, VGG16 with average pools and dropout (keep
  0.99, to 6e-6: :func:`_sampled_masks`) on every conv's input, one mask for both images;
  14 taps (the scaled input and every conv's ReLU), each unit-normalised over channels,
  squared difference, 1x1 head, spatial mean; the sum over taps.

Keys: a draw uses ``key`` itself; ``samples=n > 1`` draws on ``jax.random.split(key, n)``,
so ``distance(p, x, y, key=k, samples=n)`` is the mean over ``i`` of
``distance(p, x, y, key=jax.random.split(k, n)[i])``. Within a draw,
``jax.random.split(key)`` gives the transformation key and the dropout key.

Static shapes: the image size after downsampling depends on the level, so a draw is a
``lax.switch`` over two programs, each returning the ``(14, N)`` per-tap terms: level 1 at
full size, and every level ``s >= 2`` on one canvas of level 2's size (the largest of them;
:func:`_canvas_branch`): the level's images top-left (the scale step as products with
count matrices of the traced level), the activations zero outside its valid region before
every conv (VGG's zero padding at the region's border), the floor-mode pools exact on it,
the spatial means over it; dropout's bits drawn at the level's own sizes (a switch of RNG
calls) and gathered onto the canvas. The values are those of a program per level (as
:func:`distance_at` runs) to rounding; two trunks compile whatever ``scale_levels``, not
one per level; a draw at ``s > 2`` costs what one at level 2 does (``P(s) ~ 1 / s^2``: some
5-8% more per draw on average than a program per level). Non-square images: the canvas is
level 2's ``h x w`` as it is, swapped by transposing the 3x3 kernels (as level 1; no cost
beyond the canvas); a square one is transposed. ``samples`` draws are a ``lax.scan`` over
draws whose body is rematerialised: memory does not grow with ``samples`` (but for each
draw's 14 terms a pair), also under ``grad``. Under ``vmap`` over keys the level is batched
and both programs run (a select); under ``vmap`` over images it is not.

Image size: at level ``s`` an image of side ``n`` becomes ``(n + 2 s - 2) // s`` pixels and
must keep 9 (the offset pad of 7, then VGG's four 2x2 pools), so ``min(H, W)`` must be at
least ``7 L + 2`` (58 for the default 8 levels). The official size rule for the number of
levels is ``max(1, min(H, W) // 64)`` (``Config.set_scale_levels_by_image_size``); its
default ``elpips_vgg`` config uses 8 whatever the size, as :func:`load` does.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from lpips_jax import _checks, _nets, _ops
from lpips_jax._metric import (
    OPTIONS,
    _one_program,
    _total,
    _zero_identical,
    head_map,
    init_trunk_and_heads,
    normalize_channels,
    scale_inputs,
    variables,
)

NET = "vgg_avg"  # the trunk's layer table in _nets
LEVELS = 8  # elpips_vgg's scale levels
OFFSET_MAX = 7
KEEP = 0.99  # dropout keep probability
KEEP_16 = round(KEEP * 2**16)  # its 16-bit threshold: P(keep) = 64881 / 65536 = 0.9900055
HEADS_FILE = "elpips_heads.safetensors"
TRUNK_FILE = "vgg_trunk.safetensors"
# itertools.permutations(range(3)), the official table of colour permutations.
PERMUTATIONS = np.asarray(list(itertools.permutations(range(3))), np.int32)
N_TAPS = len(_nets.tap_channels(NET))
CONV_INDICES = tuple(layer.index for layer in _nets.LAYERS[NET] if isinstance(layer, _nets.Conv))


@struct.dataclass
class ELPIPSParams:
    """Params of E-LPIPS: a pytree whose static fields say which metric it is.

    ``trunk`` is the VGG16 param tree (the LPIPS vgg trunk's names and shapes), ``heads`` a
    dict ``lin0 .. lin13 -> {"kernel": (1, 1, C_k, 1)}``; ``net`` (``"elpips"``) and
    ``scale_levels`` (default 8, official ``elpips_vgg``) are static. Another level count:
    ``params.replace(scale_levels=n)``.
    """

    trunk: Any
    heads: Any
    net: str = struct.field(pytree_node=False, default="elpips")
    scale_levels: int = struct.field(pytree_node=False, default=LEVELS)

    # The metric interface of lpips_jax._metric (METRIC_METHODS). E-LPIPS is random: its
    # distance and per-tap terms take a key (``sampled_distance``, ``sampled_layer_distances``),
    # and each draw transforms the two images of a pair together, so nothing is defined of
    # one image or at one place.
    random = True
    trunk_net = NET
    version = None
    variant = "vanilla"

    def variables(self) -> dict:
        """The ``{"params": ...}`` collection of ``lpips_jax.LPIPS(net="elpips")``."""
        return variables(self)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        return _nets.tap_channels(NET)

    def validate(self) -> ELPIPSParams:
        return validate(self)

    def features(self, *args, **kwargs):
        raise ValueError(
            "features is not defined for E-LPIPS: each draw transforms the two images of a "
            "pair together (one scale, swap, flips, offsets and colours), so the features of "
            "one image cannot be computed apart and reused"
        )

    def layer_terms(self, fx, fy):
        self.features()

    def spatial_terms(self, fx, fy):
        raise ValueError(
            "distance_map is not defined for E-LPIPS: its draws rescale, shift, flip and swap "
            "the images, so the maps of different draws do not align with the input's pixels"
        )

    def sampled_distance(self, x, y, *, key, samples, **options) -> jax.Array:
        return distance(self, x, y, key=key, samples=samples, **options)

    def sampled_layer_distances(self, x, y, *, key, samples, **options) -> tuple[jax.Array, ...]:
        return layer_distances(self, x, y, key=key, samples=samples, **options)


@struct.dataclass
class Transform:
    """The transformation of one draw for a batch of N pairs (official ``sample_ensemble``).

    - ``level``: ``()`` int32 in ``1..L``, the scale level (box downsampling factor).
    - ``scale_offset``: ``(2,)`` int32 (y, x) in ``0..level-1``: the scale padding before.
    - ``offset``: ``(N, 2)`` int32 (y, x) in ``0..7``: reflect pad ``7 - offset`` before
      and ``offset`` after, per image.
    - ``flips``: ``(N,)`` int32: 0 flips x (W), 1 flips y (H), 2 both, 3 none.
    - ``swap``: ``()`` int32, 1 transposes H and W.
    - ``perms``: ``(N, 3)`` int32: output channel c is input channel ``perms[i, c]``.
    - ``colors``: ``(N, 3)`` float32 in ``[0.2, 1]``: channel scales after the permutation.
    """

    level: Any
    scale_offset: Any
    offset: Any
    flips: Any
    swap: Any
    perms: Any
    colors: Any


def min_size(levels: int) -> int:
    """Smallest ``min(H, W)`` that E-LPIPS with ``levels`` scale levels accepts: ``7 L + 2``."""
    return 7 * levels + 2


def levels_for_size(h: int, w: int) -> int:
    """The official rule for the number of scale levels: ``max(1, min(h, w) // 64)``."""
    return max(1, min(h, w) // 64)


def scaled_size(n: int, level: int) -> int:
    """Side ``n`` after the scale step at ``level``: ``(n + 2 level - 2) // level``."""
    return (n + 2 * level - 2) // level


def transformed_size(h: int, w: int, level: int) -> tuple[int, int]:
    """``(h, w)`` of the network's input at ``level`` before the swap (the offset pad adds 7)."""
    return scaled_size(h, level) + OFFSET_MAX, scaled_size(w, level) + OFFSET_MAX


def load(scale_levels: int = LEVELS) -> ELPIPSParams:
    """E-LPIPS' params: the shipped VGG16 trunk (``vgg_trunk.safetensors``) and E-LPIPS'
    own heads (``elpips_heads.safetensors``), sha256-checked, float32."""
    from lpips_jax import _weights

    flat, _ = _weights._shipped(TRUNK_FILE)
    trunk = _weights._check_part(flat, NET, "trunk", TRUNK_FILE)
    hflat, _ = _weights._shipped(HEADS_FILE)
    heads = _weights._check_part(hflat, NET, "heads", HEADS_FILE)
    params = ELPIPSParams(
        trunk=_weights._to_jax(trunk), heads=_weights._to_jax(heads), scale_levels=scale_levels
    )
    return validate(params)


def init(rng: jax.Array) -> ELPIPSParams:
    """Fresh E-LPIPS params (the linen module's init): the trunk's Flax init, heads at ``1 / C``."""
    trunk, heads = init_trunk_and_heads(rng, NET)
    return ELPIPSParams(trunk=trunk, heads=heads)


def validate(params: Any) -> ELPIPSParams:
    if not isinstance(params, ELPIPSParams):
        raise TypeError(f"params has type {type(params).__name__}: expected ELPIPSParams")
    if params.net != "elpips":
        raise ValueError(f"ELPIPSParams has net={params.net!r}: expected 'elpips'")
    levels = params.scale_levels
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"scale_levels={levels!r}: expected an int >= 1 (official elpips_vgg: {LEVELS})")
    heads = params.heads
    names = sorted(heads) if isinstance(heads, Mapping) else None
    expected = sorted(f"lin{k}" for k in range(N_TAPS))
    if names != expected:
        raise ValueError(f"ELPIPSParams.heads has {names}: expected a dict of {N_TAPS} heads lin0 .. lin13")
    for k, c in enumerate(_nets.tap_channels(NET)):
        shape = tuple(np.shape(heads[f"lin{k}"]["kernel"]))
        if shape != (1, 1, c, 1):
            raise ValueError(
                f"ELPIPSParams.heads['lin{k}']['kernel'] has shape {shape}: expected (1, 1, {c}, 1)"
            )
    return params


# --- sampling ------------------------------------------------------------------------


def _stratified(key: jax.Array, values: np.ndarray, n: int) -> jax.Array:
    """``values`` (rows) tiled ``ceil(n / len(values))`` times, shuffled, the first ``n``
    kept: the official flips and colour permutations (each value at most that many times)."""
    reps = -(-n // len(values))
    table = jnp.asarray(np.concatenate([values] * reps, axis=0))
    return jax.random.permutation(key, table, axis=0)[:n]


def _latin_hypercube(key: jax.Array, n: int) -> jax.Array:
    """``(u_i + i) / n`` shuffled: one value in each of the n strata of [0, 1)."""
    ku, kp = jax.random.split(key)
    u = jax.random.uniform(ku, (n,), jnp.float32)
    return jax.random.permutation(kp, (u + jnp.arange(n, dtype=jnp.float32)) / n)


def sample_transform(key: jax.Array, n: int, levels: int = LEVELS) -> Transform:
    """The random transformation of one draw for ``n`` pairs, distributed as the official
    ``sample_ensemble`` (``elpips_vgg``: offsets 0..7, flips, swap, colour permutations and
    scales, ``levels`` scale levels with ``P(s) ~ 1 / s^2``). ``levels``, ``n``: static."""
    ks = jax.random.split(key, 9)
    offset = jax.random.randint(ks[0], (n, 2), 0, OFFSET_MAX + 1, jnp.int32)
    cumulative = np.cumsum([1.0 / s**2 for s in range(1, levels + 1)]).astype(np.float32)
    u = jnp.asarray(cumulative[-1]) * jax.random.uniform(ks[1], (), jnp.float32)
    level = jnp.searchsorted(jnp.asarray(cumulative[:-1]), u, side="right").astype(jnp.int32) + 1
    level = jnp.clip(level, 1, levels)
    scale_offset = jax.random.randint(ks[2], (2,), 0, level, jnp.int32)
    flips = _stratified(ks[3], np.arange(4, dtype=np.int32), n)
    swap = jax.random.randint(ks[4], (), 0, 2, jnp.int32)
    colors = jnp.stack([_latin_hypercube(k, n) for k in ks[5:8]], axis=-1)
    perms = _stratified(ks[8], PERMUTATIONS, n)
    return Transform(
        level=level, scale_offset=scale_offset, offset=offset, flips=flips, swap=swap, perms=perms,
        colors=0.2 + 0.8 * colors,
    )  # fmt: skip


# --- applying a transformation ---------------------------------------------------------


def _reflect(i: jax.Array, n: int) -> jax.Array:
    """Source index of padded index ``i`` (``-n < i < 2 n - 1``) under reflection without
    repeating the edge (TensorFlow's and NumPy's ``reflect``)."""
    i = jnp.abs(i)
    return jnp.where(i >= n, 2 * (n - 1) - i, i)


def _rescale(x: jax.Array, level: int, scale_offset: jax.Array) -> jax.Array:
    """Reflect pad to a multiple of ``level`` (``scale_offset`` before), ``level x level``
    box mean. ``x`` ``(N, H, W, C)``; ``level`` static."""
    if level == 1:
        return x
    for axis, off in ((1, scale_offset[0]), (2, scale_offset[1])):
        n = x.shape[axis]
        full = scaled_size(n, level) * level
        x = jnp.take(x, _reflect(jnp.arange(full, dtype=jnp.int32) - off, n), axis=axis)
    return _nets.avg_pool(x, level, level)  # a window, not a reshape: explicit sharding allows it


def _pad_flip_index(n: Any, offset: jax.Array, flip: jax.Array, length: int | None = None) -> jax.Array:
    """``(N, n + 7)`` source rows: reflect pad ``7 - offset`` before, then flipped where
    ``flip``. On a canvas (``length``; ``n`` may be traced), ``(N, length)``: rows past
    ``n + 7`` clipped to a source row."""
    p = jnp.arange(n + OFFSET_MAX if length is None else length, dtype=jnp.int32)
    q = jnp.where(flip[:, None], n + OFFSET_MAX - 1 - p, p)
    rows = _reflect(q - (OFFSET_MAX - offset[:, None]), n)
    return rows if length is None else jnp.clip(rows, 0, n - 1)


def _transform_unswapped(t: Transform, x01: jax.Array, level: int) -> jax.Array:
    """Every step of the official ``apply_ensemble`` but the x/y swap, on ``[0, 1]`` images
    ``(N, H, W, 3)`` at the static ``level``: ``(N, h + 7, w + 7, 3)``."""
    x = _rescale(x01, level, t.scale_offset)
    _, h, w, _ = x.shape
    rows = _pad_flip_index(h, t.offset[:, 0], (t.flips == 1) | (t.flips == 2))
    cols = _pad_flip_index(w, t.offset[:, 1], (t.flips == 0) | (t.flips == 2))
    # Per-image gathers as take_along_axis, not a vmap: under explicit sharding a vmap
    # refuses the batch-sharded images beside the unsharded indices.
    x = jnp.take_along_axis(x, rows[:, :, None, None], axis=1)
    x = jnp.take_along_axis(x, cols[:, None, :, None], axis=2)
    x = jnp.take_along_axis(x, t.perms[:, None, None, :], axis=3)
    return x * t.colors.astype(x.dtype)[:, None, None, :]


def _concrete(a: Any, what: str) -> int:
    try:
        return int(np.asarray(a))
    except (jax.errors.ConcretizationTypeError, TypeError) as e:
        raise ValueError(f"{what} must be concrete here (not traced)") from e


def apply_transform(t: Transform, x01: jax.Array) -> jax.Array:
    """The official ``apply_ensemble``: ``t`` applied to ``[0, 1]`` images ``(N, H, W, 3)``,
    returning ``(N, h, w, 3)`` (H and W transposed where ``t.swap``). ``t.level`` and
    ``t.swap`` must be concrete (they set the shape)."""
    level = _concrete(t.level, "Transform.level")
    x = _transform_unswapped(t, x01, level)
    return x.transpose(0, 2, 1, 3) if _concrete(t.swap, "Transform.swap") else x


# --- the network of one draw ---------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, padding: int, precision: Any) -> jax.Array:
    """A stride-1 conv (``_ops.conv2d``) whose input gradient is itself a conv with an HWIO
    kernel (flipped, in/out swapped). JAX's own derivative feeds XLA a conv with an OI
    kernel, which XLA:CPU runs 3-4x slower inside a ``lax.switch`` branch (outside one it
    gets the kernel transposed first); the switch over scale levels would pay it."""
    return _ops.conv2d(x, kernel, bias, 1, padding, precision)


def _conv_fwd(x, kernel, bias, padding, precision):
    return _conv(x, kernel, bias, padding, precision), (x, kernel)


def _conv_bwd(padding, precision, res, g):
    x, kernel = res
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    zero = jnp.zeros((x.shape[-1],), g.dtype)
    gx = _ops.conv2d(g, flipped, zero, 1, kernel.shape[0] - 1 - padding, precision)
    _, vjp_kernel = jax.vjp(
        lambda k: _ops.conv2d(x, k, jnp.zeros((g.shape[-1],), g.dtype), 1, padding, precision), kernel
    )
    return gx, vjp_kernel(g)[0], jnp.sum(g, axis=(0, 1, 2))


_conv.defvjp(_conv_fwd, _conv_bwd)


def _keep(x: jax.Array, keep: jax.Array) -> jax.Array:
    """A conv's input times what :func:`_taps` is given for it: dropout's keep mask
    ``(n, h, w, C)`` (bool, for each half of the batch: kept values scaled by ``1 / 0.99``,
    and on a canvas zero outside the valid region), or a canvas's valid region ``(h, w, 1)``
    (bool: zero outside, VGG's zero padding at the region's border)."""
    if keep.ndim == 3:
        return jnp.where(keep, x, jnp.zeros((), x.dtype))
    n = keep.shape[0]  # halves times the weights: no float mask of 2 n is made
    weight = jnp.where(keep, jnp.float32(1) / jnp.float32(KEEP), jnp.float32(0)).astype(x.dtype)
    return jnp.concatenate([x[:n] * weight, x[n:] * weight])


def _taps(trunk: Any, xs: jax.Array, keeps: Any, dtype: Any, remat: bool, precision: Any) -> list[jax.Array]:
    """The 14 taps of VGG16 with average pools (``_nets.VGG_AVG_LAYERS``, the trunk that
    ``_nets.Trunk(net="vgg_avg")`` runs, in the same dtypes) of a batch of 2 n (the two
    images of n pairs); ``keeps``: ``None`` or ``{conv index: array}``, what each conv's
    input is multiplied by (:func:`_keep`)."""
    dt = _nets.compute_dtype(dtype, xs, trunk)
    stem = _nets._stem_dtype(dt)
    x, taps = xs.astype(stem), []
    for layer in _nets.LAYERS[NET]:
        if isinstance(layer, _nets.Tap):
            taps.append(x)
        elif isinstance(layer, _nets.AvgPool):
            x = _nets.avg_pool(x, layer.kernel, layer.stride)
        else:
            assert isinstance(layer, _nets.Conv) and layer.stride == 1 and layer.relu
            cdt = stem if layer.index == 0 else dt
            p = trunk[f"features_{layer.index}"]

            def step(x, p, k, pad=layer.padding, cdt=cdt):
                x = x if k is None else _keep(x, k)
                x = x.astype(cdt)
                return jax.nn.relu(_conv(x, p["kernel"].astype(cdt), p["bias"].astype(cdt), pad, precision))

            k = None if keeps is None else keeps[layer.index]
            x = (jax.checkpoint(step) if remat else step)(x, p, k)
    return taps


def _transpose_kernels(trunk: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: a.transpose(1, 0, 2, 3) if a.ndim == 4 else a, trunk)


def _mask_shapes(n: int, h: int, w: int) -> dict[int, tuple[int, int, int, int]]:
    """``{conv index: (n, h_k, w_k, C_k)}``, the dropout masks of an ``h x w`` input, in the
    order their bits are drawn (the convs')."""
    return {i: (n, *s) for i, s in _nets.conv_input_shapes(NET, h, w).items()}


def _sampled_words(key: jax.Array, n: int, h: int, w: int) -> jax.Array:
    """The random words of every dropout keep mask of an ``h x w`` input (:func:`_mask_shapes`,
    flat and one after the other): ``(m,)`` uint32, ``m = ceil(total / 2)``, each two 16-bit
    draws: mask entry ``t`` is the low half of word ``t`` for ``t < m``, else the high half of
    word ``t - m``, kept where below ``KEEP_16`` (P(keep) = 0.99 to 6e-6). One draw of words
    for all the masks (one RNG op compiles faster than 13), two draws a word (the RNG is most
    of the cost of dropout: half as many words)."""
    total = sum(int(np.prod(s)) for s in _mask_shapes(n, h, w).values())
    return jax.random.bits(key, (-(-total // 2),), jnp.uint32)


def _sampled_masks(key: jax.Array, n: int, h: int, w: int) -> dict[int, jax.Array]:
    """Dropout keep masks ``{conv index: (n, h_k, w_k, C_k) bool}`` for an ``h x w`` input,
    from :func:`_sampled_words`."""
    shapes = _mask_shapes(n, h, w)
    sizes = [int(np.prod(s)) for s in shapes.values()]
    bits = _sampled_words(key, n, h, w)
    halves = jnp.concatenate([bits & jnp.uint32(0xFFFF), bits >> jnp.uint32(16)])[: sum(sizes)]
    keep = halves < jnp.uint32(KEEP_16)
    ends = np.cumsum(sizes)
    return {i: keep[e - z : e].reshape(s) for (i, s), z, e in zip(shapes.items(), sizes, ends)}


def _tap_terms(taps: list[jax.Array], heads: Any, n: int, mean) -> jax.Array:
    """``(14, N)``: per tap, unit-normalised over channels, the squared difference of the two
    halves, the head, ``mean(map, tap)`` over the spatial axes."""
    terms = []
    for k, tap in enumerate(taps):
        f = normalize_channels(tap)
        terms.append(mean(head_map((f[:n] - f[n:]) ** 2, heads[f"lin{k}"]["kernel"]), k))
    return jnp.stack(terms)


def _branch(level: int, opts: tuple, given_masks: Any = None):
    """The ``(14, N)`` per-tap terms of one draw at the static ``level`` (their sum over
    taps is the distance), on the level's own shape: ``(trunk, heads, x01, y01, t, dropout
    key or None) -> (14, N)``. The draw's program for level 1; for any level, what
    :func:`distance_at` runs."""
    dtype, remat, precision = opts

    def run(trunk, heads, x01, y01, t, dkey):
        n = x01.shape[0]
        xy = jnp.concatenate([_transform_unswapped(t, x01, level), _transform_unswapped(t, y01, level)])
        # The x/y swap. Square: transpose the images. Otherwise the shapes would differ
        # between the two cases: transpose the 3x3 kernels instead, which gives the same
        # taps transposed (every op is symmetric in H and W; the spatial means are equal).
        h, w = xy.shape[1:3]
        masks = given_masks
        if h == w:
            xy = jnp.where(t.swap == 1, xy.transpose(0, 2, 1, 3), xy)
        else:
            trunk = lax.cond(t.swap == 1, _transpose_kernels, lambda a: a, trunk)
        if masks is None and dkey is not None:
            masks = _sampled_masks(dkey, n, h, w)
        taps = _taps(trunk, scale_inputs(xy, "0.1", True), masks, dtype, remat, precision)
        return _tap_terms(taps, heads, n, lambda m, k: jnp.mean(m, axis=(-2, -1)))

    return run


# --- levels 2 .. L on one canvas -----------------------------------------------------------
# A trunk of its own per level (a switch of L programs) compiles in L times one's time.
# Instead every level s >= 2 runs on one canvas, the size of level 2's network input (the
# largest of them): the level's images top-left, zero elsewhere; before every conv the
# activations are zero outside the valid region (VGG's zero padding sees the level's own
# border), the floor-mode 2x2 pools keep the valid region's outputs exact (``h -> h // 2``),
# and each tap's spatial mean is the sum over the valid region over its count. Dropout's
# masks are sampled at the level's own shapes (the same bits as its own program) and placed
# on the canvas. Two trunk programs in all: level 1 (:func:`_branch`) and the canvas.

# Pools before each tap and each conv: their valid region is the input's, halved that often.
_POOLS = tuple(
    sum(isinstance(q, _nets.AvgPool) for q in _nets.LAYERS[NET][:i])
    for i, layer in enumerate(_nets.LAYERS[NET])
)
TAP_POOLS = tuple(k for k, layer in zip(_POOLS, _nets.LAYERS[NET]) if isinstance(layer, _nets.Tap))
CONV_POOLS = {layer.index: k for k, layer in zip(_POOLS, _nets.LAYERS[NET]) if isinstance(layer, _nets.Conv)}


def canvas_size(h: int, w: int) -> tuple[int, int]:
    """The canvas of levels ``2 .. L`` for ``h x w`` images: level 2's network input,
    :func:`transformed_size` ``(h, w, 2)`` (before the swap)."""
    return transformed_size(h, w, 2)


def _valid(vh: jax.Array, vw: jax.Array, pools: int, shape: tuple[int, int]) -> jax.Array:
    """``shape`` bool: the top-left ``(vh, vw)`` region of the network input after ``pools``
    floor-mode 2x2 pools (``vh // 2^pools`` rows)."""
    rows = lax.broadcasted_iota(jnp.int32, shape, 0) < vh // 2**pools
    cols = lax.broadcasted_iota(jnp.int32, shape, 1) < vw // 2**pools
    return rows & cols


def _scale_matrix(n: int, length: int, levels: int, t: Transform, axis: int, dtype: Any) -> jax.Array:
    """``(length, n)``: the scale step at level ``t.level`` (traced) along one axis (``axis``
    0: rows, 1: columns) as a matrix of counts: row ``i`` sums the source rows that scaled
    row ``i`` averages (``t.level`` of them, repeated where the reflection repeats them),
    zero past the level's ``scaled_size``. The same for every image."""
    s, so = t.level, t.scale_offset[axis]
    i = jnp.arange(length, dtype=jnp.int32)[:, None]
    k = jnp.arange(levels, dtype=jnp.int32)
    src = _reflect(i * s + k - so, n)  # (length, levels): the source rows, for k < s
    use = (k < s) & (i < (n + 2 * s - 2) // s)
    hits = (src[..., None] == jnp.arange(n, dtype=jnp.int32)) & use[..., None]
    return jnp.sum(hits, axis=1, dtype=jnp.int32).astype(dtype)


def _canvas_images(t: Transform, x01: jax.Array, levels: int, canvas: tuple[int, int]) -> jax.Array:
    """:func:`_transform_unswapped` at the traced level ``t.level >= 2``, on the canvas:
    ``(N, H, W, 3) -> (N, *canvas, 3)``, the level's ``h + 7`` rows and ``w + 7`` columns
    top-left (what lies beyond, copies of edge pixels, the canvas ignores). The scale step
    is two products with count matrices (:func:`_scale_matrix`; not the level's own
    shapes: each level's steps would be compiled, with their gradients), then the s x s mean;
    the per-image steps gather as :func:`_transform_unswapped` does, on the canvas."""
    _, h, w, _ = x01.shape
    dt = x01.dtype
    ch, cw = canvas
    s = t.level
    hi = lax.Precision.HIGHEST  # exact products (a GPU's default for a dot is TF32)
    x = jnp.einsum("ih,bhwc->biwc", _scale_matrix(h, ch - OFFSET_MAX, levels, t, 0, dt), x01, precision=hi)
    x = jnp.einsum("jw,biwc->bijc", _scale_matrix(w, cw - OFFSET_MAX, levels, t, 1, dt), x, precision=hi)
    x = x / (s * s).astype(dt)
    hs, ws = (h + 2 * s - 2) // s, (w + 2 * s - 2) // s  # scaled_size at level s
    rows = _pad_flip_index(hs, t.offset[:, 0], (t.flips == 1) | (t.flips == 2), ch)
    cols = _pad_flip_index(ws, t.offset[:, 1], (t.flips == 0) | (t.flips == 2), cw)
    x = jnp.take_along_axis(x, rows[:, :, None, None], axis=1)
    x = jnp.take_along_axis(x, cols[:, None, :, None], axis=2)
    x = jnp.take_along_axis(x, t.perms[:, None, None, :], axis=3)
    return x * t.colors.astype(dt)[:, None, None, :]


def _level_words(level: int, n: int, hw: tuple[int, int], canvas: tuple[int, int], given_masks: Any = None):
    """A draw's dropout at ``level`` for ``n`` pairs of ``hw`` images, for the canvas:
    ``(dropout key) -> (words, m)``, the level's :func:`_sampled_words` (``m`` of them), drawn
    at its own sizes as its own program draws them, zero-padded to level 2's count (a switch
    over the levels returns one shape; :func:`_canvas_masks` reads them). ``given_masks``
    (in :func:`_branch`'s frame) as such words instead: one a mask entry, ``m`` their count."""
    total = sum(int(np.prod(s)) for s in _mask_shapes(n, *canvas).values())
    length = total if given_masks is not None else -(-total // 2)

    def words(dkey):
        if given_masks is None:
            w = _sampled_words(dkey, n, *transformed_size(*hw, level))
        else:  # kept: a low half 0 < KEEP_16; dropped: 0xFFFF
            flat = jnp.concatenate([given_masks[i].reshape(-1) for i in CONV_INDICES])
            w = jnp.where(flat, jnp.uint32(0), jnp.uint32(0xFFFF))
        # into zeros in place (a pad fusion ran some 10x slower on XLA:CPU)
        return lax.dynamic_update_slice(jnp.zeros((length,), jnp.uint32), w, (0,)), jnp.int32(w.shape[0])

    return words


def _canvas_masks(words, m, n, hw, levels, index, swap, canvas) -> dict[int, jax.Array]:
    """``{conv index: (n, h_k, w_k, C_k) bool}`` on the canvas: the keep masks of the level
    ``levels[index]`` (``index`` traced) from its words (:func:`_level_words`: ``m`` of them),
    each at the top-left of its conv's input, False elsewhere. One gather per conv for every
    level (placed in each level's own program, the masks were 13 kernels a level to compile).

    In the frame the canvas runs in: :func:`_branch` applies a level's masks after the swap
    if the level is square, before it (the kernels transposed) if not; the canvas does as
    its own shape says (:func:`_canvas_branch`), so a level whose squareness differs from
    the canvas's has its masks transposed where the draw swaps."""
    own = [_mask_shapes(n, *transformed_size(*hw, s)) for s in levels]
    ends = [np.cumsum([0] + [int(np.prod(m[i])) for i in CONV_INDICES]) for m in own]
    if max(int(e[-1]) for e in ends) > np.iinfo(np.int32).max:
        raise ValueError(
            f"E-LPIPS: {n} pairs of {hw[0]}x{hw[1]} images are too many for one draw (its dropout "
            f"masks are indexed in int32: at most {np.iinfo(np.int32).max} entries); split the batch"
        )
    starts = [e[:-1] for e in ends]
    turn = jnp.asarray([(o[0][1] == o[0][2]) != (canvas[0] == canvas[1]) for o in own])[index] & swap
    out = {}
    for k, i in enumerate(CONV_INDICES):
        table = jnp.asarray([(o[i][1], o[i][2], st[k]) for o, st in zip(own, starts)], jnp.int32)
        h, w, start = table[index]
        shape = (n, *_nets.conv_input_shapes(NET, *canvas)[i])
        b, r, c, f = (lax.broadcasted_iota(jnp.int32, shape, d) for d in range(4))
        r, c = jnp.where(turn, c, r), jnp.where(turn, r, c)  # the pixel in the level's frame
        entry = start + ((b * h + r) * w + c) * shape[3] + f  # in the level's flat masks
        inside = (r < h) & (c < w)
        low = entry < m
        word = words[jnp.where(inside, jnp.where(low, entry, entry - m), 0)]
        half = jnp.where(low, word & jnp.uint32(0xFFFF), word >> jnp.uint32(16))
        out[i] = inside & (half < jnp.uint32(KEEP_16))
    return out


def _canvas_branch(levels: int, opts: tuple, level: int | None = None, given_masks: Any = None):
    """As :func:`_branch`, for a draw at any level ``2 .. levels`` (``t.level``; or the static
    ``level``), run on the canvas (:func:`canvas_size`): one program for all of them."""
    dtype, remat, precision = opts

    def run(trunk, heads, x01, y01, t, dkey):
        n, h, w = x01.shape[:3]
        ch, cw = canvas_size(h, w)
        only = range(2, levels + 1) if level is None else (level,)
        index = jnp.clip(t.level - only[0], 0, len(only) - 1)
        xy = jnp.concatenate([_canvas_images(t, a, max(only), (ch, cw)) for a in (x01, y01)])
        # The valid region of the network's input: the level's own transformed size.
        vh, vw = jnp.asarray([transformed_size(h, w, s) for s in only], jnp.int32)[index]
        # The x/y swap. A square canvas: transpose it (the valid region stays top-left, its
        # sides swapped). Otherwise: transpose the kernels, as _branch does.
        swap = t.swap == 1
        if ch == cw:
            xy = jnp.where(swap, xy.transpose(0, 2, 1, 3), xy)
            vh, vw = jnp.where(swap, vw, vh), jnp.where(swap, vh, vw)
        else:
            trunk = lax.cond(swap, _transpose_kernels, lambda a: a, trunk)
        if dkey is None and given_masks is None:
            shapes = _nets.conv_input_shapes(NET, ch, cw)
            keeps = {i: _valid(vh, vw, CONV_POOLS[i], shapes[i][:2])[..., None] for i in CONV_INDICES}
        else:  # False outside the region: they zero it
            draws = [_level_words(s, n, (h, w), (ch, cw), given_masks) for s in only]
            words, m = draws[0](dkey) if len(draws) == 1 else lax.switch(index, draws, dkey)
            keeps = _canvas_masks(words, m, n, (h, w), only, index, swap, (ch, cw))
        taps = _taps(trunk, scale_inputs(xy, "0.1", True), keeps, dtype, remat, precision)

        def mean(m, k):
            p = TAP_POOLS[k]
            count = ((vh // 2**p) * (vw // 2**p)).astype(m.dtype)
            masked = jnp.where(_valid(vh, vw, p, m.shape[1:3]), m, jnp.zeros((), m.dtype))
            return jnp.sum(masked, axis=(-2, -1)) / count

        return _tap_terms(taps, heads, n, mean)

    return run


def _programs(levels: int, opts: tuple) -> list:
    """The draw's programs, each as :func:`_branch`: level 1, and (``levels > 1``) the canvas
    of the others; :func:`_program_index` picks one."""
    return [_branch(1, opts)] + ([_canvas_branch(levels, opts)] if levels > 1 else [])


def _program_index(t: Transform) -> jax.Array:
    return jnp.minimum(t.level - 1, 1)


def _draw(params: ELPIPSParams, x01, y01, t: Transform, dkey, opts, level=None, masks=None) -> jax.Array:
    """One draw's ``(14, N)`` per-tap terms at ``t``; ``level`` static (its own shape) or
    from ``t`` (a switch of two programs)."""
    args = (params.trunk, params.heads, x01, y01, t, dkey)
    if level is not None:
        return _branch(level, opts, masks)(*args)
    programs = _programs(params.scale_levels, opts)
    if len(programs) == 1:
        return programs[0](*args)
    # Each program rematerialised: differentiated as it is, the switch hands every branch's
    # residuals (zeros for the branch not taken) from the forward to the backward pass;
    # remat keeps the branch inputs only.
    return lax.switch(_program_index(t), [jax.checkpoint(p) for p in programs], *args)


# --- entry points ----------------------------------------------------------------------


def _check_key(key: Any) -> None:
    if key is None:
        raise ValueError(
            "E-LPIPS is random: pass key=jax.random.key(seed) (each key one draw of input "
            "transformations and dropout; the same key gives the same value)"
        )
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key has shape {key.shape}: expected one key, shape ()")
        return
    if dtype != jnp.uint32 or np.ndim(key) != 1:
        raise TypeError(
            f"key={key!r}: expected a jax.random key (jax.random.key(seed), or a raw "
            "jax.random.PRNGKey(seed))"
        )


def _check_inputs(x: Any, y: Any, levels: int) -> None:
    """Shape, dtype and size checks (trace time); the size rule is E-LPIPS' own."""
    stand_ins = []
    for name, a in (("x", x), ("y", y)):
        shape = tuple(np.shape(a)) if not hasattr(a, "shape") else tuple(a.shape)
        dtype = a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype
        if len(shape) in (3, 4) and shape[-1] == 3:
            h, w = shape[-3], shape[-2]
            m = min_size(levels)
            if min(h, w) < m:
                rule = levels_for_size(h, w)
                hint = (
                    f"use fewer scale levels: the official rule is scale_levels = max(1, min(H, W) // 64) "
                    f"(elpips Config.set_scale_levels_by_image_size), {rule} here: "
                    f"params.replace(scale_levels={rule})"
                    if min(h, w) >= min_size(1)
                    else f"E-LPIPS needs at least {min_size(1)}x{min_size(1)} even with scale_levels=1"
                )
                raise ValueError(
                    f"{name} has spatial size {h}x{w}: E-LPIPS with scale_levels={levels} needs at least "
                    f"{m}x{m} (7 * scale_levels + 2: downsampled by up to {levels}, an image must keep "
                    f"9 pixels); {hint}"
                )
            bumped = (*shape[:-3], max(h, 16), max(w, 16), 3)  # the trunk's own floor is met
            stand_ins.append(jax.ShapeDtypeStruct(bumped, dtype))
        else:
            stand_ins.append(a)
    _checks.check_images(*stand_ins, NET)


def _to_unit(xb: jax.Array, normalize: Any) -> jax.Array:
    x = _checks.widen(xb)
    if isinstance(normalize, jax.core.Tracer):
        return jnp.where(normalize, x, (x + 1) / 2)
    return x if normalize else (x + 1) / 2


def _pair(x, y, normalize):
    """Both in [0, 1], broadcast to one batch (each pair gets its own transformation)."""
    x01, y01 = _to_unit(x, normalize), _to_unit(y, normalize)
    n = max(x01.shape[0], y01.shape[0])
    return jnp.broadcast_to(x01, (n, *x01.shape[1:])), jnp.broadcast_to(y01, (n, *y01.shape[1:]))


def _sample(key: jax.Array, n: int, levels: int, dropout: bool) -> tuple[Transform, Any]:
    """A draw's transformation and dropout key (``None``: dropout off) from its key."""
    kt, kd = jax.random.split(key)
    return sample_transform(kt, n, levels), (kd if dropout else None)


def _mean_terms(params, x01, y01, key, samples, dropout, opts) -> jax.Array:
    """``(14, N)``: each tap's term averaged over the ``samples`` draws of ``key``."""
    n = x01.shape[0]

    def one(k):
        t, dkey = _sample(k, n, params.scale_levels, dropout)
        return _draw(params, x01, y01, t, dkey, opts)

    if samples == 1:
        return one(key)
    # The draws' (14, N) terms stacked, not summed in a carry: a zero carry would be
    # replicated where the terms vary (a shard_map over the batch refuses that), and the
    # stack is 56 bytes a pair a draw beside the network's activations.
    body = jax.checkpoint(lambda carry, k: (carry, one(k)))
    _, terms = lax.scan(body, None, jax.random.split(key, samples))
    return jnp.mean(terms, axis=0)


def _mean_distance_plain(levels, samples, dropout, opts, trunk, heads, x01, y01, key) -> jax.Array:
    params = ELPIPSParams(trunk=trunk, heads=heads, scale_levels=levels)
    return _total(tuple(_mean_terms(params, x01, y01, key, samples, dropout, opts)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _mean_distance(levels, samples, dropout, opts, trunk, heads, x01, y01, key) -> jax.Array:
    """``(N,)``: the distance averaged over the draws (the sum over taps of :func:`_mean_terms`).

    Its gradient w.r.t. the images alone (a loss on generated images) is computed with the
    value, draw by draw (:func:`_mean_distance_fwd`): pair ``n``'s distance depends on pair
    ``n``'s images only, so the gradient of the sum of the distances, scaled by each pair's
    cotangent, is the whole vector-Jacobian product. The backward pass then runs no network:
    no draw's residuals are kept and none is recomputed (fwd+bwd ~2x faster than
    differentiating the switch of rematerialised branches). Where the params are
    differentiated too, the plain derivative of :func:`_mean_distance_plain`.
    """
    return _mean_distance_plain(levels, samples, dropout, opts, trunk, heads, x01, y01, key)


def _value_and_image_grads(run):
    """A switch branch: one draw's ``(14, N)`` terms (``run``, one of :func:`_programs`) and
    the gradients of their sum w.r.t. ``x01`` and ``y01``."""

    def branch(trunk, heads, x01, y01, t, dkey):
        terms, vjp = jax.vjp(lambda a, b: run(trunk, heads, a, b, t, dkey), x01, y01)
        return (terms, *vjp(jnp.ones_like(terms)))

    return branch


def _mean_distance_fwd(levels, samples, dropout, opts, trunk, heads, x01, y01, key):
    primal = lambda a: a.value  # noqa: E731  (symbolic zeros: each leaf is a CustomVJPPrimal)
    perturbed = [a.perturbed for a in jax.tree_util.tree_leaves((trunk, heads))]
    trunk, heads, x01, y01, key = jax.tree_util.tree_map(primal, (trunk, heads, x01, y01, key))
    if any(perturbed):
        plain = functools.partial(_mean_distance_plain, levels, samples, dropout, opts)
        d, vjp = jax.vjp(plain, trunk, heads, x01, y01, key)
        return d, (vjp, None)
    n = x01.shape[0]
    branches = [_value_and_image_grads(run) for run in _programs(levels, opts)]

    def one(k):
        t, dkey = _sample(k, n, levels, dropout)
        args = (trunk, heads, x01, y01, t, dkey)
        return branches[0](*args) if levels == 1 else lax.switch(_program_index(t), branches, *args)

    if samples == 1:
        terms, gx, gy = one(key)
    else:

        def body(sums, k):
            terms, gx, gy = one(k)
            return (sums[0] + gx, sums[1] + gy), terms

        zeros = (jnp.zeros_like(x01), jnp.zeros_like(y01))
        (gx, gy), terms = lax.scan(body, zeros, jax.random.split(key, samples))
        terms, gx, gy = jnp.mean(terms, axis=0), gx / samples, gy / samples
    return _total(tuple(terms)), (None, (gx, gy))


def _mean_distance_bwd(levels, samples, dropout, opts, res, g):
    vjp, grads = res
    if type(g).__name__ == "SymbolicZero":
        g = jnp.zeros(g.shape, g.dtype)
    if vjp is not None:
        return vjp(g)
    gx, gy = grads
    scale = g.reshape(-1, 1, 1, 1)
    return None, None, scale.astype(gx.dtype) * gx, scale.astype(gy.dtype) * gy, None


_mean_distance.defvjp(_mean_distance_fwd, _mean_distance_bwd, symbolic_zeros=True)


def _distance_core(params, xb, yb, key, *, samples, per_tap, normalize, dropout, dtype, remat, precision):
    """``(N,)`` distances, or with ``per_tap`` the 14 taps' ``(N,)`` terms."""
    x01, y01 = _pair(xb, yb, normalize)
    opts = (dtype, remat, precision)
    xs, ys = jnp.broadcast_arrays(xb, yb)
    if per_tap:
        return _zero_identical(tuple(_mean_terms(params, x01, y01, key, samples, dropout, opts)), xs, ys)
    d = _mean_distance(params.scale_levels, samples, dropout, opts, params.trunk, params.heads, x01, y01, key)
    return _zero_identical((d,), xs, ys)[0]


def _at_core(params, xb, yb, t, masks, *, level, normalize, dtype, remat, precision):
    x01, y01 = _pair(xb, yb, normalize)
    terms = _draw(params, x01, y01, t, None, (dtype, remat, precision), level=level, masks=masks)
    xs, ys = jnp.broadcast_arrays(xb, yb)
    return _total(_zero_identical(tuple(terms), xs, ys))


# Static options of the programs below, beside the metric's own (OPTIONS).
_STATIC = (*OPTIONS, "samples", "per_tap", "dropout", "level")


_distance_program = _one_program(_distance_core, _STATIC)
_at_program = _one_program(_at_core, _STATIC)


def _prepare(params, x, y, normalize):
    params = validate(params)
    _check_inputs(x, y, params.scale_levels)
    _checks.check_range("x", x, normalize)
    _checks.check_range("y", y, normalize)
    xb, unbatched = _checks.as_batch(x)
    yb, _ = _checks.as_batch(y)
    return params, xb, yb, unbatched


def _run(params, x, y, key, samples, dropout, per_tap, **options):
    """The checks, then one program: ``(N,)`` distances or (``per_tap``) 14 ``(N,)`` terms."""
    _check_key(key)
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw key: one program for both kinds
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples={samples!r}: expected an int >= 1 (the number of random draws)")
    if not isinstance(dropout, bool):
        raise TypeError(f"dropout={dropout!r}: expected True or False")
    params, xb, yb, unbatched = _prepare(params, x, y, options["normalize"])
    out = _distance_program(params, xb, yb, key, samples=samples, dropout=dropout, per_tap=per_tap, **options)
    if not unbatched:
        return out
    return tuple(d[0] for d in out) if per_tap else out[0]


def layer_distances(
    params: ELPIPSParams,
    x: Any,
    y: Any,
    *,
    key: Any,
    samples: int = 1,
    normalize: bool = False,
    dropout: bool = True,
    dtype: Any = None,
    remat: bool = False,
    precision: Any = None,
) -> tuple[jax.Array, ...]:
    """E-LPIPS per tap: 14 ``(N,)`` (or ``()``) arrays, each tap's term averaged over the
    same draws as :func:`distance` (same arguments), whose sum is the distance."""
    options = dict(normalize=normalize, dtype=dtype, remat=remat, precision=precision)
    return _run(params, x, y, key, samples, dropout, True, **options)


def distance(
    params: ELPIPSParams,
    x: Any,
    y: Any,
    *,
    key: Any,
    samples: int = 1,
    normalize: bool = False,
    dropout: bool = True,
    dtype: Any = None,
    remat: bool = False,
    precision: Any = None,
) -> jax.Array:
    """E-LPIPS between ``x`` and ``y``: the mean over ``samples`` random draws.

    Args:
      params: from :func:`load`.
      x, y: ``(N, H, W, 3)`` or ``(H, W, 3)`` float images in ``[-1, 1]``; either may be
        a batch of 1 against the other's N. ``min(H, W) >= 7 * params.scale_levels + 2``.
      key: a ``jax.random`` key (required). One draw uses it as it is; ``samples=n > 1``
        uses ``jax.random.split(key, n)``, draw ``i`` on the ``i``-th key.
      samples: the number of draws (static), run one at a time in a ``lax.scan``.
      normalize: inputs are in ``[0, 1]`` instead.
      dropout: ``False`` turns the network's dropout off (the transformations stay).
      dtype, remat, precision: as for LPIPS (compute dtype of the trunk after its first
        conv; rematerialise trunk activations; conv precision).

    Returns:
      ``(N,)`` float32 distances, or ``()`` for unbatched input.
    """
    options = dict(normalize=normalize, dtype=dtype, remat=remat, precision=precision)
    return _run(params, x, y, key, samples, dropout, False, **options)


def _official_masks(
    masks: Any, t: Transform, level: int, n: int, hw: tuple[int, int]
) -> dict[int, jax.Array]:
    """The official frame's keep masks (conv order, as the official code sees the conv
    inputs, after the swap) in the frame :func:`_branch` runs in."""
    masks = tuple(masks)
    if len(masks) != len(CONV_INDICES):
        raise ValueError(f"masks: expected {len(CONV_INDICES)} arrays (one per conv), got {len(masks)}")
    h, w = hw
    swap = h != w and _concrete(t.swap, "Transform.swap (non-square images, masks given)") == 1
    shapes = _nets.conv_input_shapes(NET, *((w, h) if swap else (h, w)))
    out = {}
    for i, m in zip(CONV_INDICES, masks):
        expect = (n, *shapes[i])
        if tuple(np.shape(m)) != expect:
            raise ValueError(f"masks for conv features.{i}: shape {tuple(np.shape(m))}, expected {expect}")
        m = jnp.asarray(m).astype(bool)
        out[i] = m.transpose(0, 2, 1, 3) if swap else m
    return out


def distance_at(
    params: ELPIPSParams,
    x: Any,
    y: Any,
    transform: Transform,
    *,
    masks: Any = None,
    normalize: bool = False,
    dtype: Any = None,
    remat: bool = False,
    precision: Any = None,
) -> jax.Array:
    """E-LPIPS at a given transformation (one draw): ``(N,)`` or ``()``.

    ``masks=None`` turns dropout off; otherwise 13 keep masks (0/1 or bool), one per conv
    in order, each of the shape the official code's conv input has (``(N, h_k, w_k, C_k)``,
    after the swap); kept values are scaled by ``1 / 0.99``. With masks,
    ``transform.level`` must be concrete (and ``transform.swap`` for non-square images).
    For parity with the official code: a concrete level runs on its own shapes, as the
    official code does (:func:`distance` runs levels >= 2 on one canvas: the same value to
    rounding); a traced one as :func:`distance` does.
    """
    params, xb, yb, unbatched = _prepare(params, x, y, normalize)
    n = max(xb.shape[0], yb.shape[0])
    level = None
    try:
        level = int(np.asarray(transform.level))
    except (jax.errors.ConcretizationTypeError, TypeError):
        pass
    if level is not None and not 1 <= level <= params.scale_levels:
        raise ValueError(f"transform.level={level}: expected 1 .. scale_levels={params.scale_levels}")
    if masks is not None:
        if level is None:
            raise ValueError("distance_at with masks needs a concrete transform.level (it sets their shapes)")
        masks = _official_masks(masks, transform, level, n, transformed_size(*xb.shape[1:3], level))
    d = _at_program(
        params, xb, yb, transform, masks, level=level, normalize=normalize, dtype=dtype, remat=remat,
        precision=precision,
    )  # fmt: skip
    return d[0] if unbatched else d
