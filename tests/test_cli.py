"""The ``lpips-jax`` console script, driven as users drive it: in a subprocess.

Numbers are checked against ``lpips_jax.distance`` / ``distance_map`` (jitted, one pair
at a time) on arrays built independently of the reader (the pixels written, divided by 255 or
65535). Cheap parser-level cases call ``lpips_jax.cli.main`` in-process; every command
also runs through the installed ``lpips-jax`` executable. Compiling dominates the time, so
images are 64x64, the net is alex, batches are 4 in the script and 1 in this process, and
the suite's compilation cache (tests/conftest.py) is shared by the subprocesses.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import distort, photo_crops
from PIL import Image
from test_io import _png16

from lpips_jax import _heatmap, cli
from lpips_jax import io as lio
from lpips_jax.cli import _reading

EXE = shutil.which("lpips-jax", path=str(Path(sys.executable).parent)) or shutil.which("lpips-jax")
TOL = {"rtol": 1e-5, "atol": 1e-6}


_ENV: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    """The script's persistent compilation cache, in a folder of this test module's own."""
    _ENV.update(os.environ)
    _ENV.pop("LPIPS_JAX_NO_CACHE", None)
    _ENV["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield Path(_ENV["XDG_CACHE_HOME"]) / "lpips_jax" / "xla"
    _ENV.clear()


def run(*args, timeout=300, own_cache=False) -> subprocess.CompletedProcess:
    """Run the installed console script (``own_cache``: with the CLI's own compilation
    cache in ``XDG_CACHE_HOME``, not the suite's, which JAX's setting would make it keep)."""
    assert EXE, "the lpips-jax console script is not installed (pip install -e .)"
    env = {k: v for k, v in _ENV.items() if not (own_cache and k == "JAX_COMPILATION_CACHE_DIR")}
    return subprocess.run(
        [EXE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def u8(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) / 255


def ref_distances(params, pairs) -> np.ndarray:
    """``lpips_jax.distance(params, x, y, normalize=True)`` of ``[(x, y)]`` [0, 1] arrays.

    One pair at a time through one jit (the CLI module's, so in-process ``dist`` calls
    share its single compile).
    """
    return np.array([float(_reading.distance_jit(params, x[None], y[None])[0]) for x, y in pairs])


def read_csv(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return photo_crops((64, 64), 6, seed=3)


def save(arr: np.ndarray, path: Path, **kw) -> Path:
    Image.fromarray(arr).save(path, **kw)
    return path


# ---------------------------------------------------------------------------------------
# The entry point, help, the official example values.


def test_installed_entry_point_help():
    r = run("--help")
    assert r.returncode == 0, r.stderr
    for cmd in ("dist", "dirs", "allpairs", "map", "convert"):
        assert cmd in r.stdout
    assert "exit codes" in r.stdout


@pytest.mark.parametrize("cmd", ["dist", "dirs", "allpairs", "map"])
def test_each_command_has_net_version_help(cmd, capsys):
    assert cli.main([cmd, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--net" in out and "--version" in out and "default: alex" in out
    assert "default: 0.1" in out


def test_example_images_vgg(examples_dir):
    ref, p0, p1 = (examples_dir / f"ex_{n}.png" for n in ("ref", "p0", "p1"))
    r = run("dist", "--net", "vgg", ref, p0)
    assert r.returncode == 0, r.stderr
    d0 = float(last_line(r.stdout))
    r = run("dist", "--net", "vgg", "--json", ref, p1)
    assert r.returncode == 0, r.stderr
    obj = json.loads(last_line(r.stdout))
    assert obj.keys() == {"a", "b", "net", "version", "variant", "distance"}
    assert (obj["a"], obj["b"], obj["net"], obj["version"]) == (str(ref), str(p1), "vgg", "0.1")
    d1 = obj["distance"]
    # Published values of the official model (examples README): 0.569 and 0.422.
    assert round(d0, 3) == 0.569 and round(d1, 3) == 0.422


# ---------------------------------------------------------------------------------------
# dirs: every image mode, only-in-one names, a failure, CSV and mean.


def _mode_folders(tmp_path: Path, photos: np.ndarray):
    """Two folders of same-named files and, per name, the arrays the files must read as."""
    d0, d1 = tmp_path / "ref", tmp_path / "test"
    d0.mkdir()
    d1.mkdir()
    expect = {}
    p = photos
    for k, kind in enumerate(["blur", "jpeg", "noise"]):
        name = f"photo{k}.png"
        save(p[k], d0 / name)
        save(distort(p[k], kind, seed=k), d1 / name)
        expect[name] = (u8(p[k]), u8(distort(p[k], kind, seed=k)))
    # RGBA, LA, palette with transparency: alpha ignored, so equal to the RGB reference.
    alpha = np.linspace(0, 255, 64 * 64).reshape(64, 64).astype(np.uint8)
    save(p[3], d0 / "rgba.png")
    save(np.dstack([p[4], alpha]), d1 / "rgba.png")
    expect["rgba.png"] = (u8(p[3]), u8(p[4]))
    gray = p[5][..., 1]
    save(np.repeat(gray[..., None], 3, -1), d0 / "gray.png")
    save(gray, d1 / "gray.png")  # mode L, same pixels: distance 0
    expect["gray.png"] = (u8(np.repeat(gray[..., None], 3, -1)),) * 2
    save(np.dstack([gray, alpha]), d1 / "la.png")
    save(p[0], d0 / "la.png")
    expect["la.png"] = (u8(p[0]), u8(np.repeat(gray[..., None], 3, -1)))
    pal = Image.fromarray(p[1]).quantize(32)
    pal_rgb = np.asarray(pal.convert("RGB"))
    save(p[1], d0 / "pal.png")
    pal.save(d1 / "pal.png", transparency=0)
    expect["pal.png"] = (u8(p[1]), u8(pal_rgb))
    # 16-bit grayscale and 16-bit RGB.
    rng = np.random.default_rng(0)
    g16 = (gray.astype(np.uint16) * 257 + rng.integers(0, 257, gray.shape)).astype(np.uint16)
    save(p[2], d0 / "g16.png")
    save(g16, d1 / "g16.png")
    expect["g16.png"] = (u8(p[2]), np.repeat(g16[..., None], 3, -1).astype(np.float32) / 65535)
    c16 = (p[3].astype(np.uint16) * 257 + rng.integers(0, 257, p[3].shape)).astype(np.uint16)
    save(p[4], d0 / "c16.png")
    _png16(d1 / "c16.png", c16)
    expect["c16.png"] = (u8(p[4]), c16.astype(np.float32) / 65535)
    # JPEG, BMP, WebP (lossless), under the same name in both folders.
    save(p[0], d0 / "x.jpg", quality=95)
    save(p[5], d1 / "x.jpg", quality=95)
    with Image.open(d0 / "x.jpg") as a, Image.open(d1 / "x.jpg") as b:
        expect["x.jpg"] = (u8(np.asarray(a.convert("RGB"))), u8(np.asarray(b.convert("RGB"))))
    save(p[1], d0 / "x.bmp")
    save(p[2], d1 / "x.bmp")
    expect["x.bmp"] = (u8(p[1]), u8(p[2]))
    save(p[2], d0 / "x.webp", lossless=True)
    save(p[3], d1 / "x.webp", lossless=True)
    expect["x.webp"] = (u8(p[2]), u8(p[3]))
    # EXIF orientation: stored turned, tagged "rotate 90 CW": distance 0 only when the
    # orientation is applied.
    exif = Image.Exif()
    exif[0x0112] = 6
    save(p[4], d0 / "exif.png")
    save(np.ascontiguousarray(np.rot90(p[4], 1)), d1 / "exif.png", exif=exif)
    expect["exif.png"] = (u8(p[4]), u8(p[4]))
    # Trouble: an unreadable file, names in one folder only, a file that is not an image.
    save(p[0], d0 / "bad.png")
    (d1 / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    save(p[0], d0 / "lonely.png")
    save(p[1], d1 / "extra.png")
    (d0 / "notes.txt").write_text("not an image")
    return d0, d1, expect


def test_dirs_all_modes(tmp_path, photos, alex_params):
    d0, d1, expect = _mode_folders(tmp_path, photos)
    out = tmp_path / "out.csv"
    r = run("dirs", d0, d1, "-o", out, "--batch-size", 4, "--progress")
    assert r.returncode == 1, r.stderr  # bad.png failed
    rows = read_csv(out)
    assert rows[0] == ["name", "distance"]
    names = [n for n, _ in rows[1:]]
    assert names == sorted(expect)
    got = np.array([float(v) for _, v in rows[1:]])
    want = ref_distances(alex_params, [expect[n] for n in names])
    np.testing.assert_allclose(got, want, **TOL)
    assert got[names.index("gray.png")] < 1e-9 and got[names.index("exif.png")] < 1e-9
    # stdout: no CSV with -o, the mean on the last line.
    assert float(last_line(r.stdout)) == pytest.approx(got.mean(), abs=1e-6)
    err = r.stderr
    assert f"only in {d0}: lonely.png" in err and f"only in {d1}: extra.png" in err
    assert "bad.png" in err and "cannot read image" in err
    assert err.count("alpha channel") == 1  # rgba, la, pal: noted once
    assert "3 images" in err
    assert "skipped 1 file(s) that are not images" in err  # notes.txt
    assert f"{len(names)} pairs compared, 1 failed, 2 only in one folder" in err
    assert "100%" in err  # the progress bar
    assert not list(tmp_path.glob("*.partial"))


def test_dirs_stdout_csv_and_no_keep_going(tmp_path, photos, _compilation_cache):
    d0, d1 = tmp_path / "a", tmp_path / "b"
    d0.mkdir()
    d1.mkdir()
    for k in range(4):
        save(photos[k], d0 / f"{k}.png")
        save(photos[k + 1], d1 / f"{k}.png")
    r = run("dirs", d0, d1, "--batch-size", 4, own_cache=True)  # no -o: CSV on stdout, then the mean
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "name,distance"
    assert [ln.split(",")[0] for ln in lines[1:5]] == ["0.png", "1.png", "2.png", "3.png"]
    vals = [float(ln.split(",")[1]) for ln in lines[1:5]]
    assert float(lines[5]) == pytest.approx(np.mean(vals), abs=1e-6)
    assert any(_compilation_cache.glob("jit__distance01-*"))  # kept for the next run
    (d1 / "1.png").write_bytes(b"broken")
    out = tmp_path / "out.csv"
    r = run("dirs", d0, d1, "-o", out, "--no-keep-going", "--batch-size", 4)
    assert r.returncode == 1
    assert "1.png" in r.stderr and "nothing written" in r.stderr
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


# ---------------------------------------------------------------------------------------
# allpairs


def _pair_values(path) -> dict:
    return {(a, b): float(v) for a, b, v in read_csv(path)[1:]}


def test_allpairs(tmp_path, photos, alex_params):
    """The features path (features once per image, distance_from_features per pair)
    gives the numbers of ``distance`` on the same arrays."""
    d = tmp_path / "imgs"
    d.mkdir()
    for k in range(5):
        save(photos[k], d / f"p{k}.png")
    out = tmp_path / "pairs.csv"
    r = run("allpairs", d, "-o", out, "--batch-size", 4)
    assert r.returncode == 0, r.stderr
    rows = read_csv(out)
    assert rows[0] == ["a", "b", "distance"]
    keys = [(a, b) for a, b, _ in rows[1:]]
    assert keys == [(f"p{i}.png", f"p{j}.png") for i in range(5) for j in range(i + 1, 5)]
    got = np.array([float(v) for _, _, v in rows[1:]])
    want = ref_distances(alex_params, [(u8(photos[int(a[1])]), u8(photos[int(b[1])])) for a, b in keys])
    np.testing.assert_allclose(got, want, **TOL)
    lines = r.stdout.strip().splitlines()
    se = got.std() / np.sqrt(got.size)
    assert lines[-2] == f"Avg: {got.mean():.5f} +/- {se:.5f}"  # as lpips_1dir_allpairs.py
    assert float(lines[-1]) == pytest.approx(got.mean(), abs=1e-6)

    # Blocks (a tiny feature budget), another size and an unreadable file.
    save(photos[5][:48], d / "odd.png")
    (d / "q_bad.png").write_bytes(b"nope")
    out2 = tmp_path / "pairs2.csv"
    # 0.5 MB holds the features of 4 of these images: blocks of 4.
    r = run("allpairs", d, "-o", out2, "--max-feature-mb", 0.5, "--batch-size", 4)
    assert r.returncode == 1
    assert "blocks" in r.stderr
    assert "q_bad.png: cannot read image" in r.stderr
    assert "odd.png, p0.png: sizes differ: 64x48 and 64x64" in r.stderr
    assert "10 pairs compared, 11 failed (of 21)" in r.stderr
    v1, v2 = _pair_values(out), _pair_values(out2)
    assert v2.keys() == v1.keys()
    np.testing.assert_allclose([v2[k] for k in v1], [v1[k] for k in v1], **TOL)


def test_allpairs_consecutive_and_usage(tmp_path, photos, capsys):
    d = tmp_path / "c"
    d.mkdir()
    for k in range(5):
        save(photos[k], d / f"{k}.png")
    r = run("allpairs", d, "--consecutive", "--batch-size", 1)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert [ln.rsplit(",", 1)[0] for ln in out[1:5]] == [f"{k}.png,{k + 1}.png" for k in range(4)]
    assert len(out) == 7  # header, 4 rows, Avg, mean
    assert cli.main(["allpairs", str(d), "--resize", "a"]) == 2
    assert "--resize WxH" in capsys.readouterr().err
    one = tmp_path / "one"
    one.mkdir()
    save(photos[0], one / "x.png")
    assert cli.main(["allpairs", str(one)]) == 2
    assert "need at least 2" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# map


def test_map_heatmap_png_and_npy(tmp_path, photos, alex_params):
    a = save(photos[0], tmp_path / "a.png")
    b = save(distort(photos[0], "blur"), tmp_path / "b.png")
    png, npy = tmp_path / "m.png", tmp_path / "m.npy"
    r = run("map", a, b, "-o", png, "--npy", npy)
    assert r.returncode == 0, r.stderr
    m = np.load(npy)
    assert m.shape == (64, 64) and m.dtype == np.float32
    want = _reading.map_jit(alex_params, u8(photos[0])[None], u8(distort(photos[0], "blur"))[None])
    np.testing.assert_allclose(m, np.asarray(want)[0], **TOL)
    assert float(last_line(r.stdout)) == pytest.approx(float(m.mean()), abs=1e-6)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        text = dict(im.text)
        px = np.asarray(im).astype(int)
    lw = int(text["lpips:legend_width"])
    assert lw > 0 and px.shape == (64, 64 + lw, 3)  # the map at the inputs' size + legend
    vmax = float(text["lpips:vmax"])
    assert vmax == pytest.approx(float(m.max()), rel=1e-6) and float(text["lpips:vmin"]) == 0
    assert text["lpips:net"] == "alex"
    # The map region is the colour map of the raw map.
    np.testing.assert_allclose(px[:, :64], _heatmap.colormap(m / vmax), atol=1)
    # The colour bar runs from the top colour (vmax) down to the bottom colour (0).
    lay = _heatmap.legend_layout(64, vmax)
    xbar = 64 + lay["margin"] + lay["bar_width"] // 2
    np.testing.assert_allclose(px[lay["top"], xbar], _heatmap.colormap(1.0), atol=2)
    np.testing.assert_allclose(px[lay["bottom"], xbar], _heatmap.colormap(0.0), atol=2)
    # Tick labels: dark ink right of the bar, at the top, middle and bottom.
    xtext = 64 + lay["margin"] + lay["bar_width"] + lay["tick"] + 2
    ink = px[:, xtext:].sum(-1) < 200
    for y in (lay["top"], (lay["top"] + lay["bottom"]) // 2, lay["bottom"]):
        assert ink[max(0, y - 4) : y + 5].any(), y
    assert lay["labels"] == [_heatmap.format_value(vmax), _heatmap.format_value(vmax / 2), "0"]


def test_map_overlay_zoom_and_options(tmp_path, photos, capsys):
    a = save(photos[1], tmp_path / "a.png")
    b = save(distort(photos[1], "noise"), tmp_path / "b.png")
    npy, png = tmp_path / "m.npy", tmp_path / "o.png"
    args = ["map", a, b, "--npy", npy, "-o", png]
    r = run(*args, "--overlay", "--no-legend", "--vmax", 2, "--alpha", 0.5)
    assert r.returncode == 0, r.stderr
    m = np.load(npy)
    with Image.open(png) as im:
        assert im.size == (64, 64)  # exactly the inputs' size without the legend
        px = np.asarray(im).astype(float)
    want = 0.5 * _heatmap.colormap(m / 2) + 0.5 * photos[1]
    np.testing.assert_allclose(px, want, atol=1.01)
    r = run(*args, "--zoom", 3)
    assert r.returncode == 0, r.stderr
    with Image.open(png) as im:
        assert im.size[1] == 192 and im.size[0] > 192
        assert im.text["lpips:map_width"] == "192"
    capsys.readouterr()
    assert cli.main(["map", str(a), str(b)]) == 2
    assert "-o MAP.png" in capsys.readouterr().err


def test_colormap_is_perceptually_ordered():
    v = np.linspace(0, 1, 33)  # steps of about 2.8 L*, well above uint8 rounding
    c = _heatmap.colormap(v).astype(float) / 255
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = lin @ np.array([0.2126, 0.7152, 0.0722])
    lightness = 116 * np.cbrt(y) - 16
    assert np.all(np.diff(lightness) > 0)  # monotonic: reads right in grayscale
    assert lightness[-1] - lightness[0] > 80
    ends = _heatmap.colormap(np.array([0.0, 1.0, np.nan, 2.0]))
    lo, hi = _heatmap.CONTROL_COLOURS[0][1], _heatmap.CONTROL_COLOURS[-1][1]
    np.testing.assert_array_equal(ends, [lo, hi, lo, hi])


# ---------------------------------------------------------------------------------------
# dist: sizes, resizing, errors, exit codes.


def test_dist_size_mismatch_and_resize(tmp_path, photos, alex_params, capsys):
    big = np.asarray(Image.fromarray(photos[2]).resize((80, 72)))
    a = save(photos[0], tmp_path / "a.png")
    b = save(photos[1][:48], tmp_path / "b.png")
    c = save(big, tmp_path / "c.png")
    r = run("dist", a, b)
    assert r.returncode == 1
    assert "a.png is 64x64 but" in r.stderr and "b.png is 64x48" in r.stderr
    assert "--resize" in r.stderr and r.stdout == ""
    got = []
    for argv in (
        ["dist", str(a), str(b), "--resize", "a"],  # B to A's size
        ["dist", str(c), str(a), "--resize", "b"],  # A to B's size
        ["dist", str(b), str(c), "--resize", "64x64"],
    ):
        assert cli.main(argv) == 0
        got.append(float(last_line(capsys.readouterr().out)))
    xa, xb, xc = u8(photos[0]), u8(photos[1][:48]), u8(big)
    pairs = [
        (xa, lio.resize_image(xb, (64, 64))),
        (lio.resize_image(xc, (64, 64)), xa),
        (lio.resize_image(xb, (64, 64)), lio.resize_image(xc, (64, 64))),
    ]
    np.testing.assert_allclose(got, ref_distances(alex_params, pairs), **TOL)


def test_dist_input_errors(tmp_path, photos, capsys):
    good = save(photos[0], tmp_path / "good.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff truncated")
    r = run("dist", good, bad)
    assert r.returncode == 1
    assert f"{bad}: cannot read image" in r.stderr and r.stdout == ""
    assert cli.main(["dist", str(good), str(tmp_path / "missing.png")]) == 1
    assert "missing.png: no such file" in capsys.readouterr().err
    small = save(photos[0][:20, :20], tmp_path / "s1.png")
    small2 = save(photos[1][:20, :20], tmp_path / "s2.png")
    assert cli.main(["dist", str(small), str(small2)]) == 1
    err = capsys.readouterr().err
    assert "s1.png is 20x20" in err and "at least 31x31" in err
    rgba = save(np.dstack([photos[0], np.full((64, 64), 7, np.uint8)]), tmp_path / "t.png")
    r = run("dist", rgba, good)
    assert r.returncode == 0, r.stderr
    assert float(last_line(r.stdout)) < 1e-9  # alpha ignored: the same RGB
    assert r.stderr.count("alpha channel") == 1


def test_usage_errors_exit_2(tmp_path, photos, capsys):
    a = str(save(photos[0], tmp_path / "a.png"))
    cases = [
        (["dirs", str(tmp_path / "nope"), str(tmp_path)], "folder '" + str(tmp_path / "nope")),
        (["dist", a, a, "--resize", "big"], "expected a (resize B to A's size)"),
        ([], "give a command"),
        (["dist", a, a, "--net", "resnet"], "invalid choice: 'resnet'"),
        (["dist", a, a, "--version", "0.2"], "invalid choice: '0.2'"),
        (["dirs", str(tmp_path), str(tmp_path), "--batch-size", "0"], "positive integer"),
        (["dirs", str(tmp_path), str(tmp_path), "-o", str(tmp_path / "x" / "o.csv")],
         "does not exist"),
        (["map", a, a, "-o", str(tmp_path)], "is a folder"),
        (["dist", a, a, "--weights", str(tmp_path / "w.safetensors")], "cannot load weights"),
        (["frobnicate"], "invalid choice"),
        (["dirs", str(tmp_path), str(tmp_path), "--devices", "4096"], "--devices 4096: expected 1 to "),
        (["allpairs", str(tmp_path), "--num-processes", "2", "--process-id", "2"],
         "--process-id 2: expected 0 to 1 (--num-processes 2)"),
    ]  # fmt: skip
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


# ---------------------------------------------------------------------------------------
# convert, and the list of commands.


def test_convert_forwards(tmp_path, capsys):
    assert cli.main(["convert", "--help"]) == 0
    assert "--trunk" in capsys.readouterr().out
    lpips = pytest.importorskip("lpips")
    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    out = tmp_path / "h.safetensors"
    assert cli.main(["convert", "--net", "alex", "--heads", str(heads), "--out", str(out)]) == 0
    assert out.is_file()
    assert cli.main(["convert", "--net", "alex"]) != 0  # convert's own error


def test_convert_missing_torch_or_package(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert cli.main(["convert", "--help"]) == 2
    err = capsys.readouterr().err
    assert "PyTorch is not installed" in err and "pip install torch torchvision" in err
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "convert", None)
    assert cli.main(["convert", "--help"]) == 2
    err = capsys.readouterr().err
    assert "convert/ is not importable" in err and "pip install -e '.[convert]'" in err


def test_every_command_is_registered(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("dist", "map", "dirs", "allpairs", "eval", "train", "convert"):
        assert cmd in out


# ---------------------------------------------------------------------------------------
# The conventions every subcommand shares (cli/_common.py, lpips_jax/_outputs.py).

_BAD_NUMBERS = [
    (["dirs", "D", "D"], "--batch-size", "0", "expected a positive integer"),
    (["dirs", "D", "D"], "--workers", "two", "expected a positive integer"),
    (["allpairs", "D"], "--batch-size", "-3", "expected a positive integer"),
    (["allpairs", "D"], "--max-feature-mb", "nan", "expected a positive number"),
    (["map", "A", "A"], "--alpha", "1.5", "expected a number in [0, 1]"),
    (["map", "A", "A"], "--vmax", "-1", "expected a positive number"),
    (["map", "A", "A"], "--zoom", "0", "expected a positive integer"),
    (["eval"], "--batch-size", "0", "expected a positive integer"),
    (["train", "--out", "o.safetensors"], "--batch-size", "1.5", "expected a positive integer"),
    (["train", "--out", "o.safetensors"], "--epochs", "-1", "expected an integer >= 0"),
    (["train", "--out", "o.safetensors"], "--epochs-decay", "x", "expected an integer >= 0"),
    (["train", "--out", "o.safetensors"], "--lr", "0", "expected a positive number"),
    (["train", "--out", "o.safetensors"], "--lr", "inf", "expected a positive number"),
    (["train", "--out", "o.safetensors"], "--beta1", "1", "expected a number in [0, 1)"),
    (["train", "--out", "o.safetensors"], "--dropout", "-0.1", "expected a number in [0, 1)"),
    (["train", "--out", "o.safetensors"], "--seed", "-1", "expected an integer >= 0"),
    (["train", "--out", "o.safetensors"], "--stop-after", "0", "expected a positive integer"),
    (["dirs", "D", "D"], "--devices", "0", "expected a positive integer"),
    (["allpairs", "D"], "--process-id", "-1", "expected an integer >= 0"),
    (["eval"], "--num-processes", "0", "expected a positive integer"),
    (["eval"], "--coordinator", "localhost", "expected HOST:PORT"),
    (["dirs", "D", "D"], "--coordinator", "host:99999", "expected HOST:PORT"),
]


@pytest.mark.parametrize("argv, option, value, expected", _BAD_NUMBERS)
def test_bad_numeric_option_exits_2_naming_value(argv, option, value, expected, capsys):
    assert cli.main([*argv, option, value]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}: {value!r}: {expected}" in err, err


def test_train_needs_an_epoch_exit_2(tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "o.safetensors"), "--epochs", "0", "--epochs-decay", "0"]
    assert cli.main(argv) == 2
    assert "--epochs 0 --epochs-decay 0: expected at least one epoch" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


_POSITIONALS = {
    "dist": ["A", "B"], "map": ["A", "B"], "dirs": ["D0", "D1"], "allpairs": ["D"],
    "eval": [], "train": ["--out", "o.safetensors"],
}  # fmt: skip


@pytest.mark.parametrize("cmd", sorted(_POSITIONALS))
def test_progress_flags_accepted_everywhere(cmd):
    parser = cli.build_parser()
    assert parser.parse_args([cmd, *_POSITIONALS[cmd]]).progress is None  # a terminal decides
    assert parser.parse_args([cmd, *_POSITIONALS[cmd], "--no-progress"]).progress is False
    assert parser.parse_args([cmd, *_POSITIONALS[cmd], "--progress"]).progress is True


def test_convert_accepts_and_drops_no_progress(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "p.safetensors"
    argv = ["convert", "--no-progress", "--net", "alex", "--heads", str(tmp_path / "nope.pth")]
    assert cli.main([*argv, "--out", str(out)]) == 1  # the converter ran: a missing file
    assert "unrecognized arguments" not in capsys.readouterr().err
    assert not out.exists()


def test_atomic_file_keeps_the_old_file_when_writing_fails(tmp_path):
    from lpips_jax._outputs import atomic_file

    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="midway"), atomic_file(target, "w") as f:
        f.write("half of the new")
        raise RuntimeError("midway")
    assert target.read_text() == "old\n" and sorted(tmp_path.iterdir()) == [target]
    with atomic_file(target, "w") as f:
        f.write("new\n")
    assert target.read_text() == "new\n" and sorted(tmp_path.iterdir()) == [target]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_map_writes_neither_file_when_the_png_fails_midway(tmp_path, photos, monkeypatch, capsys):
    a = str(save(photos[0], tmp_path / "a.png"))
    b = str(save(photos[1], tmp_path / "b.png"))
    real_save = Image.Image.save

    def broken_save(self, fp, *args, **kwargs):
        if hasattr(fp, "write"):
            fp.write(b"\x89PNG half")
            raise OSError("disk full (simulated)")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", broken_save)
    png, npy = tmp_path / "m.png", tmp_path / "m.npy"
    assert cli.main(["map", a, b, "-o", str(png), "--npy", str(npy), "--no-progress"]) == 1
    assert "disk full (simulated)" in capsys.readouterr().err
    assert not png.exists() and not npy.exists() and not list(tmp_path.glob("*.partial"))


def test_fmt_round_trips_float32():
    for v in [0.5690484, 1.2e-5, 0.0, 0.42166436]:
        assert np.float32(float(cli.fmt(v))) == np.float32(v)
    assert cli.fmt(float("nan")) == "nan"
    buf = io.StringIO()
    print(cli.fmt(np.float32(0.1)), file=buf)
    assert buf.getvalue() == "0.1\n"


def test_dist_family_and_map_without_dists(tmp_path, photos, capsys):
    """``dist --net dists`` / ``--variant shift_tolerant`` print the library's numbers;
    ``map --net dists`` is a usage error (DISTS has no map)."""
    import lpips_jax

    a, b = save(photos[0], tmp_path / "a.png"), save(photos[1], tmp_path / "b.png")
    pair = [(u8(photos[0]), u8(photos[1]))]
    for argv, p in (
        (["--net", "dists"], lpips_jax.load("dists")),
        (["--variant", "shift_tolerant"], lpips_jax.load("alex", variant="shift_tolerant")),
    ):
        assert cli.main(["dist", *argv, "--json", str(a), str(b)]) == 0
        obj = json.loads(last_line(capsys.readouterr().out))
        assert obj["net"] == p.net and obj["variant"] == p.variant
        np.testing.assert_allclose(obj["distance"], ref_distances(p, pair)[0], **TOL)
    assert cli.main(["map", "--net", "dists", str(a), str(b), "-o", str(tmp_path / "m.png")]) == 2
    assert "DISTS defines no spatial map" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()
