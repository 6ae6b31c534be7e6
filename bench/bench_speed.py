"""Speed of lpips_jax against the official PyTorch lpips 0.1.4, side by side in one run.

    python bench/bench_speed.py                   # full matrix on the CPU
    python bench/bench_speed.py --quick           # alex/vgg 64x64 b1 and b32 only
    python bench/bench_speed.py --device gpu      # CUDA for torch, the GPU for jax
    python bench/bench_speed.py --device gpu --dtypes float32,bfloat16   # ours in bf16 too

Each side runs in its own long-lived worker subprocess; the parent hands the workers one
configuration at a time, in alternating rounds (ours, official, ours, official, ...), so
neither side's thread pool competes with the other's. Per configuration and side: warm-up
calls excluded, then the median of ``--repeats`` timed blocks, each a loop of calls long
enough to take >= ``--min-time`` seconds; pairs/s from the median over ``--rounds``
rounds, and the ratio ours/official as the median of the per-round ratios (each round
times both sides back to back). Forward: the official model in eval mode under
``torch.no_grad()``; ours ``jax.jit(distance)``. Both sides run at their default precision:
on a GPU that lets float32 convolutions use TF32 on both (torch's
``cudnn.allow_tf32`` is on by default; so is XLA's). With ``--dtypes float32,bfloat16``
ours is timed a second time with ``distance(..., dtype=jnp.bfloat16)`` (float32 params,
normalisation and reductions) and reported beside the float32 row, as a ratio to the
same official float32 timing (the official package has no half-precision mode).
Forward+backward: the gradient of the summed distance w.r.t. x (``jax.value_and_grad``;
torch ``.backward()`` on x with ``requires_grad``). Compile time of ours is timed
separately (lower + compile, once per configuration and dtype).

Achieved FLOP/s: XLA's cost analysis of the compiled function (``flops``; on a GPU, where
cuDNN's convolutions are custom calls that it does not count, of the lowered one) divided by the
time, as a fraction of the machine's peak, measured here as the best of a float32 matmul in
torch and in jax at their default precision (2048^3 on the CPU, 8192^3 on a GPU, repeated)
— an achievable-FMA-throughput estimate; on a GPU this is jax's TF32 matmul rate.
SqueezeNet runs with a random trunk on both sides (no ImageNet trunk is shipped).
``--nets dists,alex-st,vgg-st`` times DISTS against ``DISTS_pytorch`` and ST-LPIPS against
``stlpips_pytorch`` (both built offline as in tests/_family_refs.py; DISTS on the same
images mapped to [0, 1]).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS_FULL = [
    (net, size, batch)
    for net in ("alex", "vgg", "squeeze")
    for size, batch in ((64, 1), (64, 32), (256, 1), (256, 8))
]
_SHORT = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
CONFIGS_QUICK = [(net, 64, b) for net in ("alex", "vgg") for b in (1, 32)]
# The metric family, beside the LPIPS rows (--nets dists,alex-st,vgg-st).
CONFIGS_FAMILY = [
    (net, size, batch)
    for net in ("dists", "alex-st", "vgg-st")
    for size, batch in ((64, 1), (64, 32), (256, 1), (256, 8))
]


# ----------------------------------------------------------------------------- workers
def bench_params(net):
    """Shipped params for alex and vgg; for squeeze (no ImageNet trunk is shipped) a random
    trunk (seed 0) and uniform heads, 1/C per channel."""
    import jax
    import jax.numpy as jnp

    import lpips_jax

    if net.endswith("-st"):
        return lpips_jax.load(net[:-3], variant="shift_tolerant")
    if net != "squeeze":
        return lpips_jax.load(net)
    trunk = lpips_jax.Trunk(net="squeeze").init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    heads = {
        f"lin{k}": {"kernel": jnp.full((1, 1, c, 1), 1.0 / c)}
        for k, c in enumerate(lpips_jax.tap_channels("squeeze"))
    }
    return lpips_jax.LPIPSParams(trunk=trunk["params"], heads=heads, net="squeeze")


def _timeit(fn, min_time, repeats):
    # warm-up: one call (a slow configuration), or up to three
    t0 = time.perf_counter()
    fn()
    if time.perf_counter() - t0 < 1.0:
        fn()
        fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    if one > 2.0:  # very slow configurations: fewer timed blocks (still a median of 3)
        repeats = min(repeats, 3)
    loops = max(1, int(min_time / one))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - t0) / loops)
    return statistics.median(times)


def _commands():
    """A worker's configurations: one JSON object a line on stdin, until ``{"op": "quit"}``."""
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("op") == "quit":
            return
        yield cmd


