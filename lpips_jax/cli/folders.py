"""``dirs`` and ``allpairs``: many pairs of image files, as a CSV and a mean.

Folders are read on worker threads while the devices compute, in batches of one image
size at a time, so each size compiles once; each batch is split over the local devices
(``--devices``). Under ``jax.distributed`` each process reads and compares its share of
the pairs, the shares meet in one exchange, and process 0 writes the CSV. An unreadable
image is reported at the end (``--keep-going``, the default; exit 1) or stops the run with
nothing written (``--no-keep-going``).

E-LPIPS (``--net elpips``) scores each pair alone (a batch of 1) with the key
``jax.random.fold_in(jax.random.key(--seed), i)``, ``i`` the pair's index in the command's
list of pairs (the CSV's row order when nothing fails), so a row's value does not depend on
``--batch-size``, ``--devices``, the processes or the other pairs of its batch.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import csv
import hashlib
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import lpips_jax
from lpips_jax import _sharding
from lpips_jax import io as lio
from lpips_jax.cli._batches import Batches, prefetch
from lpips_jax.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    PROG,
    InputError,
    UsageError,
    atomic_file,
    check_output,
    err,
    existing_folder,
    fmt,
    is_writer,
    load_params,
    parallel_options,
    positive_float,
    positive_int,
    progress,
)
from lpips_jax.cli._reading import (
    Notes,
    PairFailure,
    check_min_size,
    cross_jit,
    device_pixels,
    distance_jit,
    features01,
    features_jit,
    read_pair,
    row_distance_jit,
)

DEFAULT_BATCH = 16
# Memory allowed for the cached features of `allpairs` before it works block by block.
DEFAULT_FEATURE_MB = 2048


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``dirs`` and ``allpairs``; ``parents``: the model, reading and progress options."""
    parents = [*parents, _folder_options(), parallel_options()]
    p = sub.add_parser(
        "dirs",
        parents=parents,
        help="distances of same-named images in two folders",
        description="Compare every image file name present in both folders. CSV name,distance "
        "sorted by name (to -o, else stdout), then the mean alone on the last line of stdout. "
        "Names present in one folder only are listed on stderr. E-LPIPS (--net elpips): the "
        "pair of row i (0-based, in name order, of the names in both folders) is "
        "lpips_jax.distance(params, a, b, key=jax.random.fold_in(jax.random.key(SEED), i), "
        "samples=N), whatever the batch.",
    )
    p.add_argument("dir0", metavar="DIR0")
    p.add_argument("dir1", metavar="DIR1")
    p.set_defaults(func=cmd_dirs)

    p = sub.add_parser(
        "allpairs",
        parents=parents,
        help="distances of every pair of images in one folder",
        description="Compare every unordered pair of images in DIR (features are computed "
        "once per image). CSV a,b,distance (to -o, else stdout), then 'Avg: mean +/- "
        "stderr' as the official lpips_1dir_allpairs.py, and the mean alone on the last line. "
        "E-LPIPS (--net elpips) scores each pair directly: pair i (0-based, in the CSV's "
        "order; with --consecutive, names i and i+1) is lpips_jax.distance(params, a, b, "
        "key=jax.random.fold_in(jax.random.key(SEED), i), samples=N), whatever the batch.",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument(
        "--consecutive",
        action="store_true",
        help="only consecutive pairs in name order (the official script's default)",
    )
    p.add_argument(
        "--max-feature-mb",
        type=positive_float,
        default=DEFAULT_FEATURE_MB,
        help="memory for cached features before working block by block (default: "
        f"{DEFAULT_FEATURE_MB}; E-LPIPS caches none)",
    )
    p.set_defaults(func=cmd_allpairs)


def _folder_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-o", "--output", metavar="OUT.csv", help="write the CSV here")
    parent.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH,
        help=f"pairs per batch, rounded up to a multiple of the device count (default: {DEFAULT_BATCH})",
    )
    parent.add_argument(
        "--workers",
        type=positive_int,
        default=max(2, min(16, os.cpu_count() or 2)),
        help="image decoding threads (default: CPU count, 2 to 16)",
    )
    parent.add_argument(
        "--keep-going",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on an unreadable image, go on and report it at the end (default); "
        "--no-keep-going stops at the first and writes nothing",
    )
    return parent


