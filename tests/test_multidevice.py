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

import pytest

SCRIPT = Path(__file__).resolve().parent / "_multidevice_script.py"

# Sharded and single-device runs do the same arithmetic per image, on batches of 2 instead
# of 16 (other convolution blocking), and the params' gradient sums over devices in another
# order: agreement to float32 rounding, relative to the result's largest element.
TOL_VALUE = 1e-6
TOL_GRAD = 1e-5


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
    assert results["jit_distance_rel"] <= TOL_VALUE
    assert results["jit_distance_sharded_over_batch"]  # output stays split, not gathered
    assert results["jit_distance_shards"] == 8
    assert results["jit_grad_x_rel"] <= TOL_GRAD
    assert results["jit_grad_params_rel"] <= TOL_GRAD
    assert results["jit_grad_x_sharded_over_batch"]
    assert results["jit_grad_params_replicated"]
    assert results["jit_grad_has_all_reduce"]  # XLA sums the params' gradient itself


@pytest.mark.multidevice
def test_eager_call_reads_no_image_to_host(results):
    """An eager ``distance`` on sharded device arrays reads at most a scalar per value to
    the host (the range check's min and max), while reading an image is seen (control)."""
    assert results["eager_control_read"] == 16 * 32 * 32 * 3
    assert 0 < results["eager_largest_host_read"] <= 2
    assert results["eager_distance_rel"] <= TOL_VALUE


@pytest.mark.multidevice
def test_shard_map(results):
    """The plain function per device under ``shard_map``; a global-mean loss with ``psum``."""
    assert results["shard_map_distance_rel"] <= TOL_VALUE
    assert results["shard_map_loss_rel"] <= TOL_VALUE
    assert results["shard_map_grad_x_rel"] <= TOL_GRAD
    assert results["shard_map_grad_params_rel"] <= TOL_GRAD


@pytest.mark.multidevice
@pytest.mark.parametrize("metric", ["dists", "alex_st", "elpips"])
def test_family_under_named_sharding(results, metric):
    """DISTS, ST-LPIPS and E-LPIPS (two draws of one key): the batch split over 8 devices
    gives the single-device values and gradients, and the output stays split."""
    assert results[f"{metric}_jit_distance_rel"] <= TOL_VALUE
    # DISTS' gradient goes through its covariance E[ab] - E[a]E[b] in float32 (the official
    # formula), whose rounding follows the reduction order that the batch split changes
    # (seen: 5.6e-5 of the gradient's scale).
    assert results[f"{metric}_jit_grad_x_rel"] <= (1e-4 if metric == "dists" else TOL_GRAD)
    assert results[f"{metric}_sharded_over_batch"]


@pytest.mark.multidevice
def test_no_host_callbacks(results):
    """Runs on TPU: the compiled sharded training step calls back to no Python host."""
    assert not results["jit_grad_has_callback"]
