"""Run time of two implementations of E-LPIPS, interleaved in one process (an A/B).

    git show HEAD~1:lpips_jax/_elpips.py > /tmp/old_elpips.py   # outside the repository
    python bench/bench_elpips_ab.py /tmp/old_elpips.py
    python bench/bench_elpips_ab.py /tmp/old_elpips.py --sizes 64:8 --modes fwd --rounds 5

A: the file given (a module with the interface of ``lpips_jax/_elpips.py``, imported under
a name of its own); B: ``lpips_jax._elpips``. Both draw the same transformation and dropout
from the same key, so they are timed on the same draws. A draw's cost depends on its scale
level, so each row times one draw per level ``s`` (the first seed whose draw has level s,
the same seed on both sides; ``distance(p, x, y, key=key, normalize=True)`` jitted, or
``jax.value_and_grad`` of its sum w.r.t. x for ``fwdbwd``) and reports the expected time per
draw, ``sum_s P(s) t_s`` with ``P(s) ~ 1 / s^2`` (8 levels), and the times of level 1 and of
the mean over levels ``s >= 2`` weighted alike. Each round takes the levels in turn, A then
B (B then A in odd rounds), a block of calls lasting >= ``--min-time`` seconds each; the
median over rounds of each level's time per call, by the wall clock and by the process's CPU
time (all threads: on a machine shared with other work, the less disturbed of the two).
XLA's defaults: run without XLA_FLAGS.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import bench_compile  # beside this script
import jax
import jax.numpy as jnp
import numpy as np

from lpips_jax import _elpips

LEVELS = 8


_module = bench_compile.elpips_module


def _seeds(batch):
    """The first seed whose draw (batch ``batch``) has level s, for s = 1 .. 8."""
    level = jax.jit(jax.vmap(lambda s: _elpips._sample(jax.random.key(s), batch, LEVELS, True)[0].level))
    drawn = np.asarray(level(jnp.arange(4000)))
    return [int(np.argmax(drawn == s)) for s in range(1, LEVELS + 1)]


def _program(module, params, x, y, mode):
    def dist(p, x, y, seed):
        return module.distance(p, x, y, key=jax.random.key(seed), normalize=True)

    f = dist if mode == "fwd" else jax.value_and_grad(lambda p, x, y, s: dist(p, x, y, s).sum(), 1)
    t0 = time.perf_counter()
    compiled = jax.jit(f).lower(params, x, y, np.uint32(0)).compile()
    return compiled, time.perf_counter() - t0


def _block(call, min_time):
    """``(wall, CPU)`` seconds per call: the process's CPU time over all its threads, which
    other processes on a shared machine disturb less than the wall clock."""
    call()  # not counted: the first call of a new seed
    t0, c0, calls = time.perf_counter(), time.process_time(), 0
    while calls == 0 or time.perf_counter() - t0 < min_time:
        call()
        calls += 1
    return (time.perf_counter() - t0) / calls, (time.process_time() - c0) / calls


def _row(sides, size, batch, mode, rounds, min_time):
    """``({side: per-level ms}, {side: compile s})`` of one configuration."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (batch, size, size, 3)), jnp.float32)
    y = jnp.clip(x + jnp.asarray(rng.normal(0, 0.1, x.shape), jnp.float32), 0, 1)
    seeds = [np.uint32(s) for s in _seeds(batch)]
    programs = {side: _program(m, p, x, y, mode) for side, (m, p) in sides.items()}
    calls = {
        side: [lambda c=programs[side][0], p=p, k=k: jax.block_until_ready(c(p, x, y, k)) for k in seeds]
        for side, (_, p) in sides.items()
    }
    # the same draws, the same values (the distance, or with the gradient its value)
    va, vb = (jax.tree_util.tree_leaves(programs[s][0](sides[s][1], x, y, seeds[2]))[0] for s in sides)
    assert np.allclose(va, vb, rtol=1e-4, atol=1e-6), (va, vb)
    times = {side: [[] for _ in seeds] for side in sides}
    for r in range(rounds):
        for s in range(len(seeds)):
            for side in ("A", "B") if r % 2 == 0 else ("B", "A"):
                times[side][s].append(_block(calls[side][s], min_time))
    per_level = {
        (side, clock): np.asarray([statistics.median(b[clock] for b in v) * 1e3 for v in ts])
        for side, ts in times.items()
        for clock in (0, 1)
    }
    return per_level, {side: programs[side][1] for side in sides}


def main():
    sys.stdout.reconfigure(line_buffering=True)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="A: an _elpips.py file (e.g. the previous commit's)")
    ap.add_argument("--sizes", nargs="+", default=["64:8", "256:1"], help="SIZE:BATCH ...")
    ap.add_argument("--modes", nargs="+", choices=("fwd", "fwdbwd"), default=["fwd", "fwdbwd"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per timed block (>= 1 call)")
    args = ap.parse_args()
    a = _module(args.a)
    base = _elpips.load()
    sides = {"A": (a, a.ELPIPSParams(trunk=base.trunk, heads=base.heads)), "B": (_elpips, base)}
    prob = np.asarray([1 / s**2 for s in range(1, LEVELS + 1)])
    prob /= prob.sum()
    print(f"A: {args.a}; B: lpips_jax._elpips; jax {jax.__version__} on {jax.default_backend()}; "
          f"{args.rounds} rounds, blocks >= {args.min_time} s; ms per call (batch, 1 draw); "
          f"wall clock, then the process's CPU time")  # fmt: skip
    print(f"{'size':>5}{'batch':>6}{'mode':>8}{'clock':>6}  {'A E[t]':>8}{'B E[t]':>8}{'B/A':>7}   "
          f"{'A s=1':>7}{'B s=1':>7}   {'A s>=2':>7}{'B s>=2':>7}{'B/A':>6}   compile A, B")  # fmt: skip
    for spec in args.sizes:
        size, batch = (int(v) for v in spec.split(":"))
        for mode in args.modes:
            t, comp = _row(sides, size, batch, mode, args.rounds, args.min_time)
            for clock, name in ((0, "wall"), (1, "cpu")):
                a, b = t[("A", clock)], t[("B", clock)]
                ea, eb = float(prob @ a), float(prob @ b)
                ra, rb = (float(prob[1:] @ v[1:] / prob[1:].sum()) for v in (a, b))
                print(f"{size:>5}{batch:>6}{mode:>8}{name:>6}  {ea:8.1f}{eb:8.1f}{eb / ea:7.3f}   "
                      f"{a[0]:7.1f}{b[0]:7.1f}   {ra:7.1f}{rb:7.1f}{rb / ra:6.2f}   "
                      f"{comp['A']:.1f}, {comp['B']:.1f} s")  # fmt: skip
                for side, v in (("A", a), ("B", b)):
                    print(f"      per level {side} ({name}): " + " ".join(f"{u:.1f}" for u in v))


if __name__ == "__main__":
    main()
