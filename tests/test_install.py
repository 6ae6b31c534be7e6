"""A non-editable install carries the shipped weights: ``load("alex")`` works offline.

Builds a wheel of the working tree (hatchling, no build isolation, no dependency
install; in CI the one .ci/run built for the floor step too), installs it with
``pip --target`` into a temporary folder and imports it from there in a fresh
interpreter whose working directory is outside the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

import lpips_jax
from lpips_jax._registry import SHIPPED
from lpips_jax._weights import OPTIONAL, OPTIONAL_PACKAGE

MAIN = {k: v for k, v in SHIPPED.items() if k not in OPTIONAL}
LIMIT = 100 * 10**6  # the public index's largest file

pytestmark = pytest.mark.slow

PROGRAM = r"""
import json
import numpy as np
import lpips_jax
from lpips_jax import _weights

rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (64, 64, 3)).astype(np.float32)
y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
p = lpips_jax.load("alex")
print(json.dumps({
    "file": lpips_jax.__file__,
    "weights_dir": str(_weights.weights_dir()),
    "d": float(lpips_jax.distance(p, x, y)),
}))
"""


def _pip(command: str, *args) -> None:
    """``pip COMMAND --no-deps -q ARGS...``; a failure raises (output captured)."""
    subprocess.run(
        [sys.executable, "-m", "pip", command, "--no-deps", "-q", *map(str, args)],
        check=True,
        capture_output=True,
        timeout=300,
    )


def _run_installed(program: str, site, cwd) -> dict:
    """The JSON that ``program`` prints last, run in a fresh interpreter that imports from
    ``site`` (working directory ``cwd``, no ``LPIPS_JAX_WEIGHTS``)."""
    env = {k: v for k, v in os.environ.items() if k != "LPIPS_JAX_WEIGHTS"}
    env["PYTHONPATH"] = str(site)
    r = subprocess.run(
        [sys.executable, "-c", program], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _reference(params) -> float:
    """PROGRAM's distance, computed by the repository's package with ``params``."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (64, 64, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
    return float(lpips_jax.distance(params, x, y))


def _built(pattern: str, source, tmp_path_factory):
    """The wheel ``pattern`` of ``source``: CI's, built once from this tree for the floor
    step too (``LPIPS_JAX_WHEELS``, .ci/run), else built here."""
    if os.environ.get("LPIPS_JAX_WHEELS"):
        (whl,) = Path(os.environ["LPIPS_JAX_WHEELS"]).glob(pattern)
        return whl
    d = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "--no-build-isolation", "-w", d, source)
    (whl,) = d.glob(pattern)
    return whl


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return _built("lpips_jax_metrics-*.whl", REPO, tmp_path_factory)  # distribution lpips-jax-metrics


def test_wheel_contents(wheel):
    """Every shipped file but the ST-LPIPS ones (a wheel of their own), under 100 MB."""
    assert wheel.stat().st_size < LIMIT, wheel.stat().st_size
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (ep,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = z.read(ep).decode()
        for name, sha in MAIN.items():
            data = z.read(f"lpips_jax/weights/{name}")
            assert hashlib.sha256(data).hexdigest() == sha, name
    assert "lpips_jax/weights/README.md" in names
    assert "lpips_jax/__init__.py" in names and "lpips_jax/cli/__init__.py" in names
    shipped = {n.split("/")[-1] for n in names if n.startswith("lpips_jax/weights/")}
    assert {n for n in shipped if n.endswith(".safetensors")} == set(MAIN)
    assert "[console_scripts]" in entry_points
    assert "lpips-jax = lpips_jax.cli:main" in entry_points


def test_installed_wheel_loads_offline(wheel, tmp_path):
    site = tmp_path / "site"
    _pip("install", "--no-index", "--target", site, wheel)
    out = _run_installed(PROGRAM, site, tmp_path)
    assert out["file"].startswith(str(site)) and "site" in out["file"]
    assert out["weights_dir"] == str(site / "lpips_jax" / "weights")
    # the same value as the repository's package computes (same weights, same code)
    np.testing.assert_allclose(out["d"], _reference(lpips_jax.load("alex")), rtol=1e-6, atol=0)
    assert 0.01 < out["d"] < 2


def test_st_weights_wheel_installs_beside_the_package(wheel, tmp_path, tmp_path_factory):
    """weights_st/ builds the ST-LPIPS files into a wheel under 100 MB; installed beside
    the main wheel (outside the repository), load(..., variant="shift_tolerant") finds
    them there and gives the repository's value."""
    st = _built("lpips_jax_metrics_st_weights-*.whl", REPO / "weights_st", tmp_path_factory)
    assert st.stat().st_size < LIMIT
    with zipfile.ZipFile(st) as z:
        for name in OPTIONAL:
            assert hashlib.sha256(z.read(f"{OPTIONAL_PACKAGE}/{name}")).hexdigest() == SHIPPED[name]
    site = tmp_path / "site"
    _pip("install", "--no-index", "--target", site, wheel, st)
    program = PROGRAM.replace('lpips_jax.load("alex")', 'lpips_jax.load("alex", variant="shift_tolerant")')
    out = _run_installed(program, site, tmp_path)
    ref = _reference(lpips_jax.load("alex", variant="shift_tolerant"))
    np.testing.assert_allclose(out["d"], ref, rtol=1e-6, atol=0)
