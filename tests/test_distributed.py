"""``lpips-jax dirs``, ``allpairs``, ``eval`` and ``lpips_jax.bapps.evaluate`` as a 2-process
``jax.distributed`` job on this host (loopback only), against one process.

Each process (tests/_distributed_worker.py) has 2 simulated CPU devices, joins with the
command line's ``--coordinator 127.0.0.1:PORT --num-processes 2 --process-id I``, reads
and compares its share; process 0 writes the outputs. The reference is one process with
the same 2 devices, so every device computes batches of the same shapes: the CSVs are
the same text. Both processes run under one timeout and are killed if it passes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import distort, photo_crops
from PIL import Image
from test_cli_devices import cpu_devices_env

WORKER = Path(__file__).resolve().parent / "_distributed_worker.py"
TIMEOUT = 90  # seconds for the reference, and again for the two processes together


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(work: Path) -> None:
    from test_bapps import make_mini_bapps

    from lpips_jax import bapps

    photos = photo_crops((40, 40), 7, seed=11)
    for d in "abc":
        (work / d).mkdir()
    for k in range(7):
        Image.fromarray(photos[k]).save(work / "a" / f"{k}.png")
        distorted = distort(photos[k], ("blur", "jpeg", "noise")[k % 3], seed=k)
        Image.fromarray(distorted).save(work / "b" / f"{k}.png")
        Image.fromarray(photos[(k + 3) % 7]).save(work / "c" / f"{k}.png")
    (work / "b" / "3.png").write_bytes(b"not a png")  # sorted pair 3: process 1's share
    make_mini_bapps(work / "bapps")
    bapps.prepare(work / "bapps", configs=("2afc",), data_dir=work / "tfds")


def _result(proc_stdout: str) -> dict:
    return json.loads(proc_stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> tuple[dict, list[dict], Path]:
    work = tmp_path_factory.mktemp("distributed")
    _data(work)
    cmd = [sys.executable, str(WORKER), str(work)]
    ref = subprocess.run(
        [*cmd, "single"], env=cpu_devices_env(2), capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert ref.returncode == 0, ref.stderr[-4000:]
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [*cmd, str(i), port],
            env=cpu_devices_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + TIMEOUT
    try:
        outs = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
    return _result(ref.stdout), [_result(o) for o, _ in outs], work


def test_two_processes(job):
    single, workers, _ = job
    assert single["processes"] == 1 and single["devices"] == 2
    assert [w["processes"] for w in workers] == [2, 2] and [w["devices"] for w in workers] == [2, 2]


@pytest.mark.parametrize("cmd, out, code", [
    ("dirs", "dirs_{}.csv", 1),  # b/3.png is unreadable
    ("allpairs", "allpairs_{}.csv", 0),
    ("eval", "eval_{}.json", 0),
])  # fmt: skip
def test_output_equals_one_process_and_only_process_0_writes(job, cmd, out, code):
    single, workers, work = job
    assert single["runs"][cmd]["code"] == code
    assert [w["runs"][cmd]["code"] for w in workers] == [code, code]
    assert (work / out.format("p0")).read_text() == (work / out.format("single")).read_text()
    assert not (work / out.format("p1")).exists()
    # stdout: process 0 prints what one process prints (the mean last); process 1 nothing.
    assert workers[0]["runs"][cmd]["stdout"] == single["runs"][cmd]["stdout"]
    assert workers[1]["runs"][cmd]["stdout"] == ""


def test_each_process_does_its_share(job):
    """Process 0 reads and compares pairs 0, 2, 4, 6 of ``dirs``, process 1 pairs 1, 3, 5;
    ``allpairs``' tiles split the 21 pairs; ``eval`` scores 5 of the 10 triplets each."""
    single, workers, _ = job
    runs = [w["runs"] for w in [single, *workers]]
    assert [r["dirs"]["work"]["pairs"] for r in runs] == [7, 4, 3]
    # Files decoded: two a pair, less b/3.png (unreadable, in process 1's share).
    assert [r["dirs"]["work"]["reads"] for r in runs] == [13, 8, 5]
    tiles = [r["allpairs"]["work"]["tile_pairs"] for r in runs]
    assert tiles[0] == 21 and tiles[1] + tiles[2] == 21 and min(tiles) >= 9
    assert [r["eval"]["work"]["examples"] for r in runs] == [10, 5, 5]


def test_failures_of_another_process_are_reported(job):
    _, workers, work = job
    err = workers[0]["runs"]["dirs"]["stderr"]
    assert "3.png" in err and "cannot read image" in err
    assert "6 pairs compared, 1 failed" in err
    assert "3.png" not in (work / "dirs_p0.csv").read_text()


def test_stop_in_one_process_stops_all(job):
    """``--no-keep-going`` with the failure in process 1's share: nothing written, exit 1."""
    single, workers, work = job
    assert single["runs"]["no_keep_going"]["code"] == 1
    assert [w["runs"]["no_keep_going"]["code"] for w in workers] == [1, 1]
    assert "nothing written" in workers[0]["runs"]["no_keep_going"]["stderr"]
    assert not list(work.glob("stopped_p*.csv")) and not list(work.glob(".stopped*"))


def test_usage_error_in_one_process_ends_every_process(job):
    """Process 1 names a missing folder: process 1 stops at once, process 0 after its share;
    neither waits for the other forever, both exit 2, nothing is written."""
    _, workers, work = job
    assert [w["runs"]["one_fails"]["code"] for w in workers] == [2, 2]
    err0 = workers[0]["runs"]["one_fails"]["stderr"]
    assert "process 1 stopped early" in err0
    assert f"process 1: lpips-jax: error: folder '{work / 'missing'}' does not exist" in err0
    assert not list(work.glob("one_fails_p*.csv"))


def test_evaluate_returns_every_process_the_whole_result(job):
    single, workers, _ = job
    want = single["evaluate"]
    assert len(want["d0"]) == 10
    for w in workers:
        assert w["evaluate"].keys() == want.keys()
        for k, v in want.items():
            np.testing.assert_array_equal(w["evaluate"][k], v)
