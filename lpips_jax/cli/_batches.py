"""Feeding the device from worker threads: read ahead in order, then fixed-size batches."""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from lpips_jax import io as lio
from lpips_jax._sharding import pad_rows
from lpips_jax.cli._reading import PairFailure


def prefetch(
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
            except (lio.ImageError, PairFailure) as e:
                yield item, None, e
    finally:
        for _, fut in pending:
            fut.cancel()


_END = object()


class Batches:
    """Runs ``compute`` on fixed-size batches of same-shape items.

    ``add(key, arrays)`` queues one item; when ``batch_size`` items of one shape are
    queued, they are stacked and ``compute(*stacked)`` is dispatched (asynchronously);
    ``flush()`` pads the remaining partial batches by repeating their last item, so every
    call has the same batch size (a multiple of the device count, for ``compute`` to
    split) and each shape compiles once. ``done(keys, out)`` gets the
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
        stacked = [
            pad_rows(np.stack([e[1][i] for e in entries]), self.batch_size) for i in range(len(entries[0][1]))
        ]
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
