"""Scoring perceptual metrics on BAPPS: 2AFC agreement and JND average precision.

A metric is any callable ``metric(x, y) -> (N,)`` distances for ``x, y`` NHWC float images
``(N, H, W, 3)`` in ``[-1, 1]``, or the params of a metric of the family (``lpips_jax.load``:
LPIPS, ST-LPIPS, DISTS, E-LPIPS); :func:`l2` and :func:`dssim` (the paper's baselines) are
built in. A random metric (E-LPIPS) takes a ``key``: example ``i`` of a subset is scored
alone with ``jax.random.fold_in(key, i)``, so its value does not depend on the batch, the
devices or the processes; 2AFC scores both distances of a triplet with its key (common
random numbers: their comparison has less variance than with independent draws). Scores
follow the official ``score_2afc_dataset`` / ``score_jnd_dataset`` of ``lpips`` 0.1.4:

- 2AFC: ``mean((d0 < d1) * (1 - judge) + (d1 < d0) * judge + 0.5 * (d0 == d1))``.
- JND: VOC average precision (not the 2007 11-point variant) of ``same`` ranked by
  ascending distance.

Images are read from the tensorflow-datasets builder ``bapps`` (see
:mod:`lpips_jax.bapps`) as training reads them (:mod:`lpips_jax.bapps._examples`),
converted exactly as the official loader (``ToTensor`` then ``Normalize(0.5, 0.5)``), and
scored in fixed-size jitted batches (the last one padded), each split over the local
devices. Under ``jax.distributed`` each process scores a contiguous block of every subset
and every process returns the scores of all.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import lpips_jax
from lpips_jax import _checks, _sharding
from lpips_jax._checks import NETS
from lpips_jax._metric import _check_deterministic, _validate_params
from lpips_jax._outputs import progress_bar
from lpips_jax.bapps._examples import Examples, to_unit_official

Metric = Callable[[jax.Array, jax.Array], jax.Array]

TASKS = ("2afc", "jnd")

# skimage.color.rgb2lab (sRGB, D65, 2-degree observer).
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_D65 = (0.95047, 1.0, 1.08883)


# ----------------------------------------------------------------------------- scores


def score_2afc(d0: Any, d1: Any, judge: Any) -> float:
    """2AFC agreement with human judgments, as the official ``score_2afc_dataset``.

    Args:
      d0, d1: ``(N,)`` distances from the reference to ``p0`` and to ``p1``.
      judge: ``(N,)`` fraction of raters who found ``p1`` closer (in ``[0, 1]``).

    Returns:
      ``mean((d0 < d1) * (1 - judge) + (d1 < d0) * judge + 0.5 * (d0 == d1))`` in ``[0, 1]``.
    """
    d0, d1, gt = (np.asarray(a, np.float64).reshape(-1) for a in (d0, d1, judge))
    if not (d0.shape == d1.shape == gt.shape):
        raise ValueError(
            f"d0, d1 and judge must have the same length: got {d0.shape}, {d1.shape}, {gt.shape}"
        )
    if d0.size == 0:
        raise ValueError("score_2afc needs at least one triplet: got empty arrays")
    scores = (d0 < d1) * (1.0 - gt) + (d1 < d0) * gt + 0.5 * (d0 == d1)
    return float(np.mean(scores))


def voc_ap(rec: Any, prec: Any) -> float:
    """Area under the precision-recall curve, VOC style (not the 2007 11-point variant).

    Recall is padded with 0 and 1, precision with 0 and 0; precision is made
    non-increasing from the right; the area sums ``Δrecall * precision`` where recall changes.

    Args:
      rec, prec: ``(K,)`` recall (non-decreasing) and precision at each cut-off.
    """
    rec = np.concatenate(([0.0], np.asarray(rec, np.float64).reshape(-1), [1.0]))
    prec = np.concatenate(([0.0], np.asarray(prec, np.float64).reshape(-1), [0.0]))
    if rec.shape != prec.shape:
        raise ValueError(f"rec and prec must have the same length: got {rec.size - 2} and {prec.size - 2}")
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    changed = np.flatnonzero(rec[1:] != rec[:-1])
    return float(np.sum((rec[changed + 1] - rec[changed]) * envelope[changed + 1]))


def score_jnd(d: Any, same: Any) -> float:
    """JND score, as the official ``score_jnd_dataset``: VOC AP of ``same`` by ascending ``d``.

    Args:
      d: ``(N,)`` distances between the two patches of each pair.
      same: ``(N,)`` fraction of raters who found the pair identical (in ``[0, 1]``).

    Pairs are ranked by ``np.argsort(d)`` (numpy's default sort, not a stable one) as the
    official function, so tied distances (identical patches give exactly 0) score as there.
    """
    d = np.asarray(d, np.float64).reshape(-1)
    same = np.asarray(same, np.float64).reshape(-1)
    if d.shape != same.shape:
        raise ValueError(f"d and same must have the same length: got {d.shape} and {same.shape}")
    if d.size == 0:
        raise ValueError("score_jnd needs at least one pair: got empty arrays")
    if not np.sum(same) > 0:
        raise ValueError("score_jnd needs some pair with same > 0: recall is undefined otherwise")
    s = same[np.argsort(d)]
    tp = np.cumsum(s)
    fp = np.cumsum(1.0 - s)
    fn = np.sum(s) - tp
    # The official steps, rounding included: recall is tp / (tp + fn), not tp / sum(s).
    return voc_ap(tp / (tp + fn), tp / (tp + fp))


# ----------------------------------------------------------------------------- baselines


def _to_255(x: jax.Array) -> jax.Array:
    return (jnp.asarray(x, jnp.float32) + 1.0) * 127.5


def rgb_to_lab(rgb255: jax.Array) -> jax.Array:
    """sRGB in ``[0, 255]`` to CIE Lab (D65, 2°), as ``skimage.color.rgb2lab``: ``(..., 3)``."""
    c = jnp.clip(rgb255 / 255.0, 0.0, 1.0)
    lin = jnp.where(c > 0.04045, ((jnp.maximum(c, 0.04045) + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = jnp.einsum("...c,kc->...k", lin, jnp.asarray(_XYZ_FROM_RGB, jnp.float32))
    t = xyz / jnp.asarray(_D65, jnp.float32)
    f = jnp.where(t > 0.008856, jnp.cbrt(jnp.maximum(t, 0.008856)), 7.787 * t + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def _check_pair(x: Any, y: Any) -> tuple[jax.Array, jax.Array]:
    _checks.check_images(x, y)  # the metric's own checks of shape and dtype
    return jnp.asarray(x), jnp.asarray(y)


def _check_colorspace(colorspace: str) -> None:
    if colorspace not in ("Lab", "RGB"):
        raise ValueError(f"colorspace={colorspace!r} is not known: expected 'Lab' or 'RGB'")


def l2(x: Any, y: Any, *, colorspace: str = "Lab") -> jax.Array:
    """The paper's L2 baseline, as the official ``lpips.L2``.

    ``Lab``: ``0.5 * mean((lab(x) / 100 - lab(y) / 100) ** 2)``; ``RGB``:
    ``mean((x - y) ** 2)`` on the ``[-1, 1]`` values.

    Args:
      x, y: ``(N, H, W, 3)`` or ``(H, W, 3)`` float images in ``[-1, 1]``.

    Returns:
      ``(N,)`` or ``()`` float32.
    """
    _check_colorspace(colorspace)
    x, y = _check_pair(x, y)
    if colorspace == "RGB":
        return jnp.mean((x.astype(jnp.float32) - y.astype(jnp.float32)) ** 2, axis=(-3, -2, -1))
    lx, ly = rgb_to_lab(_to_255(x)), rgb_to_lab(_to_255(y))
    return 0.5 * jnp.mean((lx / 100.0 - ly / 100.0) ** 2, axis=(-3, -2, -1))


def _box_mean(a: jax.Array, win: int) -> jax.Array:
    """Mean over every ``win x win`` window fully inside ``a``: ``(N, H, W, C)`` -> valid."""
    s = jax.lax.reduce_window(a, 0.0, jax.lax.add, (1, win, win, 1), (1, 1, 1, 1), "VALID")
    return s / (win * win)


def ssim(
    x: Any,
    y: Any,
    *,
    colorspace: str = "Lab",
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> jax.Array:
    """SSIM index as ``skimage.metrics.structural_similarity`` with its defaults.

    Uniform ``win_size`` window, sample covariance, mean over the windows that lie fully
    inside the image and over channels; ``data_range`` is 100 in ``Lab`` and 255 in ``RGB``
    (the official ``lpips.DSSIM`` settings).

    Args:
      x, y: ``(N, H, W, 3)`` or ``(H, W, 3)`` float images in ``[-1, 1]``.

    Returns:
      ``(N,)`` or ``()`` float32 similarity (1 for identical images).
    """
    _check_colorspace(colorspace)
    x, y = _check_pair(x, y)
    unbatched = x.ndim == 3
    if unbatched:
        x, y = x[None], y[None]
    if min(x.shape[1:3]) < win_size:
        raise ValueError(f"images of size {x.shape[1:3]} are smaller than win_size={win_size}")
    a, b = _to_255(x), _to_255(y)
    if colorspace == "Lab":
        a, b, data_range = rgb_to_lab(a), rgb_to_lab(b), 100.0
    else:
        data_range = 255.0
    # Centre by one constant per image and channel: (co)variances are unchanged and less
    # cancellation-prone in float32; the means get the constant back.
    c = 0.5 * (jnp.mean(a, axis=(1, 2), keepdims=True) + jnp.mean(b, axis=(1, 2), keepdims=True))
    a0, b0 = a - c, b - c
    ma, mb = _box_mean(a0, win_size), _box_mean(b0, win_size)
    n = win_size * win_size
    cov = n / (n - 1.0)
    va = cov * (_box_mean(a0 * a0, win_size) - ma * ma)
    vb = cov * (_box_mean(b0 * b0, win_size) - mb * mb)
    vab = cov * (_box_mean(a0 * b0, win_size) - ma * mb)
    ua, ub = ma + c, mb + c
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    out = jnp.mean(s, axis=(1, 2, 3))
    return out[0] if unbatched else out


def dssim(x: Any, y: Any, *, colorspace: str = "Lab") -> jax.Array:
    """The paper's SSIM baseline as a distance, ``(1 - ssim) / 2`` (official ``lpips.DSSIM``).

    Returns:
      ``(N,)`` or ``()`` float32.
    """
    return (1.0 - ssim(x, y, colorspace=colorspace)) / 2.0


# ----------------------------------------------------------------------------- batching


@functools.partial(jax.jit, static_argnames=("pair",))
def _lpips_batch(params: Any, images: tuple[jax.Array, ...], pair: bool) -> tuple:
    # `pair`: JND (p0, p1) -> (d,); otherwise 2AFC (ref, p0, p1) -> (d0, d1).
    x = [to_unit_official(a) for a in images]
    if pair:
        # `distance` scores identical patches exactly 0, as JND's ties need, wherever they
        # sit in the batch.
        return (lpips_jax.distance(params, x[0], x[1]),)
    # All three images go through the trunk as one batch (one trunk in the compiled
    # program), the reference's features once. The images of an example are stacked next
    # to each other (not concatenated), so a batch split over devices needs no data from
    # another device.
    n = images[0].shape[0]
    stacked = jnp.stack(x, axis=1).reshape(n * 3, *images[0].shape[1:])
    taps = lpips_jax.features(params, stacked)
    fr, f0, f1 = (tuple(t.reshape(n, 3, *t.shape[1:])[:, i] for t in taps) for i in range(3))
    return lpips_jax.distance_from_features(params, fr, f0), lpips_jax.distance_from_features(params, fr, f1)


@functools.partial(jax.jit, static_argnames=("pair", "samples", "mesh"))
def _random_batch(
    params: Any, key: Any, images: tuple, rows: Any, *, pair: bool, samples: int, mesh: Any
) -> tuple:
    """A random metric's ``(d,)`` (JND) or ``(d0, d1)`` (2AFC): example ``n`` alone with the
    key ``fold_in(key, rows[n])``, one key for both distances of a triplet; split over ``mesh``."""
    x = [to_unit_official(a) for a in images]
    pairs = [(x[0], x[1])] if pair else [(x[0], x[1]), (x[0], x[2])]
    return _sharding.row_distances(params, key, rows, *pairs, samples=samples, mesh=mesh)


def _callable_batch(metric: Metric, jit: bool) -> Callable:
    def run(images: tuple, pair: bool) -> tuple:
        x = [to_unit_official(a) for a in images]
        if pair:
            return (metric(x[0], x[1]),)
        return (metric(x[0], x[1]), metric(x[0], x[2]))

    return jax.jit(run, static_argnames=("pair",)) if jit else run


def _batcher(metric: Any, jit: bool, dev: _sharding.LocalDevices, key: Any, samples: int) -> Callable:
    """``run(images, pair, rows)`` on a batch of numpy images, split over ``dev``'s devices;
    ``rows``: the examples' indices in their subset (the keys of a random metric's draws).
    ``metric``: a callable or validated params (:func:`resolve_metric`)."""
    if callable(metric):
        run = _callable_batch(metric, jit)
        return lambda images, pair, rows: run(dev.put(*images), pair)
    local_params = dev.replicate(metric)
    if getattr(metric, "random", False):
        local_key = dev.replicate(key)
        return lambda images, pair, rows: _random_batch(
            local_params,
            local_key,
            dev.put(*images),
            *dev.put(rows),
            pair=pair,
            samples=samples,
            mesh=dev.mesh,
        )
    return lambda images, pair, rows: _lpips_batch(local_params, dev.put(*images), pair)


def _distances(
    run: Callable, examples: Examples, rows: range, batch_size: int, bar: Any, dev: _sharding.LocalDevices
) -> tuple[tuple, np.ndarray]:
    """``((d0, d1) or (d,), labels)`` of the examples ``rows`` in padded fixed-size batches
    (``batch_size`` rounded up to a multiple of the device count)."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive int")
    batch_size = dev.batch_size(batch_size)
    pair = len(examples.parts) == 2
    outs: list[list[np.ndarray]] = []
    labels: list[np.ndarray] = []
    for lo in range(0, len(rows), batch_size):
        batch = examples.get(rows[lo : lo + batch_size])
        n = len(batch[examples.label])
        labels.append(batch[examples.label].astype(np.float64))
        index = _sharding.pad_rows(np.asarray(rows[lo : lo + batch_size], np.int32), batch_size)
        res = run(tuple(_sharding.pad_rows(batch[p], batch_size) for p in examples.parts), pair, index)
        if not outs:
            outs = [[] for _ in res]
        for acc, r in zip(outs, res, strict=False):
            r = np.asarray(r, np.float64).reshape(-1)
            if r.shape[0] != batch_size:
                raise ValueError(
                    f"the metric returned shape {np.shape(r)} for a batch of {batch_size}: "
                    f"expected ({batch_size},) distances"
                )
            acc.append(r[:n])
        bar.update(n)
    return tuple(np.concatenate(a) for a in outs), np.concatenate(labels)


