"""``import lpips_jax`` is the metric alone: the library's own modules, not its applications
(BAPPS, the command line) nor what only they need (optax, orbax, tensorflow-datasets), in a
fresh interpreter; the top level exports the metric's API and BAPPS lives in
``lpips_jax.bapps``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# The application's names, exported by lpips_jax.bapps only.
BAPPS_NAMES = (
    "TrainResult", "dssim", "evaluate", "export_heads_torch_format", "l2", "score_2afc",
    "score_jnd", "ssim", "train", "voc_ap",
)  # fmt: skip
# Packages (and their submodules) that `import lpips_jax` must not load.
NOT_LOADED = ("lpips_jax.bapps", "lpips_jax.cli", "lpips_jax.nnx", "optax", "orbax", "tensorflow_datasets")


def _modules_after(code: str) -> list[str]:
    """``sys.modules`` of a fresh interpreter after ``code``."""
    run = subprocess.run(
        [sys.executable, "-c", f"{code}; import json, sys; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(run.stdout.splitlines()[-1])


def _of(modules: list[str], package: str) -> list[str]:
    return [m for m in modules if m == package or m.startswith(package + ".")]


def test_import_loads_the_metric_alone():
    modules = _modules_after("import lpips_jax")
    assert {p: _of(modules, p) for p in NOT_LOADED} == dict.fromkeys(NOT_LOADED, [])
    # The control: the listing sees the library's own modules, and the packages when used.
    assert {"lpips_jax._metric", "lpips_jax._weights", "lpips_jax.io"} <= set(modules)
    used = _modules_after("import lpips_jax.bapps._train, lpips_jax.cli")
    for p in ("lpips_jax.bapps", "lpips_jax.cli", "optax"):
        assert _of(used, p), p


def test_top_level_exports_no_bapps_name():
    import lpips_jax
    import lpips_jax.bapps

    for name in BAPPS_NAMES:
        assert name not in lpips_jax.__all__ and not hasattr(lpips_jax, name), name
        assert name in lpips_jax.bapps.__all__, name
    with pytest.raises(AttributeError, match="has no attribute 'evaluate'"):
        lpips_jax.evaluate  # noqa: B018


@pytest.mark.parametrize("name", BAPPS_NAMES)
def test_bapps_exports_scoring_and_training(name):
    """Each name of ``lpips_jax.bapps`` is its implementation's object (imported on use)."""
    from lpips_jax import bapps
    from lpips_jax.bapps import _evaluate, _train

    module = _train if name in ("TrainResult", "export_heads_torch_format", "train") else _evaluate
    assert getattr(bapps, name) is getattr(module, name)
