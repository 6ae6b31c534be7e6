"""Where the compile time of ``distance`` goes, on this machine's default backend.

    python bench/bench_compile.py                       # vgg 64x64 batch 1, forward+backward
    python bench/bench_compile.py --net squeeze --size 256 --batch 8 --mode fwd
    python bench/bench_compile.py --kernels 15          # also the 15 costliest kernels

Splits the first call's cost into tracing + lowering to StableHLO (``jit(...).lower``,
Python) and XLA's compile (``.compile()``), then compiles once more under the profiler
(host tracer level 3, which records XLA's own trace events) and sums XLA's phases:
HLO passes, the emission of each fused kernel (``FusionCompiler::Compile``, per kernel,
run on a thread pool: the sum is CPU time, not wall time), LLVM's code generation for all
kernels (``Codegen``, wall time) and the thunk emitter. The kernel table names each
kernel's HLO fusion, its op count and the JAX op it came from, so that the costliest
(or the most numerous) kinds show. squeeze runs with a random trunk; elpips
(8 scale levels) one draw, its key an argument.

    python bench/bench_compile.py --sweep               # every target configuration

``--sweep``: the compile time of the issue's target configurations (alex and vgg at 64x64
batch 1 and 32, 256x256 batch 1 and 8) in one process, after a warm-up compile of a
configuration outside the set (so one-time costs of the process are not in the figures),
over ``--rounds`` rounds that take the configurations in turn, each a fresh ``jax.jit``
(no cache hit); ``--clear-caches`` also empties JAX's tracing caches before each one.
Medians and ranges of trace + lower, XLA compile and their total.

    python bench/bench_compile.py --elpips                      # E-LPIPS beside LPIPS-vgg
    python bench/bench_compile.py --elpips --elpips-old OLD.py  # and another _elpips module

``--elpips``: the compile time (trace + lower + XLA compile, a fresh ``jax.jit`` each) of
LPIPS-vgg and of E-LPIPS (8 scale levels, one draw, its key an argument) at ``--sizes``
(``SIZE:BATCH``, default 64:1 128:2 256:1), forward and forward+backward (the gradient
w.r.t. x), over ``--rounds`` rounds that take the configurations in turn, after a warm-up
compile outside the set. ``--elpips-old`` also times a second implementation of E-LPIPS,
a file with the interface of ``lpips_jax/_elpips.py`` (e.g. ``git show
HEAD~1:lpips_jax/_elpips.py > /tmp/old_elpips.py``), imported as a module of its own.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import importlib.util
import json
import re
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
from bench_speed import bench_params  # bench/ is on sys.path when run as a script

import lpips_jax

_PHASES = (
    "HLO passes through layout assignment",
    "HLO passes after layout assignment",
    "FusionCompiler::Compile",
    "Codegen",
    "ThunkEmitter::EmitEntryComputation",
)


def _op_names(hlo_text):
    """{instruction name: (shape, JAX op name)} of the compiled module's instructions."""
    out = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) ", line)
        if m:
            op = re.search(r'op_name="([^"]+)"', line)
            out[m.group(1)] = (m.group(2), op.group(1) if op else "?")
    return out


def _instruction(event):
    """The HLO instruction a ``FusionCompiler::Compile`` event emitted, from its module name."""
    module = event.get("args", {}).get("module", "")
    return module.replace("_kernel_module", "").replace("__compute_module_", "")


_TARGETS = ((64, 1), (64, 32), (256, 1), (256, 8))  # (size, batch) of the targets


def _case(size, batch, mode, net="vgg"):
    """``(f, x, y, key)``: ``distance`` (``fwd``) or its value and gradient w.r.t. x, and
    its inputs; E-LPIPS takes one draw of the key (an argument), the others ignore it."""
    x = jnp.full((batch, size, size, 3), 0.1, jnp.float32)

    def dist(p, x, y, key):
        return lpips_jax.distance(p, x, y, **({"key": key} if net == "elpips" else {}))

    f = dist if mode == "fwd" else jax.value_and_grad(lambda p, x, y, k: dist(p, x, y, k).sum(), 1)
    return f, x, x * 0.5, jax.random.key(0)


def _compile_time(p, size, batch, mode):
    """(trace + lower, XLA compile) seconds of a fresh ``jax.jit`` of ``distance``."""
    f, x, y, key = _case(size, batch, mode)
    t0 = time.perf_counter()
    lowered = jax.jit(f).lower(p, x, y, key)
    t1 = time.perf_counter()
    lowered.compile()
    return t1 - t0, time.perf_counter() - t1