def _shared_distances(
    run: Callable, examples: Examples, batch_size: int, bar: Any, dev: _sharding.LocalDevices, tag: str
) -> tuple[tuple, np.ndarray]:
    """:func:`_distances` of this process's block of ``examples``, then of all of them
    (every process's block, in order)."""
    mine = _sharding.block(len(examples))
    if len(mine):
        d, label = _distances(run, examples, mine, batch_size, bar, dev)
    else:  # more processes than examples
        d, label = (np.zeros(0),) * (len(examples.parts) - 1), np.zeros(0)
    parts = _sharding.exchange(tag, {"d": [a.tolist() for a in d], "label": label.tolist()})
    d = tuple(np.concatenate([np.asarray(p["d"][i], np.float64) for p in parts]) for i in range(len(d)))
    return d, np.concatenate([np.asarray(p["label"], np.float64) for p in parts])


# ----------------------------------------------------------------------------- evaluate


def resolve_metric(
    metric: Any, *, net: str = "alex", version: str = "0.1", variant: str = "vanilla"
) -> tuple[Any, str]:
    """A metric spec to ``(metric, name)``: params (validated), a callable, or a name.

    Names: ``"lpips"`` (``load(net, version, variant=variant)``; ``net="dists"`` for DISTS,
    ``"elpips"`` for E-LPIPS), ``"baseline"`` (``lpips=False``), ``"l2"``, ``"ssim"`` (Lab;
    ``"l2-rgb"``, ``"ssim-rgb"`` for RGB).
    """
    from lpips_jax import load

    if isinstance(metric, str):
        named = {
            "l2": functools.partial(l2, colorspace="Lab"),
            "l2-rgb": functools.partial(l2, colorspace="RGB"),
            "ssim": functools.partial(dssim, colorspace="Lab"),
            "ssim-rgb": functools.partial(dssim, colorspace="RGB"),
        }
        if metric == "lpips" and net in ("dists", "elpips"):
            return resolve_metric(load(net))
        if metric == "lpips":
            return resolve_metric(load(net, version, variant=variant))
        if metric == "baseline":
            return resolve_metric(load(net, version, lpips=False, variant=variant))
        if metric in named:
            return named[metric], metric
        raise ValueError(
            f"metric={metric!r} is not known: expected 'lpips', 'baseline', "
            f"{', '.join(map(repr, named))}, params from lpips_jax.load or a callable"
        )
    if callable(metric):
        return metric, getattr(metric, "__name__", type(metric).__name__)
    try:
        params = _validate_params(metric)
    except TypeError:
        raise TypeError(
            f"metric has type {type(metric).__name__}: expected params from lpips_jax.load, a "
            "callable (x, y) -> (N,) distances or a name ('lpips', 'baseline', 'l2', 'ssim', ...)"
        ) from None
    if params.net not in NETS:  # DISTS, E-LPIPS: their own names
        return params, params.net
    name = "lpips" if params.lpips else "baseline"
    return params, name if params.variant == "vanilla" else f"st-{name}"


