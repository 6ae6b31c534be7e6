"""``lpips-jax``: LPIPS distances of image files from the shell.

Commands (each has ``--net``, ``--version``, ``--help``; defaults alex / 0.1)::

    lpips-jax dist A B [--json]                 distance of two images (stdout: the number)
    lpips-jax dirs DIR0 DIR1 [-o OUT.csv]       same-named files of two folders
    lpips-jax allpairs DIR [-o OUT.csv]         every unordered pair of images in a folder
    lpips-jax map A B -o MAP.png [--overlay]    spatial distance map as a colour heat map
    lpips-jax convert ...                       PyTorch checkpoints -> params (python -m convert)

Every image is read by :func:`lpips_jax.io.read_pixels` (what :func:`lpips_jax.read_image`
reads, before the scaling to ``[0, 1]``) and compared by one ``jax.jit`` of
``lpips_jax.distance(params, to_unit(x), to_unit(y), normalize=True)`` (``distance_map`` for
``map``), so the numbers printed equal the library's on ``read_image`` arrays. 8-bit pairs
travel to the device as uint8 (a quarter of the bytes) and are scaled there; other pairs
as float32. Folders are read on worker threads while the device computes, in batches of
one image size at a time, so each size compiles once.

Exit codes: 0 ok, 1 some inputs failed (unreadable, wrong size, too small), 2 usage
errors (bad options, a folder that does not exist, weights that cannot be loaded).
Messages go to stderr; results to stdout and the ``-o`` files, which are written whole or
not at all.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import csv
import importlib
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np

import lpips_jax
from lpips_jax import _heatmap
from lpips_jax import io as lio

PROG = "lpips-jax"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_BATCH = 16
# Memory allowed for the cached features of `allpairs` before it works block by block.
DEFAULT_FEATURE_MB = 2048


class UsageError(Exception):
    """A bad option, a missing folder, weights that cannot be loaded: exit code 2."""


class InputError(Exception):
    """An input image of ``dist``/``map`` failed: exit code 1."""


class _PairFailure(Exception):
    """One pair (or image) of a run failed; the message names the file(s)."""


# ---------------------------------------------------------------------------------------
# The jitted computations: params are an argument (not constants); one compile per shape.


def _distance01(params: lpips_jax.LPIPSParams, x: jax.Array, y: jax.Array) -> jax.Array:
    """``(N,)`` distances of ``(N, H, W, 3)`` pixels (uint8, or float32 in ``[0, 1]``)."""
    return lpips_jax.distance(params, lio.to_unit(x), lio.to_unit(y), normalize=True)


def _map01(params: lpips_jax.LPIPSParams, x: jax.Array, y: jax.Array) -> jax.Array:
    """``(N, H, W)`` distance maps of ``(N, H, W, 3)`` pixels."""
    return lpips_jax.distance_map(params, lio.to_unit(x), lio.to_unit(y), normalize=True)


def _features01(params: lpips_jax.LPIPSParams, x: jax.Array) -> tuple[jax.Array, ...]:
    """Normalised taps, each ``(N, h, w, C)``, of ``(N, H, W, 3)`` pixels."""
    return lpips_jax.features(params, lio.to_unit(x), normalize=True)


def _cross(params: lpips_jax.LPIPSParams, fa: tuple, fb: tuple) -> jax.Array:
    """``(B, B')`` distances between every image of ``fa`` and every image of ``fb``.

    ``fa``, ``fb``: feature taps of ``B`` and ``B'`` images. One row at a time
    (``lax.map``), so the memory held is that of ``B'`` pairs, not ``B * B'``.
    """

    def row(f_i):
        return lpips_jax.distance_from_features(params, tuple(t[None] for t in f_i), fb)

    return jax.lax.map(row, fa)


_distance_jit = jax.jit(_distance01)
_map_jit = jax.jit(_map01)
_features_jit = jax.jit(_features01)
_cross_jit = jax.jit(_cross)


# ---------------------------------------------------------------------------------------
# Small helpers.


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt(v: float) -> str:
    """A distance as text: the shortest decimal that reads back as the same float32."""
    v = np.float32(v)
    return "nan" if not np.isfinite(v) else str(v)


def _wxh(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]}"


def parse_resize(text: str) -> str | tuple[int, int]:
    """``--resize`` value: ``"a"``, ``"b"`` or ``(width, height)`` from ``"WxH"``."""
    t = text.strip().lower()
    if t in ("a", "b"):
        return t
    m = re.fullmatch(r"(\d+)x(\d+)", t)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a (resize B to A's size), b (A to B's size) or WxH, e.g. 256x256"
        )
    return int(m[1]), int(m[2])


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number in [0, 1]")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number")
    return v


def _check_min_size(path: str, a: np.ndarray, net: str) -> None:
    m = lpips_jax.min_size(net)
    if a.shape[0] < m or a.shape[1] < m:
        raise _PairFailure(
            f"{path} is {_wxh(a)}: net {net!r} needs images of at least {m}x{m} pixels "
            f"(minimum sizes: " + ", ".join(f"{n} {lpips_jax.min_size(n)}" for n in lpips_jax.NETS) + ")"
        )


def _device_pixels(a: np.ndarray) -> np.ndarray:
    """8-bit pixels stay uint8 (scaled on the device); others become float32 in [0, 1]."""
    return a if a.dtype == np.uint8 else lio.to_unit(a)


def read_pair(
    path_a: str, path_b: str, *, resize: Any, net: str
) -> tuple[np.ndarray, np.ndarray, list[lio.ImageInfo]]:
    """Read two images for comparison: two ``(H, W, 3)`` arrays of the same shape and dtype.

    Both uint8 (8-bit files) or both float32 in ``[0, 1]``; ``lio.to_unit`` of each is
    ``read_image`` of its file. ``resize``: ``None`` (sizes must match), ``"a"`` (B
    resized to A's size), ``"b"`` (A to B's) or ``(width, height)`` (both). Raises
    :class:`lpips_jax.io.ImageError` or :class:`_PairFailure` (different sizes, smaller
    than the net's minimum).
    """
    if resize == "b":
        b, ib = lio.read_pixels(path_b, return_info=True)
        a, ia = lio.read_pixels(path_a, resize=(b.shape[1], b.shape[0]), return_info=True)
    else:
        size = resize if isinstance(resize, tuple) else None
        a, ia = lio.read_pixels(path_a, resize=size, return_info=True)
        if resize == "a":
            size = (a.shape[1], a.shape[0])
        b, ib = lio.read_pixels(path_b, resize=size, return_info=True)
    if a.dtype != b.dtype or a.dtype != np.uint8:
        a, b = lio.to_unit(a), lio.to_unit(b)
    if a.shape != b.shape:
        raise _PairFailure(
            f"sizes differ: {path_a} is {_wxh(a)} but {path_b} is {_wxh(b)} (width x height); "
            "pass --resize a (B to A's size), --resize b (A to B's) or --resize WxH"
        )
    _check_min_size(path_a, a, net)
    return a, b, [ia, ib]


class _Notes:
    """Things to tell the user once per run (alpha channels dropped)."""

    def __init__(self) -> None:
        self.alpha: list[str] = []

    def add(self, infos: Iterable[lio.ImageInfo]) -> None:
        for info in infos:
            if info.alpha_dropped and info.path not in self.alpha:
                self.alpha.append(info.path)

    def report(self) -> None:
        if self.alpha:
            n = len(self.alpha)
            more = f" and {n - 1} more" if n > 1 else ""
            _err(
                f"note: ignored the alpha channel of {n} image{'s' if n > 1 else ''} "
                f"({self.alpha[0]}{more}): LPIPS compares RGB only"
            )


def _load_params(args: argparse.Namespace) -> lpips_jax.LPIPSParams:
    try:
        if args.weights:
            return lpips_jax.load(args.net, version=args.version, path=args.weights)
        return lpips_jax.load(args.net or "alex", version=args.version or "0.1")
    except (lpips_jax.WeightsError, FileNotFoundError, ValueError) as e:
        raise UsageError(f"cannot load weights: {e}") from e


def _check_output(path: str | None, what: str) -> None:
    """Fail early (exit 2) when ``path`` cannot be written, before any computing."""
    if path is None:
        return
    if os.path.isdir(path):
        raise UsageError(f"{what} {path!r} is a folder: expected a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{what} {path!r}: folder {parent!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{what} {path!r}: folder {parent!r} is not writable")


@contextlib.contextmanager
def _atomic_file(path: str, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Write ``path`` whole or not at all: a temp file in the same folder, then rename."""
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".partial")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _folder(path: str) -> str:
    if not os.path.exists(path):
        raise UsageError(f"folder {path!r} does not exist")
    if not os.path.isdir(path):
        raise UsageError(f"{path!r} is not a folder")
    return path


def _image_names(folder: str) -> tuple[list[str], list[str]]:
    """Sorted image file names in ``folder`` and the names of other files (skipped)."""
    images, other = [], []
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith(".") or not e.is_file():
                continue
            (images if lio.is_image_file(e.name) else other).append(e.name)
    return sorted(images), sorted(other)


def _progress(args: argparse.Namespace, total: int, unit: str, desc: str) -> Any:
    from tqdm import tqdm

    disable = not sys.stderr.isatty() if args.progress is None else not args.progress
    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=disable, dynamic_ncols=True)