def sweep(nets, mode, rounds, clear):
    params = {net: bench_params(net) for net in nets}
    configs = [(net, s, b) for net in nets for s, b in _TARGETS]
    warm = _compile_time(params[nets[0]], 48, 2, mode)  # outside the set: one-time costs
    print(f"{mode} on {jax.default_backend()}, jax {jax.__version__}; {rounds} rounds, "
          f"{'tracing caches cleared before each' if clear else 'tracing caches kept'}; "
          f"warm-up ({nets[0]} 48x48 batch 2): {sum(warm):.2f} s")  # fmt: skip
    times = {c: [] for c in configs}
    for _ in range(rounds):
        for c in configs:
            if clear:
                jax.clear_caches()
            times[c].append(_compile_time(params[c[0]], c[1], c[2], mode))
    print(f"{'net':8s} {'size':>5s} {'batch':>5s}  {'lower':>6s} {'XLA':>6s} {'total':>6s}  range")
    for (net, size, batch), ts in times.items():
        lower = statistics.median(a for a, _ in ts)
        xla = statistics.median(b for _, b in ts)
        tot = [a + b for a, b in ts]
        print(f"{net:8s} {size:5d} {batch:5d}  {lower:6.2f} {xla:6.2f} "
              f"{statistics.median(tot):6.2f}  {min(tot):.2f}-{max(tot):.2f} s")  # fmt: skip


