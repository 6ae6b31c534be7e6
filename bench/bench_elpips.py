"""Speed of lpips_jax's E-LPIPS against the authors' TensorFlow code, side by side in one run.

    python bench/bench_elpips.py --elpips PATH/elpips --tf-python TFVENV/bin/python
    python bench/bench_elpips.py --elpips PATH/elpips --modes fwd --rounds 2 --out fwd.json
    python bench/bench_elpips.py --elpips PATH/elpips --memory      # peak RSS growth instead

``PATH/elpips`` is the authors' ``elpips/`` folder (mkettune/elpips, commit 9192007); the
official side runs it under TensorFlow 2 (``tf.compat.v1``) in a Python of its own
(``--tf-python``, default ``$ELPIPS_TF_PYTHON``, else this one if it has TensorFlow), built
as tests/data/elpips/make_refs.py builds it (its functions, imported): the official
``Metric`` with config ``elpips_vgg(batch_size=N, n=draws)``, its heads and our VGG16 trunk
(``weights/vgg_trunk.safetensors``). The CPU only.

Rows: image size x batch (``--sizes SIZE:BATCH``) x draws per pair (``--draws``) x mode
(``fwd``: the distances; ``fwdbwd``: the distances and the gradient of their sum w.r.t. x).
Both sides draw their transformations and dropout at random, each with its own sampler and
new draws at every call (ours: ``key=jax.random.key(seed)`` with a new seed per call), on
the same images in [0, 1]; only the time is compared, not the values.

- Ours: ``jax.jit`` of ``lpips_jax.distance(p, x, y, key=..., samples=n, normalize=True)``
  (``jax.value_and_grad`` of its sum w.r.t. x for ``fwdbwd``), lowered and compiled before
  timing (compile time reported); one warm-up call for 1 draw. A program of n > 1 draws is
  not warmed up (that would cost a whole call): XLA's one-time work is in the compile, and
  the first round's time is one of those the median and the min are taken over.
- Official: n draws the official way, ``config.average_over = n`` (the ``n`` of
  ``elpips_vgg``): ``Metric.forward`` evaluates one draw directly when ``n`` is the number 1,
  otherwise in a ``tf.while_loop`` of n iterations (its default ``parallel_iterations``),
  each sampling a new transformation and dropout, summing the distances, then dividing by n.
  ``Metric(back_prop=...)`` is True for ``fwdbwd`` (the gradient: ``tf.gradients`` of the
  summed distance w.r.t. x), False for ``fwd``. For n > 1 the trip count is fed through a
  ``tf.placeholder`` (the same graph and while loop for any n), so that the warm-up run, made
  once per row after building the graph and session (TensorFlow optimises the graph on its
  first run: seconds), costs one iteration instead of n.

Each row: both sides set up (compile; build and warm up), then ``--rounds`` rounds in turn
(ours, official, ours, official, ...), one worker subprocess per side kept alive across rows,
as bench/bench_speed.py does. A round of a side is a block of calls lasting >= ``--min-time``
seconds (at least one call) and gives its mean time per call: a call's time depends on the
scale level it draws (level 1, about 2/3 of the draws, costs most), so a row's time is a mean
over many draws. Reported per side: the median and the min over rounds (seconds per call of
the whole batch with n draws); ``ratio`` is the median over rounds of official / ours
(> 1: ours is faster).

``--memory``: instead, per row, a fresh worker of each side (one at a time) sets up (ours
compiles; the official builds its graph and session), then reports how far its resident
memory rose from before its first call to the peak over that call and calls lasting >=
``--min-time`` (the peak over several, so that a level-1 draw is almost surely among them):
``malloc_trim``, VmRSS, the peak reset (``/proc/self/clear_refs``), the calls, VmHWM (Linux,
glibc). The first call counts: TensorFlow's allocator keeps in its pool what a call took, so
a rise measured after it would hide the official side's working memory (its first run also
optimises the graph: a one-time cost counted there). The same measure on both sides; for
ours also XLA's ``temp`` (compiled ``memory_analysis()``, as bench/memory.py).
Defaults then ``--sizes 256:1 --draws 1 8 50``.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests" / "data" / "elpips"))
import make_refs  # noqa: E402  (numpy only at import)
from bench_speed import Worker, _commands  # noqa: E402  (the standard library only at import)

MIB = 2**20


# ----------------------------------------------------------------------------- workers
def _images(size, batch):
    """A smooth random uint8 pair (make_refs' test images) as float32 in [0, 1]."""
    x, y = make_refs._rand_pair(0, batch, size, size)
    return x.astype("float32") / 255, y.astype("float32") / 255


def _ours():
    """``(info, build)``: ``build(size, batch, draws, mode) -> (call, warm-up or None, info)``."""
    import jax
    import jaxlib
    import numpy as np

    import lpips_jax

    params = lpips_jax.load("elpips")
    info = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "python": platform.python_version()}

    def build(size, batch, draws, mode):
        x, y = (jax.numpy.asarray(a) for a in _images(size, batch))

        def dist(p, x, y, seed):
            key = jax.random.key(seed)
            return lpips_jax.distance(p, x, y, key=key, samples=draws, normalize=True)

        f = dist if mode == "fwd" else jax.value_and_grad(lambda p, x, y, s: dist(p, x, y, s).sum(), 1)
        t0 = time.perf_counter()
        compiled = jax.jit(f).lower(params, x, y, np.uint32(0)).compile()
        compile_s = time.perf_counter() - t0
        seeds = itertools.count(1)

        def call():
            jax.block_until_ready(compiled(params, x, y, np.uint32(next(seeds))))

        temp = compiled.memory_analysis().temp_size_in_bytes
        return call, (call if draws == 1 else None), {"compile_s": compile_s, "xla_temp": temp}

    return info, build


