"""``lpips-jax dirs``, ``allpairs``, ``eval`` and ``lpips_jax.bapps.evaluate`` on 8 simulated CPU
devices: every batch split over every device, the numbers those of one device.

The 8 devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX
starts, so one subprocess (tests/_cli_devices_script.py) runs every command with
``--devices 1`` and with all 8, and this module asserts on what it wrote and printed.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent / "_cli_devices_script.py"

# One device computes a batch of 8 pairs, eight devices one pair each: the same
# arithmetic per pair in another convolution blocking, so the CSVs agree to float32
# rounding (not bit for bit), relative to the largest distance (as tests/test_multidevice).
TOL = 1e-6


def cpu_devices_env(n: int) -> dict[str, str]:
    """This environment with JAX on the CPU as ``n`` simulated devices (read when JAX starts)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
    return env


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict, Path]:
    work = tmp_path_factory.mktemp("devices")
    cmd = [sys.executable, str(SCRIPT), str(work)]
    proc = subprocess.run(cmd, env=cpu_devices_env(8), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), work


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _csv(path: Path, value_column: int) -> tuple[list, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [r[:value_column] for r in rows], np.array([float(r[value_column]) for r in rows[1:]])


@pytest.mark.multidevice
@pytest.mark.parametrize("cmd", ["dirs", "allpairs", "eval", "evaluate"])
def test_every_device_gets_work(results, cmd):
    """Each jitted call's output is split in 8 distinct slices with every device, in one
    slice with ``--devices 1``."""
    out, _ = results
    assert out["devices"] == 8 and out["backend"] == "cpu"
    one, eight = out["runs"][f"{cmd}_1"], out["runs"][f"{cmd}_8"]
    for run in (one, eight):
        assert run.get("code", 0) == 0, run["stderr"]
    assert one["spread"] and set(one["spread"]) == {1}
    assert eight["spread"] and set(eight["spread"]) == {8}


@pytest.mark.multidevice
@pytest.mark.parametrize("cmd, value_column", [("dirs", 1), ("allpairs", 2)])
def test_csv_equals_one_device(results, cmd, value_column):
    out, work = results
    keys1, v1 = _csv(work / f"{cmd}_1.csv", value_column)
    keys8, v8 = _csv(work / f"{cmd}_8.csv", value_column)
    assert keys8 == keys1 and len(v1) == (11 if cmd == "dirs" else 15)
    assert _rel(v8, v1) <= TOL


@pytest.mark.multidevice
def test_eval_equals_one_device(results):
    """The 2AFC scores are the same; the library's distances agree to float32 rounding."""
    out, work = results
    assert (work / "eval_8.json").read_text() == (work / "eval_1.json").read_text()
    one, eight = out["runs"]["evaluate_1"], out["runs"]["evaluate_8"]
    assert len(one["d0"]) == 10  # the subset's 10 triplets: padding dropped
    for k in ("d0", "d1"):
        assert _rel(eight[k], one[k]) <= TOL


@pytest.mark.multidevice
def test_devices_out_of_range(results):
    out, _ = results
    run = out["runs"]["dirs_9"]
    assert run["code"] == 2
    assert "--devices 9: expected 1 to 8, the local device count" in run["stderr"]
    assert out["evaluate_devices_0"] == "devices=0: expected an int from 1 to 8, the local device count"