def _image_names(folder: str) -> tuple[list[str], list[str]]:
    """Sorted image file names in ``folder`` and the names of other files (skipped)."""
    images, other = [], []
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith(".") or not e.is_file():
                continue
            (images if lio.is_image_file(e.name) else other).append(e.name)
    return sorted(images), sorted(other)


def _mean_stderr(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std() / np.sqrt(v.size))


def _summary(
    kind: str,
    done: int,
    failed: int,
    mean: float,
    se: float,
    extra: str = "",
) -> None:
    err(
        f"{kind}: {done} pair{'s' if done != 1 else ''} compared, {failed} failed{extra}; "
        f"mean {mean:.6g} +/- {se:.3g} (standard error)"
    )


def _report_failures(failures: dict[Any, str], label: Callable[[Any], str]) -> None:
    if failures:
        err(f"failed ({len(failures)}):")
        for key in sorted(failures):
            err(f"  {label(key)}: {failures[key]}")


def _run_pairs(
    args: argparse.Namespace,
    params: lpips_jax.LPIPSParams,
    pairs: list[tuple[int, Any, str, str]],
    desc: str,
    batch: int,
) -> tuple[dict, dict, Notes]:
    """Distances of ``pairs`` = ``[(row, key, path_a, path_b)]``: ``(results, failures,
    notes)`` by ``key``. ``row``: the pair's index in the command's whole list of pairs, the
    key of a random metric's draws (:func:`_reading._row_distances01`).

    ``batch``: pairs per batch before rounding to the devices (the same on every process,
    so that every process compiles the same shapes). Raises ``PairFailure`` at the first
    failure when ``--no-keep-going``.
    """
    results: dict[Any, float] = {}
    failures: dict[Any, str] = {}
    notes = Notes()
    dev = args.local
    bs = dev.batch_size(batch)
    local_params = dev.replicate(params)
    with (
        progress(args, len(pairs), "pair", desc) as bar,
        concurrent.futures.ThreadPoolExecutor(args.workers) as pool,
    ):

        def done(keys: list, out: Any) -> None:
            vals = np.asarray(out)
            for k, v in zip(keys, vals, strict=False):
                results[k] = float(v)
            bar.update(len(keys))

        def failed(keys: list, msg: str) -> None:
            for k in keys:
                failures[k] = msg
            bar.update(len(keys))
            if not args.keep_going:
                raise PairFailure(msg)

        if getattr(params, "random", False):
            base = dev.replicate(jax.random.key(args.seed))

            def compute(x, y, rows):
                return row_distance_jit(
                    local_params, *dev.put(x, y, rows), base, samples=args.samples, mesh=dev.mesh
                )
        else:

            def compute(x, y, rows):
                return distance_jit(local_params, *dev.put(x, y))

        batches = Batches(compute, bs, done, failed)

        def read(p: tuple) -> tuple:
            return read_pair(p[2], p[3], resize=args.resize, params=params)

        for (row, key, _, _), res, error in prefetch(pool, read, pairs, window=max(8, 4 * bs)):
            if error is not None:
                failed([key], str(error))
                continue
            x, y, infos = res
            notes.add(infos)
            batches.add(key, (x, y, np.asarray(row, np.int32)))
        batches.flush()
    return results, failures, notes


