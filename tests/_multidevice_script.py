"""Run by tests/test_multidevice.py in a subprocess with 8 simulated CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/_multidevice_script.py

Data-parallel metrics over the batch, with JAX's own sharding: ``NamedSharding`` under
``jit`` and ``shard_map``. The claim is that sharding does not change the arithmetic, so
it is checked in float64 (sharded against one device, each a float64 run), where both
agree to float64 rounding whatever the CPU. A float32 sharded run of alex is checked
against the float64 truth beside the float32 one-device run's own error. Prints one JSON
object: per check, the largest difference relative to the reference's scale, plus facts
about shardings and the compiled programs.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, str(Path(__file__).resolve().parent))
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_enable_x64", True)  # float64 runs; float32 arrays stay float32

from _loss_helpers import photo_pair  # noqa: E402

import lpips_jax  # noqa: E402

N, SIZE = 16, 32


def rel(a, b) -> float:
    """Largest |a - b| over the tree, relative to each leaf of ``b``'s largest |element|."""
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    out = 0.0
    for u, v in pairs:
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        out = max(out, float(np.abs(u - v).max() / np.abs(v).max()))
    return out


def f64(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


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


KEY = jax.random.key(8)  # E-LPIPS's draws: sampled for the global batch, the same split or not


def loss_and_distances(p, a, b):
    """The mean distance (a loss) and the distances, as the gradient's aux output: one
    program gives the values and the gradients."""
    d = lpips_jax.distance(p, a, b, **({"key": KEY, "samples": 2} if p.net == "elpips" else {}))
    return d.mean(), d


def main() -> None:
    out = {"devices": jax.device_count(), "backend": jax.default_backend()}
    mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    batch = NamedSharding(mesh, P("batch"))
    replicated = NamedSharding(mesh, P())
    x32, y32 = photo_pair(N, SIZE, seed=41)
    x64, y64 = f64(x32), f64(y32)

    def split(a):
        return jax.device_put(a, batch)

    params32 = lpips_jax.load("alex")
    params64 = f64(params32)
    grad = jax.jit(jax.value_and_grad(loss_and_distances, (0, 1), has_aux=True))

    # float64, one device: the truth of every alex check below.
    (l1, d1), g1 = grad(params64, x64, y64)

    # NamedSharding under jit, float64: the batch split over the devices, params replicated.
    (_, d8), g8 = grad(jax.device_put(params64, replicated), split(x64), split(y64))
    out["jit_distance_f64"] = rel(d8, d1)
    out["jit_grad_x_f64"] = rel(g8[1], g1[1])
    out["jit_grad_params_f64"] = rel(g8[0], g1[0])

    # The same in float32 (the program users run), and the facts of its compiled program.
    (_, d1_32), g1_32 = grad(params32, x32, y32)
    ps32 = jax.device_put(params32, replicated)
    xs32, ys32 = split(x32), split(y32)
    compiled = grad.lower(ps32, xs32, ys32).compile()
    (_, d8_32), g8_32 = compiled(ps32, xs32, ys32)
    for name, sharded, single, truth in (
        ("jit_distance", d8_32, d1_32, d1),
        ("jit_grad_x", g8_32[1], g1_32[1], g1[1]),
        ("jit_grad_params", g8_32[0], g1_32[0], g1[0]),
    ):
        out[f"{name}_f32_sharded"] = rel(sharded, truth)
        out[f"{name}_f32_single"] = rel(single, truth)
    out["jit_distance_sharded_over_batch"] = d8_32.sharding.is_equivalent_to(batch, 1)
    out["jit_distance_shards"] = len(d8_32.addressable_shards)
    out["jit_grad_x_sharded_over_batch"] = g8_32[1].sharding.is_equivalent_to(batch, 4)
    out["jit_grad_params_replicated"] = all(
        a.sharding.is_fully_replicated for a in jax.tree_util.tree_leaves(g8_32[0])
    )
    hlo = compiled.as_text()
    out["jit_grad_has_all_reduce"] = "all-reduce" in hlo  # XLA sums the params' gradient itself
    out["jit_grad_has_callback"] = "callback" in hlo.lower()

    # Eager calls on device arrays (float32): the range check reads two scalars per image,
    # never an image (the spy sees a whole image when one is read: the control).
    lpips_jax.distance(ps32, xs32, ys32).block_until_ready()  # compiled before counting
    control, seen = [], []
    with host_reads(control):
        np.asarray(xs32)
    with host_reads(seen):
        de = lpips_jax.distance(ps32, xs32, ys32)
        de.block_until_ready()
    out["eager_control_read"] = max(control, default=0)
    out["eager_largest_host_read"] = max(seen, default=0)
    out["eager_distance_f32_sharded"] = rel(de, d1)
    out["eager_distance_f32_single"] = out["jit_distance_f32_single"]

    # shard_map, float64: each device runs the plain function on its slice of the batch;
    # a global-mean loss with psum.
    ps64, xs64, ys64 = jax.device_put(params64, replicated), split(x64), split(y64)
    specs = (P(), P("batch"), P("batch"))
    per_device = jax.shard_map(lpips_jax.distance, mesh=mesh, in_specs=specs, out_specs=P("batch"))
    out["shard_map_distance_f64"] = rel(jax.jit(per_device)(ps64, xs64, ys64), d1)

    def local_loss(p, a, b):
        return jax.lax.psum(lpips_jax.distance(p, a, b).sum(), "batch") / N

    global_loss = jax.shard_map(local_loss, mesh=mesh, in_specs=specs, out_specs=P())
    lsm, gsm = jax.jit(jax.value_and_grad(global_loss, (0, 1)))(ps64, xs64, ys64)
    out["shard_map_loss_f64"] = rel(lsm, l1)
    out["shard_map_grad_x_f64"] = rel(gsm[1], g1[1])
    out["shard_map_grad_params_f64"] = rel(gsm[0], g1[0])

    # The family, float64: DISTS, ST-LPIPS and E-LPIPS (3 scale levels: 32x32 images) shard
    # the same way (values and gradients w.r.t. x from one program each).
    grad_x = jax.jit(jax.grad(loss_and_distances, 1, has_aux=True))
    for name, p in (
        ("dists", lpips_jax.load("dists")),
        ("alex_st", lpips_jax.load("alex", variant="shift_tolerant")),
        ("elpips", lpips_jax.load("elpips").replace(scale_levels=3)),
    ):
        p = f64(p)
        g1x, v1 = grad_x(p, x64, y64)
        g8x, v8 = grad_x(jax.device_put(p, replicated), xs64, ys64)
        out[f"{name}_jit_distance_f64"] = rel(v8, v1)
        out[f"{name}_jit_grad_x_f64"] = rel(g8x, g1x)
        out[f"{name}_sharded_over_batch"] = v8.sharding.is_equivalent_to(batch, 1)
        out[f"{name}_dtype"] = str(v8.dtype)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