def _official(elpips_dir):
    """As :func:`_ours`, for the authors' code under ``tf.compat.v1``."""
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # v1-API deprecation notices
    tf1, elpips, core, _ = make_refs._import_elpips(Path(elpips_dir))
    feats = make_refs.trunk_dict(REPO / "weights" / "vgg_trunk.safetensors")
    info = {"tensorflow": tf1.VERSION, "python": platform.python_version()}
    sess = None

    def build(size, batch, draws, mode):
        nonlocal sess
        if sess is not None:
            sess.close()
        tf1.reset_default_graph()
        t0 = time.perf_counter()
        n = draws if draws == 1 else tf1.placeholder(tf1.int32, [])
        config = elpips.elpips_vgg(batch_size=batch, n=n)
        metric = core.Metric(config, back_prop=mode == "fwdbwd", custom_net_weights=dict(feats))
        x, y = _images(size, batch)
        p0, p1 = tf1.placeholder(tf1.float32, x.shape), tf1.placeholder(tf1.float32, y.shape)
        d = metric.forward(p0, p1)
        fetch = [d] if mode == "fwd" else [d, tf1.gradients(tf1.reduce_sum(d), p0)[0]]
        sess = tf1.Session()
        build_s = time.perf_counter() - t0
        feed = {p0: x, p1: y}
        warm_feed = feed if draws == 1 else {**feed, n: 1}
        if draws > 1:
            feed = {**feed, n: draws}
        return (lambda: sess.run(fetch, feed)), (lambda: sess.run(fetch, warm_feed)), {"build_s": build_s}

    return info, build


def _status():
    """``(VmRSS, VmHWM)`` of this process in bytes."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                vals[k] = int(v.split()[0]) * 1024
    return vals["VmRSS"], vals["VmHWM"]


def _block(call, min_time):
    """Calls until ``min_time`` seconds have passed (at least one): the time per call."""
    t0, calls = time.perf_counter(), 0
    while calls == 0 or time.perf_counter() - t0 < min_time:
        call()
        calls += 1
    return {"time": (time.perf_counter() - t0) / calls, "calls": calls}


def _rss_growth(run):
    """``run()``'s result, with how far resident memory rose meanwhile (bytes)."""
    ctypes.CDLL(None).malloc_trim(0)  # freed heap back to the system first (glibc)
    base = _status()[0]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    out = run()
    return {**out, "rss_base": base, "rss_growth": _status()[1] - base}


