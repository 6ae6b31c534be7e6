"""Run by tests/test_nnx.py in a subprocess with 8 simulated CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/_nnx_sharded_script.py SEED...

``lpips_jax.nnx.MeanDistance`` updated with one batch of 8 pairs split over the devices
(``NamedSharding`` over a 1-D mesh), under ``nnx.jit`` and eagerly. The batch is the
``photo_pair(4, 32, seed)`` of each SEED, concatenated, so that the test compares with
its own one-device distances. Prints one JSON object: the means, the count and the
number of shards of the input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(Path(__file__).resolve().parent))
jax.config.update("jax_numpy_dtype_promotion", "strict")

from _loss_helpers import photo_pair  # noqa: E402

import lpips_jax  # noqa: E402
import lpips_jax.nnx  # noqa: E402

SIZE = 32


def main(seeds: list[int]) -> None:
    params = lpips_jax.load("alex")
    pairs = [photo_pair(4, SIZE, seed=s) for s in seeds]
    x = np.concatenate([p[0] for p in pairs])
    y = np.concatenate([p[1] for p in pairs])
    mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    batch = NamedSharding(mesh, P("batch"))
    xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)

    @nnx.jit
    def eval_step(metric, a, b):
        metric.update(x=a, y=b)

    jitted = lpips_jax.nnx.MeanDistance(params)
    eval_step(jitted, xs, ys)
    eager = lpips_jax.nnx.MeanDistance(params)
    eager.update(x=xs, y=ys)
    out = {
        "devices": jax.device_count(),
        "input_shards": len(xs.addressable_shards),
        "count": int(jitted.count[...]),
        "mean_jit": float(jitted.compute()),
        "mean_eager": float(eager.compute()),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]])
