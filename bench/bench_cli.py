"""Folder throughput of ``lpips-jax dirs`` against ``lpips_jax.distance`` on arrays in memory.

    python bench/bench_cli.py [--n 1000] [--size 256] [--batch-size 16] [--net alex]

Writes ``n`` pairs of ``size x size`` PNGs (crops of scikit-image's sample photographs,
each with a distortion: JPEG, blur or noise; smoothed noise when scikit-image is absent)
into a temporary folder, then times, on the same machine and batch size:

- in memory: one ``jax.jit`` of ``distance(params, x, y, normalize=True)`` over the
  same images, already decoded and on the device, in batches of ``--batch-size`` (the last
  one padded like the CLI pads it), compile excluded;
- the CLI: ``lpips_jax.cli.main(["dirs", DIR0, DIR1, "-o", CSV, ...])`` in-process, after a
  warm-up run on ``--batch-size`` pairs that compiles the same shape (so compile is
  excluded here too; it is reported separately), decoding the PNGs on worker threads.

Prints both figures in pairs/s, their ratio (the target is >= 0.70) and the largest
difference between the CSV and the in-memory distances. ``--subprocess`` also times the
installed ``lpips-jax`` end to end (start-up, weights, compile, decode, compute).

    python bench/bench_cli.py --scaling [--n 256] [--batch-size 16] [--size 256]

instead times ``lpips-jax dirs`` on 1 and on 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) and, where JAX sees a GPU or
TPU, on one and on all of its devices: each run a fresh process, warm-up (compile)
excluded, ``--batch-size`` pairs per device. Simulated devices share the same cores, so
the CPU rows check that the split is right (the CSVs must agree to 1e-6 of the largest
distance), not that it is faster.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from PIL import Image, ImageFilter

import lpips_jax
from lpips_jax import cli
from lpips_jax import io as lio


def _sources(size: int) -> list[np.ndarray]:
    try:
        from skimage import data
    except ImportError:
        return []
    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"):
        img = np.asarray(getattr(data, name)())[..., :3]
        h, w = img.shape[:2]
        if min(h, w) < size:
            s = size / min(h, w)
            img = np.asarray(Image.fromarray(img).resize((int(w * s) + 1, int(h * s) + 1)))
        out.append(img.astype(np.uint8))
    return out


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img.filter(ImageFilter.GaussianBlur(2)))


def _pair(k: int, size: int, sources: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(k)
    if sources:
        src = sources[k % len(sources)]
        y0 = rng.integers(0, src.shape[0] - size + 1)
        x0 = rng.integers(0, src.shape[1] - size + 1)
        a = np.ascontiguousarray(src[y0 : y0 + size, x0 : x0 + size])
    else:
        a = _smooth_noise(rng, size)
    kind = k % 3
    im = Image.fromarray(a)
    if kind == 0:
        b = np.asarray(im.filter(ImageFilter.GaussianBlur(1.5)))
    elif kind == 1:
        b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    else:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=15)
        b = np.asarray(Image.open(buf).convert("RGB"))
    return a, b


def make_folders(root: str, n: int, size: int, start: int = 0) -> tuple[str, str]:
    """``root/a`` and ``root/b`` with ``n`` same-named PNG pairs."""
    d0, d1 = os.path.join(root, "a"), os.path.join(root, "b")
    os.makedirs(d0, exist_ok=True)
    os.makedirs(d1, exist_ok=True)
    sources = _sources(size)

    def write(k: int) -> None:
        a, b = _pair(start + k, size, sources)
        name = f"{k:05d}.png"
        Image.fromarray(a).save(os.path.join(d0, name))
        Image.fromarray(b).save(os.path.join(d1, name))

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(write, range(n)))
    return d0, d1


class InMemory:
    """jit(distance) over the folders' images, decoded and on the device, in batches."""

    def __init__(self, params, d0: str, d1: str, batch: int) -> None:
        names = sorted(os.listdir(d0))
        x = np.stack([lio.read_image(os.path.join(d0, f)) for f in names])
        y = np.stack([lio.read_image(os.path.join(d1, f)) for f in names])
        self.n = n = len(names)
        pad = (-n) % batch  # padded like the CLI pads its last batch
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, 0)])
            y = np.concatenate([y, np.repeat(y[-1:], pad, 0)])
        self.xs = [jax.device_put(x[i : i + batch]) for i in range(0, len(x), batch)]
        self.ys = [jax.device_put(y[i : i + batch]) for i in range(0, len(y), batch)]
        self.params = params
        self.f = jax.jit(lambda p, a, b: lpips_jax.distance(p, a, b, normalize=True))
        t0 = time.perf_counter()
        jax.block_until_ready(self.f(params, self.xs[0], self.ys[0]))
        self.compile_s = time.perf_counter() - t0

    def run(self) -> tuple[float, np.ndarray]:
        """``(pairs/s, distances)``, compile excluded."""
        t0 = time.perf_counter()
        outs = [self.f(self.params, a, b) for a, b in zip(self.xs, self.ys, strict=True)]
        d = np.concatenate([np.asarray(o) for o in outs])[: self.n]
        return self.n / (time.perf_counter() - t0), d


