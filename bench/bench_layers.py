"""Per-layer timing of the conv implementations on this machine (XLA conv vs im2col).

    python bench/bench_layers.py [--nets alex,vgg] [--configs 64x1,64x32,256x1,256x8]
    python bench/bench_layers.py --torch     # add PyTorch's conv (oneDNN) per layer

For each conv of each trunk (``--nets``: any key of ``_nets.LAYERS``) at each (size,
batch), times forward and forward+backward (gradient w.r.t. the layer input, as when
LPIPS is a loss) of ``impl="xla"``, ``impl="im2col"``, ``eigen`` (both ways),
``xla>im2col`` (XLA's conv forward, differentiated through im2col: the custom JVP
``split_conv``) and ``impl="auto"`` (what the trunk runs), one after another in one
process, and prints the rows of the matmul (N*oh*ow) beside the winner. The rule in
``lpips_jax._cpu.choose`` was set from such a table. ``--torch`` first times
``torch.nn.functional.conv2d`` + ReLU on the same shapes in a subprocess (all cores), so
that each layer's gap to the official package's kernels shows.
At the end, per trunk, configuration and mode: the sums over all its convs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lpips_jax import _cpu, _nets
from lpips_jax._cpu import _conv


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
        elif isinstance(layer, _nets.Blur):  # 3 taps, stride 2, on the padded map
            n = (n + 2 * layer.pad - 3) // 2 + 1
        elif isinstance(layer, _nets.L2Pool):  # 3 taps, stride 2, zero padding 1
            n = (n + 2 - 3) // 2 + 1
    return out


def _torch_times(nets, configs):
    """{(net, cfg, layer, mode): seconds} of torch's conv2d + ReLU, in this process."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    out = {}
    for net in nets:
        for cfg in configs:
            size, batch = map(int, cfg.split("x"))
            for i, (xs, ks, s, p) in enumerate(layer_shapes(net, size, batch)):
                x = torch.randn(xs[0], xs[3], xs[1], xs[2])
                w = torch.randn(ks[3], ks[2], ks[0], ks[1]) * 0.05
                b = torch.zeros(ks[3])
                xg = x.clone().requires_grad_(True)

                def fwd():
                    with torch.no_grad():
                        torch.relu(torch.nn.functional.conv2d(x, w, b, s, p))

                def bwd():
                    xg.grad = None
                    (torch.relu(torch.nn.functional.conv2d(xg, w, b, s, p)) ** 2).sum().backward()

                out[f"{net}/{cfg}/{i}/fwd"] = _time(fwd)
                out[f"{net}/{cfg}/{i}/bwd"] = _time(bwd)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", default="alex,vgg")
    ap.add_argument("--configs", default="64x1,64x32,256x1,256x8")
    ap.add_argument("--torch", action="store_true", help="add torch's conv2d per layer")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    nets, configs = args.nets.split(","), args.configs.split(",")
    if args.torch_worker:
        print(json.dumps(_torch_times(nets, configs)))
        return
    ref = {}
    if args.torch:
        cmd = [sys.executable, __file__, "--torch-worker", "--nets", args.nets, "--configs", args.configs]
        ref = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    rng = np.random.default_rng(0)
    impls = ("xla", "im2col", "eigen", "xla>im2col", "auto")
    split = {"eigen": ("eigen", "eigen"), "xla>im2col": ("xla", "im2col")}  # (forward, derivative)
    print(
        f"{'net':5}{'cfg':>8}{'in':>22}{'k':>4}{'s':>3}{'rows':>8}  mode   xla ms  im2col ms"
        f"  eigen ms  split ms  auto ms  best" + ("  torch ms  auto/torch" if ref else "")
    )
    sums = {}  # (net, cfg, mode) -> [sum of auto, sum of torch] over the trunk's convs
    for net in nets:
        for cfg in configs:
            size, batch = map(int, cfg.split("x"))
            for i, (xs, ks, s, p) in enumerate(layer_shapes(net, size, batch)):
                x = jnp.asarray(rng.standard_normal(xs).astype(np.float32))
                k = jnp.asarray(rng.standard_normal(ks).astype(np.float32) * 0.05)
                b = jnp.zeros((ks[-1],), jnp.float32)
                oh = (xs[1] + 2 * p - ks[0]) // s + 1
                rows = xs[0] * oh * oh
                for mode in ("fwd", "bwd"):
                    res = {}
                    for impl in impls:
                        if impl == "eigen" and s != 1:
                            continue  # Eigen's form is for stride-1 convs only

                        def f(x, k, b, impl=impl):
                            if impl in split:
                                y = _conv.split_conv(x, k, s, p, *split[impl], None) + b
                            elif impl == "auto":
                                y = _cpu.conv2d(x, k, s, p, None, _cpu.CONV_PATHS) + b
                            else:
                                y = _conv.conv(x, k, s, p, impl, None) + b
                            return jax.nn.relu(y)

                        if mode == "fwd":
                            g = jax.jit(f)
                        else:
                            g = jax.jit(jax.grad(lambda x, k, b, f=f: (f(x, k, b) ** 2).sum()))
                        res[impl] = _time(g, x, k, b)
                    best = min((i for i in res if i != "auto"), key=res.get)
                    eigen = f"{res['eigen'] * 1e3:10.3f}" if "eigen" in res else f"{'-':>10}"
                    line = (
                        f"{net:5}{cfg:>8}{str(xs):>22}{ks[0]:>4}{s:>3}{rows:>8}  {mode:5}"
                        f"{res['xla'] * 1e3:8.3f}{res['im2col'] * 1e3:11.3f}{eigen}"
                        f"{res['xla>im2col'] * 1e3:10.3f}{res['auto'] * 1e3:9.3f}  {best:10}"
                    )
                    total = sums.setdefault((net, cfg, mode), [0.0, 0.0])
                    total[0] += res["auto"]
                    if ref:
                        t = ref[f"{net}/{cfg}/{i}/{mode}"]
                        total[1] += t
                        line += f"{t * 1e3:10.3f}{res['auto'] / t:12.2f}"
                    print(line, flush=True)
    print("\nWhole trunk, summed over its convs (ms; a pair is two such passes at batch 1):")
    for (net, cfg, mode), (ours, theirs) in sums.items():
        line = f"{net:5}{cfg:>8}  {mode:5} auto {ours * 1e3:8.2f}"
        if ref:
            line += f"  torch {theirs * 1e3:8.2f}  auto/torch {ours / theirs:5.2f}"
        print(line)


if __name__ == "__main__":
    main()
