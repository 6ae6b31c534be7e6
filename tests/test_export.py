"""``distance`` and its gradient lowered with ``jax.export`` for CPU, CUDA and TPU on this
CPU machine (no accelerator needed): the CUDA and TPU modules hold none of the XLA:CPU
fast paths (``lpips_jax/_cpu``) and no host callbacks; the CPU module does hold them
(traced with them on: the default only on the jaxlib they were measured on).

The fast paths are recognised by their source file in the modules' locations and by the
ops they alone emit (im2col's ``dot_general``: the plain path has no matmul at all).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import export

import lpips_jax
from lpips_jax import _ops

CPU_FILE = "lpips_jax/_cpu/"
CALLBACKS = ("callback", "host_compute", "SendToHost", "RecvFromHost")


def _fns(params):
    spec = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    dist = jax.jit(lambda p, x, y: lpips_jax.distance(p, x, y))
    grad = jax.jit(jax.grad(lambda p, x, y: lpips_jax.distance(p, x, y).sum(), argnums=1))
    return spec, {"distance": dist, "grad": grad}


def _module(fn, params, spec, platforms):
    return export.export(fn, platforms=platforms)(params, spec, spec).mlir_module()


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_export_for_cpu_cuda_tpu(net):
    params = lpips_jax.load(net)
    spec, fns = _fns(params)
    with _ops.fast_paths(True):
        _check_modules(params, spec, fns)


def _check_modules(params, spec, fns):
    for name, fn in fns.items():
        both = _module(fn, params, spec, ("cpu", "cuda", "tpu"))
        assert "stablehlo.case" in both, name  # the per-platform choice is in the module
        for platform in ("cuda", "tpu"):
            text = _module(fn, params, spec, (platform,))
            assert "stablehlo.convolution" in text
            assert CPU_FILE not in text, f"{name} for {platform} holds a CPU fast path"
            assert "dot_general" not in text, f"{name} for {platform}: im2col's matmul"
            assert "custom_call" not in text, f"{name} for {platform}: a custom call"
            assert not any(c in text for c in CALLBACKS), f"{name} for {platform}: a host callback"
        cpu = _module(fn, params, spec, ("cpu",))
        assert CPU_FILE in cpu and "dot_general" in cpu, f"{name}: the CPU module lost its fast paths"


def test_fast_paths_off_leave_the_plain_path_on_cpu():
    """The override: traced under ``fast_paths(False)``, the CPU module is the plain path."""
    params = lpips_jax.load("vgg")
    spec, fns = _fns(params)
    with _ops.fast_paths(False):
        text = _module(fns["grad"], params, spec, ("cpu",))
    assert CPU_FILE not in text and "dot_general" not in text and "stablehlo.case" not in text