def _shared_pairs(
    args: argparse.Namespace, params: lpips_jax.LPIPSParams, pairs: list[tuple[Any, str, str]], desc: str
) -> tuple[dict, dict, Notes, str | None]:
    """:func:`_run_pairs` on this process's share of ``pairs`` (each with its index in
    ``pairs``), then every process's results: ``(results, failures, notes, first
    --no-keep-going stop or None)``."""
    stopped = None
    rows = [(i, *p) for i, p in enumerate(pairs)]
    try:
        results, failures, notes = _run_pairs(
            args, params, _sharding.share(rows), desc, min(args.batch_size, len(pairs))
        )
    except PairFailure as e:
        results, failures, notes, stopped = {}, {}, Notes(), str(e)
    names = [p[1:] for p in pairs]
    stopped, notes, t = _gather(desc, names, stopped, notes, results=results, failures=failures)
    return t["results"], t["failures"], notes, stopped


def _gather(
    tag: str, files: list, stopped: str | None, notes: Notes, **tables: dict
) -> tuple[str | None, Notes, dict[str, dict]]:
    """Every process's part of a run: the first stop message, the notes, and each table
    (a dict) merged over the processes. ``files``: what every process must have listed."""
    listed = hashlib.sha256(repr(files).encode("utf-8", "surrogateescape")).hexdigest()
    payload = {
        "files": listed,
        "stopped": stopped,
        "alpha": notes.alpha,
        "tables": {name: [[k, v] for k, v in t.items()] for name, t in tables.items()},
    }
    parts = _sharding.exchange(tag, payload)
    if any(p["files"] != listed for p in parts):
        raise InputError(
            f"{tag}: the processes found different files (process "
            f"{next(i for i, p in enumerate(parts) if p['files'] != listed)} differs from this one): "
            "every process must see the same folders"
        )
    merged, out = Notes(), {name: {} for name in tables}
    for p in parts:
        merged.add_paths(p["alpha"])
        for name, rows in p["tables"].items():
            for k, v in rows:
                out[name].setdefault(_tuple(k), _tuple(v))
    return next((p["stopped"] for p in parts if p["stopped"]), None), merged, out


def _tuple(v: Any) -> Any:
    """JSON's lists back to the tuples they were (keys, shapes)."""
    return tuple(v) if isinstance(v, list) else v


def cmd_dirs(args: argparse.Namespace) -> int:
    """``dirs DIR0 DIR1``: distances of the files with the same name in both folders."""
    d0, d1 = existing_folder(args.dir0), existing_folder(args.dir1)
    if is_writer():
        check_output(args.output, "-o")
    params = load_params(args)
    n0, skip0 = _image_names(d0)
    n1, skip1 = _image_names(d1)
    s0, s1 = set(n0), set(n1)
    common = sorted(s0 & s1)
    only = [(d0, n) for n in n0 if n not in s1] + [(d1, n) for n in n1 if n not in s0]
    for folder, name in only:
        err(f"only in {folder}: {name}")
    skipped = len(skip0) + len(skip1)
    if skipped:
        err(f"note: skipped {skipped} file(s) that are not images by their extension")
    if not common:
        err(f"{PROG} dirs: error: no image file name is present in both {d0} and {d1}")
        return EXIT_FAILED
    pairs = [(n, os.path.join(d0, n), os.path.join(d1, n)) for n in common]
    results, failures, notes, stopped = _shared_pairs(args, params, pairs, "dirs")
    if stopped:
        err(f"{PROG} dirs: error: {stopped} (stopped: --no-keep-going; nothing written)")
        return EXIT_FAILED
    notes.report()
    rows = [(n, fmt(results[n])) for n in common if n in results]
    _emit_csv(args.output, ("name", "distance"), rows)
    mean, se = _mean_stderr([results[n] for n in common if n in results])
    _report_failures(failures, str)
    _summary("dirs", len(rows), len(failures), mean, se, f", {len(only)} only in one folder")
    print(fmt(mean))
    return EXIT_FAILED if failures else EXIT_OK


