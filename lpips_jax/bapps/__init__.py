"""BAPPS, the Berkeley-Adobe Perceptual Patch Similarity dataset: the data as
tensorflow-datasets, scoring metrics on it, and training LPIPS heads on it.

``tensorflow-datasets`` is the optional extra ``data`` (``pip install -e ".[data]"`` in a checkout)
and is imported lazily, only when a function here needs it; ``import lpips_jax`` imports
nothing of this package. TensorFlow itself is not needed. Scoring (``evaluate``,
``score_2afc``, ``score_jnd``, ``voc_ap``, the baselines ``l2``, ``ssim``, ``dssim``) and
training (``train``, ``TrainResult``, ``export_heads_torch_format``; the extra ``train``:
optax, orbax-checkpoint) are imported on first use.

    import lpips_jax
    from lpips_jax import bapps
    bapps.prepare("~/bapps")                      # tarballs or extracted official folder
    src = bapps.load("2afc", "val_traditional")   # random access: len(src), src[i]
    scores = bapps.evaluate(lpips_jax.load("alex"))
    result = bapps.train(net="alex", out="heads.safetensors")

Each 2AFC example is ``{"ref", "p0", "p1": (64, 64, 3) uint8, "judge": float32, "id": str}``
with ``judge`` the fraction of raters who found ``p1`` closer to ``ref``; each JND example
is ``{"p0", "p1": (64, 64, 3) uint8, "same": float32, "id": str}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lpips_jax.bapps._layout import (
    CONFIGS,
    INSTRUCTIONS,
    SUBSETS,
    BappsDataError,
    available,
    split_name,
)

# Scoring and training, imported on first use: name -> module.
_LAZY = {
    **dict.fromkeys(("dssim", "evaluate", "l2", "score_2afc", "score_jnd", "ssim", "voc_ap"), "_evaluate"),
    **dict.fromkeys(("TrainResult", "export_heads_torch_format", "train"), "_train"),
}

__all__ = [
    "CONFIGS",
    "INSTRUCTIONS",
    "SUBSETS",
    "Bapps",
    "BappsDataError",
    "TrainResult",
    "available",
    "builder",
    "dssim",
    "evaluate",
    "export_heads_torch_format",
    "l2",
    "load",
    "prepare",
    "prepared_splits",
    "score_2afc",
    "score_jnd",
    "split_name",
    "ssim",
    "train",
    "voc_ap",
]


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "BAPPS needs tensorflow-datasets (TensorFlow itself is not needed): "
            'pip install -e ".[data]" in a checkout (tensorflow-datasets and array-record)'
        ) from e
    return tfds


def __getattr__(name: str) -> Any:
    if name == "Bapps":
        _tfds()
        from lpips_jax.bapps._builder import Bapps

        return Bapps
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"lpips_jax.bapps.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'lpips_jax.bapps' has no attribute {name!r}")


def builder(config: str, *, data_dir: str | os.PathLike | None = None):
    """The ``bapps/{config}`` builder (array_record files) in ``data_dir``.

    ``data_dir`` defaults to tensorflow-datasets' own (``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets``).
    """
    from lpips_jax.bapps import _layout

    _layout.check_config(config)
    _tfds()
    from lpips_jax.bapps._builder import Bapps

    return Bapps(
        config=config,
        data_dir=None if data_dir is None else os.fspath(Path(data_dir).expanduser()),
        file_format="array_record",
    )


def prepare(
    manual_dir: str | os.PathLike,
    *,
    configs: tuple[str, ...] | None = None,
    data_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Prepare BAPPS from ``manual_dir`` (tarballs or the extracted official folder).

    Args:
      manual_dir: where BAPPS is (see :data:`INSTRUCTIONS`).
      configs: ``"2afc"`` and/or ``"jnd"``; default: those present in ``manual_dir``.
      data_dir: where the prepared dataset goes (tfds ``data_dir``).

    Returns:
      ``config -> builder``. Preparing again is a no-op, unless ``manual_dir`` now holds
      parts (subset folders or tarballs) that were not there before: then the config is
      prepared again.
    """
    tfds = _tfds()
    from lpips_jax.bapps import _layout

    manual = Path(manual_dir).expanduser()
    if configs is None:
        configs = available(manual)
        if not configs:
            raise BappsDataError(f"no BAPPS data found: {_layout.describe(manual)}\n\n{INSTRUCTIONS}")
    out = {}
    for config in configs:
        b = builder(config, data_dir=data_dir)
        mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
        if b.is_prepared() and _has_new_parts(manual, config, tuple(b.info.splits.keys())):
            mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
        b.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual, download_mode=mode)
        )
        out[config] = builder(config, data_dir=data_dir)
    return out


def _has_new_parts(manual: Path, config: str, prepared: tuple[str, ...]) -> bool:
    from lpips_jax.bapps import _layout

    found = _layout.locate([manual, manual / "dataset"], config)
    if set(found) - set(prepared):
        return True
    for name in _layout.tarballs(manual):
        if _layout.TARBALLS[name] == config:
            split = "train" if "train" in name else "val"
            if not any(p.startswith(split + "_") for p in prepared):
                return True
    return False


def prepared_splits(config: str, *, data_dir: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The splits of ``config`` already prepared in ``data_dir`` (empty if not prepared)."""
    b = builder(config, data_dir=data_dir)
    if not b.is_prepared():
        return ()
    return tuple(b.info.splits.keys())


def load(config: str, split: str, *, data_dir: str | os.PathLike | None = None):
    """A random-access source of one prepared split: ``len(src)``, ``src[i]``, ``src.__getitems__``.

    Raises :class:`BappsDataError` when the config is not prepared or lacks ``split``.
    """
    b = builder(config, data_dir=data_dir)
    if not b.is_prepared():
        raise BappsDataError(
            f"BAPPS {config} is not prepared in {b.data_dir}: run "
            "lpips_jax.bapps.prepare(manual_dir, data_dir=...) first"
        )
    splits = tuple(b.info.splits.keys())
    if split not in splits:
        raise BappsDataError(
            f"BAPPS {config} has no prepared split {split!r}: prepared are {splits} "
            f"(subset names are e.g. {split_name('val', SUBSETS[config]['val'][0])!r})"
        )
    return b.as_data_source(split=split)