def run_cli(argv: list[str]) -> float:
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the CLI prints the mean
        code = cli.main(argv)
    if code != 0:
        raise SystemExit(f"lpips-jax {' '.join(argv)} exited with {code}")
    return time.perf_counter() - t0


def _csv_values(path: str) -> np.ndarray:
    with open(path, newline="") as f:
        return np.array([float(r[1]) for r in list(csv.reader(f))[1:]])


def scaling_child(argv: list[str]) -> int:
    """In a fresh process: a warm-up ``dirs`` run (compile), then the timed one; prints JSON."""
    d0, d1, warm0, warm1, out, devices, batch, net = argv
    n_dev = int(devices)
    common = ["--net", net, "--batch-size", str(int(batch) * n_dev), "--devices", str(n_dev), "--no-progress"]
    run_cli(["dirs", warm0, warm1, "-o", out, *common])
    seconds = run_cli(["dirs", d0, d1, "-o", out, *common])
    print(json.dumps({"backend": jax.default_backend(), "devices": n_dev, "seconds": seconds}))
    return 0


def scaling(args: argparse.Namespace, root: str) -> int:
    """pairs/s of ``lpips-jax dirs`` per device count, each in a fresh process."""
    d0, d1 = make_folders(root, args.n, args.size)
    cpu = dict(os.environ, JAX_PLATFORMS="cpu")
    cpu["XLA_FLAGS"] = f"{cpu.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
    probe = "import jax; print(jax.default_backend(), len(jax.local_devices()))"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    backend, count = found.stdout.split()
    real = [(dict(os.environ), 1), (dict(os.environ), int(count))] if backend != "cpu" else []
    plan = [(cpu, 1), (cpu, 8), *real]
    print(f"{args.n} pairs of {args.size}x{args.size}, net {args.net}, {args.batch_size} pairs per device, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    rows, base = [], {}
    for env, devices in plan:
        warm = os.path.join(root, f"warm{len(rows)}")  # as many pairs as one batch: its compile
        warm0, warm1 = make_folders(warm, args.batch_size * devices, args.size, 10**6)
        out = os.path.join(root, f"out_{len(rows)}.csv")
        argv = [d0, d1, warm0, warm1, out, str(devices), str(args.batch_size), args.net]
        proc = subprocess.run(
            [sys.executable, __file__, "--scaling-child", *argv], env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise SystemExit(f"the {devices}-device run failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        values = _csv_values(out)
        one = base.setdefault(r["backend"], (args.n / r["seconds"], values))
        diff = float(np.max(np.abs(values - one[1])) / np.max(np.abs(one[1])))
        rate = args.n / r["seconds"]
        rows.append((r["backend"], r["devices"], rate, rate / one[0], diff))
        print(f"{r['backend']:>4} {r['devices']:>3} device(s): {rate:8.2f} pairs/s  x{rate / one[0]:.2f}  "
              f"max |CSV - 1 device| / max = {diff:.1e}")  # fmt: skip
    bad = [r for r in rows if r[0] == "cpu" and r[4] > 1e-6]
    print("CSVs agree" if not bad else "CSVs DIFFER beyond 1e-6 of the largest distance")
    return 1 if bad else 0


def main() -> int:
    if sys.argv[1:2] == ["--scaling-child"]:
        return scaling_child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="pairs (default 1000)")
    ap.add_argument("--size", type=int, default=256, help="image side (default 256)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--net", default="alex")
    ap.add_argument("--workers", type=int, default=None, help="CLI decoding threads")
    ap.add_argument("--dir", help="keep the images here instead of a temporary folder")
    ap.add_argument("--subprocess", action="store_true", help="also time the installed script")
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two timings N times, keep the best")
    ap.add_argument("--scaling", action="store_true", help="pairs/s on 1 and 8 (simulated) devices instead")
    args = ap.parse_args()

    root = args.dir or tempfile.mkdtemp(prefix="lpips_bench_")
    try:
        if args.scaling:
            return scaling(args, root)
        t0 = time.perf_counter()
        d0, d1 = make_folders(root, args.n, args.size)
        warm0, warm1 = make_folders(os.path.join(root, "warm"), args.batch_size, args.size, 10**6)
        print(f"wrote {args.n} pairs of {args.size}x{args.size} PNGs in {time.perf_counter() - t0:.1f} s")
        params = lpips_jax.load(args.net)
        print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
              f"{os.cpu_count()} CPUs, net {args.net}, batch {args.batch_size}")  # fmt: skip

        mem = InMemory(params, d0, d1, args.batch_size)
        common = ["--net", args.net, "--batch-size", str(args.batch_size), "--no-progress"]
        if args.workers:
            common += ["--workers", str(args.workers)]
        out = os.path.join(root, "out.csv")
        warm_s = run_cli(["dirs", warm0, warm1, "-o", out, *common])
        mem_rates, cli_rates = [], []
        for _ in range(max(1, args.repeat)):
            rate, mem_d = mem.run()
            mem_rates.append(rate)
            cli_rates.append(args.n / run_cli(["dirs", d0, d1, "-o", out, *common]))
        mem_rate, cli_rate, mem_compile = max(mem_rates), max(cli_rates), mem.compile_s
        if args.repeat > 1:
            print("in-memory runs (pairs/s): " + ", ".join(f"{r:.2f}" for r in mem_rates))
            print("CLI runs (pairs/s):       " + ", ".join(f"{r:.2f}" for r in cli_rates))
        with open(out, newline="") as f:
            got = np.array([float(r[1]) for r in list(csv.reader(f))[1:]])
        diff = float(np.max(np.abs(got - mem_d)))

        print(f"in-memory distance: {mem_rate:8.2f} pairs/s  (compile {mem_compile:.1f} s)")
        print(f"lpips-jax dirs:     {cli_rate:8.2f} pairs/s  (warm-up run with compile {warm_s:.1f} s)")
        ratio = cli_rate / mem_rate
        verdict = "ok" if ratio >= 0.70 else "BELOW the 0.70 target"
        print(f"ratio CLI / in-memory: {ratio:.3f} ({verdict}); max |CSV - in-memory| = {diff:.2e}")
        if args.subprocess:
            exe = shutil.which("lpips-jax", path=os.path.dirname(sys.executable)) or "lpips-jax"
            t0 = time.perf_counter()
            subprocess.run([exe, "dirs", d0, d1, "-o", out, *common], check=True)
            total = time.perf_counter() - t0
            print(f"lpips-jax dirs, new process end to end: {total:.1f} s = {args.n / total:.2f} pairs/s")
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