def _emit_csv(path: str | None, header: tuple[str, ...], rows: list[tuple]) -> None:
    """The CSV to ``path`` (atomically) or, without ``-o``, to stdout; by process 0 only."""
    if not is_writer():
        return
    if path:
        # surrogateescape: file names that are not valid UTF-8 are written back as bytes
        with atomic_file(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
        err(f"wrote {path}: {len(rows)} row{'s' if len(rows) != 1 else ''}")
    else:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _feature_bytes(params: lpips_jax.LPIPSParams, w: int, h: int) -> int:
    """Bytes of the cached features of one ``w x h`` image."""
    m = lpips_jax.min_size(params.trunk_net)
    spec = jax.ShapeDtypeStruct((1, max(h, m), max(w, m), 3), np.float32)
    taps = jax.eval_shape(features01, params, spec)
    return sum(math.prod(t.shape) * t.dtype.itemsize for t in taps)


def _peek_area(paths: list[str], resize: Any) -> tuple[int, int]:
    """The largest ``(width, height)`` among the headers (only to size the feature cache)."""
    if isinstance(resize, tuple):
        return resize
    from PIL import Image

    best = (1, 1)
    for p in paths:
        try:
            with Image.open(p) as im:
                if im.size[0] * im.size[1] > best[0] * best[1]:
                    best = im.size
        except Exception:  # unreadable files are reported when they are read
            continue
    return best


def _tile_pairs(blocks: list[list[int]], tile: tuple[int, int]) -> int:
    a, b = len(blocks[tile[0]]), len(blocks[tile[1]])
    return a * (a - 1) // 2 if tile[0] == tile[1] else a * b


def _tiles_of_this_process(blocks: list[list[int]]) -> list[tuple[int, int]]:
    """This process's tiles ``(block i, block j >= i)``: the largest tile first to the
    process with the fewest pairs so far (the same plan on every process)."""
    tiles = [(i, j) for i in range(len(blocks)) for j in range(i, len(blocks))]
    load = [0] * jax.process_count()
    mine = []
    for t in sorted(tiles, key=lambda t: (-_tile_pairs(blocks, t), t)):
        p = load.index(min(load))
        load[p] += _tile_pairs(blocks, t)
        if p == jax.process_index():
            mine.append(t)
    return sorted(mine)


class _AllPairs:
    """Every unordered pair of ``paths``: features once per image, then pair distances.

    The list is cut into blocks and the triangle of pairs into tiles (a block against
    itself or a later block). Features are cached on the devices up to ``budget`` bytes;
    beyond that a tile's later block is recomputed for each earlier block. Under
    ``jax.distributed`` each process computes a set of tiles (about as many pairs each)
    and reads only the images of its tiles.
    """

    def __init__(self, args: argparse.Namespace, params: lpips_jax.LPIPSParams, paths: list[str]) -> None:
        self.args, self.params, self.paths = args, params, paths
        self.n = len(paths)
        self.results: dict[tuple[int, int], float] = {}
        self.image_failures: dict[int, str] = {}
        self.shapes: dict[int, tuple[int, ...]] = {}
        self.notes = Notes()
        self.dev = args.local
        self.local_params = self.dev.replicate(params)

    def run(self) -> str | None:
        """Compute this process's tiles, then gather every process's results; returns the
        first ``--no-keep-going`` stop message, or ``None``."""
        n, args = self.n, self.args
        w, h = _peek_area(self.paths, args.resize)
        per_image = max(1, _feature_bytes(self.params, w, h))
        cap = max(1, int(args.max_feature_mb * 2**20 // per_image))  # images that fit
        self.batch = self.dev.batch_size(max(1, min(args.batch_size, cap, n)))
        block = n if cap >= n else max(self.batch, cap // self.batch * self.batch)
        procs = jax.process_count()
        if procs > 1:  # 2 blocks a process at least: enough tiles to share out evenly
            block = min(block, -(-n // (2 * procs)))
        blocks = [list(range(s, min(s + block, n))) for s in range(0, n, block)]
        if cap < n and len(blocks) > 1:
            err(
                f"note: the features of {n} images need about "
                f"{n * per_image / 2**20:.0f} MB (more than --max-feature-mb "
                f"{args.max_feature_mb}): working in {len(blocks)} blocks of {block} images"
            )
        tiles = _tiles_of_this_process(blocks)
        needed = sorted({b for t in tiles for b in t})
        cache = {} if sum(len(blocks[b]) for b in needed) <= cap else None
        stopped = None
        try:
            with (
                progress(args, sum(_tile_pairs(blocks, t) for t in tiles), "pair", "allpairs") as self.bar,
                concurrent.futures.ThreadPoolExecutor(args.workers) as self.pool,
            ):
                for bi in sorted({t[0] for t in tiles}):
                    fi = self._block_features(blocks, bi, cache)
                    for bj in sorted(t[1] for t in tiles if t[0] == bi):
                        fj = fi if bj == bi else self._block_features(blocks, bj, cache)
                        self._pairs(fi, fj, same=bi == bj)
        except PairFailure as e:
            stopped = str(e)
        stopped, self.notes, t = _gather(
            "allpairs", self.paths, stopped, self.notes,
            results=self.results, image_failures=self.image_failures, shapes=self.shapes,
        )  # fmt: skip
        self.results, self.image_failures, self.shapes = t["results"], t["image_failures"], t["shapes"]
        return stopped

    def _block_features(self, blocks: list[list[int]], b: int, cache: dict | None) -> dict:
        if cache is None:
            return self._features(blocks[b])
        if b not in cache:
            cache[b] = self._features(blocks[b])
        return cache[b]

    def _features(self, indices: list[int]) -> dict[tuple, list]:
        """Per image shape, a list of ``(taps of one batch, [image indices])``."""
        out: dict[tuple, list] = {}

        def done(keys: list, taps: Any) -> None:
            out.setdefault(self.shapes[keys[0]], []).append((taps, keys))

        def failed(keys: list, msg: str) -> None:
            for k in keys:
                self._image_failed(k, msg)

        def compute(x: np.ndarray) -> tuple:
            return features_jit(self.local_params, *self.dev.put(x))

        batches = Batches(compute, self.batch, done, failed, depth=1)

        def read(i: int) -> tuple[np.ndarray, lio.ImageInfo]:
            a, info = lio.read_pixels(self.paths[i], resize=self.args.resize, return_info=True)
            check_min_size(self.paths[i], a, self.params)
            return device_pixels(a), info

        window = max(8, 4 * self.batch)
        for i, res, error in prefetch(self.pool, read, indices, window=window):
            if error is not None:
                self._image_failed(i, str(error))
                continue
            a, info = res
            self.notes.add([info])
            self.shapes[i] = a.shape
            batches.add(i, (a,))
        batches.flush()
        return out

    def _image_failed(self, i: int, msg: str) -> None:
        if i not in self.image_failures:
            self.image_failures[i] = msg
            if not self.args.keep_going:
                raise PairFailure(msg)

    def _pairs(self, fi: dict, fj: dict, *, same: bool) -> None:
        inflight: collections.deque = collections.deque()
        for shape in fi.keys() & fj.keys():
            for u, (ta, ka) in enumerate(fi[shape]):
                for v, (tb, kb) in enumerate(fj[shape]):
                    if (same and v < u) or (same and u == v and len(ka) < 2):
                        continue  # the lower triangle, or a lone image: no pairs here
                    inflight.append((cross_jit(self.local_params, ta, tb), ka, kb, same and u == v))
                    while len(inflight) > 2:
                        self._collect(*inflight.popleft())
        while inflight:
            self._collect(*inflight.popleft())

    def _collect(self, out: Any, ka: list[int], kb: list[int], diagonal: bool) -> None:
        d = np.asarray(out)
        count = 0
        for r, i in enumerate(ka):
            for c, j in enumerate(kb):
                if i == j or (diagonal and c <= r):
                    continue
                self.results[(min(i, j), max(i, j))] = float(d[r, c])
                count += 1
        self.bar.update(count)

    def pair_failures(self) -> dict[tuple[int, int], str]:
        """Failed pairs: different sizes (unreadable images are reported per image)."""
        out = {}
        ok = sorted(i for i in self.shapes if i not in self.image_failures)
        for x, i in enumerate(ok):
            for j in ok[x + 1 :]:
                if self.shapes[i] != self.shapes[j]:
                    a, b = self.shapes[i], self.shapes[j]
                    out[(i, j)] = (
                        f"sizes differ: {a[1]}x{a[0]} and {b[1]}x{b[0]} (width x height); "
                        "pass --resize WxH to compare them"
                    )
        return out


def _unordered_pairs(n: int) -> list[tuple[int, int]]:
    """Every ``(i, j)``, ``i < j < n``, in name order: the CSV's rows."""
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def cmd_allpairs(args: argparse.Namespace) -> int:
    """``allpairs DIR``: every unordered pair of images in the folder, and the mean."""
    folder = existing_folder(args.dir)
    if args.resize in ("a", "b"):
        raise UsageError(
            f"allpairs: --resize {args.resize} needs a pair order; use --resize WxH "
            "to bring every image to one size"
        )
    if is_writer():
        check_output(args.output, "-o")
    params = load_params(args)
    names, skipped = _image_names(folder)
    if skipped:
        err(f"note: skipped {len(skipped)} file(s) that are not images by their extension")
    if len(names) < 2:
        raise UsageError(f"folder {folder!r} holds {len(names)} image file(s): need at least 2")
    paths = [os.path.join(folder, n) for n in names]
    n = len(names)
    if args.consecutive or getattr(params, "random", False):
        # Pair by pair: E-LPIPS has no features of one image (each draw transforms a pair).
        order = [(i, i + 1) for i in range(n - 1)] if args.consecutive else _unordered_pairs(n)
        pairs = [((names[i], names[j]), paths[i], paths[j]) for i, j in order]
        results, failures, notes, stopped = _shared_pairs(args, params, pairs, "pairs")
        keys = [k for k, _, _ in pairs]
        n_pairs = len(pairs)
    else:
        job = _AllPairs(args, params, paths)
        stopped = job.run()
        if stopped:
            err(f"{PROG} allpairs: error: {stopped} (stopped: --no-keep-going; nothing written)")
            return EXIT_FAILED
        notes = job.notes
        n_pairs = n * (n - 1) // 2
        results = {(names[i], names[j]): v for (i, j), v in job.results.items()}
        failures = {(names[i], names[j]): m for (i, j), m in job.pair_failures().items()}
        bad = job.image_failures
        for i, msg in bad.items():
            err(f"failed: {msg} ({n - 1} pairs with {names[i]} skipped)")
        index_pairs = _unordered_pairs(n)
        keys = [(names[i], names[j]) for i, j in index_pairs]
        for i, j in index_pairs:
            if i in bad or j in bad:
                failures.setdefault((names[i], names[j]), "unreadable image (see above)")
    if stopped:  # pair by pair
        err(f"{PROG} allpairs: error: {stopped} (stopped: --no-keep-going; nothing written)")
        return EXIT_FAILED
    notes.report()
    rows = [(a, b, fmt(results[(a, b)])) for a, b in keys if (a, b) in results]
    _emit_csv(args.output, ("a", "b", "distance"), rows)
    mean, se = _mean_stderr([results[k] for k in keys if k in results])
    shown = {k: m for k, m in failures.items() if m != "unreadable image (see above)"}
    _report_failures(shown, lambda k: f"{k[0]}, {k[1]}")
    _summary("allpairs", len(rows), len(failures), mean, se, f" (of {n_pairs})")
    # As the official lpips_1dir_allpairs.py: "Avg: mean +/- stderr"; then the mean alone.
    print(f"Avg: {mean:.5f} +/- {se:.5f}")
    print(fmt(mean))
    return EXIT_FAILED if failures else EXIT_OK