def _worker(side, elpips_dir):
    reply = os.fdopen(os.dup(1), "w")  # the replies; anything else printed goes to stderr
    os.dup2(2, 1)
    info, build = _ours() if side == "ours" else _official(elpips_dir)
    call = None
    for cmd in _commands():
        if cmd["op"] == "info":
            out = info
        elif cmd["op"] == "setup":
            call, warm, out = build(cmd["size"], cmd["batch"], cmd["draws"], cmd["mode"])
            if cmd.get("full_warmup"):  # memory: the first call is measured too (see below)
                first_call = call
                reply.write(json.dumps(out) + "\n")
                reply.flush()
                continue
            t0 = time.perf_counter()
            if warm is not None:
                warm()
            out["warmup_s"] = time.perf_counter() - t0
        elif cmd["op"] == "time":
            out = _block(call, cmd["min_time"])
        else:  # memory: from before the first call (a pooling allocator, such as
            # TensorFlow's, keeps what that call took: measured after it, the pool hides it)
            out = _rss_growth(lambda: (first_call(), _block(call, cmd["min_time"]))[1])
        reply.write(json.dumps(out) + "\n")
        reply.flush()


# ----------------------------------------------------------------------------- parent
class _Worker(Worker):
    """bench_speed's worker (one JSON line each way), run by ``python`` with this file."""

    def __init__(self, python, side, elpips_dir, env):
        argv = [python, __file__, "--worker", side, "--elpips", elpips_dir]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def _tf_python(ap, given):
    if given:
        return given
    if importlib.util.find_spec("tensorflow") is not None:
        return sys.executable
    ap.error("--tf-python: no $ELPIPS_TF_PYTHON and no TensorFlow here (pip install tensorflow-cpu==2.21.0)")


def _machine():
    """CPU model and vector width, cores, commit of this checkout."""
    model, flags = platform.processor() or "?", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k.strip() == "model name":
                    model = v.strip()
                elif k.strip() == "flags":
                    flags = v.split()
                    break
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    dirty = subprocess.run([*git, "status", "--porcelain", "-uno"], capture_output=True).stdout
    commit = commit.strip() + ("+" if dirty else "")  # + : tracked files changed
    return {"cpu": model, "simd": simd, "cores": os.cpu_count(), "commit": commit}


def _header(meta, ours, off):
    return (
        f"# {meta['cpu']} ({meta['simd']}), {meta['cores']} cores; commit {meta['commit']}; "
        f"ours: jax {ours['jax']} (python {ours['python']}); official: tensorflow "
        f"{off['tensorflow']} (python {off['python']})"
    )


def _speed(args, python, env):
    workers = {
        "ours": _Worker(sys.executable, "ours", args.elpips, env),
        "official": _Worker(python, "official", args.elpips, env),
    }
    rows = []
    try:
        meta = {**_machine(), **{f"{s}_versions": w.run(op="info") for s, w in workers.items()}}
        print(_header(meta, meta["ours_versions"], meta["official_versions"]), flush=True)
        print(f"# {args.rounds} rounds, timed blocks >= {args.min_time} s; seconds per call", flush=True)
        print(
            f"{'size':>5}{'batch':>6}{'draws':>6}{'mode':>8}{'ours med':>10}{'min':>8}"
            f"{'off med':>10}{'min':>8}{'ratio':>7}{'compile':>9}",
            flush=True,
        )
        for (size, batch), draws, mode in itertools.product(args.sizes, args.draws, args.modes):
            cfg = dict(size=size, batch=batch, draws=draws, mode=mode)
            row = dict(cfg)
            for side, w in workers.items():
                row[f"{side}_setup"] = w.run(op="setup", **cfg)
            times = {"ours": [], "official": []}
            for _ in range(args.rounds):
                for side, w in workers.items():
                    times[side].append(w.run(op="time", min_time=args.min_time)["time"])
            for side, ts in times.items():
                row.update({f"{side}_s": ts, f"{side}_median_s": statistics.median(ts)})
                row[f"{side}_min_s"] = min(ts)
            row["ratio"] = statistics.median(b / a for a, b in zip(times["ours"], times["official"]))
            rows.append(row)
            print(
                f"{size:>5}{batch:>6}{draws:>6}{mode:>8}{row['ours_median_s']:>10.3f}{row['ours_min_s']:>8.3f}"
                f"{row['official_median_s']:>10.3f}{row['official_min_s']:>8.3f}{row['ratio']:>7.2f}"
                f"{row['ours_setup']['compile_s']:>8.1f}s",
                flush=True,
            )
    finally:
        for w in workers.values():
            w.close()
    return meta, rows


