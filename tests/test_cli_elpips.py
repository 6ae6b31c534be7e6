"""E-LPIPS (``--net elpips``) on the command line and in BAPPS evaluation: the keys, the
options and the refusals.

Every number is checked against ``lpips_jax.distance`` with the key the docs define:
``dist`` draws on ``jax.random.key(SEED)``; row ``i`` of ``dirs``, ``allpairs`` and ``eval``
on ``jax.random.fold_in(jax.random.key(SEED), i)``, whatever the batch. Compiling dominates
the time: images are 16x16 at ``--scale-levels 2`` (its minimum, 7 * 2 + 2, and a switch
over two levels), BAPPS' 64x64 patches at ``--scale-levels 1``; ``--samples 2`` throughout,
so the draws' scan runs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import test_bapps
from conftest import photo_crops
from test_bapps import _cli_eval_json
from test_cli import TOL, last_line, read_csv, save, u8

import lpips_jax
from lpips_jax import _elpips, cli

# test_bapps' fixtures: its miniature BAPPS, prepared once per session.
mini, prepared = test_bapps.mini, test_bapps.prepared

LEVELS = 2
SIDE = _elpips.min_size(LEVELS)  # 16
SEED = 5
OPTS = ["--net", "elpips", "--scale-levels", str(LEVELS), "--samples", "2", "--seed", str(SEED)]


@pytest.fixture(scope="module")
def params():
    return lpips_jax.load("elpips").replace(scale_levels=LEVELS)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return photo_crops((SIDE, SIDE), 5, seed=11)


def row_key(i: int) -> jax.Array:
    """The key of row ``i`` of ``dirs``, ``allpairs`` and ``eval``."""
    return jax.random.fold_in(jax.random.key(SEED), i)


def library(params, x: np.ndarray, y: np.ndarray, key, normalize: bool = True) -> float:
    """``lpips_jax.distance`` of one pair (a batch of 1), 2 samples on ``key``."""
    return float(lpips_jax.distance(params, x, y, normalize=normalize, key=key, samples=2))


# ---------------------------------------------------------------------------------------
# dist, dirs, allpairs


def test_dist_is_the_library_distance_on_the_seed_key(tmp_path, images, params, capsys):
    a, b = save(images[0], tmp_path / "a.png"), save(images[1], tmp_path / "b.png")
    assert cli.main(["dist", *OPTS, "--json", str(a), str(b)]) == 0
    obj = json.loads(last_line(capsys.readouterr().out))
    assert (obj["net"], obj["samples"], obj["seed"], obj["scale_levels"]) == ("elpips", 2, SEED, LEVELS)
    want = library(params, u8(images[0]), u8(images[1]), jax.random.key(SEED))
    np.testing.assert_allclose(obj["distance"], want, **TOL)
    assert cli.main(["dist", *OPTS, "--seed", str(SEED + 1), str(a), str(b)]) == 0  # the last --seed wins
    assert float(last_line(capsys.readouterr().out)) != pytest.approx(want, rel=1e-3)


def _pair_folders(tmp_path, images, n: int):
    """Folders ``d0``, ``d1`` with ``n`` same-named images (``images[k]`` against
    ``images[k + 1]``, names ``a.png, b.png, ...``) and one image in ``d0`` only."""
    d0, d1 = tmp_path / "d0", tmp_path / "d1"
    d0.mkdir()
    d1.mkdir()
    for k in range(n):
        save(images[k], d0 / f"{chr(97 + k)}.png")
        save(images[k + 1], d1 / f"{chr(97 + k)}.png")
    save(images[0], d0 / "only.png")
    return d0, d1


def test_dirs_rows_are_keyed_by_their_index_whatever_the_batch(tmp_path, images, params):
    """Row ``i`` of the names in both folders (a failed pair keeps its index) is the
    library's distance on ``row_key(i)``, with batches of 1 and of 2 (the last one padded)."""
    d0, d1 = _pair_folders(tmp_path, images, 4)
    (d1 / "b.png").write_bytes(b"broken")
    got = []
    for batch in ("1", "2"):
        out = tmp_path / f"b{batch}.csv"
        assert cli.main(["dirs", str(d0), str(d1), *OPTS, "--batch-size", batch, "-o", str(out)]) == 1
        rows = read_csv(out)[1:]
        assert [r[0] for r in rows] == ["a.png", "c.png", "d.png"]
        got.append([float(r[1]) for r in rows])
    np.testing.assert_allclose(got[0], got[1], **TOL)
    want = [library(params, u8(images[i]), u8(images[i + 1]), row_key(i)) for i in (0, 2, 3)]
    np.testing.assert_allclose(got[1], want, **TOL)


