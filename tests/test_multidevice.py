"""Data-parallel LPIPS on 8 simulated CPU devices, equal to the single-device result.

The 8 devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX
starts, so the checks run in a subprocess (tests/_multidevice_script.py) and cannot
leak into other tests; this test asserts on the JSON it prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent / "_multidevice_script.py"

# Sharding does not change the arithmetic: in float64 the sharded and one-device runs agree
# to float64 rounding (1e-16) times the metrics' condition (DISTS's float32 gradient is off
# by up to ~1e-3 of scale: a condition of ~1e4); 1e-9 of scale leaves a margin of 1e3.
TOL_F64 = 1e-9
# Float32 sharded vs the float64 truth: at most 4 times the float32 one-device run's own
# error (the same operations, blocked for batches of 2 instead of 16), plus 16 float32
# ulps of the result's scale (for a run that happens to round well).
FLOOR_F32 = 16 * float(np.finfo(np.float32).eps)


def assert_f32_as_accurate(results, name):
    sharded, single = results[f"{name}_f32_sharded"], results[f"{name}_f32_single"]
    assert sharded <= 4 * single + FLOOR_F32, (name, sharded, single)


@pytest.fixture(scope="module")
def results() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.multidevice
def test_eight_devices(results):
    assert results["devices"] == 8 and results["backend"] == "cpu"


@pytest.mark.multidevice
def test_named_sharding_under_jit(results):
    """Batch split over 8 devices with ``NamedSharding``; params replicated."""
    for name in ("jit_distance", "jit_grad_x", "jit_grad_params"):
        assert results[f"{name}_f64"] <= TOL_F64, name
        assert_f32_as_accurate(results, name)
    assert results["jit_distance_sharded_over_batch"]  # output stays split, not gathered
    assert results["jit_distance_shards"] == 8
    assert results["jit_grad_x_sharded_over_batch"]
    assert results["jit_grad_params_replicated"]
    assert results["jit_grad_has_all_reduce"]  # XLA sums the params' gradient itself


@pytest.mark.multidevice
def test_eager_call_reads_no_image_to_host(results):
    """An eager ``distance`` on sharded device arrays reads at most a scalar per value to
    the host (the range check's min and max), while reading an image is seen (control)."""
    assert results["eager_control_read"] == 16 * 32 * 32 * 3
    assert 0 < results["eager_largest_host_read"] <= 2
    assert_f32_as_accurate(results, "eager_distance")


@pytest.mark.multidevice
def test_shard_map(results):
    """The plain function per device under ``shard_map``; a global-mean loss with ``psum``."""
    for name in ("distance", "loss", "grad_x", "grad_params"):
        assert results[f"shard_map_{name}_f64"] <= TOL_F64, name


@pytest.mark.multidevice
@pytest.mark.parametrize("metric", ["dists", "alex_st", "elpips"])
def test_family_under_named_sharding(results, metric):
    """DISTS, ST-LPIPS and E-LPIPS (two draws of one key): the batch split over 8 devices
    gives the one-device values and gradients, and the output stays split."""
    assert results[f"{metric}_dtype"] == "float64"
    assert results[f"{metric}_jit_distance_f64"] <= TOL_F64
    assert results[f"{metric}_jit_grad_x_f64"] <= TOL_F64
    assert results[f"{metric}_sharded_over_batch"]


@pytest.mark.multidevice
def test_no_host_callbacks(results):
    """Runs on TPU: the compiled sharded training step calls back to no Python host."""
    assert not results["jit_grad_has_callback"]
