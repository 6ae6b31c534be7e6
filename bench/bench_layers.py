"""Per-layer timing of the two conv implementations on this machine (XLA conv vs im2col).

    python bench/bench_layers.py [--nets alex,vgg] [--configs 64x1,64x32,256x1,256x8]

For each conv of each trunk at each (size, batch), times forward and forward+backward
(gradient w.r.t. the layer input, as when LPIPS is a loss) of ``impl="xla"`` and
``impl="im2col"`` interleaved, and prints the rows of the matmul (N*oh*ow) beside the
winner. The rule in ``lpips_jax._nets._choose_impl`` was set from this table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lpips_jax import _nets


def _time(f, *a, min_time=0.05, repeats=5):
    jax.block_until_ready(f(*a))
    t0 = time.perf_counter()
    jax.block_until_ready(f(*a))
    loops = max(1, int(min_time / max(time.perf_counter() - t0, 1e-6)))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            jax.block_until_ready(f(*a))
        ts.append((time.perf_counter() - t0) / loops)
    return statistics.median(ts)


def layer_shapes(net, size, batch):
    """(input shape, kernel shape, stride, padding) of every conv in the trunk."""
    out = []
    n, c = size, 3
    for layer in _nets.LAYERS[net]:
        if isinstance(layer, _nets.Conv):
            out.append(((batch, n, n, c), (layer.kernel, layer.kernel, c, layer.features),
                        layer.stride, layer.padding))  # fmt: skip
            n = (n + 2 * layer.padding - layer.kernel) // layer.stride + 1
            c = layer.features
        elif isinstance(layer, _nets.Pool):
            n = _nets.pool_output_size(n, layer.kernel, layer.stride, layer.ceil)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", default="alex,vgg")
    ap.add_argument("--configs", default="64x1,64x32,256x1,256x8")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(
        f"{'net':5}{'cfg':>8}{'in':>22}{'k':>4}{'s':>3}{'rows':>8}  mode   xla ms  im2col ms  best"
    )
    for net in args.nets.split(","):
        for cfg in args.configs.split(","):
            size, batch = map(int, cfg.split("x"))
            for xs, ks, s, p in layer_shapes(net, size, batch):
                x = jnp.asarray(rng.standard_normal(xs).astype(np.float32))
                k = jnp.asarray(rng.standard_normal(ks).astype(np.float32) * 0.05)
                b = jnp.zeros((ks[-1],), jnp.float32)
                oh = (xs[1] + 2 * p - ks[0]) // s + 1
                rows = xs[0] * oh * oh
                for mode in ("fwd", "bwd"):
                    res = {}
                    for impl in ("xla", "im2col"):

                        def f(x, k, b, impl=impl):
                            return jax.nn.relu(_nets.conv2d(x, k, b, s, p, impl=impl))

                        if mode == "fwd":
                            g = jax.jit(f)
                        else:
                            g = jax.jit(jax.grad(lambda x, k, b, f=f: (f(x, k, b) ** 2).sum()))
                        res[impl] = _time(g, x, k, b)
                    best = min(res, key=res.get)
                    print(
                        f"{net:5}{cfg:>8}{str(xs):>22}{ks[0]:>4}{s:>3}{rows:>8}  {mode:5}"
                        f"{res['xla'] * 1e3:8.3f}{res['im2col'] * 1e3:11.3f}  {best}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