def _check_draws(metric: Any, name: str, key: Any, samples: Any) -> None:
    """A random metric needs a key; the others take none (as ``lpips_jax.distance``)."""
    if getattr(metric, "random", False) and key is None:
        raise ValueError(
            f"metric {name!r} is random: pass key=jax.random.key(seed) (example i of a subset "
            "is scored with jax.random.fold_in(key, i))"
        )
    if not getattr(metric, "random", False):
        _check_deterministic(f"metric {name!r}", key, samples)


def _subsets(config: str, split: str, subsets: Iterable[str] | None, prepared: tuple[str, ...]):
    from lpips_jax.bapps import _layout

    if split not in _layout.SUBSETS[config]:
        raise ValueError(
            f"BAPPS {config} has no split {split!r}: expected one of {tuple(_layout.SUBSETS[config])}"
        )
    if subsets is None:
        return [s for s in _layout.SUBSETS[config][split] if f"{split}_{s}" in prepared]
    subsets = list(subsets)
    for s in subsets:
        _layout.check_subset(config, split, s)
    return subsets


def evaluate(
    metric: Any,
    *,
    data: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    tasks: Sequence[str] | None = None,
    split: str = "val",
    subsets: dict[str, Sequence[str]] | Sequence[str] | None = None,
    batch_size: int = 50,
    net: str = "alex",
    version: str = "0.1",
    variant: str = "vanilla",
    jit: bool = True,
    progress: bool | None = False,
    return_distances: bool = False,
    devices: int | None = None,
    key: Any = None,
    samples: int = 1,
) -> dict:
    """Score a metric on BAPPS: 2AFC per subset and JND per subset, with their means.

    Args:
      metric: params from :func:`lpips_jax.load` (LPIPS, ST-LPIPS, DISTS, E-LPIPS), a
        callable ``(x, y) -> (N,)`` (NHWC float in ``[-1, 1]``, jittable unless
        ``jit=False``), or a name: ``"lpips"``, ``"baseline"``, ``"l2"``, ``"ssim"``,
        ``"l2-rgb"``, ``"ssim-rgb"`` (``net``/``version``/``variant`` choose LPIPS or
        ST-LPIPS; ``net="dists"`` or ``"elpips"`` with ``"lpips"``: DISTS, E-LPIPS).
      data: the BAPPS manual directory (tarballs or official folder); it is prepared into
        ``data_dir`` first (a no-op when done). ``None``: use what ``data_dir`` holds.
      data_dir: tensorflow-datasets data directory (default: tfds' own).
      tasks: ``"2afc"`` and/or ``"jnd"`` (an error if one is not there); default: those
        with data (JND only for ``split="val"``: it has no train split).
      split: ``"val"`` (the paper's table) or ``"train"`` (2AFC only).
      subsets: which subsets (default: all prepared ones); a list, or a dict per task.
      batch_size: triplets per jitted batch.
      progress: a progress bar per subset on stderr (``None``: when stderr is a terminal).
      return_distances: also return ``"distances"``: per task and subset, the arrays
        ``d0, d1, judge`` (2AFC) or ``d, same`` (JND).
      devices: split each batch over the first ``devices`` local devices (``None``: all
        of them); ``batch_size`` is rounded up to a multiple of it. Under
        ``jax.distributed``, every process calls ``evaluate`` with the same arguments,
        scores a block of each subset on its own devices, and gets the scores of all.
      key: a ``jax.random`` key, required by a random metric (E-LPIPS), refused by the
        others. Example ``i`` of a subset (its index in the subset's order) is scored as a
        batch of 1 with ``jax.random.fold_in(key, i)``: its value does not depend on
        ``batch_size``, ``devices`` or the processes. 2AFC scores ``d(ref, p0)`` and
        ``d(ref, p1)`` with the same key (common random numbers), JND each pair with its own.
      samples: a random metric's draws per distance (their mean); 1 for the others.

    Returns:
      ``{"2afc": {subset: score, ..., "mean": m}, "jnd": {...}, "metric": name,
      "net": net or None, "version": version or None}``; ``"mean"`` is the plain mean
      over the scored subsets.
    """
    from lpips_jax import bapps
    from lpips_jax.bapps import _layout

    explicit = tasks is not None
    tasks = tuple(TASKS if tasks is None else tasks)
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"task {t!r} is not known: expected one of {TASKS}")
    if split not in ("val", "train"):
        raise ValueError(f"split={split!r} is not known: expected 'val' or 'train'")
    if split == "train":
        if explicit and "jnd" in tasks:
            raise ValueError("JND has no train split: use split='val' or tasks=('2afc',)")
        tasks = tuple(t for t in tasks if t != "jnd")
    metric, name = resolve_metric(metric, net=net, version=version, variant=variant)
    _check_draws(metric, name, key, samples)
    dev = _sharding.LocalDevices(devices)
    run = _batcher(metric, jit, dev, key, samples)
    if data is not None:
        found = bapps.available(data)
        configs = tasks if explicit else tuple(t for t in tasks if t in found)
        bapps.prepare(data, configs=configs or tasks, data_dir=data_dir)

    if subsets is not None and not isinstance(subsets, dict) and not explicit:
        # One list for all tasks: each task takes the names it has.
        subsets = list(subsets)
        have = {t: _layout.SUBSETS[t].get(split, ()) for t in tasks}
        unknown = [s for s in subsets if not any(s in h for h in have.values())]
        if unknown:
            raise ValueError(
                f"BAPPS {split} has no subset {unknown[0]!r}: expected one of "
                + ", ".join(f"{t} {h}" for t, h in have.items())
            )
        subsets = {t: [s for s in subsets if s in h] for t, h in have.items()}
    result: dict[str, Any] = {}
    dists: dict[str, Any] = {}
    todo = []
    for task in tasks:
        prepared = bapps.prepared_splits(task, data_dir=data_dir)
        wanted = subsets.get(task) if isinstance(subsets, dict) else subsets
        names = _subsets(task, split, wanted, prepared)
        if names or (explicit and wanted is None):
            todo.append((task, names, prepared))
    if not todo:
        raise _layout.BappsDataError(
            f"no prepared BAPPS data in data_dir={data_dir!r}: pass data=<BAPPS folder> "
            f"(lpips-jax eval --data DIR) to prepare it\n\n{_layout.INSTRUCTIONS}"
        )
    for task, names, prepared in todo:
        if not names:
            raise _layout.BappsDataError(
                f"no prepared BAPPS {task} {split} subsets in data_dir={data_dir!r} "
                f"(prepared: {prepared}); pass data=<BAPPS folder> to prepare them"
            )
        scores, per = {}, {}
        for subset in names:
            sname = _layout.split_name(split, subset)
            examples = Examples.from_splits(task, [sname], data_dir=data_dir)
            desc = f"{name} {task} {sname}"
            size = len(_sharding.block(len(examples)))
            with progress_bar(progress, size, desc=desc, unit="ex", leave=False) as bar:
                d, label = _shared_distances(run, examples, batch_size, bar, dev, desc)
            if task == "2afc":
                scores[subset] = score_2afc(d[0], d[1], label)
                per[subset] = {"d0": d[0], "d1": d[1], "judge": label}
            else:
                scores[subset] = score_jnd(d[0], label)
                per[subset] = {"d": d[0], "same": label}
        scores["mean"] = float(np.mean([scores[s] for s in names]))
        result[task] = scores
        dists[task] = per
    result["metric"] = name
    is_params = not callable(metric)
    result["net"] = metric.net if is_params else None
    result["version"] = metric.version if is_params and getattr(metric, "lpips", True) else None
    if return_distances:
        result["distances"] = dists
    return result


def format_table(result: dict) -> str:
    """A plain-text table of :func:`evaluate`'s scores (percent, as the paper)."""
    lines = []
    for task in TASKS:
        if task not in result:
            continue
        row = "  ".join(f"{k} {100 * v:.2f}" for k, v in result[task].items())
        lines.append(f"{task:5s} {row}")
    head = f"{result.get('metric')}"
    if result.get("net"):
        head += f" [{result['net']}" + (f" v{result['version']}]" if result.get("version") else "]")
    return "\n".join([head, *lines])