def _prefetch(
    pool: concurrent.futures.Executor, fn: Callable, items: Iterable, window: int
) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """``(item, fn(item), None)`` or ``(item, None, error)`` in order, ``window`` in flight.

    ``fn`` runs on the pool's threads (Pillow decodes without holding the GIL) while the
    caller feeds the device. Only the expected read errors are caught; others propagate.
    """
    it = iter(items)
    pending: collections.deque = collections.deque()
    try:
        for item in it:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= window:
                break
        while pending:
            item, fut = pending.popleft()
            nxt = next(it, _END)
            if nxt is not _END:
                pending.append((nxt, pool.submit(fn, nxt)))
            try:
                yield item, fut.result(), None
            except (lio.ImageError, _PairFailure) as e:
                yield item, None, e
    finally:
        for _, fut in pending:
            fut.cancel()


_END = object()


class _Batches:
    """Runs ``compute`` on fixed-size batches of same-shape items.

    ``add(key, arrays)`` queues one item; when ``batch_size`` items of one shape are
    queued, they are stacked and ``compute(*stacked)`` is dispatched (asynchronously);
    ``flush()`` pads the remaining partial batches by repeating their last item, so every
    call has the same batch size and each shape compiles once. ``done(keys, out)`` gets the
    real items' keys (padding excluded) once at most ``depth`` batches are in flight;
    ``failed(keys, message)`` when ``compute`` rejects a batch.
    """

    def __init__(
        self,
        compute: Callable,
        batch_size: int,
        done: Callable[[list, Any], None],
        failed: Callable[[list, str], None],
        *,
        depth: int = 2,
    ) -> None:
        self.compute, self.batch_size, self.done, self.failed = compute, batch_size, done, failed
        self.depth = depth
        self.buckets: dict[tuple, list] = {}
        self.inflight: collections.deque = collections.deque()

    def add(self, key: Any, arrays: tuple[np.ndarray, ...]) -> None:
        shape = tuple((a.shape, a.dtype.str) for a in arrays)
        bucket = self.buckets.setdefault(shape, [])
        bucket.append((key, arrays))
        if len(bucket) == self.batch_size:
            self._launch(self.buckets.pop(shape))

    def flush(self) -> None:
        for shape in list(self.buckets):
            self._launch(self.buckets.pop(shape))
        while self.inflight:
            self._finish()

    def _launch(self, entries: list) -> None:
        keys = [k for k, _ in entries]
        padded = entries + [entries[-1]] * (self.batch_size - len(entries))
        stacked = [np.stack([e[1][i] for e in padded]) for i in range(len(entries[0][1]))]
        try:
            out = self.compute(*stacked)
        except (ValueError, TypeError) as e:  # the library's static checks
            self.failed(keys, str(e))
            return
        self.inflight.append((keys, out))
        while len(self.inflight) > self.depth:
            self._finish()

    def _finish(self) -> None:
        keys, out = self.inflight.popleft()
        self.done(keys, out)


