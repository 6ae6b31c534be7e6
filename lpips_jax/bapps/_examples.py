"""BAPPS examples as numpy batches: the one reader of evaluation and training.

An :class:`Examples` holds one task's examples, from prepared tfds splits (one or several,
in order) or from arrays in memory: ``len(ex)``, and ``ex.get(idx)`` gives
``{part: (n, 64, 64, 3) uint8, ..., label: (n,) float32}`` for the ``parts`` and ``label``
of the task (2AFC: ``ref, p0, p1`` and ``judge``; JND: ``p0, p1`` and ``same``).
:func:`to_unit_official` converts the images as the official loader does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lpips_jax.bapps import _layout


def to_unit_official(u8: Any) -> jax.Array:
    """uint8 ``[0, 255]`` to float32 ``[-1, 1]`` as the official loader: ``(u / 255 - .5) / .5``."""
    t = jnp.asarray(u8).astype(jnp.float32) / 255.0
    return (t - 0.5) / 0.5


class Examples:
    """The examples of ``config`` in ``sources``, one after the other.

    A source is a tfds random-access data source (``len``, ``__getitems__``) or a mapping
    of arrays (:meth:`from_arrays`).
    """

    def __init__(self, config: str, sources: Sequence[Any]):
        self.parts = _layout.IMAGE_PARTS[_layout.check_config(config)]
        self.label = _layout.LABEL[config]
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [len(_rows(s)) for s in self.sources])

    @classmethod
    def from_splits(
        cls, config: str, names: Sequence[str], *, data_dir: str | os.PathLike | None
    ) -> Examples:
        """The prepared tfds splits ``names`` (e.g. ``train_cnn``) of ``config``, in order."""
        from lpips_jax import bapps

        return cls(config, [bapps.load(config, n, data_dir=data_dir) for n in names])

    @classmethod
    def from_arrays(cls, config: str, data: Mapping[str, Any]) -> Examples:
        """Arrays in memory: each part ``(N, H, W, 3)`` uint8 and the label ``(N,)``."""
        parts, label = _layout.IMAGE_PARTS[config], _layout.LABEL[config]
        missing = [k for k in (*parts, label) if k not in data]
        if missing:
            raise ValueError(f"{config} data lacks {missing}: expected keys {', '.join((*parts, label))}")
        arrays = {k: np.asarray(data[k]) for k in parts}
        for name, a in arrays.items():
            if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
                raise ValueError(
                    f"{config} data {name} has shape {a.shape} and dtype {a.dtype}: "
                    "expected (N, H, W, 3) uint8"
                )
        arrays[label] = np.asarray(data[label], np.float32).reshape(-1)
        n = {a.shape[0] for a in arrays.values()}
        if len(n) != 1:
            raise ValueError(f"{config} data arrays have different lengths {sorted(n)}")
        return cls(config, [arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def get(self, idx: Any) -> dict[str, np.ndarray]:
        """The examples at the indices ``idx`` ``(n,)``, in that order."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        keys = (*self.parts, self.label)
        order, got = [], []
        for s in np.unique(which):
            pos = np.flatnonzero(which == s)
            order.append(pos)
            got.append(_take(self.sources[s], idx[pos] - self.offsets[s], keys))
        back = np.argsort(np.concatenate(order), kind="stable")
        out = {k: np.concatenate([g[k] for g in got])[back] for k in keys}
        out[self.label] = out[self.label].astype(np.float32)
        return out


def _rows(source: Any) -> Any:
    """What ``len`` counts: a tfds source, or one array of a mapping."""
    return next(iter(source.values())) if isinstance(source, Mapping) else source


def _take(source: Any, idx: np.ndarray, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if isinstance(source, Mapping):
        return {k: source[k][idx] for k in keys}
    records = source.__getitems__([int(i) for i in idx])
    return {k: np.stack([r[k] for r in records]) for k in keys}