def _worker_ours(device):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import lpips_jax

    params_cache, compiled_cache = {}, {}

    def params_for(net):
        if net not in params_cache:
            params_cache[net] = bench_params(net)
        return params_cache[net]

    for cmd in _commands():
        net, size, batch, mode = cmd["net"], cmd["size"], cmd["batch"], cmd["mode"]
        p = params_for(net)
        dtype = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[
            cmd.get("dtype", "float32")
        ]
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32))
        y = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32))
        key = (net, size, batch, mode, cmd.get("dtype", "float32"))
        if key not in compiled_cache:  # compile once; later rounds reuse it

            def dist(p, x, y, dtype=dtype):
                return lpips_jax.distance(p, x, y, dtype=dtype)

            if mode == "fwd":
                f = jax.jit(dist)
            else:
                f = jax.jit(jax.value_and_grad(lambda p, x, y: dist(p, x, y).sum(), 1))
            t0 = time.perf_counter()
            lowered = f.lower(p, x, y)
            compiled = lowered.compile()
            compile_s = time.perf_counter() - t0
            flops = _flops(compiled)
            if flops == 0.0:  # GPU: cuDNN convolutions are custom calls, uncounted there
                flops = _flops(lowered)
            compiled_cache[key] = (compiled, compile_s, flops)
        compiled, compile_s, flops = compiled_cache[key]

        def call():
            jax.block_until_ready(compiled(p, x, y))

        t = _timeit(call, cmd["min_time"], cmd["repeats"])
        print(json.dumps({"time": t, "compile": compile_s, "flops": flops}), flush=True)


def _flops(stage):
    """``flops`` of XLA's cost analysis of a ``Lowered`` or ``Compiled`` (0 if absent)."""
    cost = stage.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0


def _worker_official(device):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    import lpips
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    models = {}

    def model_for(net):
        if net not in models:
            import warnings

            from _family_refs import official_dists, official_stlpips

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if net == "dists":
                    m = official_dists()
                elif net.endswith("-st"):
                    m = official_stlpips(net[:-3])
                else:
                    m = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
                    if net != "squeeze":
                        _load_trunk(m, net)
            models[net] = m.to(dev).eval()
        return models[net]

    for cmd in _commands():
        net, size, batch, mode = cmd["net"], cmd["size"], cmd["batch"], cmd["mode"]
        m = model_for(net)
        rng = np.random.default_rng(0)
        x = torch.from_numpy(rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)).to(dev)
        y = torch.from_numpy(rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)).to(dev)
        sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)
        kw = {}
        if net == "dists":  # DISTS takes [0, 1] images, and computes no gradient unless told
            x, y, kw = (x + 1) / 2, (y + 1) / 2, {"require_grad": True}
        if mode == "fwd":

            def call():
                with torch.no_grad():
                    m(x, y)
                sync()
        else:
            xg = x.clone().requires_grad_(True)

            def call():
                xg.grad = None
                m(xg, y, **kw).sum().backward()
                sync()

        t = _timeit(call, cmd["min_time"], cmd["repeats"])
        print(json.dumps({"time": t}), flush=True)