@pytest.mark.slow
@pytest.mark.multidevice
def test_dirs_rows_do_not_depend_on_the_devices(tmp_path, images):
    """On 8 simulated devices (a subprocess): the rows of one device, in a batch of 4, and
    of 8 devices, in a batch of 8 (padded)."""
    from test_cli_devices import cpu_devices_env

    d0, d1 = _pair_folders(tmp_path, images, 4)
    code = (
        "import sys; from lpips_jax import cli; d0, d1, out, *opts = sys.argv[1:]; "
        "sys.exit(max(cli.main(['dirs', d0, d1, *opts, '--no-progress', '-o', out + n, *dev]) "
        "for n, dev in (('1', ['--devices', '1']), ('8', []))))"
    )
    argv = [sys.executable, "-c", code, str(d0), str(d1), str(tmp_path / "out"), *OPTS, "--batch-size", "8"]
    proc = subprocess.run(argv, env=cpu_devices_env(8), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one, eight = (read_csv(tmp_path / f"out{n}") for n in ("1", "8"))
    assert [r[0] for r in one] == [r[0] for r in eight] == ["name", "a.png", "b.png", "c.png", "d.png"]
    np.testing.assert_allclose([float(r[1]) for r in one[1:]], [float(r[1]) for r in eight[1:]], **TOL)


def test_allpairs_scores_each_pair_directly_on_its_index(tmp_path, images, params):
    d = tmp_path / "imgs"
    d.mkdir()
    for k in range(4):
        save(images[k], d / f"p{k}.png")
    out = tmp_path / "all.csv"
    assert cli.main(["allpairs", str(d), *OPTS, "--batch-size", "2", "-o", str(out)]) == 0
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    rows = read_csv(out)[1:]
    assert [(a, b) for a, b, _ in rows] == [(f"p{i}.png", f"p{j}.png") for i, j in pairs]
    want = [library(params, u8(images[i]), u8(images[j]), row_key(k)) for k, (i, j) in enumerate(pairs)]
    np.testing.assert_allclose([float(v) for _, _, v in rows], want, **TOL)
    # --consecutive: row k is the pair (k, k + 1), on its own index k.
    assert cli.main(["allpairs", str(d), *OPTS, "--batch-size", "2", "--consecutive", "-o", str(out)]) == 0
    got = [float(v) for _, _, v in read_csv(out)[1:]]
    want = [library(params, u8(images[k]), u8(images[k + 1]), row_key(k)) for k in range(3)]
    np.testing.assert_allclose(got, want, **TOL)


def test_too_small_images_fail_naming_scale_levels(tmp_path, images, capsys):
    rule = "(the official rule, max(1, min(H, W) // 64), gives 1)"
    cases = [
        (SIDE - 1, OPTS, f"at least {SIDE}x{SIDE}", f"give --scale-levels 1 or fewer {rule}"),
        (SIDE, ["--net", "elpips"], "at least 58x58", f"give --scale-levels 2 or fewer {rule}"),
        (8, OPTS, "at least 16x16", "at least 9x9 even with --scale-levels 1"),
    ]
    for side, opts, need, hint in cases:
        a = save(images[0][:side, :side], tmp_path / f"s{side}.png")
        assert cli.main(["dist", *opts, str(a), str(a)]) == 1
        err = capsys.readouterr().err
        assert f"s{side}.png is {side}x{side}" in err and need in err and hint in err, err


def test_usage_errors_exit_2(tmp_path, images, capsys):
    a = str(save(images[0], tmp_path / "a.png"))
    save(images[1], tmp_path / "b.png")
    folder, out = str(tmp_path), str(tmp_path / "o.safetensors")
    elpips = ["--net", "elpips"]
    cases = [
        (["dist", a, a, "--samples", "2"], "--samples 2: E-LPIPS options, for --net elpips only; --net alex"),
        (["dirs", folder, folder, "--net", "vgg", "--seed", "1"], "--seed 1: E-LPIPS options"),
        (["allpairs", folder, "--scale-levels", "2", "--net", "dists"], "--net dists is deterministic"),
        (["eval", "--seed", "3"], "--seed 3: E-LPIPS options"),
        (["dist", a, a, *elpips, "--version", "0.0"], "--net elpips takes no --version or --variant"),
        (["dist", a, a, *elpips, "--variant", "shift_tolerant"], "--variant shift_tolerant: --net elpips"),
        (["dist", a, a, *elpips, "--weights", out], "--net elpips takes no weights file"),
        (["eval", *elpips, "--weights", out], "--net elpips takes no weights file"),
        (["map", a, a, *elpips, "-o", str(tmp_path / "m.png")], "E-LPIPS defines no spatial map"),
        (["train", *elpips, "--out", out], "--net elpips --variant vanilla is not trainable here"),
        (["eval", *elpips, "--metric", "l2"], "--metric l2: --net elpips scores E-LPIPS"),
        (["dist", a, a, *elpips, "--samples", "0"], "argument --samples: '0': expected a positive integer"),
        (["dist", a, a, *elpips, "--seed", "-1"], "argument --seed: '-1': expected an integer >= 0"),
        (["dist", a, a, *elpips, "--scale-levels", "0"], "argument --scale-levels: '0': expected a positive"),
        (["train", *elpips, "--out", out, "--samples", "2"], "unrecognized arguments: --samples 2"),
    ]
    for argv, message in cases:
        assert cli.main([*argv, "--no-progress"]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # nothing written


# ---------------------------------------------------------------------------------------
# BAPPS evaluation


def test_evaluate_scores_each_example_on_its_index(prepared, mini):
    """Example ``i`` of a subset is scored on ``row_key(i)`` wherever its block and batch
    start (examples 7 to 9, as one process's block, in batches of 2, the last one padded):
    one key for both distances of a 2AFC triplet (common random numbers), its own for a
    JND pair."""
    from types import SimpleNamespace

    from lpips_jax._sharding import LocalDevices
    from lpips_jax.bapps import _evaluate
    from lpips_jax.bapps._examples import Examples, to_unit_official

    p = lpips_jax.load("elpips").replace(scale_levels=1)
    dev = LocalDevices(1)
    run = _evaluate._batcher(p, True, dev, jax.random.key(SEED), 1)
    rows, bar = range(7, 10), SimpleNamespace(update=lambda n: None)

    def one(x, y, i):
        return float(lpips_jax.distance(p, to_unit_official(x), to_unit_official(y), key=row_key(i)))

    for task in ("2afc", "jnd"):
        examples = Examples.from_splits(task, ["val_cnn"], data_dir=prepared)
        got, _ = _evaluate._distances(run, examples, rows, 2, bar, dev)
        want = []
        for i in rows:  # 2AFC (ref, p0, p1): d(ref, p0), d(ref, p1); JND (p0, p1): d(p0, p1)
            first, *others = mini[1][(task, "val", "cnn")][i][: len(examples.parts)]
            want.append([one(first, q, i) for q in others])
        np.testing.assert_allclose(np.stack(got, axis=1), want, **TOL)


def test_cli_eval_hands_the_draws_to_evaluate(prepared, tmp_path, monkeypatch):
    """``eval --net elpips``: ``evaluate`` gets the E-LPIPS params at ``--scale-levels``,
    ``key=jax.random.key(--seed)`` and ``--samples``; the JSON records them."""
    from lpips_jax.bapps import _evaluate

    seen = {}

    def spy(metric, **kw):
        seen.update(kw, metric=metric)
        return {"2afc": {"cnn": 0.5, "mean": 0.5}, "metric": "elpips", "net": "elpips", "version": None}

    monkeypatch.setattr(_evaluate, "evaluate", spy)
    argv = ["--net", "elpips", "--scale-levels", "3", "--samples", "4", "--seed", "7"]
    got = _cli_eval_json(prepared, tmp_path, *argv)
    assert (got["samples"], got["seed"], got["scale_levels"], got["net"]) == (4, 7, 3, "elpips")
    assert seen["metric"].random and seen["metric"].scale_levels == 3 and seen["samples"] == 4
    np.testing.assert_array_equal(jax.random.key_data(seen["key"]), jax.random.key_data(jax.random.key(7)))


@pytest.mark.slow
def test_cli_eval_equals_evaluate(prepared, tmp_path):
    """The whole way: ``eval --net elpips`` scores as ``bapps.evaluate`` with
    ``key=jax.random.key(SEED)`` and batches of 3 (its rows independent of the batch; the
    samples' hand-over: test_cli_eval_hands_the_draws_to_evaluate)."""
    from lpips_jax import bapps

    argv = ["--net", "elpips", "--scale-levels", "1", "--seed", str(SEED)]
    got = _cli_eval_json(prepared, tmp_path, *argv, "--subsets", "cnn")  # batches of 8
    p, key = lpips_jax.load("elpips").replace(scale_levels=1), jax.random.key(SEED)
    want = bapps.evaluate(p, data_dir=prepared, subsets=["cnn"], batch_size=3, key=key)
    assert (want["metric"], want["net"], want["version"]) == ("elpips", "elpips", None)
    for task in ("2afc", "jnd"):
        assert got[task] == pytest.approx(want[task], abs=1e-12)


def test_evaluate_takes_a_key_for_a_random_metric_only(prepared):
    from lpips_jax import bapps

    key = jax.random.key(0)
    with pytest.raises(ValueError, match="metric 'elpips' is random: pass key=jax.random.key"):
        bapps.evaluate(lpips_jax.load("elpips"), data_dir=prepared)
    with pytest.raises(ValueError, match=r"metric 'lpips' is deterministic: .*got key=given, samples=1"):
        bapps.evaluate(lpips_jax.load("alex"), data_dir=prepared, key=key)
    with pytest.raises(ValueError, match=r"metric 'l2' is deterministic: .*samples=2"):
        bapps.evaluate("l2", data_dir=prepared, samples=2)
