"""Memory of LPIPS used as a loss: gradient w.r.t. the images, with and without ``remat``.

For each net and image size this compiles (never runs) jitted functions and prints two
figures in MiB:

- ``temp``: ``jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes``: XLA's
  scratch memory on this backend, i.e. everything but arguments and outputs (activations
  kept for the backward pass, cotangents, convolution workspaces): the peak the call adds.
  (``peak_memory_in_bytes`` is not used: on XLA:CPU it reports about the arguments only.)
- ``kept``: what JAX keeps between the forward and the backward pass: the residuals held
  by the closure of ``jax.vjp``, from ``jax.eval_shape``, leaves shaped like params left
  out. It does not depend on the backend's scheduling or buffer assignment.

The functions (``loss = distance(params, x, y).sum()``):

- ``forward``: the loss alone
- ``grad x``: its gradient w.r.t. x only (y is a fixed reference)
- ``grad x, y``: w.r.t. both images (then y's activations must be kept as well)
- ``grad x, fy``: w.r.t. x, with y's :func:`lpips_jax.features` precomputed and passed in

each ``grad`` with ``remat=False`` and ``remat=True``.

``--elpips``: E-LPIPS rows instead, ``forward`` and ``grad x`` of
``distance(params, x, y, key=key, samples=n).sum()`` for each ``--samples`` n (default 1 8
50 200; default size 256): its draws run in a rematerialised ``lax.scan``, so both figures
should stay flat in n. (The authors' TensorFlow code beside ours: ``bench/bench_elpips.py
--memory``, peak RSS of both sides.)

Usage::

    python bench/memory.py                     # alex and vgg at 512 and 1024, batch 1
    python bench/memory.py --nets alex --sizes 256 --batch 4
    python bench/memory.py --elpips            # E-LPIPS, 256x256, samples 1 8 50 200
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from _loss_helpers import image_and_feature_losses, kept_bytes  # noqa: E402

import lpips_jax  # noqa: E402

MIB = 2**20


def _temp(fn, *args) -> float:
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes / MIB


def measure(net: str, size: int, batch: int) -> list[tuple[str, float | None, float]]:
    """Rows ``(function, kept MiB or None, temp MiB)``."""
    params = lpips_jax.load(net)
    img = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    fy = jax.eval_shape(lambda p, y: lpips_jax.features(p, y), params, img)
    rows = []
    for remat in (False, True):
        loss, loss_f = image_and_feature_losses(remat)

        tag = " remat" if remat else ""
        if not remat:
            rows.append(("forward", None, _temp(loss, params, img, img)))
        cases = [
            ("grad x", loss, img, (1,)),
            ("grad x, y", loss, img, (1, 2)),
            ("grad x, fy", loss_f, fy, (1,)),
        ]
        for name, f, second, argnums in cases:
            kept = kept_bytes(f, params, img, second, argnums=argnums) / MIB
            temp = _temp(jax.grad(f, argnums), params, img, second)
            rows.append((name + tag, kept, temp))
    return rows


def measure_elpips(size: int, batch: int, samples: list[int]) -> list[tuple[str, float | None, float]]:
    """E-LPIPS rows ``(function, kept MiB or None, temp MiB)``, per number of draws."""
    params = lpips_jax.load("elpips")
    img = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    key = jax.random.key(0)
    rows = []
    for n in samples:

        def loss(p, x, y, key, n=n):
            return lpips_jax.distance(p, x, y, key=key, samples=n).sum()

        rows.append((f"forward n={n}", None, _temp(loss, params, img, img, key)))
        kept = kept_bytes(loss, params, img, img, key, argnums=(1,)) / MIB
        rows.append((f"grad x n={n}", kept, _temp(jax.grad(loss, 1), params, img, img, key)))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["alex", "vgg"])
    ap.add_argument("--sizes", nargs="+", type=int, default=None, help="default 512 1024 (E-LPIPS 256)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--elpips", action="store_true", help="E-LPIPS rows (per --samples) instead")
    ap.add_argument("--samples", nargs="+", type=int, default=[1, 8, 50, 200])
    args = ap.parse_args(argv)
    if args.elpips:
        args.nets, rows = ["elpips"], lambda net, size: measure_elpips(size, args.batch, args.samples)
    else:
        rows = lambda net, size: measure(net, size, args.batch)
    args.sizes = args.sizes or ([256] if args.elpips else [512, 1024])
    print(f"backend: {jax.default_backend()}, batch {args.batch}, float32, MiB")
    print(f"| {'net':6} | {'size':>9} | {'function':16} | {'kept':>8} | {'temp':>8} |")
    print(f"|{'-' * 8}|{'-' * 11}|{'-' * 18}|{'-' * 10}|{'-' * 10}|")
    for net in args.nets:
        for size in args.sizes:
            t0 = time.perf_counter()
            for name, kept, temp in rows(net, size):
                k = "-" if kept is None else f"{kept:8.1f}"
                print(
                    f"| {net:6} | {size:>4}x{size:<4} | {name:16} | {k:>8} | {temp:8.1f} |",
                    flush=True,
                )
            print(f"  ({net} {size}: compiled in {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
