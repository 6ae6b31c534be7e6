"""The version rules: the CPU fast paths are on by default only on the jaxlib they were
measured on (``_ops.MEASURED_JAXLIB``), and the override still forces them elsewhere; and
whatever versions are installed, float64 values and gradients equal the newest versions'."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jaxlib
import numpy as np
import pytest
from conftest import DATA

import lpips_jax
from lpips_jax import _ops


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("0.10.0", "all"),
        ("0.10.2", "all"),
        ("0.10.3.dev20260101", "all"),
        ("0.5.3", "none"),
        ("0.1.0", "none"),
        ("0.9.9", "none"),
        ("0.11.0", "none"),
        ("0.100.0", "none"),
        ("1.10.0", "none"),
    ],
)
def test_default_follows_jaxlib_version(version, expected):
    assert _ops.default_setting(version) == expected


# Run in a fresh interpreter (the setting is read at import): the default, then the
# environment variable and fast_paths(True), which force them on any jaxlib.
PROGRAM = r"""
import importlib, json, os
from lpips_jax import _ops
out = {"default": sorted(_ops.enabled())}
with _ops.fast_paths(True):
    out["fast_paths(True)"] = sorted(_ops.enabled())
os.environ["LPIPS_JAX_CPU_FAST_PATHS"] = "all"
importlib.reload(_ops)
out["variable all"] = sorted(_ops.enabled())
print(json.dumps(out))
"""


def test_default_in_a_fresh_process_and_overrides(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LPIPS_JAX_CPU_FAST_PATHS"}
    # the lpips_jax this test imported (a checkout or an installed wheel), not the one of the cwd
    env["PYTHONPATH"] = str(Path(lpips_jax.__file__).resolve().parent.parent)
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    every = sorted(_ops.FAST_PATHS)
    measured = jaxlib.__version__.startswith(tuple(v + "." for v in _ops.MEASURED_JAXLIB))
    assert out["default"] == (every if measured else []), (jaxlib.__version__, out)
    assert out["fast_paths(True)"] == out["variable all"] == every


@pytest.fixture(scope="module")
def refs_script():
    """tests/data/grads/make_refs.py, the script that wrote the regression references."""
    spec = importlib.util.spec_from_file_location("grads_make_refs", DATA / "grads" / "make_refs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _value_and_grads(refs_script, name):
    return refs_script.value_and_grads(name)


@pytest.mark.parametrize("name", ["alex", "vgg", "alex_st", "dists"])
def test_regression_float64_values_and_gradients_equal_the_newest_versions(refs_script, name):
    """A regression check across versions: float64 values and gradients on the official
    example images equal those the newest supported versions computed (tests/data/grads,
    written by this library with its make_refs.py), whatever jax, jaxlib and flax are
    installed (CI: the floors too). Tolerance: float64 rounding of other summation orders
    (1e-10 of the gradient's scale)."""
    with np.load(DATA / "grads" / "refs.npz", allow_pickle=False) as f:
        want = {k: f[f"{name}/{k}"] for k in ("d", "gx", "gy")}
    d, gx, gy = _value_and_grads(refs_script, name)
    np.testing.assert_allclose(d, want["d"], rtol=1e-10, atol=0)
    for got, ref in ((gx, want["gx"]), (gy, want["gy"])):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10 * float(np.abs(ref).max()))


@pytest.mark.parametrize("name", ["alex", "vgg", "alex_st", "dists"])
def test_gradients_equal_float64_finite_differences(refs_script, name):
    """The same float64 gradients w.r.t. both images against central differences of the
    float64 distance, whatever versions are installed: a reference the code did not
    write, where no torch is (the floors).

    Along two random directions that keep the images in [0, 1]; step 1e-8: the nets are
    piecewise linear and a step of 1e-6 crosses a ReLU or max-pool kink along some
    directions (seen: vgg 0.7% off), 1e-8 does not; float64 rounding of the difference
    quotient is ~1e-8 of the derivative there. Bound: 1e-6 of the sum of |g * v| (the
    directional derivative's scale)."""
    x, y = refs_script.images()
    _, gx, gy = _value_and_grads(refs_script, name)
    rng = np.random.default_rng(5)
    h = 1e-8
    with refs_script.x64():
        p = refs_script.params64(name)
        for _ in range(2):
            vx, vy = (rng.uniform(-1, 1, a.shape) * np.minimum(a, 1 - a) for a in (x, y))

            def d(s, vx=vx, vy=vy):
                return float(lpips_jax.distance(p, x + s * vx, y + s * vy, normalize=True)[0])

            fd = (d(h) - d(-h)) / (2 * h)
            exact = float(np.sum(gx * vx) + np.sum(gy * vy))
            scale = float(np.sum(np.abs(gx * vx)) + np.sum(np.abs(gy * vy)))
            assert abs(fd - exact) <= 1e-6 * scale, (name, fd, exact, scale)
