"""One process of tests/test_distributed.py: the CLI under ``jax.distributed`` on this host.

    python tests/_distributed_worker.py WORKDIR single
    python tests/_distributed_worker.py WORKDIR PROCESS_ID PORT   (two of them: 0 and 1)

``single`` runs the commands in one process (the reference); otherwise the process joins
a 2-process job with the command line's own options (``--coordinator 127.0.0.1:PORT
--num-processes 2 --process-id I``). Each run writes its outputs with this process's tag
in the name, so only process 0's may exist. WORKDIR holds the folders ``a``, ``b``
(``b/3.png`` unreadable: a failure in process 1's share) and ``c``, and a prepared
miniature BAPPS in ``tfds``. Prints one JSON object: each run's exit code, stdout,
stderr and how much of the work this process did.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import jax

# XLA:CPU's cross-process collectives (the default in recent jax; older ones had none).
jax.config.update("jax_cpu_collectives_implementation", "gloo")

from lpips_jax import bapps, cli  # noqa: E402
from lpips_jax import io as lio  # noqa: E402
from lpips_jax.bapps import _evaluate as ev  # noqa: E402
from lpips_jax.cli import folders  # noqa: E402

# What this process did in the current run: files decoded, pairs it was given to compare
# (dirs), pairs in its tiles (allpairs), examples it scored (eval).
WORK = {"reads": 0, "pairs": 0, "tile_pairs": 0, "examples": 0}


def _count(module, name: str, key: str, amount) -> None:
    fn = getattr(module, name)

    def counted(*args, **kwargs):
        out = fn(*args, **kwargs)
        WORK[key] += amount(args, out)
        return out

    setattr(module, name, counted)


_count(lio, "read_pixels", "reads", lambda a, out: 1)
_count(folders, "_run_pairs", "pairs", lambda a, out: len(a[2]))
_count(
    folders,
    "_tiles_of_this_process",
    "tile_pairs",
    lambda a, out: sum(folders._tile_pairs(a[0], t) for t in out),
)
_count(ev, "_distances", "examples", lambda a, out: len(a[2]))


def run(argv: list[str]) -> dict:
    buf, out = io.StringIO(), io.StringIO()
    WORK.update(dict.fromkeys(WORK, 0))
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return {"code": code, "stdout": out.getvalue(), "stderr": buf.getvalue()[-3000:], "work": dict(WORK)}


def main() -> None:
    work, who = Path(sys.argv[1]), sys.argv[2]
    if who == "single":
        tag, job = "single", []
    else:
        tag = f"p{who}"
        job = ["--coordinator", f"127.0.0.1:{sys.argv[3]}", "--num-processes", "2", "--process-id", who]
    common = ["--batch-size", "4", "--no-progress", *job]
    a, b, c = (str(work / n) for n in "abc")
    runs = {
        "dirs": run(["dirs", a, b, "-o", str(work / f"dirs_{tag}.csv"), *common]),
        "allpairs": run(["allpairs", c, "-o", str(work / f"allpairs_{tag}.csv"), *common]),
        "eval": run(
            [
                "eval",
                "--tfds-dir",
                str(work / "tfds"),
                "--tasks",
                "2afc",
                "--subsets",
                "traditional",
                "--json",
                str(work / f"eval_{tag}.json"),
                *common,
            ]
        ),  # fmt: skip
        "no_keep_going": run(
            ["dirs", a, b, "--no-keep-going", "-o", str(work / f"stopped_{tag}.csv"), *common]
        ),
        # A usage error in process 1 alone: every process ends, with its exit code.
        "one_fails": run(
            [
                "allpairs",
                str(work / ("missing" if who == "1" else "c")),
                "-o",
                str(work / f"one_fails_{tag}.csv"),
                *common,
            ]
        ),  # fmt: skip
    }
    res = bapps.evaluate(
        "lpips", data_dir=work / "tfds", tasks=("2afc",), subsets=["traditional"], batch_size=4,
        return_distances=True,
    )  # fmt: skip
    per = res["distances"]["2afc"]["traditional"]
    out = {
        "processes": jax.process_count(),
        "devices": len(jax.local_devices()),
        "runs": runs,
        "evaluate": {k: [float(v) for v in per[k]] for k in ("d0", "d1", "judge")},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