def _load_trunk(m, net):
    """Give the official model the same ImageNet trunk tensors that we ship."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file

    from lpips_jax._weights import weights_dir

    flat = load_file(str(weights_dir() / f"{net}_trunk.safetensors"))
    sd = m.net.state_dict()
    new = {}
    for k in sd:
        _, idx, kind = k.split(".", 2)
        a = flat[f"trunk/features_{idx}/{'kernel' if kind == 'weight' else 'bias'}"]
        if kind == "weight":
            a = a.transpose(3, 2, 0, 1)
        new[k] = torch.from_numpy(np.array(a))
    m.net.load_state_dict(new)


def _peak_flops(device):
    """Achievable float32 matmul FLOP/s on this machine (best of torch and jax)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    n = 8192 if device == "gpu" else 2048
    best = 0.0
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    ta = torch.from_numpy(a)
    if device == "gpu":
        ta = ta.cuda()
    for _ in range(2):
        t = _timeit(lambda: (ta @ ta).sum().item(), 0.5, 5)
        best = max(best, 2 * n**3 / t)
    ja = jnp.asarray(a)
    f = jax.jit(lambda a: a @ a)
    t = _timeit(lambda: f(ja).block_until_ready(), 0.5, 5)
    best = max(best, 2 * n**3 / t)
    return best


# ----------------------------------------------------------------------------- parent
def _parse_variant(text, ap):
    """``NAME[:KEY=VALUE...]`` -> (NAME, {KEY: VALUE})."""
    name, *pairs = text.split(":")
    if not name or any("=" not in p for p in pairs):
        ap.error(f"--variant {text!r}: expected NAME[:KEY=VALUE...]")
    return name, dict(p.split("=", 1) for p in pairs)


