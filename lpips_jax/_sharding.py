"""Data parallelism of the command line and BAPPS evaluation, with JAX's own sharding.

Within a process, each batch is split over the first ``n`` local devices
(:class:`LocalDevices`: a 1-D mesh with the axis ``"batch"``, inputs placed with
``NamedSharding(mesh, P("batch"))``, params replicated); batches are padded to a multiple
of ``n`` by repeating their last row (:func:`pad_rows`) and the padding is dropped from
the results. Across processes (``jax.distributed``), each process takes its share of the
work (:func:`share`, :func:`block`), computes on its own devices, and the results meet in
:func:`exchange`, where every process receives every process's JSON payload;
:func:`agree` ends a run with the same exit code everywhere. With one process nothing
here communicates.

A random metric (E-LPIPS) gives a pair a value that depends on the draws of its batch, so
the commands and BAPPS evaluation score each row alone with a key of its own
(:func:`row_distances`): its value does not depend on the batch, the devices or the
processes that computed it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "batch"
T = TypeVar("T")


# ----------------------------------------------------------------------------- devices


class LocalDevices:
    """The first ``devices`` of ``jax.local_devices()`` (``None``: all) as a 1-D mesh."""

    def __init__(self, devices: int | None = None) -> None:
        local = jax.local_devices()
        n = len(local) if devices is None else devices
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(local):
            raise ValueError(
                f"devices={devices!r}: expected an int from 1 to {len(local)}, the local device count"
            )
        self.count = n
        self.mesh = Mesh(np.asarray(local[:n]), (AXIS,))
        self._batch = NamedSharding(self.mesh, P(AXIS))
        self._replicated = NamedSharding(self.mesh, P())

    def batch_size(self, requested: int) -> int:
        """``requested`` rounded up to a multiple of the device count."""
        return -(-requested // self.count) * self.count

    def put(self, *arrays: Any) -> tuple[jax.Array, ...]:
        """The arrays split over the devices along their first axis (a multiple of ``count``)."""
        return tuple(jax.device_put(arrays, self._batch))

    def replicate(self, tree: Any) -> Any:
        """``tree`` (e.g. params) with a copy of every leaf on every device."""
        return jax.device_put(tree, self._replicated)


def row_distances(
    params: Any,
    key: Any,
    rows: Any,
    *pairs: tuple[Any, Any],
    samples: int,
    normalize: bool = False,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, ...]:
    """A random metric's distances row by row, each independent of the batch it sits in.

    Row ``n``'s pairs ``(x[n], y[n])`` are each scored as a batch of 1 with the key
    ``jax.random.fold_in(key, rows[n])``, so that row equals
    ``distance(params, x[n][None], y[n][None], key=jax.random.fold_in(key, rows[n]),
    samples=samples)``; the pairs of one row share its key (common random numbers).
    ``pairs``: ``(x, y)`` tuples of ``(N, H, W, 3)`` images; ``rows``: ``(N,)`` ints.
    Returns one ``(N,)`` array per pair.

    The rows run one after another (``lax.map``), on each device of ``mesh`` its own share
    (``shard_map`` over its axis): a ``vmap`` over keys would batch E-LPIPS' scale level
    and run every level's branch (about twice the work) and, for non-square images, give
    each row its own copy of the trunk's kernels (its x/y swap).
    """
    from lpips_jax._metric import distance

    images = tuple(a for pair in pairs for a in pair)

    def local(params, key, rows, *images):
        def one(row_and_images):
            row, *imgs = row_and_images
            k = jax.random.fold_in(key, row)
            return tuple(
                distance(params, x[None], y[None], key=k, samples=samples, normalize=normalize)[0]
                for x, y in zip(imgs[::2], imgs[1::2], strict=True)
            )

        return jax.lax.map(one, (rows, *images))

    if mesh is None or mesh.size == 1:
        return local(params, key, rows, *images)
    # jax.shard_map from jax 0.7; jax.experimental.shard_map before (the same arguments).
    smap = getattr(jax, "shard_map", None)
    if smap is None:
        from jax.experimental.shard_map import shard_map as smap
    split = P(AXIS)
    run = smap(local, mesh=mesh, in_specs=(P(), P(), split, *(split,) * len(images)), out_specs=split)
    return run(params, key, rows, *images)


def pad_rows(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` with its last row repeated up to ``size`` rows (callers drop the extra results)."""
    if a.shape[0] == size:
        return a
    return np.concatenate([a, np.repeat(a[-1:], size - a.shape[0], axis=0)])


# ----------------------------------------------------------------------------- processes


def share(items: Sequence[T]) -> list[T]:
    """This process's share of ``items``: every ``process_count()``-th, from ``process_index()``."""
    return list(items[jax.process_index() :: jax.process_count()])


def block(n: int) -> range:
    """This process's contiguous block of ``range(n)``; the blocks' sizes differ by one at most."""
    k, i = jax.process_count(), jax.process_index()
    return range(n * i // k, n * (i + 1) // k)


EXIT_TAG = "exit"  # the tag of :func:`agree`'s exchanges


class OutOfStep(Exception):
    """Another process reached another exchange: it stopped early (``"exit"``) or diverged."""

    def __init__(self, process: int, tag: str, expected: str) -> None:
        self.process = process
        what = "stopped early" if tag == EXIT_TAG else f"is at step {tag!r}"
        super().__init__(f"process {process} {what} while this one is at step {expected!r}")


def exchange(tag: str, payload: Any) -> list[Any]:
    """Every process's JSON-able ``payload``, in process order (a collective).

    Every process calls the exchanges in the same order with the same ``tag``; a process
    that meets another tag raises :class:`OutOfStep` and should end through :func:`agree`.
    """
    if jax.process_count() == 1:
        return [payload]
    out = []
    for i, (their_tag, value) in enumerate(_allgather_json([tag, payload])):
        if their_tag != tag:
            raise OutOfStep(i, their_tag, tag)
        out.append(value)
    return out


def agree(code: int, message: str | None = None) -> tuple[int, list[tuple[int, str]]]:
    """The largest exit code over the processes, and the other processes' final messages.

    Every process calls it once, last; it repeats its exchange until every process has
    reached it (a process still in a command's :func:`exchange` leaves it with
    :class:`OutOfStep` and comes here), so a process that stops early never leaves the
    others waiting.
    """
    if jax.process_count() == 1:
        return code, []
    while True:
        got = _allgather_json([EXIT_TAG, [int(code), message]])
        if all(tag == EXIT_TAG for tag, _ in got):
            me = jax.process_index()
            notes = [(i, v[1]) for i, (_, v) in enumerate(got) if v[1] and i != me]
            return max(v[0] for _, v in got), notes


def _allgather_json(obj: Any) -> list[Any]:
    from jax.experimental import multihost_utils

    data = json.dumps(obj).encode()
    sizes = np.asarray(multihost_utils.process_allgather(np.array([len(data)], np.int32)))
    width = 1 << max(0, int(sizes.max()) - 1).bit_length()  # powers of two: few compiles
    buf = np.zeros(width, np.uint8)
    buf[: len(data)] = np.frombuffer(data, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(buf))
    return [json.loads(rows[i, : int(sizes[i, 0])].tobytes()) for i in range(rows.shape[0])]
