"""Reference values for tests/test_elpips.py from the authors' E-LPIPS code (TensorFlow).

    pip install tensorflow-cpu==2.21.0 numpy safetensors pillow   # a venv of its own
    python tests/data/elpips/make_refs.py --elpips PATH/elpips [--draws 20000]
    python tests/data/elpips/make_refs.py --elpips PATH/elpips --cases IN.npz --out OUT.npz

PATH/elpips is mkettune/elpips's ``elpips/`` folder (commit 9192007, BSD-2-Clause; not
in this repository). It runs under TensorFlow 2 through
``tf.compat.v1``, with its own heads (``vgg_full_avg.npy``) and the VGG16 trunk built from
our ``weights/vgg_trunk.safetensors`` (the one the official code is run with).

First form: writes ``refs.npz`` beside this file:
- parity cases at FIXED transformations chosen here (``CASES``): photographs
  (tests/data/lpips_examples, dists_examples, stored by path) and random pairs (stored as
  uint8) at several sizes, odd ones included; the transformation fed to the official
  ``Metric`` through its ``custom_sample_ensemble``; dropout off, or keep masks fed in place
  of its ``tf.random_uniform`` draws (masks from :func:`keep_masks`, a counter-based hash of
  a seed, so only the seed is stored). Stored: the distance ``(N,)`` and its gradient
  w.r.t. x (inputs in [0, 1]); for images above 128x128 the gradient's central 64x64 crop
  and its dot product with :func:`probe` instead of the whole array.
- the official sampler's empirical distribution: ``--draws`` runs of ``sample_ensemble``
  (``elpips_vgg``, 8 levels) at batch sizes 5 and 1, as count tables (:func:`summarize`).

Second form (tests' live comparison): evaluates the cases of ``IN.npz`` (same layout, no
outputs) and writes their values, gradients and transformed images to ``OUT.npz``.

Only numpy at import: tests import :func:`keep_masks`, :func:`probe`, :func:`summarize`,
:func:`conv_input_shapes` from this file.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent  # tests/data
REPO = HERE.parents[2]
KEEP = 0.99
OFFSET_MAX = 7
PERMUTATIONS = np.asarray(list(itertools.permutations(range(3))), np.int32)
# VGG16's convs (torchvision features index, input channels, resolution step).
CONVS = (
    (0, 3, 0), (2, 64, 0), (5, 64, 1), (7, 128, 1), (10, 128, 2), (12, 256, 2), (14, 256, 2),
    (17, 256, 3), (19, 512, 3), (21, 512, 3), (24, 512, 4), (26, 512, 4), (28, 512, 4),
)  # fmt: skip
FIELDS = ("level", "scale_offset", "offset", "flips", "swap", "perms", "colors")
BIG = 128 * 128  # above this many pixels, store a crop and a projection of the gradient


# --- numpy helpers (shared with the tests) ---------------------------------------------


def transformed_size(h: int, w: int, level: int, swap: int) -> tuple[int, int]:
    """The network input's (h, w) in the official code: scale step, offset pad, swap."""
    h, w = (h + 2 * level - 2) // level + OFFSET_MAX, (w + 2 * level - 2) // level + OFFSET_MAX
    return (w, h) if swap else (h, w)


