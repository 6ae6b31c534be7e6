"""Static (trace-time) checks of the metrics' inputs and options, and their batching."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lpips_jax import _nets

NETS = ("alex", "vgg", "squeeze")
VERSIONS = ("0.1", "0.0")
# LPIPS trunks: torchvision's, or ST-LPIPS's shift-tolerant ones (alex and vgg only).
VARIANTS = ("vanilla", "shift_tolerant")
SHIFT_TOLERANT_NETS = ("alex", "vgg")


def check_net(net: Any) -> str:
    if not isinstance(net, str) or net not in NETS:
        raise ValueError(f"net={net!r} is not known: expected one of {', '.join(map(repr, NETS))}")
    return net


def check_version(version: Any) -> str:
    if not isinstance(version, str) or version not in VERSIONS:
        hint = ""
        if isinstance(version, (int, float)) and not isinstance(version, bool):
            hint = f" (give the version as a string, e.g. version={str(version)!r})"
        raise ValueError(
            f"version={version!r} is not known: expected one of {', '.join(map(repr, VERSIONS))}{hint}"
        )
    return version


def check_variant(variant: Any, net: str) -> str:
    if not isinstance(variant, str) or variant not in VARIANTS:
        allowed = ", ".join(map(repr, VARIANTS))
        raise ValueError(f"variant={variant!r} is not known: expected one of {allowed}")
    if variant == "shift_tolerant" and net not in SHIFT_TOLERANT_NETS:
        raise ValueError(
            f"variant='shift_tolerant' exists for net 'alex' and 'vgg', not {net!r} "
            "(no shift-tolerant SqueezeNet weights are published)"
        )
    return variant


def check_lpips(lpips: Any) -> bool:
    if not isinstance(lpips, bool):
        raise TypeError(f"lpips={lpips!r}: expected True or False")
    return lpips


def as_batch(x: Any) -> tuple[jax.Array, bool]:
    """``x`` with a batch axis, and whether it came without one."""
    x = jnp.asarray(x)
    return (x[None], True) if x.ndim == 3 else (x, False)


def widen(x: jax.Array) -> jax.Array:
    """bfloat16/float16 images -> float32 (float64 stays): scaling runs at least in float32."""
    return x if x.dtype == jnp.float64 else x.astype(jnp.float32)


def _shape_dtype(name: str, a: Any) -> tuple[tuple[int, ...], Any]:
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        a = np.asarray(a)
    return tuple(a.shape), a.dtype


def check_images(x: Any, y: Any, net: str | None = None) -> None:
    """Raise ``ValueError``/``TypeError`` unless x and y are a valid NHWC or HWC pair (and
    at least the minimum size of ``net``, when given)."""
    for name, a in (("x", x), ("y", y)):
        shape, dtype = _shape_dtype(name, a)
        if len(shape) not in (3, 4):
            raise ValueError(
                f"{name} has shape {shape} (rank {len(shape)}): expected (N, H, W, 3) or (H, W, 3)"
            )
        if shape[-1] != 3:
            hint = ""
            if shape[-3] == 3:
                axes = "0, 2, 3, 1" if len(shape) == 4 else "1, 2, 0"
                hint = f"; this looks like NCHW: move the channel axis last, e.g. {name}.transpose({axes})"
            elif shape[-1] in (1, 4):
                hint = "; convert grayscale or RGBA images to RGB first"
            raise ValueError(
                f"{name} has shape {shape}: expected (..., H, W, 3) NHWC with 3 channels last{hint}"
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"{name} has dtype {np.dtype(dtype).name}: expected a float array in [-1, 1] "
                "(or [0, 1] with normalize=True); scale integer images first, e.g. "
                "x.astype(np.float32) / 255 with normalize=True"
            )
        h, w = shape[-3], shape[-2]
        m = 0 if net is None else _nets.min_size(net)
        if h < m or w < m:
            raise ValueError(
                f"{name} has spatial size {h}x{w}: net {net!r} needs at least {m}x{m} "
                f"(minimum sizes: " + ", ".join(f"{n} {_nets.min_size(n)}" for n in _nets.LAYERS) + ")"
            )
    xs, ys = _shape_dtype("x", x)[0], _shape_dtype("y", y)[0]
    if xs != ys and not _batch_one_against_n(xs, ys):
        raise ValueError(
            f"x and y must have the same shape, or one of them a batch of 1 (1, H, W, 3) "
            f"against the other's (N, H, W, 3): got x {xs} and y {ys}"
        )


def _batch_one_against_n(xs: tuple[int, ...], ys: tuple[int, ...]) -> bool:
    """Both batched, of equal image shapes, and one of them a batch of 1 (it broadcasts)."""
    return len(xs) == len(ys) == 4 and xs[1:] == ys[1:] and 1 in (xs[0], ys[0])


@jax.jit
def _extrema(a: jax.Array) -> jax.Array:
    """``[min, max]`` of ``a`` as one ``(2,)`` array, computed on ``a``'s device."""
    return jnp.stack([jnp.min(a), jnp.max(a)])


def check_range(name: str, a: Any, normalize: bool) -> None:
    """Eager-only value check: skipped for traced values (free under jit).

    Catches the common mistakes: 0..255 images, and [-1, 1] images passed with
    ``normalize=True``. A small overshoot (e.g. a decoder's output) is allowed.
    """
    if isinstance(a, jax.core.Tracer) or isinstance(normalize, jax.core.Tracer):
        return
    if np.size(a) == 0:
        return
    if isinstance(a, jax.Array):  # reduced where it lives: two scalars reach the host, not the image
        with jax.ensure_compile_time_eval():  # also for a concrete array closed over in a jit
            lo, hi = (float(v) for v in jax.device_get(_extrema(a)))
    else:
        arr = np.asarray(a)
        lo, hi = float(arr.min()), float(arr.max())
    expect = (0.0, 1.0) if normalize else (-1.0, 1.0)
    slack = 0.5
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or inf values")
    if lo < expect[0] - slack or hi > expect[1] + slack:
        hint = ""
        if hi > 2.0:
            hint = "; it looks like 0..255 pixel values: divide by 255 and pass normalize=True"
        elif normalize and lo < -slack:
            hint = "; it looks like [-1, 1] input: drop normalize=True"
        raise ValueError(
            f"{name} has values in [{lo:.4g}, {hi:.4g}]: expected [{expect[0]:g}, {expect[1]:g}]"
            f"{' (normalize=True)' if normalize else ''}{hint}"
        )