def elpips_module(path):
    """An E-LPIPS implementation from a file (``lpips_jax/_elpips.py``'s interface)."""
    spec = importlib.util.spec_from_file_location("elpips_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _elpips_compile_time(impl, size, batch, mode):
    """(trace + lower, XLA compile) seconds of a fresh ``jax.jit``: ``impl`` is ``"vgg"``
    (LPIPS-vgg) or ``(module, params)`` for E-LPIPS at one draw, the key an argument."""
    x = jnp.full((batch, size, size, 3), 0.1, jnp.float32)
    if impl == "vgg":
        p, key = bench_params("vgg"), None
        dist = lambda p, x, y, key: lpips_jax.distance(p, x, y)  # noqa: E731
    else:
        module, p = impl
        key = jax.random.key(0)
        dist = lambda p, x, y, key: module.distance(p, x, y, key=key)  # noqa: E731
    f = dist if mode == "fwd" else jax.value_and_grad(lambda p, x, y, k: dist(p, x, y, k).sum(), 1)
    t0 = time.perf_counter()
    lowered = jax.jit(f).lower(p, x, x * 0.5, key)
    t1 = time.perf_counter()
    lowered.compile()
    return t1 - t0, time.perf_counter() - t1


def elpips_sweep(sizes, rounds, old_path):
    from lpips_jax import _elpips

    base = _elpips.load()
    impls = {"vgg": "vgg", "elpips": (_elpips, base)}
    if old_path:
        old = elpips_module(old_path)
        impls["elpips-old"] = (old, old.ELPIPSParams(trunk=base.trunk, heads=base.heads))
    warm = _elpips_compile_time("vgg", 48, 2, "fwd")  # outside the set: one-time costs
    print(f"E-LPIPS (8 levels, 1 draw) beside LPIPS-vgg on {jax.default_backend()}, jax {jax.__version__}; "
          f"{rounds} rounds; warm-up (vgg 48x48 batch 2 fwd): {sum(warm):.2f} s")  # fmt: skip
    configs = [(name, s, b, m) for s, b in sizes for m in ("fwd", "fwdbwd") for name in impls]
    times = {c: [] for c in configs}
    for _ in range(rounds):
        for c in configs:
            times[c].append(_elpips_compile_time(impls[c[0]], *c[1:]))
    print(f"{'impl':11s} {'size':>5s} {'batch':>5s} {'mode':>7s}  {'lower':>6s} {'XLA':>6s} {'total':>6s}  "
          "range       / vgg")  # fmt: skip
    for name, size, batch, mode in configs:
        ts = times[(name, size, batch, mode)]
        totals = [a + b for a, b in ts]
        tot = statistics.median(totals)
        vgg = statistics.median(a + b for a, b in times[("vgg", size, batch, mode)])
        print(f"{name:11s} {size:5d} {batch:5d} {mode:>7s}  {statistics.median(a for a, _ in ts):6.2f} "
              f"{statistics.median(b for _, b in ts):6.2f} {tot:6.2f}  "
              f"{min(totals):5.2f}-{max(totals):5.2f} s {tot / vgg:5.2f}")  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", default="vgg", choices=("alex", "vgg", "squeeze", "elpips"))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--mode", default="fwdbwd", choices=("fwd", "fwdbwd"))
    ap.add_argument("--kernels", type=int, default=0, help="list the N costliest kernels")
    ap.add_argument("--sweep", action="store_true", help="every target configuration")
    ap.add_argument("--nets", default="alex,vgg", help="with --sweep")
    ap.add_argument("--rounds", type=int, default=3, help="with --sweep")
    ap.add_argument("--clear-caches", action="store_true", help="with --sweep")
    ap.add_argument("--elpips", action="store_true", help="E-LPIPS beside LPIPS-vgg")
    ap.add_argument("--elpips-old", help="with --elpips: another _elpips.py to time too")
    ap.add_argument("--sizes", nargs="+", default=["64:1", "128:2", "256:1"], help="with --elpips")
    args = ap.parse_args()
    if args.elpips:
        sizes = [tuple(int(v) for v in c.split(":")) for c in args.sizes]
        elpips_sweep(sizes, args.rounds, args.elpips_old)
        return
    if args.sweep:
        sweep(args.nets.split(","), args.mode, args.rounds, args.clear_caches)
        return

    p = bench_params(args.net)
    f, x, y, key = _case(args.size, args.batch, args.mode, args.net)
    t0 = time.perf_counter()
    lowered = jax.jit(f).lower(p, x, y, key)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    print(f"{args.net} {args.size}x{args.size} batch {args.batch} {args.mode} on {jax.default_backend()}")
    print(f"trace + lower {t1 - t0:.2f} s, XLA compile {t2 - t1:.2f} s, total {t2 - t0:.2f} s")

    with tempfile.TemporaryDirectory() as out:
        opts = jax.profiler.ProfileOptions()
        opts.host_tracer_level = 3
        opts.python_tracer_level = 0
        jax.profiler.start_trace(out, create_perfetto_trace=True, profiler_options=opts)
        t0 = time.perf_counter()
        jax.jit(lambda *a: f(*a)).lower(p, x, y, key).compile()  # a fresh lowering: no cache hit
        t_prof = time.perf_counter() - t0
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{out}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as fh:
            events = json.load(fh)
    events = [e for e in events.get("traceEvents", events) if e.get("ph") == "X"]
    total = collections.Counter()
    for e in events:
        total[e["name"]] += e["dur"] / 1e3
    kernels = [e for e in events if e["name"] == "FusionCompiler::Compile"]
    print(
        f"again, lowered and compiled under the profiler: {t_prof:.2f} s; "
        f"{len(kernels)} fused kernels emitted"
    )
    for phase in _PHASES:  # HLO pass events carry the module's name: "... (jit_f)"
        ms = sum(t for name, t in total.items() if name == phase or name.startswith(phase + " ("))
        note = " (CPU time over the thread pool)" if phase == "FusionCompiler::Compile" else ""
        print(f"  {phase:40s} {ms:8.1f} ms{note}")
    if not kernels:
        return
    per = sorted(kernels, key=lambda e: -e["dur"])
    mean = sum(e["dur"] for e in kernels) / len(kernels) / 1e3
    print(f"  per kernel: mean {mean:.1f} ms, max {per[0]['dur'] / 1e3:.1f} ms")
    names = _op_names(compiled.as_text())
    kinds = collections.Counter()
    for e in kernels:
        op = names.get(_instruction(e), ("", "?"))[1]
        # e.g. "transpose(jvp(Trunk))/Trunk._run_block/features_10/pad" -> "transpose .../pad"
        tail = re.sub(r"features_\d+", "F", op.split("/")[-1])
        kinds[("transpose " if "transpose(" in op else "") + tail] += 1
    print("  kernels by the JAX op they end in:", ", ".join(f"{k} {v}" for k, v in kinds.most_common(12)))
    for e in per[: args.kernels]:
        a, inst = e.get("args", {}), _instruction(e)
        shape, op = names.get(inst, ("?", "?"))
        print(
            f"    {e['dur'] / 1e3:6.1f} ms  ops {a.get('op_count', '?'):>4}  {inst:32s} "
            f"{shape:28s} {op[-80:]}"
        )


if __name__ == "__main__":
    main()