def conv_input_shapes(n: int, h: int, w: int) -> list[tuple[int, int, int, int]]:
    """``(n, h_k, w_k, C_k)`` of each conv's input for an ``h x w`` network input."""
    out = []
    for _, c, step in CONVS:
        hh, ww = h, w
        for _ in range(step):
            hh, ww = hh // 2, ww // 2
        out.append((n, hh, ww, c))
    return out


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniform(seed: int, stream: int, size: int) -> np.ndarray:
    """``size`` uniforms in [0, 1) from a counter-based hash: the same on any numpy."""
    base = np.uint64(seed) * np.uint64(1 << 40) + np.uint64(stream) * np.uint64(1 << 32)
    with np.errstate(over="ignore"):
        bits = _splitmix64(base + np.arange(size, dtype=np.uint64))
    return (bits >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def keep_masks(seed: int, shapes) -> list[np.ndarray]:
    """Dropout keep masks (bool, P(keep) = 0.99) of the given shapes, from ``seed``."""
    return [(_uniform(seed, j, int(np.prod(s))) < KEEP).reshape(s) for j, s in enumerate(shapes)]


def probe(seed: int, shape) -> np.ndarray:
    """A fixed float64 array in [-1, 1) to project a gradient on."""
    return (2 * _uniform(seed, 255, int(np.prod(shape))) - 1).reshape(shape)


def read_png(rel: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(DATA / rel).convert("RGB"), np.uint8)


def case_images(refs, name: str) -> tuple[np.ndarray, np.ndarray]:
    """x, y of a case as float32 in [0, 1]: stored uint8, or PNG paths under tests/data."""
    out = []
    for side in ("x", "y"):
        if f"{name}/{side}" in refs:
            u8 = refs[f"{name}/{side}"]
        else:
            u8 = np.stack([read_png(str(p)) for p in refs[f"{name}/{side}_png"]])
        out.append(u8.astype(np.float32) / 255)
    return out[0], out[1]


def summarize(t: dict) -> dict[str, np.ndarray]:
    """Count tables of many draws (arrays with a leading draws axis, the official tuple's
    meaning; ``perms`` as (draws, N, 3) channel orders) for the statistical tests."""
    level, so, off, flips = t["level"], t["scale_offset"], t["offset"], t["flips"]
    swap, perms, colors = t["swap"], t["perms"], t["colors"]
    draws, n = flips.shape
    lv = level.astype(int) - 1
    out = {"draws": np.asarray(draws)}
    out["level"] = np.bincount(lv, minlength=8)
    so_tab = np.zeros((8, 8, 2), np.int64)  # level, value, axis
    for a in range(2):
        np.add.at(so_tab, (lv, so[:, a].astype(int), a), 1)
    out["scale_offset"] = so_tab
    off_tab = np.zeros((n, 8, 2), np.int64)  # position, value, axis
    for a in range(2):
        for i in range(n):
            off_tab[i, :, a] = np.bincount(off[:, i, a], minlength=8)
    out["offset"] = off_tab
    out["offset_joint"] = np.bincount((off[:, :, 0] * 8 + off[:, :, 1]).ravel(), minlength=64).reshape(8, 8)
    out["flips"] = np.stack([np.bincount(flips[:, i], minlength=4) for i in range(n)])
    counts = np.stack([(flips == s).sum(1) for s in range(4)], axis=1)  # draws x state
    out["flip_state_counts"] = np.stack([np.bincount(counts[:, s], minlength=n + 1) for s in range(4)])
    out["swap"] = np.bincount(swap, minlength=2)
    pidx = np.zeros(perms.shape[:2], int)
    for k, p in enumerate(PERMUTATIONS):
        pidx[np.all(perms == p, axis=-1)] = k
    out["perms"] = np.stack([np.bincount(pidx[:, i], minlength=6) for i in range(n)])
    pc = np.stack([(pidx == k).sum(1) for k in range(6)], axis=1)
    out["perm_state_counts"] = np.stack([np.bincount(pc[:, k], minlength=n + 1) for k in range(6)])
    u = (colors.astype(np.float64) - 0.2) / 0.8  # back to [0, 1)
    strata = np.clip(np.floor(u * n).astype(int), 0, n - 1)  # draws, N, 3
    out["color_strata_ok"] = np.asarray(
        int(np.sum(np.all(np.sort(strata, axis=1) == np.arange(n)[:, None], axis=1)))
    )
    out["color_hist"] = np.stack(
        [[np.histogram(u[:, i, c], bins=10, range=(0, 1))[0] for c in range(3)] for i in range(n)]
    )
    # within-stratum position (u * n mod 1): uniform if each stratum is sampled uniformly
    out["color_frac_hist"] = np.histogram(np.mod(u * n, 1).ravel(), bins=10, range=(0, 1))[0]
    out["color_rg_strata"] = np.bincount(strata[:, 0, 0] * n + strata[:, 0, 1], minlength=n * n).reshape(n, n)
    out["color_min"], out["color_max"] = np.asarray(colors.min()), np.asarray(colors.max())
    return out


# --- the parity cases --------------------------------------------------------------------


def _rand_pair(seed: int, n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A random uint8 pair: smooth random images and a noisy, shifted-colour copy."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, h // 8 + 2, w // 8 + 2, 3))
    x = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :h, :w]
    x = np.clip(x + rng.normal(0, 20, x.shape), 0, 255)
    y = np.clip(x * 0.9 + 12 + rng.normal(0, 15, x.shape), 0, 255)
    return x.astype(np.uint8), y.astype(np.uint8)


def _t(level, scale_offset, offset, flips, swap, perms, colors) -> dict:
    return {
        "level": np.asarray(level, np.int32), "scale_offset": np.asarray(scale_offset, np.int32),
        "offset": np.asarray(offset, np.int32), "flips": np.asarray(flips, np.int32),
        "swap": np.asarray(swap, np.int32), "perms": np.asarray(perms, np.int32),
        "colors": np.asarray(colors, np.float32),
    }  # fmt: skip


def cases() -> dict[str, dict]:
    """The stored parity cases: images, the fixed transformation, dropout seed (or -1)."""
    photos = {
        "x_png": ["lpips_examples/ex_p0.png", "lpips_examples/ex_p1.png"],
        "y_png": ["lpips_examples/ex_ref.png", "lpips_examples/ex_ref.png"],
    }
    dists = {"x_png": ["dists_examples/r1.png"], "y_png": ["dists_examples/r0.png"]}
    # name: images, dropout seed, then _t(level, scale_offset, offset, flips, swap, perms, colors)
    fixed = {
        "photo64": (photos, -1, _t(
            1, [0, 0], [[3, 5], [0, 7]], [0, 2], 0,
            [[2, 0, 1], [1, 2, 0]], [[0.3, 0.9, 0.55], [0.75, 0.25, 1.0]])),
        "photo64_s3": (photos, 11, _t(
            3, [2, 1], [[7, 1], [4, 4]], [1, 3], 1,
            [[0, 2, 1], [2, 1, 0]], [[0.9, 0.4, 0.6], [0.5, 0.95, 0.21]])),
        # the smallest map: 64 -> 9 pixels, 16 with the offset pad
        "photo64_s8": (photos, 16, _t(
            8, [7, 0], [[0, 3], [6, 2]], [3, 0], 1,
            [[1, 0, 2], [0, 1, 2]], [[0.2, 0.61, 0.34], [0.88, 0.47, 0.73]])),
        "dists256_s2": (dists, 12, _t(
            2, [1, 0], [[2, 6]], [2], 1, [[1, 0, 2]], [[0.62, 0.33, 0.87]])),
    }  # fmt: skip
    out = {name: {**images, "dropout_seed": ds, **t} for name, (images, ds, t) in fixed.items()}
    specs = {  # name: image seed, (n, h, w), dropout seed, transformation
        "rand64": (1, (3, 64, 64), 13, _t(
            1, [0, 0], [[0, 0], [7, 7], [2, 5]], [0, 1, 3], 1,
            [[0, 1, 2], [1, 0, 2], [2, 1, 0]], [[1, 1, 1], [0.2, 0.5, 0.8], [0.45, 0.7, 0.3]])),
        "rand67x93": (2, (2, 67, 93), -1, _t(
            2, [1, 1], [[5, 2], [1, 6]], [2, 0], 1,
            [[1, 2, 0], [0, 1, 2]], [[0.8, 0.3, 0.6], [0.4, 0.9, 0.7]])),
        "rand128x96": (3, (2, 128, 96), 14, _t(
            5, [4, 2], [[6, 3], [0, 1]], [3, 1], 1,
            [[2, 0, 1], [0, 2, 1]], [[0.22, 0.66, 0.99], [0.5, 0.5, 0.35]])),
        "rand67x93_s6": (4, (1, 67, 93), 15, _t(
            6, [5, 3], [[4, 0]], [0], 0, [[1, 2, 0]], [[0.7, 0.28, 0.5]])),
    }  # fmt: skip
    for name, (seed, (n, h, w), ds, t) in specs.items():
        x, y = _rand_pair(seed, n, h, w)
        out[name] = {"x": x, "y": y, "dropout_seed": ds, **t}
    return out


def flatten_cases(cs: dict[str, dict]) -> dict[str, np.ndarray]:
    flat = {"cases": np.asarray(sorted(cs))}
    for name, c in cs.items():
        for k, v in c.items():
            flat[f"{name}/{k}"] = np.asarray(v)
    return flat


# --- TensorFlow ----------------------------------------------------------------------


class _Feeder:
    """Stands for the ``tensorflow`` module inside the official ``networks.py``: its
    ``random_uniform`` (only the dropout draws call it there) returns the next fixed
    array, 0 where a value is kept and 1 where dropped (kept iff u < 0.99)."""

    def __init__(self, tf1, arrays):
        self._tf, self._arrays = tf1, list(arrays)

    def random_uniform(self, shape, dtype=None, **kw):
        return self._tf.constant(self._arrays.pop(0))

    def __getattr__(self, name):
        return getattr(self._tf, name)


def _import_elpips(path: Path):
    import tensorflow.compat.v1 as tf1

    tf1.disable_v2_behavior()
    sys.modules["tensorflow"] = tf1  # the reference imports `tensorflow`, uses the v1 API
    sys.path.insert(0, str(path.resolve().parent))
    import elpips  # noqa: F401
    from elpips import elpips as core
    from elpips import networks

    return tf1, elpips, core, networks


def trunk_dict(path: Path) -> dict[str, np.ndarray]:
    """torchvision-indexed ``{"i.weight": HWIO, "i.bias": (C,)}`` from our vgg_trunk file."""
    from safetensors.numpy import load_file

    out = {}
    for k, v in load_file(str(path)).items():
        _, layer, kind = k.split("/")  # trunk/features_{i}/{kernel,bias}
        out[f"{layer.split('_')[1]}.{'weight' if kind == 'kernel' else 'bias'}"] = v.astype(np.float32)
    return out


def evaluate(ref, names, feats, path: Path) -> dict[str, np.ndarray]:
    """Run the official Metric on each case of ``ref`` (a mapping of flat arrays)."""
    tf1, elpips, core, networks = _import_elpips(path)
    out = {}
    for name in names:
        x, y = case_images(ref, name)
        n, h, w, _ = x.shape
        t = {k: np.asarray(ref[f"{name}/{k}"]) for k in FIELDS}
        seed = int(ref[f"{name}/dropout_seed"])
        tf1.reset_default_graph()
        config = elpips.elpips_vgg(batch_size=n, n=1)
        config.enable_dropout = seed >= 0
        perms_flat = (t["perms"] + 3 * np.arange(n, dtype=np.int32)[:, None]).reshape(-1)

        def fixed(cfg, t=t, perms_flat=perms_flat):
            c = lambda a, dt=tf1.int32: tf1.constant(np.asarray(a), dtype=dt)  # noqa: E731
            colors = c(t["colors"].reshape(n, 1, 1, 3), tf1.float32)
            return (c(t["offset"]), c(t["flips"]), c(t["swap"]), colors, c(perms_flat),
                    c(t["scale_offset"]), c(t["level"]))  # fmt: skip

        if seed >= 0:
            hw = transformed_size(h, w, int(t["level"]), int(t["swap"]))
            masks = keep_masks(seed, conv_input_shapes(n, *hw))
            networks.tf = _Feeder(tf1, [np.where(m, 0.0, 1.0).astype(np.float32) for m in masks])
        else:
            networks.tf = tf1
        metric = core.Metric(
            config, back_prop=True, custom_net_weights=dict(feats), custom_sample_ensemble=fixed
        )
        p0 = tf1.placeholder(tf1.float32, x.shape)
        p1 = tf1.placeholder(tf1.float32, y.shape)
        d = metric.forward(p0, p1)
        g = tf1.gradients(tf1.reduce_sum(d), p0)[0]
        tx = core.apply_ensemble(config, fixed(config), p0)
        with tf1.Session() as sess:
            dv, gv, txv = sess.run([d, g, tx], {p0: x, p1: y})
        networks.tf = tf1
        out[f"{name}/value"] = dv.astype(np.float32)
        if h * w > BIG:
            c0, c1 = (h - 64) // 2, (w - 64) // 2
            out[f"{name}/grad_crop"] = gv[:, c0 : c0 + 64, c1 : c1 + 64].astype(np.float32)
            out[f"{name}/grad_crop_at"] = np.asarray([c0, c1], np.int32)
            out[f"{name}/grad_probe"] = np.asarray(np.sum(gv.astype(np.float64) * probe(0, gv.shape)))
            out[f"{name}/grad_abs_sum"] = np.asarray(np.sum(np.abs(gv.astype(np.float64))))
        else:
            out[f"{name}/grad"] = gv.astype(np.float32)
        out[f"{name}/transformed"] = txv.astype(np.float32)
        print(f"{name}: {x.shape} level {int(t['level'])} dropout {seed >= 0}: {dv}", flush=True)
    return out


def sample_draws(path: Path, n: int, draws: int) -> dict[str, np.ndarray]:
    """``draws`` runs of the official ``sample_ensemble`` (elpips_vgg, batch ``n``)."""
    tf1, elpips, core, _ = _import_elpips(path)
    tf1.reset_default_graph()
    config = elpips.elpips_vgg(batch_size=n, n=1)
    k = 250  # draws per session run, as independent copies of the sampling graph
    graphs = [core.sample_ensemble(config) for _ in range(k)]
    rows = {f: [] for f in FIELDS}
    with tf1.Session() as sess:
        for _ in range(-(-draws // k)):
            for offset, flips, swap, colors, perms, so, level in sess.run(graphs):
                rows["offset"].append(offset)
                rows["flips"].append(flips)
                rows["swap"].append(swap)
                rows["colors"].append(colors.reshape(n, 3))
                rows["perms"].append(perms.reshape(n, 3) - 3 * np.arange(n)[:, None])
                rows["scale_offset"].append(so)
                rows["level"].append(level)
    return {f: np.stack(v)[:draws] for f, v in rows.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elpips", required=True, help="the official elpips/ folder")
    ap.add_argument("--weights", default=str(REPO / "weights" / "vgg_trunk.safetensors"))
    ap.add_argument("--cases", help="evaluate the cases of this npz (live comparison)")
    ap.add_argument("--out", default=str(HERE / "refs.npz"))
    ap.add_argument("--draws", type=int, default=20000)
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    path, feats = Path(args.elpips), trunk_dict(Path(args.weights))
    if args.cases:
        with np.load(args.cases, allow_pickle=False) as f:
            ref = dict(f)
        np.savez(args.out, **evaluate(ref, [str(c) for c in ref["cases"]], feats, path))
        return 0
    flat = flatten_cases(cases())
    flat.update(evaluate(flat, [str(c) for c in flat["cases"]], feats, path))
    for n in (5, 1):
        stats = summarize(sample_draws(path, n, args.draws))
        flat.update({f"official_n{n}/{k}": v for k, v in stats.items()})
        print(f"sampler n={n}: levels {stats['level']}", flush=True)
    flat = {k: v for k, v in flat.items() if not k.endswith("/transformed") or k.startswith("rand67x93/")}
    np.savez_compressed(args.out, **flat)
    print(f"wrote {args.out}: {os.path.getsize(args.out)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
