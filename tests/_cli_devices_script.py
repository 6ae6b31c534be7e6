"""Run by tests/test_cli_devices.py in a subprocess with 8 simulated CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/_cli_devices_script.py WORKDIR

Writes small image folders and a miniature BAPPS into WORKDIR, then runs ``lpips-jax dirs``,
``allpairs`` and ``eval`` (in-process, ``lpips_jax.cli.main``) and ``lpips_jax.bapps.evaluate``
with ``--devices 1`` and with every device, their outputs in WORKDIR. Every jitted call
is watched: for each output array, how many distinct slices its shards hold and on how
many devices. Prints one JSON object: the device count, each run's exit code and stderr,
the calls' spreads, and the library's distances.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import distort, photo_crops  # noqa: E402
from PIL import Image  # noqa: E402
from test_bapps import make_mini_bapps  # noqa: E402

from lpips_jax import cli  # noqa: E402
from lpips_jax.bapps import _evaluate as ev  # noqa: E402
from lpips_jax.cli import folders  # noqa: E402

SIZE = 32  # alex's minimum is 31


def spread(out) -> list[int]:
    """Per output array: the number of distinct slices held by its shards (1: one device,
    or the same values on every device)."""
    return [len({str(s.index) for s in a.addressable_shards}) for a in jax.tree_util.tree_leaves(out)]


class Watch:
    """Wraps the jitted functions the commands call; records the spread of each output."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def wrap(self, module, name: str) -> None:
        fn = getattr(module, name)

        def watched(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.calls.extend(spread(out))
            return out

        setattr(module, name, watched)

    def take(self) -> list[int]:
        calls, self.calls = self.calls, []
        return calls


def run(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, buf.getvalue()


def make_folders(root: Path) -> tuple[Path, Path, Path]:
    d0, d1, one = root / "a", root / "b", root / "all"
    for d in (d0, d1, one):
        d.mkdir(parents=True)
    photos = photo_crops((SIZE, SIZE), 11, seed=5)
    for k in range(11):  # 11 pairs: batches of 8, the last one padded
        Image.fromarray(photos[k]).save(d0 / f"{k:02d}.png")
        distorted = distort(photos[k], ("blur", "jpeg", "noise")[k % 3], seed=k)
        Image.fromarray(distorted).save(d1 / f"{k:02d}.png")
    for k in range(6):
        Image.fromarray(photos[k]).save(one / f"{k}.png")
    return d0, d1, one


def main() -> None:
    work = Path(sys.argv[1])
    d0, d1, one = make_folders(work)
    from lpips_jax import bapps

    make_mini_bapps(work / "bapps")
    bapps.prepare(work / "bapps", configs=("2afc",), data_dir=work / "tfds")

    watch = Watch()
    for name in ("distance_jit", "features_jit", "cross_jit"):
        watch.wrap(folders, name)
    watch.wrap(ev, "_lpips_batch")

    out: dict = {"devices": jax.device_count(), "backend": jax.default_backend(), "runs": {}}
    common = ["--batch-size", "8", "--no-progress"]
    eval_args = ["eval", "--tfds-dir", str(work / "tfds"), "--tasks", "2afc", "--subsets", "traditional"]
    for label, devices in (("1", ["--devices", "1"]), ("8", [])):
        commands = {
            "dirs": ["dirs", str(d0), str(d1), "-o", str(work / f"dirs_{label}.csv")],
            "allpairs": ["allpairs", str(one), "-o", str(work / f"allpairs_{label}.csv")],
            "eval": [*eval_args, "--json", str(work / f"eval_{label}.json")],
        }
        for cmd, argv in commands.items():
            code, err = run([*argv, *common, *devices])
            out["runs"][f"{cmd}_{label}"] = {"code": code, "stderr": err[-2000:], "spread": watch.take()}
        res = bapps.evaluate(
            "lpips", data_dir=work / "tfds", tasks=("2afc",), subsets=["traditional"], batch_size=8,
            devices=None if label == "8" else 1, return_distances=True,
        )  # fmt: skip
        per = res["distances"]["2afc"]["traditional"]
        out["runs"][f"evaluate_{label}"] = {
            "spread": watch.take(),
            "d0": np.asarray(per["d0"]).tolist(),
            "d1": np.asarray(per["d1"]).tolist(),
        }
    code, err = run(["dirs", str(d0), str(d1), "--devices", "9", "--no-progress"])
    out["runs"]["dirs_9"] = {"code": code, "stderr": err[-2000:]}
    try:
        bapps.evaluate("l2", data_dir=work / "tfds", devices=0)
        out["evaluate_devices_0"] = None
    except ValueError as e:
        out["evaluate_devices_0"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