class Worker:
    def __init__(self, side, device, env):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", side, "--device", device],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def run(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("worker died")
        return json.loads(line)

    def close(self):
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nets", default=None, help="comma-separated subset of alex,vgg,squeeze")
    ap.add_argument("--configs", default=None, help="instead: NET:SIZE:BATCH,... (e.g. vgg:256:8)")
    ap.add_argument("--modes", default="fwd,fwdbwd")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per config")
    ap.add_argument("--repeats", type=int, default=5, help="timed blocks per round (median)")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per timed block")
    ap.add_argument(
        "--dtypes", default="float32",
        help="ours' compute dtypes, the first is the main row (e.g. float32,bfloat16)",
    )  # fmt: skip
    ap.add_argument(
        "--variant", action="append", default=[], metavar="NAME[:KEY=VALUE...]",
        help="time ours once per variant, each in its own worker with these environment "
        "variables (e.g. plain:LPIPS_JAX_CPU_FAST_PATHS=none, before:PYTHONPATH=/tmp/old); "
        "the first is the main row; repeat for an interleaved A/B",
    )  # fmt: skip
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--worker", choices=("ours", "official"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    dtypes = args.dtypes.split(",")
    if not set(dtypes) <= set(_SHORT):
        ap.error(f"--dtypes {args.dtypes}: expected a comma-separated subset of {', '.join(_SHORT)}")
    if args.worker == "ours":
        return _worker_ours(args.device)
    if args.worker == "official":
        return _worker_official(args.device)

    configs = CONFIGS_QUICK if args.quick else CONFIGS_FULL
    if args.configs:
        try:
            configs = [(n, int(s), int(b)) for n, s, b in (c.split(":") for c in args.configs.split(","))]
        except ValueError:
            ap.error(f"--configs {args.configs!r}: expected NET:SIZE:BATCH,...")
    if args.nets:
        keep = set(args.nets.split(","))
        configs = [c for c in configs + CONFIGS_FAMILY if c[0] in keep]
    modes = args.modes.split(",")
    env = dict(os.environ)
    if args.device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        # Three processes share the GPU (this one measures the peak): no jax preallocation.
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    peak = _peak_flops(args.device)
    print(f"# peak (best float32 matmul, torch/jax): {peak / 1e9:.1f} GFLOP/s; "
          f"cores {os.cpu_count()}; device {args.device}", flush=True)  # fmt: skip
    variants = [_parse_variant(v, ap) for v in args.variant] or [("ours", {})]
    workers = {name: Worker("ours", args.device, {**env, **venv}) for name, venv in variants}
    ours, official = workers[variants[0][0]], Worker("official", args.device, env)
    others = [name for name, _ in variants[1:]]  # further variants, each beside the main row
    rows = []
    extra = dtypes[1:]  # timed for ours only, beside the main row
    hdr = (
        f"{'net':8}{'size':>6}{'batch':>6}{'mode':>8}{'ours/s':>10}{'off/s':>10}"
        f"{'ratio':>7}{'compile':>9}{'%peak':>7}"
    ) + "".join(f"{_SHORT[d] + '/s':>10}{_SHORT[d] + ' ratio':>11}" for d in extra)
    hdr += "".join(f"{v[:9] + '/s':>11}{v[:9] + ' r':>12}" for v in others)
    if others:
        print(
            f"# main row: variant {variants[0][0]!r}; " + "; ".join(f"{n}: {e}" for n, e in variants),
            flush=True,
        )
    print(hdr, flush=True)
    try:
        for net, size, batch in configs:
            for mode in modes:
                t_ours, t_off, comp, flops = [], [], None, 0.0
                t_extra = {d: [] for d in extra}
                t_var = {v: [] for v in others}
                common = dict(
                    net=net, size=size, batch=batch, mode=mode,
                    min_time=args.min_time, repeats=args.repeats,
                )  # fmt: skip
                for rnd in range(args.rounds):
                    # One turn each per round; with several variants the order rotates from
                    # round to round, so that no variant always runs first or last.
                    turns = [("main", None), ("official", None)] + [("dtype", d) for d in extra]
                    turns += [("variant", v) for v in others]
                    k = rnd * len(turns) // args.rounds if others else 0
                    for kind, what in turns[k:] + turns[:k]:
                        if kind == "main":
                            r = ours.run(**common, dtype=dtypes[0])
                            t_ours.append(r["time"])
                            comp, flops = r["compile"], r["flops"]  # compiled once, in round 1
                        elif kind == "official":
                            t_off.append(official.run(**common)["time"])
                        elif kind == "dtype":
                            t_extra[what].append(ours.run(**common, dtype=what)["time"])
                        else:
                            t_var[what].append(workers[what].run(**common, dtype=dtypes[0])["time"])
                to, tf = statistics.median(t_ours), statistics.median(t_off)
                # Each round times both sides back to back: the median of the per-round
                # ratios follows the machine's drifts (shared hosts) better than the ratio
                # of the two medians.
                ratio = statistics.median(b / a for a, b in zip(t_ours, t_off))
                row = dict(
                    net=net, size=size, batch=batch, mode=mode, dtype=dtypes[0],
                    ours_pairs_s=batch / to, official_pairs_s=batch / tf, ratio=ratio,
                    compile_s=comp, flops=flops, frac_peak=flops / to / peak,
                )  # fmt: skip
                line = (
                    f"{net:8}{size:>6}{batch:>6}{mode:>8}{row['ours_pairs_s']:>10.1f}"
                    f"{row['official_pairs_s']:>10.1f}{row['ratio']:>7.2f}{comp:>8.2f}s"
                    f"{100 * row['frac_peak']:>6.0f}%"
                )
                for d in extra:
                    td = statistics.median(t_extra[d])
                    rd = statistics.median(b / a for a, b in zip(t_extra[d], t_off))
                    row[f"ours_{d}_pairs_s"], row[f"ratio_{d}"] = batch / td, rd
                    line += f"{batch / td:>10.1f}{rd:>11.2f}"
                for v in others:
                    tv = statistics.median(t_var[v])
                    rv = statistics.median(b / a for a, b in zip(t_var[v], t_off))
                    row[f"{v}_pairs_s"], row[f"ratio_{v}"] = batch / tv, rv
                    line += f"{batch / tv:>11.1f}{rv:>12.2f}"
                rows.append(row)
                print(line, flush=True)
    finally:
        for w in (*workers.values(), official):
            w.close()
    if args.json:
        with open(args.json, "w") as f:
            meta = {"peak_flops": peak, "device": args.device, "variants": dict(variants)}
            json.dump({**meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
