"""Run by tests/test_multidevice.py in a subprocess with 8 simulated CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/_multidevice_script.py

Data-parallel LPIPS over the batch, with JAX's own sharding: ``NamedSharding`` under
``jit`` and ``shard_map``; each result compared with the single-device one. Prints one
JSON object: per check, the largest difference relative to the single-device result's
scale, plus facts about shardings and the compiled programs.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(Path(__file__).resolve().parent))
jax.config.update("jax_numpy_dtype_promotion", "strict")

from _loss_helpers import photo_pair  # noqa: E402

import lpips_jax  # noqa: E402

N, SIZE = 16, 32


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def tree_rel(a, b) -> float:
    return max(rel(u, v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@contextlib.contextmanager
def host_reads(seen: list):
    """Within, record the size of every array read to the host by the ways a sharded
    ``jax.Array`` reaches NumPy (``np.asarray``, ``jax.device_get``, ``float``)."""
    from jax._src.array import ArrayImpl

    names = ("__array__", "_single_device_array_to_np_array_did_copy")
    saved = {n: ArrayImpl.__dict__[n] for n in (*names, "_value")}

    def spy(fn):
        return lambda self, *a, **k: (seen.append(self.size), fn(self, *a, **k))[1]

    try:
        for n in names:
            setattr(ArrayImpl, n, spy(saved[n]))
        ArrayImpl._value = property(spy(saved["_value"].fget))
        yield
    finally:
        for n, v in saved.items():
            setattr(ArrayImpl, n, v)


def loss(p, x, y):
    return lpips_jax.distance(p, x, y).mean()


def main() -> None:
    out = {"devices": jax.device_count(), "backend": jax.default_backend()}
    params = lpips_jax.load("alex")
    x, y = photo_pair(N, SIZE, seed=41)

    # Single device.
    d1 = jax.jit(lpips_jax.distance)(params, x, y)
    l1, g1 = jax.jit(jax.value_and_grad(loss, (0, 1)))(params, x, y)

    mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    batch = NamedSharding(mesh, P("batch"))
    replicated = NamedSharding(mesh, P())
    xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)
    ps = jax.device_put(params, replicated)

    # NamedSharding under jit: the batch is split over the devices, params replicated.
    dist = jax.jit(lpips_jax.distance)
    d8 = dist(ps, xs, ys)
    out["jit_distance_rel"] = rel(d8, d1)
    out["jit_distance_sharded_over_batch"] = d8.sharding.is_equivalent_to(batch, 1)
    out["jit_distance_shards"] = len(d8.addressable_shards)

    # Eager calls on device arrays: the range check reads two scalars per image, never an
    # image (the spy sees a whole image when one is read: the control).
    lpips_jax.distance(ps, xs, ys).block_until_ready()  # compiled before counting
    control, seen = [], []
    with host_reads(control):
        np.asarray(xs)
    with host_reads(seen):
        de = lpips_jax.distance(ps, xs, ys)
        de.block_until_ready()
    out["eager_control_read"] = max(control, default=0)
    out["eager_largest_host_read"] = max(seen, default=0)
    out["eager_distance_rel"] = rel(de, d1)
    grad = jax.jit(jax.grad(loss, (0, 1))).lower(ps, xs, ys).compile()  # one compile, and its HLO
    gp8, gx8 = grad(ps, xs, ys)
    out["jit_grad_x_rel"] = rel(gx8, g1[1])
    out["jit_grad_params_rel"] = tree_rel(gp8, g1[0])
    out["jit_grad_x_sharded_over_batch"] = gx8.sharding.is_equivalent_to(batch, 4)
    out["jit_grad_params_replicated"] = all(
        a.sharding.is_fully_replicated for a in jax.tree_util.tree_leaves(gp8)
    )
    hlo = grad.as_text()
    out["jit_grad_has_all_reduce"] = "all-reduce" in hlo
    out["jit_grad_has_callback"] = "callback" in hlo.lower()

    # shard_map: each device runs the plain function on its slice of the batch.
    per_device = jax.shard_map(
        lpips_jax.distance,
        mesh=mesh,
        in_specs=(P(), P("batch"), P("batch")),
        out_specs=P("batch"),
    )
    dsm = jax.jit(per_device)(ps, xs, ys)
    out["shard_map_distance_rel"] = rel(dsm, d1)

    def local_loss(p, a, b):
        # Mean over the global batch: local sum, then a sum over devices.
        return jax.lax.psum(lpips_jax.distance(p, a, b).sum(), "batch") / N

    global_loss = jax.shard_map(local_loss, mesh=mesh, in_specs=(P(), P("batch"), P("batch")), out_specs=P())
    lsm, (gpsm, gxsm) = jax.jit(jax.value_and_grad(global_loss, (0, 1)))(ps, xs, ys)
    out["shard_map_loss_rel"] = rel(lsm, l1)
    out["shard_map_grad_x_rel"] = rel(gxsm, g1[1])
    out["shard_map_grad_params_rel"] = tree_rel(gpsm, g1[0])

    # The family: DISTS, ST-LPIPS and E-LPIPS shard the same way (value and gradient w.r.t. x, from
    # one program each: the distances ride along as the gradient's aux output).
    # E-LPIPS (3 scale levels: 32x32 images) with its key: the draw's transformations are
    # sampled for the global batch, so the split batch gives the same draw.
    key = jax.random.key(8)

    def loss_and_distances(p, a, b):
        d = lpips_jax.distance(p, a, b, **({"key": key, "samples": 2} if p.net == "elpips" else {}))
        return d.mean(), d

    for name, p in (
        ("dists", lpips_jax.load("dists")),
        ("alex_st", lpips_jax.load("alex", variant="shift_tolerant")),
        ("elpips", lpips_jax.load("elpips").replace(scale_levels=3)),
    ):
        grad_x_and_distances = jax.jit(jax.grad(loss_and_distances, 1, has_aux=True))
        g1x, v1 = grad_x_and_distances(p, x, y)
        g8x, v8 = grad_x_and_distances(jax.device_put(p, replicated), xs, ys)
        out[f"{name}_jit_distance_rel"] = rel(v8, v1)
        out[f"{name}_jit_grad_x_rel"] = rel(g8x, g1x)
        out[f"{name}_sharded_over_batch"] = v8.sharding.is_equivalent_to(batch, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