def _mean_stderr(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std() / np.sqrt(v.size))


# ---------------------------------------------------------------------------------------
# Commands.


def _read_pair_or_exit(args: argparse.Namespace, net: str) -> tuple:
    try:
        return read_pair(args.a, args.b, resize=args.resize, net=net)
    except (lio.ImageError, _PairFailure) as e:
        raise InputError(str(e)) from e


def cmd_dist(args: argparse.Namespace) -> int:
    """``dist A B``: print the distance (the last line of stdout), or a JSON object."""
    params = _load_params(args)
    x, y, infos = _read_pair_or_exit(args, params.net)
    notes = _Notes()
    notes.add(infos)
    notes.report()
    d = float(np.asarray(_distance_jit(params, x[None], y[None]))[0])
    if args.json:
        out = {"a": args.a, "b": args.b, "net": params.net, "version": params.version}
        out["distance"] = float(fmt(d)) if math.isfinite(d) else None
        print(json.dumps(out))
    else:
        print(fmt(d))
    return EXIT_OK


def cmd_map(args: argparse.Namespace) -> int:
    """``map A B -o MAP.png``: the spatial distance map as a colour heat map PNG."""
    if not args.output and not args.npy:
        raise UsageError("map: give -o MAP.png (heat map) and/or --npy MAP.npy (raw map)")
    if args.zoom < 1:
        raise UsageError(f"--zoom {args.zoom}: expected a positive integer")
    _check_output(args.output, "-o")
    _check_output(args.npy, "--npy")
    params = _load_params(args)
    x, y, infos = _read_pair_or_exit(args, params.net)
    notes = _Notes()
    notes.add(infos)
    notes.report()
    dmap = np.asarray(_map_jit(params, x[None], y[None]))[0]
    if args.npy:
        with _atomic_file(args.npy, "wb") as f:
            np.save(f, dmap.astype(np.float32))
        _err(f"wrote {args.npy}: raw map, float32 {dmap.shape[0]}x{dmap.shape[1]} (H x W)")
    if args.output:
        from PIL.PngImagePlugin import PngInfo

        img, meta = _heatmap.render(
            dmap,
            vmax=args.vmax,
            background=lio.to_unit(x) if args.overlay else None,
            alpha=args.alpha,
            legend=args.legend,
            zoom=args.zoom,
        )
        info = PngInfo()
        for k, v in {
            **meta,
            "net": params.net,
            "version": params.version,
            "a": args.a,
            "b": args.b,
            "mean": fmt(float(dmap.mean())),
            "colormap": json.dumps(_heatmap.CONTROL_COLOURS),
        }.items():
            info.add_text(f"lpips:{k}", str(v))
        with _atomic_file(args.output, "wb") as f:
            img.save(f, format="PNG", pnginfo=info)
        scale = f"0 to {_heatmap.format_value(meta['vmax'])}"
        scale += "" if args.vmax is not None else " (the map's maximum)"
        _err(
            f"wrote {args.output}: {meta['map_width']}x{meta['map_height']} heat map, "
            f"colour scale {scale}" + (", colour bar on the right" if args.legend else "")
        )
    print(fmt(float(dmap.mean())))
    return EXIT_OK