def _memory(args, python, env):
    rows, versions = [], {}
    for (size, batch), draws, mode in itertools.product(args.sizes, args.draws, args.modes):
        cfg = dict(size=size, batch=batch, draws=draws, mode=mode)
        row = dict(cfg)
        for side, py in (("ours", sys.executable), ("official", python)):
            w = _Worker(py, side, args.elpips, env)
            try:
                versions.setdefault(side, w.run(op="info"))
                row[f"{side}_setup"] = w.run(op="setup", full_warmup=True, **cfg)
                row[side] = w.run(op="memory", min_time=args.min_time)
            finally:
                w.close()
        if not rows:
            meta = {**_machine(), **{f"{s}_versions": v for s, v in versions.items()}}
            print(_header(meta, versions["ours"], versions["official"]), flush=True)
            print(f"# peak RSS growth from before the first call, over calls lasting >= {args.min_time} s")
            print(f"{'size':>5}{'batch':>6}{'draws':>6}{'mode':>8}{'ours temp':>11}{'ours rss+':>11}"
                  f"{'off rss+':>10}   MiB", flush=True)  # fmt: skip
        rows.append(row)
        print(
            f"{size:>5}{batch:>6}{draws:>6}{mode:>8}{row['ours_setup']['xla_temp'] / MIB:>11.1f}"
            f"{row['ours']['rss_growth'] / MIB:>11.1f}{row['official']['rss_growth'] / MIB:>10.1f}",
            flush=True,
        )
    return meta, rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elpips", default=os.environ.get("ELPIPS_REF"), help="the official elpips/ folder")
    ap.add_argument("--tf-python", default=os.environ.get("ELPIPS_TF_PYTHON"), help="Python with TensorFlow")
    ap.add_argument("--sizes", nargs="+", default=None, help="SIZE:BATCH ... (default 64:8 256:1)")
    ap.add_argument("--draws", nargs="+", type=int, default=None, help="draws per pair (default 1 50)")
    ap.add_argument("--modes", nargs="+", choices=("fwd", "fwdbwd"), default=["fwd", "fwdbwd"])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per row")
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds per timed block (>= 1 call)")
    ap.add_argument("--memory", action="store_true", help="peak RSS growth per side instead")
    ap.add_argument("--out", help="write the results here (JSON)")
    ap.add_argument("--worker", choices=("ours", "official"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.elpips or not (Path(args.elpips) / "elpips.py").is_file():
        ap.error(f"--elpips {args.elpips!r}: expected the official elpips/ folder (or $ELPIPS_REF)")
    if args.worker:
        return _worker(args.worker, args.elpips)
    try:
        sizes = args.sizes or (["256:1"] if args.memory else ["64:8", "256:1"])
        args.sizes = [tuple(int(v) for v in s.split(":")) for s in sizes]
    except ValueError:
        ap.error(f"--sizes {args.sizes}: expected SIZE:BATCH ...")
    args.draws = args.draws or ([1, 8, 50] if args.memory else [1, 50])
    python = _tf_python(ap, args.tf_python)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0 = time.perf_counter()
    meta, rows = (_memory if args.memory else _speed)(args, python, env)
    print(f"# {time.perf_counter() - t0:.0f} s in all", flush=True)
    if args.out:
        meta.update(device="cpu", memory=args.memory, rounds=args.rounds, min_time=args.min_time)
        with open(args.out, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
