"""The metric's one backend seam: convolution, max-pool and channel sums.

The trunks and the metric call these and nothing backend-specific. Each is plain
``lax``/``jnp`` with JAX's own derivatives: what GPU and TPU run. On XLA:CPU, where
other forms measured faster (``docs/speed.md``), :func:`jax.lax.platform_dependent`
swaps in those of :mod:`lpips_jax._cpu` when the function is lowered, so the choice
follows the platform the computation is lowered for (right under ``jax.export`` with
several platforms, and for CPU arrays on a GPU host), never ``jax.default_backend()``.

Override (tests, benchmarks): the environment variable ``LPIPS_JAX_CPU_FAST_PATHS``
(``"all"``, the default; ``"none"``; or a comma-separated subset of :data:`FAST_PATHS`)
read at import, or :func:`fast_paths` in code. Both act when a function is traced: a
function already jitted keeps the forms it was traced with.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from lpips_jax import _cpu

# The CPU fast paths that can be switched on or off one by one.
FAST_PATHS = _cpu.FAST_PATHS


def _check(names: Iterable[str]) -> frozenset[str]:
    names = frozenset(names)
    unknown = sorted(names - set(FAST_PATHS))
    if unknown:
        raise ValueError(f"unknown CPU fast paths {unknown}: expected a subset of {', '.join(FAST_PATHS)}")
    return names


def _parse(text: str) -> frozenset[str]:
    text = text.strip()
    if text in ("", "all"):
        return frozenset(FAST_PATHS)
    if text == "none":
        return frozenset()
    try:
        return _check(t.strip() for t in text.split(",") if t.strip())
    except ValueError as e:
        raise ValueError(f"LPIPS_JAX_CPU_FAST_PATHS={text!r}: {e}, or 'all' or 'none'") from None


_enabled: frozenset[str] = _parse(os.environ.get("LPIPS_JAX_CPU_FAST_PATHS", "all"))


@contextlib.contextmanager
def fast_paths(enabled: bool | Iterable[str]) -> Iterator[None]:
    """Within the block, trace with all CPU fast paths (``True``), none (``False``) or the
    named subset of :data:`FAST_PATHS`."""
    global _enabled
    if isinstance(enabled, bool):
        names = frozenset(FAST_PATHS) if enabled else frozenset()
    else:
        names = _check(enabled)
    before, _enabled = _enabled, names
    try:
        yield
    finally:
        _enabled = before


def _on_cpu(plain, fast, *args):
    """``fast(*args)`` where lowered for the CPU, ``plain(*args)`` elsewhere."""
    return lax.platform_dependent(*args, cpu=fast, default=plain)


def conv2d(
    x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int, padding: int, precision: Any = None
) -> jax.Array:
    """NHWC x HWIO convolution plus bias, as torch's ``Conv2d`` (symmetric zero padding)."""

    def plain(x, kernel, bias):
        y = lax.conv_general_dilated(
            x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision,
        )  # fmt: skip
        return y + bias

    forms = _enabled & _cpu.CONV_PATHS
    if not forms:
        return plain(x, kernel, bias)

    def fast(x, kernel, bias):
        return _cpu.conv2d(x, kernel, stride, padding, precision, forms) + bias

    return _on_cpu(plain, fast, x, kernel, bias)


def max_pool(x: jax.Array, kernel: int, stride: int, ceil: bool) -> jax.Array:
    """NHWC max-pool (no padding) with PyTorch's floor or ceil mode output size."""
    h, w = x.shape[-3], x.shape[-2]
    oh, ow = pool_output_size(h, kernel, stride, ceil), pool_output_size(w, kernel, stride, ceil)
    # Right/bottom padding with -inf so that VALID windows give the ceil-mode sizes.
    ph, pw = max((oh - 1) * stride + kernel - h, 0), max((ow - 1) * stride + kernel - w, 0)
    if ph or pw:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(0, ph), (0, pw), (0, 0)], constant_values=-jnp.inf)
    lead = (1,) * (x.ndim - 3)
    window, strides = (*lead, kernel, kernel, 1), (*lead, stride, stride, 1)
    return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, "VALID")


def pool_output_size(n: int, kernel: int, stride: int, ceil: bool) -> int:
    """PyTorch's ``MaxPool2d`` output length (padding 0, dilation 1)."""
    if not ceil:
        return (n - kernel) // stride + 1
    out = -(-(n - kernel) // stride) + 1
    return out - 1 if (out - 1) * stride >= n else out  # the last window starts inside


def channel_sum(a: jax.Array) -> jax.Array:
    """``sum(a, axis=-1, keepdims=True)``."""
    plain = lambda a: jnp.sum(a, axis=-1, keepdims=True)
    if "sums" not in _enabled:
        return plain(a)
    return _on_cpu(plain, _cpu.channel_sum, a)