def _summary(
    kind: str,
    done: int,
    failed: int,
    mean: float,
    se: float,
    extra: str = "",
) -> None:
    _err(
        f"{kind}: {done} pair{'s' if done != 1 else ''} compared, {failed} failed{extra}; "
        f"mean {mean:.6g} +/- {se:.3g} (standard error)"
    )


def _report_failures(failures: dict[Any, str], label: Callable[[Any], str]) -> None:
    if failures:
        _err(f"failed ({len(failures)}):")
        for key in sorted(failures):
            _err(f"  {label(key)}: {failures[key]}")


def _run_pairs(
    args: argparse.Namespace,
    params: lpips_jax.LPIPSParams,
    pairs: list[tuple[Any, str, str]],
    desc: str,
) -> tuple[dict, dict, _Notes]:
    """Distances of ``pairs`` = ``[(key, path_a, path_b)]``: ``(results, failures, notes)``.

    Raises ``_PairFailure`` at the first failure when ``--no-keep-going``.
    """
    results: dict[Any, float] = {}
    failures: dict[Any, str] = {}
    notes = _Notes()
    bs = min(args.batch_size, len(pairs))
    with (
        _progress(args, len(pairs), "pair", desc) as bar,
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
                raise _PairFailure(msg)

        batches = _Batches(lambda x, y: _distance_jit(params, x, y), bs, done, failed)

        def read(p: tuple) -> tuple:
            return read_pair(p[1], p[2], resize=args.resize, net=params.net)

        for (key, _, _), res, error in _prefetch(pool, read, pairs, window=max(8, 4 * bs)):
            if error is not None:
                failed([key], str(error))
                continue
            x, y, infos = res
            notes.add(infos)
            batches.add(key, (x, y))
        batches.flush()
    return results, failures, notes


def cmd_dirs(args: argparse.Namespace) -> int:
    """``dirs DIR0 DIR1``: distances of the files with the same name in both folders."""
    d0, d1 = _folder(args.dir0), _folder(args.dir1)
    _check_output(args.output, "-o")
    n0, skip0 = _image_names(d0)
    n1, skip1 = _image_names(d1)
    s0, s1 = set(n0), set(n1)
    common = sorted(s0 & s1)
    only = [(d0, n) for n in n0 if n not in s1] + [(d1, n) for n in n1 if n not in s0]
    for folder, name in only:
        _err(f"only in {folder}: {name}")
    skipped = len(skip0) + len(skip1)
    if skipped:
        _err(f"note: skipped {skipped} file(s) that are not images by their extension")
    if not common:
        _err(f"{PROG} dirs: error: no image file name is present in both {d0} and {d1}")
        return EXIT_FAILED
    params = _load_params(args)
    pairs = [(n, os.path.join(d0, n), os.path.join(d1, n)) for n in common]
    try:
        results, failures, notes = _run_pairs(args, params, pairs, "dirs")
    except _PairFailure as e:
        _err(f"{PROG} dirs: error: {e} (stopped: --no-keep-going; nothing written)")
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
    """The CSV to ``path`` (atomically) or, without ``-o``, to stdout."""
    if path:
        # surrogateescape: file names that are not valid UTF-8 are written back as bytes
        with _atomic_file(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
        _err(f"wrote {path}: {len(rows)} row{'s' if len(rows) != 1 else ''}")
    else:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _feature_bytes(params: lpips_jax.LPIPSParams, w: int, h: int) -> int:
    """Bytes of the cached features of one ``w x h`` image."""
    m = lpips_jax.min_size(params.net)
    spec = jax.ShapeDtypeStruct((1, max(h, m), max(w, m), 3), np.float32)
    taps = jax.eval_shape(_features01, params, spec)
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


class _AllPairs:
    """Every unordered pair of ``paths``: features once per image, then pair distances.

    Features are cached on the device up to ``budget`` bytes; beyond that the list is cut
    into blocks and the features of later blocks are recomputed for each earlier block.
    """

    def __init__(self, args: argparse.Namespace, params: lpips_jax.LPIPSParams, paths: list[str]) -> None:
        self.args, self.params, self.paths = args, params, paths
        self.n = len(paths)
        self.results: dict[tuple[int, int], float] = {}
        self.image_failures: dict[int, str] = {}
        self.shapes: dict[int, tuple[int, ...]] = {}
        self.notes = _Notes()

    def run(self) -> None:
        n, args = self.n, self.args
        w, h = _peek_area(self.paths, args.resize)
        per_image = max(1, _feature_bytes(self.params, w, h))
        cap = max(1, int(args.max_feature_mb * 2**20 // per_image))  # images that fit
        self.batch = max(1, min(args.batch_size, cap, n))
        block = n if cap >= n else max(self.batch, cap // self.batch * self.batch)
        blocks = [list(range(s, min(s + block, n))) for s in range(0, n, block)]
        if len(blocks) > 1:
            _err(
                f"note: the features of {n} images need about "
                f"{n * per_image / 2**20:.0f} MB (more than --max-feature-mb "
                f"{args.max_feature_mb}): working in {len(blocks)} blocks of {block} images"
            )
        with (
            _progress(args, n * (n - 1) // 2, "pair", "allpairs") as self.bar,
            concurrent.futures.ThreadPoolExecutor(args.workers) as self.pool,
        ):
            for bi, block_i in enumerate(blocks):
                fi = self._features(block_i)
                self._pairs(fi, fi, same=True)
                for block_j in blocks[bi + 1 :]:
                    self._pairs(fi, self._features(block_j), same=False)

    def _features(self, indices: list[int]) -> dict[tuple, list]:
        """Per image shape, a list of ``(taps of one batch, [image indices])``."""
        out: dict[tuple, list] = {}

        def done(keys: list, taps: Any) -> None:
            out.setdefault(self.shapes[keys[0]], []).append((taps, keys))

        def failed(keys: list, msg: str) -> None:
            for k in keys:
                self._image_failed(k, msg)

        batches = _Batches(lambda x: _features_jit(self.params, x), self.batch, done, failed, depth=1)

        def read(i: int) -> tuple[np.ndarray, lio.ImageInfo]:
            a, info = lio.read_pixels(self.paths[i], resize=self.args.resize, return_info=True)
            _check_min_size(self.paths[i], a, self.params.net)
            return _device_pixels(a), info

        window = max(8, 4 * self.batch)
        for i, res, error in _prefetch(self.pool, read, indices, window=window):
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
                raise _PairFailure(msg)

    def _pairs(self, fi: dict, fj: dict, *, same: bool) -> None:
        inflight: collections.deque = collections.deque()
        for shape in fi.keys() & fj.keys():
            for u, (ta, ka) in enumerate(fi[shape]):
                for v, (tb, kb) in enumerate(fj[shape]):
                    if (same and v < u) or (same and u == v and len(ka) < 2):
                        continue  # the lower triangle, or a lone image: no pairs here
                    inflight.append((_cross_jit(self.params, ta, tb), ka, kb, same and u == v))
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


def cmd_allpairs(args: argparse.Namespace) -> int:
    """``allpairs DIR``: every unordered pair of images in the folder, and the mean."""
    folder = _folder(args.dir)
    if args.resize in ("a", "b"):
        raise UsageError(
            f"allpairs: --resize {args.resize} needs a pair order; use --resize WxH "
            "to bring every image to one size"
        )
    _check_output(args.output, "-o")
    names, skipped = _image_names(folder)
    if skipped:
        _err(f"note: skipped {len(skipped)} file(s) that are not images by their extension")
    if len(names) < 2:
        raise UsageError(f"folder {folder!r} holds {len(names)} image file(s): need at least 2")
    params = _load_params(args)
    paths = [os.path.join(folder, n) for n in names]
    if args.consecutive:
        pairs = [((names[i], names[i + 1]), paths[i], paths[i + 1]) for i in range(len(names) - 1)]
        try:
            results, failures, notes = _run_pairs(args, params, pairs, "pairs")
        except _PairFailure as e:
            _err(f"{PROG} allpairs: error: {e} (stopped: --no-keep-going; nothing written)")
            return EXIT_FAILED
        keys = [k for k, _, _ in pairs]
        n_pairs = len(pairs)
    else:
        job = _AllPairs(args, params, paths)
        try:
            job.run()
        except _PairFailure as e:
            _err(f"{PROG} allpairs: error: {e} (stopped: --no-keep-going; nothing written)")
            return EXIT_FAILED
        notes = job.notes
        n = len(names)
        n_pairs = n * (n - 1) // 2
        results = {(names[i], names[j]): v for (i, j), v in job.results.items()}
        failures = {(names[i], names[j]): m for (i, j), m in job.pair_failures().items()}
        bad = job.image_failures
        for i, msg in bad.items():
            _err(f"failed: {msg} ({n - 1} pairs with {names[i]} skipped)")
        index_pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        keys = [(names[i], names[j]) for i, j in index_pairs]
        for i, j in index_pairs:
            if i in bad or j in bad:
                failures.setdefault((names[i], names[j]), "unreadable image (see above)")
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


def cmd_convert(argv: list[str]) -> int:
    """``convert ...``: ``python -m convert`` (PyTorch checkpoints to safetensors params)."""
    try:
        importlib.import_module("torch")
    except ImportError as e:
        _err(
            f"{PROG} convert: error: PyTorch is not installed ({e}). The converter reads "
            "PyTorch checkpoints: install it with\n  pip install torch torchvision\n"
            "or, from a checkout of the lpips_jax repository, pip install -e '.[convert]'"
        )
        return EXIT_USAGE
    try:
        convert = importlib.import_module("convert")
        main = convert.main
    except (ImportError, AttributeError) as e:
        _err(
            f"{PROG} convert: error: the converter package convert/ is not importable ({e}). "
            "It ships with the source, not the wheel: run from a checkout of the "
            "lpips_jax repository\n  git clone <lpips_jax repository> && cd lpips_jax && "
            "pip install -e '.[convert]'\nthen run lpips-jax convert (or python -m convert) "
            "from there"
        )
        return EXIT_USAGE
    try:
        return int(main(argv) or 0)
    except SystemExit as e:  # argparse inside convert: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)


# ---------------------------------------------------------------------------------------
# The parser.


def build_parser() -> argparse.ArgumentParser:
    """The ``lpips-jax`` argument parser, with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="LPIPS perceptual distance of image files (JAX port of lpips 0.1.4).",
        epilog="exit codes: 0 ok, 1 some inputs failed, 2 usage error. "
        f"'{PROG} COMMAND --help' describes a command.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    model = argparse.ArgumentParser(add_help=False)
    g = model.add_argument_group("model")
    g.add_argument("--net", choices=lpips_jax.NETS, default=None, help="trunk network (default: alex)")
    g.add_argument(
        "--version",
        choices=lpips_jax.VERSIONS,
        default=None,
        help="LPIPS head weights version (default: 0.1)",
    )
    g.add_argument("--weights", metavar="FILE", help="params file written by convert or by training")

    reading = argparse.ArgumentParser(add_help=False)
    reading.add_argument(
        "--resize",
        type=parse_resize,
        metavar="{a,b,WxH}",
        help="when sizes differ: resize B to A's size (a), A to B's (b), or both to WxH "
        "(Pillow bicubic); default: different sizes are an error",
    )

    folders = argparse.ArgumentParser(add_help=False)
    folders.add_argument("-o", "--output", metavar="OUT.csv", help="write the CSV here")
    folders.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH,
        help=f"pairs per device call (default: {DEFAULT_BATCH})",
    )
    folders.add_argument(
        "--workers",
        type=_positive_int,
        default=max(2, min(16, os.cpu_count() or 2)),
        help="image decoding threads (default: CPU count, 2 to 16)",
    )
    folders.add_argument(
        "--keep-going",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on an unreadable image, go on and report it at the end (default); "
        "--no-keep-going stops at the first and writes nothing",
    )
    folders.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )

    p = sub.add_parser(
        "dist",
        parents=[model, reading],
        help="distance of two images",
        description="Print the LPIPS distance of two images: the number alone on the last line of stdout.",
    )
    p.add_argument("a", metavar="A", help="first image")
    p.add_argument("b", metavar="B", help="second image")
    p.add_argument("--json", action="store_true", help='print {"a", "b", "net", "version", "distance"}')
    p.set_defaults(func=cmd_dist)

    p = sub.add_parser(
        "dirs",
        parents=[model, reading, folders],
        help="distances of same-named images in two folders",
        description="Compare every image file name present in both folders. CSV name,distance "
        "sorted by name (to -o, else stdout), then the mean alone on the last line of stdout. "
        "Names present in one folder only are listed on stderr.",
    )
    p.add_argument("dir0", metavar="DIR0")
    p.add_argument("dir1", metavar="DIR1")
    p.set_defaults(func=cmd_dirs)

    p = sub.add_parser(
        "allpairs",
        parents=[model, reading, folders],
        help="distances of every pair of images in one folder",
        description="Compare every unordered pair of images in DIR (features are computed "
        "once per image). CSV a,b,distance (to -o, else stdout), then 'Avg: mean +/- "
        "stderr' as the official lpips_1dir_allpairs.py, and the mean alone on the last line.",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument(
        "--consecutive",
        action="store_true",
        help="only consecutive pairs in name order (the official script's default)",
    )
    p.add_argument(
        "--max-feature-mb",
        type=_positive_float,
        default=DEFAULT_FEATURE_MB,
        help=f"memory for cached features before working block by block (default: {DEFAULT_FEATURE_MB})",
    )
    p.set_defaults(func=cmd_allpairs)

    p = sub.add_parser(
        "map",
        parents=[model, reading],
        help="spatial distance map as a heat map PNG",
        description="Render the spatial distance map (distance_map) of two images as a colour "
        "heat map PNG: one map pixel per image pixel, with a colour bar on the right. Prints "
        "the map's mean on stdout.",
    )
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("-o", "--output", metavar="MAP.png", help="heat map PNG to write")
    p.add_argument("--npy", metavar="MAP.npy", help="also save the raw (H, W) float32 map")
    p.add_argument("--overlay", action="store_true", help="blend the colours over image A")
    p.add_argument(
        "--alpha",
        type=_fraction,
        default=0.6,
        help="opacity of the colours with --overlay (default: 0.6)",
    )
    p.add_argument(
        "--vmax",
        type=_positive_float,
        default=None,
        help="value at the top of the colour scale (default: the map's maximum); "
        "fix it to compare several maps",
    )
    p.add_argument(
        "--legend",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw the colour bar (default); --no-legend writes the map alone, HxW",
    )
    p.add_argument(
        "--zoom",
        type=_positive_int,
        default=1,
        help="magnify the map N times, nearest neighbour (default: 1)",
    )
    p.set_defaults(func=cmd_map)

    p = sub.add_parser(
        "convert",
        add_help=False,
        help="PyTorch checkpoints -> lpips_jax params (python -m convert; needs torch)",
        description="Same as 'python -m convert' from a checkout of the repository; "
        f"'{PROG} convert --help' shows its options.",
    )
    p.add_argument("convert_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda a: cmd_convert(list(a.convert_args)))

    try:
        from lpips_jax import _bapps_cli
    except ImportError:
        pass
    else:
        _bapps_cli.register(sub)
    return parser


def enable_compilation_cache() -> str | None:
    """Keep compiled programs across runs: JAX's persistent compilation cache.

    In ``$XDG_CACHE_HOME/lpips_jax/xla`` (default ``~/.cache/lpips_jax/xla``), unless
    ``LPIPS_JAX_NO_CACHE`` is set or JAX's cache is configured already
    (``JAX_COMPILATION_CACHE_DIR``). Returns the folder used, or ``None``.
    """
    if os.environ.get("LPIPS_JAX_NO_CACHE") or jax.config.jax_compilation_cache_dir:
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "lpips_jax", "xla")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    if not os.access(path, os.W_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run ``lpips-jax`` with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Run as the command (``argv`` is ``None``), it also turns on the persistent compilation
    cache (:func:`enable_compilation_cache`); called with ``argv`` from Python, it leaves
    JAX's configuration alone.
    """
    if argv is None:
        enable_compilation_cache()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "convert":  # every other argument belongs to convert's parser
        return cmd_convert(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_usage(sys.stderr)
        _err(f"{PROG}: error: give a command (dist, dirs, allpairs, map, convert, ...)")
        return EXIT_USAGE
    try:
        return int(func(args))
    except UsageError as e:
        _err(f"{PROG}: error: {e}")
        return EXIT_USAGE
    except InputError as e:
        _err(f"{PROG}: error: {e}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _err(f"{PROG}: interrupted; nothing written")
        return 130
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        first = str(e).strip().splitlines()[0]
        _err(f"{PROG}: error: out of device memory ({first}); try a smaller --batch-size")
        return EXIT_FAILED
    except BrokenPipeError:  # stdout closed early (| head): stop quietly
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
