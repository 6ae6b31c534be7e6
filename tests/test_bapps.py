"""BAPPS: the tfds builder, 2AFC/JND scoring, head training, checkpoints and PyTorch export.

A miniature BAPPS in the official layout is made from real photographs (scikit-image
samples) with graded distortions, and judgments that follow the distortion strength.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import photo_crops, to_nchw, trunk_state_dict
from PIL import Image, ImageFilter

LEVELS = 5  # distortion strengths 0..4 (0 = mildest)


def graded(img: np.ndarray, kind: str, level: int, seed: int) -> np.ndarray:
    """``img`` (uint8 HWC) distorted with strength ``level``: noise, blur or jpeg."""
    if kind == "noise":
        rng = np.random.default_rng(seed)
        sigma = (3, 8, 16, 28, 45)[level]
        return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)
    if kind == "blur":
        radius = (0.4, 0.8, 1.4, 2.2, 3.4)[level]
        return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)))
    quality = (90, 60, 35, 15, 5)[level]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def _save_png(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def _save_npy(path: Path, v: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.array([v], np.float64))


def make_mini_bapps(root: Path, *, seed: int = 0) -> dict:
    """A miniature BAPPS in the official layout under ``root``; returns what was written.

    2AFC: judge = fraction preferring p1 = sigmoid(1.5 * (level0 - level1)), rounded to
    fifths (five raters). JND: same = fraction finding the pair identical, high for mild
    and low for strong distortions.
    """
    rng = np.random.default_rng(seed)
    kinds = {"traditional": ("noise", "blur"), "cnn": ("jpeg", "noise"), "mix": ("blur", "jpeg")}
    plan = {
        ("2afc", "train", "traditional"): 24,
        ("2afc", "train", "cnn"): 16,
        ("2afc", "val", "traditional"): 10,
        ("2afc", "val", "cnn"): 10,
        ("jnd", "val", "traditional"): 10,
        ("jnd", "val", "cnn"): 10,
    }
    written = {}
    for k, ((config, split, subset), n) in enumerate(plan.items()):
        crops = photo_crops((64, 64), n, seed=seed + 17 * k)
        folder = root / config / split / subset
        rows = []
        for i in range(n):
            kind = kinds[subset][i % 2]
            ref = crops[i]
            name = f"{i:06d}"
            if config == "2afc":
                l0, l1 = rng.choice(LEVELS, 2, replace=False)
                p0 = graded(ref, kind, int(l0), seed=1000 * k + 2 * i)
                p1 = graded(ref, kind, int(l1), seed=1000 * k + 2 * i + 1)
                judge = float(np.round(5 / (1 + np.exp(-1.5 * (l0 - l1)))) / 5)
                _save_png(folder / "ref" / f"{name}.png", ref)
                _save_png(folder / "p0" / f"{name}.png", p0)
                _save_png(folder / "p1" / f"{name}.png", p1)
                _save_npy(folder / "judge" / f"{name}.npy", judge)
                rows.append((ref, p0, p1, judge))
            else:
                level = int(rng.integers(0, LEVELS))
                p1 = graded(ref, kind, level, seed=1000 * k + i)
                same = float(np.round(5 / (1 + np.exp(2.0 * (level - 1.5)))) / 5)
                _save_png(folder / "p0" / f"{name}.png", ref)
                _save_png(folder / "p1" / f"{name}.png", p1)
                _save_npy(folder / "same" / f"{name}.npy", same)
                rows.append((ref, p1, same))
        written[(config, split, subset)] = rows
    return written


def _tar(path: Path, members: dict[str, Path]) -> None:
    """A .tar.gz at ``path`` holding each folder ``src`` under the name ``arcname``."""
    with tarfile.open(path, "w:gz") as tar:
        for arcname, src in members.items():
            tar.add(src, arcname=arcname)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("bapps_manual")
    return root, make_mini_bapps(root)


@pytest.fixture(scope="session")
def prepared(mini, tmp_path_factory):
    from lpips_jax import bapps

    data_dir = tmp_path_factory.mktemp("bapps_tfds")
    builders = bapps.prepare(mini[0], data_dir=data_dir)
    assert sorted(builders) == ["2afc", "jnd"]
    return data_dir


# One training configuration shared by the training tests, so the step compiles once.
TRAIN_KW = dict(epochs=2, epochs_decay=1, batch_size=8, lr=1e-2, seed=0, progress=False)


@pytest.fixture(scope="session")
def trained(prepared, tmp_path_factory):
    from lpips_jax import bapps

    d = tmp_path_factory.mktemp("bapps_train")
    out = d / "heads.safetensors"
    result = bapps.train(data_dir=prepared, out=out, checkpoint_dir=d / "ckpt", **TRAIN_KW)
    return result, out


def _cfg(n=40):
    from lpips_jax.bapps._train import TrainConfig

    kw = {k: v for k, v in TRAIN_KW.items() if k != "progress"}
    return TrainConfig(net="alex", version="0.1", mode="lin", num_examples=n, **kw)


# ----------------------------------------------------------------------------- the builder


def test_core_import_does_not_import_tfds():
    import subprocess
    import sys

    code = (
        "import sys, lpips_jax, lpips_jax.bapps, lpips_jax.bapps._evaluate, lpips_jax.bapps._train; "
        "import lpips_jax.cli; lpips_jax.cli.build_parser(); "
        "assert 'tensorflow_datasets' not in sys.modules, 'tfds imported'; "
        "assert 'tensorflow' not in sys.modules; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_builder_yields_official_examples_in_order(prepared, mini):
    from lpips_jax import bapps

    _, written = mini
    assert bapps.prepared_splits("2afc", data_dir=prepared) == (
        "train_traditional", "train_cnn", "val_traditional", "val_cnn",
    )  # fmt: skip
    assert bapps.prepared_splits("jnd", data_dir=prepared) == ("val_traditional", "val_cnn")
    for (config, split, subset), rows in written.items():
        src = bapps.load(config, f"{split}_{subset}", data_dir=prepared)
        assert len(src) == len(rows)
        for i, row in enumerate(rows):
            ex = src[i]
            assert ex["id"] == f"{i:06d}".encode()
            parts = ("ref", "p0", "p1") if config == "2afc" else ("p0", "p1")
            for part, want in zip(parts, row[:-1], strict=True):
                assert ex[part].dtype == np.uint8 and ex[part].shape == (64, 64, 3)
                np.testing.assert_array_equal(ex[part], want)
            label = ex["judge" if config == "2afc" else "same"]
            assert np.float32(label) == np.float32(row[-1])


def test_builder_reads_official_tarballs(mini, prepared, tmp_path):
    from lpips_jax import bapps

    root, _ = mini
    manual = tmp_path / "manual"
    manual.mkdir()
    # As the official tarballs: twoafc_val.tar.gz starts at val/, jnd.tar.gz at jnd/.
    _tar(manual / "jnd.tar.gz", {"jnd": root / "jnd"})
    _tar(manual / "twoafc_val.tar.gz", {"val/cnn": root / "2afc" / "val" / "cnn"})
    data_dir = tmp_path / "tfds"
    bapps.prepare(manual, data_dir=data_dir)
    assert bapps.prepared_splits("2afc", data_dir=data_dir) == ("val_cnn",)
    # Preparing again is a no-op; a new part (train/) in the folder is picked up.
    bapps.prepare(manual, data_dir=data_dir, configs=("2afc",))
    assert bapps.prepared_splits("2afc", data_dir=data_dir) == ("val_cnn",)
    shutil.copytree(root / "2afc" / "train" / "cnn", manual / "2afc" / "train" / "cnn")
    bapps.prepare(manual, data_dir=data_dir, configs=("2afc",))
    assert bapps.prepared_splits("2afc", data_dir=data_dir) == ("train_cnn", "val_cnn")
    assert bapps.available(manual) == ("2afc", "jnd")
    for config, split in (("2afc", "val_cnn"), ("jnd", "val_traditional")):
        a = bapps.load(config, split, data_dir=data_dir)
        b = bapps.load(config, split, data_dir=prepared)
        assert len(a) == len(b)
        for i in range(len(a)):
            for k, v in a[i].items():
                np.testing.assert_array_equal(v, b[i][k])


@pytest.mark.parametrize("kind", ["missing", "empty", "junk"])
def test_no_data_says_where_to_get_bapps(tmp_path, kind):
    import tensorflow_datasets as tfds

    from lpips_jax import bapps

    manual = tmp_path / "manual"
    if kind != "missing":
        manual.mkdir()
    if kind == "junk":
        (manual / "notes.txt").write_text("not bapps")
    b = bapps.builder("2afc", data_dir=tmp_path / "tfds")
    with pytest.raises(bapps.BappsDataError) as e:
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    msg = str(e.value)
    assert "download_dataset.sh" in msg and "twoafc_val.tar.gz" in msg
    assert "2afc/val/<subset>" in msg and str(manual) in msg
    if kind == "junk":
        assert "notes.txt" in msg
    if kind != "missing":
        with pytest.raises(bapps.BappsDataError, match="no BAPPS data found"):
            bapps.prepare(manual, data_dir=tmp_path / "tfds2")


def test_wrong_layout_is_reported(tmp_path):
    from lpips_jax import bapps

    sub = tmp_path / "manual" / "jnd" / "val" / "cnn"
    for part in ("p0", "p1", "same"):
        (sub / part).mkdir(parents=True)
    img = photo_crops((64, 64), 2)
    for i in range(2):
        _save_png(sub / "p0" / f"{i}.png", img[i])
        _save_png(sub / "p1" / f"{i}.png", img[i])
    _save_npy(sub / "same" / "0.npy", 0.5)
    with pytest.raises(bapps.BappsDataError, match=r"different numbers of files.*'same': 1"):
        bapps.prepare(tmp_path / "manual", data_dir=tmp_path / "tfds")


def test_patches_are_resized_as_the_official_loader(tmp_path):
    import torchvision.transforms as T

    from lpips_jax.bapps import BappsDataError, _layout

    big = photo_crops((128, 128), 1, seed=3)[0]
    _save_png(tmp_path / "big.png", big)
    with Image.open(tmp_path / "big.png") as im:
        want = np.asarray(T.Resize(64)(im.convert("RGB")))
    np.testing.assert_array_equal(_layout.read_patch(tmp_path / "big.png"), want)
    with Image.open(io.BytesIO(_layout.patch_png(tmp_path / "big.png"))) as im:
        np.testing.assert_array_equal(np.asarray(im), want)
    _save_png(tmp_path / "patch.png", want)  # an official patch is passed on as it is
    assert _layout.patch_png(tmp_path / "patch.png") == (tmp_path / "patch.png").read_bytes()
    _save_png(tmp_path / "wide.png", photo_crops((64, 96), 1)[0])
    with pytest.raises(BappsDataError, match=r"shape \(64, 96, 3\).*square"):
        _layout.read_patch(tmp_path / "wide.png")


# ----------------------------------------------------------------------------- scores


def test_scores_equal_hand_computed_values():
    from lpips_jax import bapps

    # Agree (p0 closer, 20% prefer p1): 0.8; tie: 0.5; p1 closer: 1.0 and 0.4.
    d0, d1 = [1.0, 2.0, 3.0, 5.0], [2.0, 2.0, 1.0, 4.0]
    assert bapps.score_2afc(d0, d1, [0.2, 0.6, 1.0, 0.4]) == pytest.approx(2.7 / 4)
    # Ranked same = 1, 0, 1, 0: precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1;
    # envelope 1 on (0, 1/2], 2/3 on (1/2, 1] -> AP = 1/2 + 1/3.
    assert bapps.score_jnd([0.4, 0.1, 0.3, 0.2], [0, 1, 1, 0]) == pytest.approx(5 / 6)
    assert bapps.score_jnd([0.1, 0.2], [1, 1]) == 1.0
    with pytest.raises(ValueError, match="same > 0"):
        bapps.score_jnd([0.1, 0.2], [0, 0])


class _FakeJndLoader:
    """What the official ``score_jnd_dataset`` reads: ``load_data()`` yielding batches of
    ``p0``, ``p1`` (any stand-in: the fake ``func`` ignores them) and ``same``."""

    def __init__(self, d, same, batch=7):
        import torch

        self.batches = [
            {"p0": torch.as_tensor(d[i : i + batch]), "p1": None,
             "same": torch.as_tensor(same[i : i + batch]).reshape(-1, 1, 1, 1)}
            for i in range(0, len(d), batch)
        ]  # fmt: skip

    def load_data(self):
        return iter(self.batches)


@pytest.mark.parametrize("seed", [0, 2])  # seeds where a stable sort scores otherwise
def test_jnd_with_tied_distances_equals_the_official_function(seed, capsys):
    # Reference: lpips 0.1.4's own lpips.trainer.score_jnd_dataset, driven by a fake data
    # loader and a fake func that returns the distances given (float32, as a model's).
    import torch
    from lpips.trainer import score_jnd_dataset

    from lpips_jax import bapps

    rng = np.random.default_rng(seed)
    d = rng.uniform(0.0, 1.0, 40).astype(np.float32)
    d[rng.choice(40, 12, replace=False)] = 0.0  # identical patches: exact ties at 0
    d[rng.choice(40, 6, replace=False)] = np.float32(0.25)  # and ties elsewhere
    same = rng.choice([0.0, 1 / 3, 2 / 3, 1.0], 40).astype(np.float32)
    want, _ = score_jnd_dataset(_FakeJndLoader(d, same), lambda p0, p1: torch.as_tensor(p0))
    capsys.readouterr()  # the official tqdm bar
    got = bapps.score_jnd(d, same)
    assert got == pytest.approx(want, abs=1e-12)


def _straight_ap(d, same):
    """An independent, loop-based re-derivation of the official JND mAP."""
    order = sorted(range(len(d)), key=lambda i: d[i])
    total = sum(same)
    tp = fp = 0.0
    points = []
    for i in order:
        tp += same[i]
        fp += 1 - same[i]
        points.append((tp / total, tp / (tp + fp)))
    ap, prev_rec = 0.0, 0.0
    for k, (rec, _) in enumerate(points):
        if rec != prev_rec:
            ap += (rec - prev_rec) * max(p for _, p in points[k:])
            prev_rec = rec
    return ap


class _Loader:
    """Stands in for the official data loader: ``load_data()`` yields batches."""

    def __init__(self, batches):
        self.batches = batches

    def load_data(self):
        return self.batches


def test_scores_equal_official_logic_on_the_same_distances(prepared, mini):
    import lpips
    import torch

    from lpips_jax import bapps
    from lpips_jax.bapps._examples import to_unit_official

    calls = []

    def mad(x, y):  # a user's own metric: mean absolute difference
        calls.append(1)
        return (
            np.abs(x - y).mean(axis=(1, 2, 3))
            if isinstance(x, np.ndarray)
            else abs(x - y).mean(axis=(1, 2, 3))
        )

    res = bapps.evaluate(mad, data_dir=prepared, batch_size=4, return_distances=True)
    # 10 examples per subset in batches of 4 (last one padded): traced once per task kind.
    assert len(calls) == 3
    _, written = mini
    for task in ("2afc", "jnd"):
        assert set(res[task]) == {"traditional", "cnn", "mean"}
        for subset in ("traditional", "cnn"):
            rows = written[(task, "val", subset)]
            got = res["distances"][task][subset]
            u = [np.stack([r[j] for r in rows]) for j in range(3 if task == "2afc" else 2)]
            x = [np.asarray(to_unit_official(a)) for a in u]
            label = np.asarray([r[-1] for r in rows], np.float32).astype(np.float64)
            if task == "2afc":
                d0 = np.abs(x[0] - x[1]).mean(axis=(1, 2, 3))
                d1 = np.abs(x[0] - x[2]).mean(axis=(1, 2, 3))
                np.testing.assert_allclose(got["d0"], d0, rtol=1e-5, atol=1e-7)
                np.testing.assert_allclose(got["d1"], d1, rtol=1e-5, atol=1e-7)
                d0, d1 = got["d0"], got["d1"]
                n = len(d0)
                batch = {
                    "ref": torch.arange(n), "p0": torch.zeros(n), "p1": torch.ones(n),
                    "judge": torch.from_numpy(label.astype(np.float32)),
                }  # fmt: skip

                def func(ref, p, d0=d0, d1=d1):
                    table = d0 if float(p[0]) == 0 else d1
                    return torch.from_numpy(table[ref.numpy()])

                official, _ = lpips.score_2afc_dataset(_Loader([batch]), func)
                assert res[task][subset] == pytest.approx(official, abs=1e-12)
                hand = np.mean(
                    [
                        (a < b) * (1 - g) + (b < a) * g + 0.5 * (a == b)
                        for a, b, g in zip(d0, d1, label, strict=True)
                    ]
                )
                assert res[task][subset] == pytest.approx(hand, abs=1e-12)
            else:
                d = np.abs(x[0] - x[1]).mean(axis=(1, 2, 3))
                np.testing.assert_allclose(got["d"], d, rtol=1e-5, atol=1e-7)
                d = got["d"]
                batch = {
                    "p0": torch.arange(len(d)), "p1": torch.arange(len(d)),
                    "same": torch.from_numpy(label.astype(np.float32)),
                }  # fmt: skip
                official, _ = lpips.score_jnd_dataset(
                    _Loader([batch]), lambda p0, p1, d=d: torch.from_numpy(d[p0.numpy()])
                )
                assert res[task][subset] == pytest.approx(official, abs=1e-12)
                assert res[task][subset] == pytest.approx(_straight_ap(list(d), list(label)), abs=1e-12)
        mean = np.mean([res[task]["traditional"], res[task]["cnn"]])
        assert res[task]["mean"] == pytest.approx(mean)


def test_voc_ap_equals_official():
    import lpips

    from lpips_jax import bapps

    rng = np.random.default_rng(0)
    for _ in range(5):
        rec = np.sort(rng.uniform(0, 1, 20))
        prec = rng.uniform(0, 1, 20)
        assert bapps.voc_ap(rec, prec) == pytest.approx(lpips.voc_ap(rec, prec), abs=1e-12)


# ----------------------------------------------------------------------------- LPIPS and baselines


def test_evaluate_lpips_equals_official_model(prepared, mini):
    import torch
    from conftest import official_model

    import lpips_jax
    from lpips_jax import bapps
    from lpips_jax.bapps._examples import to_unit_official

    params = lpips_jax.load("alex")
    res = bapps.evaluate(params, data_dir=prepared, batch_size=8, return_distances=True)
    assert res["metric"] == "lpips" and res["net"] == "alex" and res["version"] == "0.1"
    model = official_model("alex", trunk_sd=trunk_state_dict(params))
    rows = mini[1][("2afc", "val", "cnn")]
    ref, p0, p1 = (np.asarray(to_unit_official(np.stack([r[j] for r in rows]))) for j in range(3))
    with torch.no_grad():
        d0 = model(to_nchw(ref), to_nchw(p0)).numpy().reshape(-1)
        d1 = model(to_nchw(ref), to_nchw(p1)).numpy().reshape(-1)
    got = res["distances"]["2afc"]["cnn"]
    np.testing.assert_allclose(got["d0"], d0, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(got["d1"], d1, atol=1e-5, rtol=1e-4)
    # LPIPS agrees with these judgments (they follow the distortion strength).
    assert res["2afc"]["mean"] > 0.8 and res["jnd"]["mean"] > 0.8


def test_l2_and_ssim_baselines_match_skimage_and_official():
    import jax
    import lpips
    from skimage.color import rgb2lab
    from skimage.metrics import structural_similarity

    from lpips_jax import bapps
    from lpips_jax.bapps._examples import to_unit_official

    a = photo_crops((64, 64), 3, seed=5)
    b = np.stack([graded(x, "noise", 2, seed=i) for i, x in enumerate(a)])
    # Values 1..63 avoided: the official tensor2im truncates them to one less.
    a, b = (np.where(v < 64, 0, v).astype(np.uint8) for v in (a, b))
    x, y = np.asarray(to_unit_official(a)), np.asarray(to_unit_official(b))

    @jax.jit
    def baselines(x, y):
        return (
            bapps.l2(x, y), bapps.ssim(x, y), bapps.ssim(x, y, colorspace="RGB"),
            bapps.l2(x, y, colorspace="RGB"), bapps.dssim(x, y), bapps.ssim(x, x),
        )  # fmt: skip

    d_l2, s_lab, s_rgb, rgb, ds, same = (np.asarray(v) for v in baselines(x, y))
    off = lpips.L2(use_gpu=False, colorspace="Lab")
    for i in range(3):
        la, lb = rgb2lab(a[i]), rgb2lab(b[i])
        assert d_l2[i] == pytest.approx(0.5 * np.mean((la / 100 - lb / 100) ** 2), rel=1e-4)
        want = float(off(to_nchw(x[i : i + 1]), to_nchw(y[i : i + 1]))[0])
        assert d_l2[i] == pytest.approx(want, rel=1e-4)
        ref_lab = structural_similarity(la, lb, data_range=100, channel_axis=-1)
        assert s_lab[i] == pytest.approx(ref_lab, abs=2e-5)
        ref_rgb = structural_similarity(
            a[i].astype(np.float64), b[i].astype(np.float64), data_range=255, channel_axis=-1
        )
        assert s_rgb[i] == pytest.approx(ref_rgb, abs=2e-5)
    np.testing.assert_allclose(rgb, ((x - y) ** 2).mean(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(ds, (1 - s_lab) / 2, rtol=1e-6)
    np.testing.assert_allclose(same, 1.0, atol=1e-6)


def test_evaluate_rejects_bad_options(prepared):
    import lpips_jax
    from lpips_jax import bapps

    with pytest.raises(ValueError, match="no subset 'blur'.*'traditional', 'cnn'"):
        bapps.evaluate("l2", data_dir=prepared, tasks=("jnd",), subsets=["blur"])
    with pytest.raises(ValueError, match=r"no subset 'blur': expected one of 2afc \("):
        bapps.evaluate("l2", data_dir=prepared, subsets=["cnn", "blur"])
    with pytest.raises(ValueError, match="JND has no train split"):
        bapps.evaluate("l2", data_dir=prepared, tasks=("jnd",), split="train")
    with pytest.raises(ValueError, match="metric='psnr' is not known"):
        bapps.evaluate("psnr", data_dir=prepared)
    with pytest.raises(ValueError, match="task 'ranking' is not known"):
        bapps.evaluate("l2", data_dir=prepared, tasks=("ranking",))
    from lpips_jax.bapps import BappsDataError

    with pytest.raises(BappsDataError, match="no prepared split 'val_mix'"):
        lpips_jax.bapps.load("2afc", "val_mix", data_dir=prepared)


# ----------------------------------------------------------------------------- training


def test_dist2logit_and_loss_equal_official():
    import lpips
    import torch

    from lpips_jax.bapps._train import Dist2Logit

    torch.manual_seed(0)
    off = lpips.BCERankingLoss()
    rank = Dist2Logit()
    sd = off.net.state_dict()
    params = {
        f"model_{i}": {
            "kernel": sd[f"model.{i}.weight"][:, :, 0, 0].numpy().T,
            "bias": sd[f"model.{i}.bias"].numpy(),
        }
        for i in (0, 2, 4)
    }
    rng = np.random.default_rng(0)
    d0, d1 = (rng.uniform(0, 1, 16).astype(np.float32) for _ in range(2))
    judge = rng.uniform(0, 1, 16).astype(np.float32)
    t = lambda a: torch.from_numpy(a).view(-1, 1, 1, 1)  # noqa: E731
    with torch.no_grad():
        loss = off(t(d0), t(d1), t(judge) * 2.0 - 1.0)  # as the official trainer calls it
        prob = off.logit.numpy().reshape(-1)
    import jax
    import optax

    logit = rank.apply({"params": params}, d0, d1)
    np.testing.assert_allclose(np.asarray(jax.nn.sigmoid(logit)), prob, rtol=1e-5, atol=1e-6)
    ours = float(np.mean(optax.sigmoid_binary_cross_entropy(logit, judge)))
    assert ours == pytest.approx(float(loss), rel=1e-5)


def test_learning_rate_schedule_is_official():
    from lpips_jax.bapps._train import lr_factor

    got = [float(lr_factor(e, 5, 5)) for e in range(10)]
    np.testing.assert_allclose(got, [1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2], rtol=1e-6)


def test_training_distance_is_the_metric_with_the_official_dropout():
    """Training scores pairs with the metric's own ``distance_from_features`` of the taps
    after :func:`head_dropout`: without dropout that is LPIPS itself; with it, the official
    ``Dropout`` on each head's input (a numpy float64 re-computation: keep mask / (1 - p)
    times the squared difference, heads, spatial means)."""
    import jax

    import lpips_jax
    from lpips_jax.bapps._train import head_dropout

    params = lpips_jax.load("alex")
    rng = np.random.default_rng(0)
    shapes = [(2, 15, 15, 64), (2, 7, 7, 192), (2, 3, 3, 384), (2, 3, 3, 256), (2, 3, 3, 256)]
    fa, fb = (tuple(rng.normal(size=s).astype(np.float32) for s in shapes) for _ in range(2))
    key = jax.random.PRNGKey(3)
    np.testing.assert_allclose(
        np.asarray(lpips_jax.distance_from_features(params, *head_dropout(fa, fb, key, 0.0))),
        np.asarray(lpips_jax.distance_from_features(params, fa, fb)),
        rtol=1e-5,
    )
    da, db = head_dropout(fa, fb, key, 0.5)
    got = np.asarray(lpips_jax.distance_from_features(params, da, db))
    want = np.zeros(2)
    kept = []
    for k, (a, b, a2) in enumerate(zip(fa, fb, da, strict=True)):
        keep = np.asarray(a2) != 0  # the elements dropout kept (a nonzero tap stays nonzero)
        kept.append(keep.mean())
        d = np.where(keep, (a.astype(np.float64) - b) ** 2 / 0.5, 0.0)
        w = np.asarray(params.heads[f"lin{k}"]["kernel"], np.float64).reshape(-1)
        want += (d @ w).mean(axis=(1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert all(0.4 < f < 0.6 for f in kept), kept


def to_unit_official_np(u8):
    return ((u8.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)).astype(np.float32)


def test_lin_training_lowers_loss_and_raises_2afc_accuracy(trained, prepared):
    import lpips_jax
    from lpips_jax import bapps
    from lpips_jax.bapps._train import _train_step, init_state

    result, out = trained
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0]
    assert [h["lr"] for h in result.history] == pytest.approx([1e-2, 1e-2, 1e-2])
    state = init_state(_cfg())
    before = lpips_jax.LPIPSParams(trunk=state.frozen_trunk, heads=state.trainable["heads"])
    acc = lambda p: bapps.evaluate(  # noqa: E731
        p, data_dir=prepared, tasks=("2afc",), split="train", batch_size=8
    )["2afc"]["mean"]
    a0, a1 = acc(before), acc(result.params)
    assert a1 > a0 + 0.1, (a0, a1)
    for k in range(5):
        assert float(np.min(result.params.heads[f"lin{k}"]["kernel"])) >= 0.0
    # The trunk was not trained.
    shipped = lpips_jax.load("alex", lpips=False).trunk
    for x, y in zip(jax_leaves(shipped), jax_leaves(result.params.trunk), strict=True):
        np.testing.assert_array_equal(x, y)
    assert _train_step(_cfg())._cache_size() == 1  # one compiled step for the configuration
    # The output file loads and equals the result.
    loaded = lpips_jax.load(path=out)
    assert loaded.net == "alex" and loaded.version == "0.1"
    for x, y in zip(jax_leaves(loaded), jax_leaves(result.params), strict=True):
        np.testing.assert_array_equal(x, y)


def jax_leaves(tree):
    import jax

    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def test_resume_continues_where_it_stopped(trained, prepared, tmp_path):
    from lpips_jax import bapps
    from lpips_jax.bapps._train import _train_step

    full, _ = trained
    ck = tmp_path / "ckpt"
    first = bapps.train(data_dir=prepared, checkpoint_dir=ck, stop_after=1, **TRAIN_KW)
    assert len(first.history) == 1 and first.checkpoint == ck / "epoch_0001"
    resumed = bapps.train(data_dir=prepared, checkpoint_dir=ck, **TRAIN_KW)
    assert len(resumed.history) == 3
    assert resumed.history == full.history  # exactly: the run is deterministic
    for x, y in zip(
        jax_leaves((resumed.params, resumed.rank)),
        jax_leaves((full.params, full.rank)),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)
    assert sorted(p.name for p in ck.iterdir()) == ["epoch_0002", "epoch_0003"]
    assert resumed.checkpoint == ck / "epoch_0003"
    assert _train_step(_cfg())._cache_size() == 1  # three runs of one configuration, one program
    with pytest.raises(
        ValueError, match=r"different training configuration:\n  lr: checkpoint 0.01, now 0.02"
    ):
        bapps.train(data_dir=prepared, checkpoint_dir=ck, **{**TRAIN_KW, "lr": 2e-2})


def test_exported_heads_work_in_official_lpips(trained, tmp_path):
    import lpips
    import torch

    import lpips_jax
    from convert.export_heads import main as export_main

    result, out = trained
    pth = tmp_path / "heads.pth"
    assert export_main([str(out), str(pth)]) == 0
    sd = torch.load(pth, map_location="cpu", weights_only=True)
    assert sorted(sd) == [f"lin{k}.model.1.weight" for k in range(5)]
    assert tuple(sd["lin1.model.1.weight"].shape) == (1, 192, 1, 1)

    a = photo_crops((64, 64), 8, seed=7)
    b = np.stack([graded(c, "blur", 2, i) for i, c in enumerate(a)])
    x, y = to_unit_official_np(a), to_unit_official_np(b)
    ours = np.asarray(lpips_jax.distance(result.params, x, y))
    m = lpips.LPIPS(pretrained=True, net="alex", model_path=str(pth), pnet_rand=True, verbose=False)
    trunk = trunk_state_dict(result.params)
    m.net.load_state_dict(
        {k: trunk[f"features.{k.split('.', 2)[1]}.{k.split('.', 2)[2]}"] for k in m.net.state_dict()}
    )
    m.eval()
    with torch.no_grad():
        theirs = m(to_nchw(x), to_nchw(y)).numpy().reshape(-1)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-4)

    # --trunk: one file with the trunk too; the official model loads both from it.
    full = tmp_path / "full.pth"
    assert export_main([str(out), str(full), "--trunk"]) == 0
    m2 = lpips.LPIPS(pretrained=True, net="alex", model_path=str(full), pnet_rand=True, verbose=False)
    m2.eval()
    with torch.no_grad():
        theirs2 = m2(to_nchw(x), to_nchw(y)).numpy().reshape(-1)
    np.testing.assert_allclose(ours, theirs2, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_torch_format_names_match_the_official_state_dict(net):
    import lpips

    import lpips_jax
    from lpips_jax import bapps
    from lpips_jax._weights import expected_shapes, unflatten

    parts = {p: expected_shapes(net, p) for p in ("trunk", "heads")}
    tree = {p: unflatten({k.split("/", 1)[1]: np.zeros(v, np.float32) for k, v in shapes.items()})
            for p, shapes in parts.items()}  # fmt: skip
    params = lpips_jax.LPIPSParams(trunk=tree["trunk"], heads=tree["heads"], net=net)
    got = bapps.export_heads_torch_format(params, trunk=True)
    m = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
    # `lins.{k}` are aliases of `lin{k}` (a ModuleList of the same modules); the official
    # head files hold `lin{k}` only.
    skip = ("scaling_layer.", "lins.")
    want = {k: tuple(v.shape) for k, v in m.state_dict().items() if not k.startswith(skip)}
    assert {k: v.shape for k, v in got.items()} == want


@pytest.mark.slow
def test_scratch_mode_trains_the_trunk(mini):
    from lpips_jax import bapps
    from lpips_jax.bapps._train import init_trunk

    rows = mini[1][("2afc", "train", "cnn")][:8]
    data = {k: np.stack([r[j] for r in rows]) for j, k in enumerate(("ref", "p0", "p1"))}
    data["judge"] = np.asarray([r[3] for r in rows], np.float32)
    res = bapps.train(
        data=data, mode="scratch", epochs=1, epochs_decay=0, batch_size=4, lr=1e-3, progress=False
    )
    assert len(res.history) == 1 and np.isfinite(res.history[0]["loss"])
    import jax

    start = init_trunk(jax.random.split(jax.random.PRNGKey(0), 4)[2], "alex")
    moved = [
        not np.array_equal(a, b) for a, b in zip(jax_leaves(start), jax_leaves(res.params.trunk), strict=True)
    ]
    assert all(moved)
    for k in range(5):
        assert float(np.min(res.params.heads[f"lin{k}"]["kernel"])) >= 0.0


# ----------------------------------------------------------------------------- CLI and API


def _cli_eval_json(prepared, tmp_path, *argv) -> dict:
    """``lpips-jax eval ARGV`` on the prepared set in batches of 8: exit 0, its JSON."""
    from lpips_jax.cli import main

    out = tmp_path / "scores.json"
    args = ["--tfds-dir", str(prepared), "--batch-size", "8", "--json", str(out), "--no-progress"]
    assert main(["eval", *argv, *args]) == 0
    return json.loads(out.read_text())


def test_cli_eval_writes_json(prepared, tmp_path):
    from lpips_jax import bapps
    from lpips_jax.cli import main

    got = _cli_eval_json(prepared, tmp_path)
    assert set(got) >= {"2afc", "jnd", "net", "version"}
    assert got["net"] == "alex" and got["version"] == "0.1"
    want = bapps.evaluate("lpips", data_dir=prepared, batch_size=8)
    for task in ("2afc", "jnd"):
        assert set(got[task]) == {"traditional", "cnn", "mean"}
        assert got[task] == pytest.approx(want[task])
    assert main(["eval", "--tfds-dir", str(tmp_path / "none"), "--no-progress"]) == 1


def test_cli_eval_prepares_what_data_holds(mini, tmp_path):
    from lpips_jax.cli import main

    manual = tmp_path / "dataset"
    shutil.copytree(mini[0] / "2afc" / "val" / "cnn", manual / "2afc" / "val" / "cnn")
    out = tmp_path / "l2.json"
    args = ["eval", "--data", str(manual), "--tfds-dir", str(tmp_path / "tfds"), "--metric", "l2"]
    assert main([*args, "--batch-size", "8", "--json", str(out), "--no-progress"]) == 0
    got = json.loads(out.read_text())
    assert set(got["2afc"]) == {"cnn", "mean"} and "jnd" not in got
    assert got["metric"] == "l2" and got["net"] is None
    assert main([*args, "--tasks", "jnd", "--no-progress"]) == 1  # asked for, not there


def test_cli_train_writes_params_and_says_how_to_export(trained, prepared, tmp_path, capsys):
    import lpips_jax
    from lpips_jax.cli import main

    full, _ = trained
    out = tmp_path / "heads.safetensors"
    args = ["train", "--tfds-dir", str(prepared), "--out", str(out), "--no-progress"]
    args += ["--epochs", "2", "--epochs-decay", "1", "--batch-size", "8", "--lr", "1e-2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "python -m convert.export_heads" in printed and "2AFC acc" in printed
    assert (tmp_path / "heads.checkpoints" / "epoch_0003").is_dir()
    loaded = lpips_jax.load(path=out)
    for x, y in zip(jax_leaves(loaded.heads), jax_leaves(full.params.heads), strict=True):
        np.testing.assert_array_equal(x, y)
    assert main(["train", "--tfds-dir", str(prepared), "--out", str(out), "--mode", "lin",
                 "--epochs", "-1", "--no-progress"]) == 2  # fmt: skip
    assert "argument --epochs: '-1': expected an integer >= 0" in capsys.readouterr().err


def test_cli_eval_failing_writes_no_json(tmp_path, capsys):
    from lpips_jax.cli import main

    out = tmp_path / "scores.json"
    assert main(["eval", "--tfds-dir", str(tmp_path / "none"), "--json", str(out), "--no-progress"]) == 1
    assert "no prepared BAPPS data" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
    assert main(["eval", "--data", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def _train_arrays(mini) -> dict:
    """The prepared set's 40 train triplets as arrays, in its order: the configuration of
    the runs on it (``_cfg()``, one compiled step for all)."""
    rows = mini[1][("2afc", "train", "traditional")] + mini[1][("2afc", "train", "cnn")]
    data = {k: np.stack([r[j] for r in rows]) for j, k in enumerate(("ref", "p0", "p1"))}
    data["judge"] = np.asarray([r[3] for r in rows], np.float32)
    return data


def _checkpointed(directory, epoch) -> tuple[dict, list]:
    """What the checkpoint of ``epoch`` holds: params, Adam's state, step, RNG key; history."""
    from lpips_jax.bapps import _train

    with _train.checkpoint_manager(directory) as manager:
        state, history = _train.restore_checkpoint(manager, epoch, _cfg(), _train.init_state(_cfg()))
    return _train._saved(state), history


def _assert_bitwise_equal(a, b) -> None:
    import jax

    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def test_resumed_run_equals_an_uninterrupted_one_bit_for_bit(mini, tmp_path):
    """k epochs, stop, resume to 2k: bit for bit the run of 2k epochs straight, in every
    leaf of the checkpoint (params, Adam's state, step, RNG key), of the result and in the
    history."""
    from lpips_jax import bapps
    from lpips_jax.bapps._train import _train_step

    data = _train_arrays(mini)
    a, b = tmp_path / "a", tmp_path / "b"
    first = bapps.train(data=data, checkpoint_dir=a, stop_after=1, **TRAIN_KW)
    resumed = bapps.train(data=data, checkpoint_dir=a, stop_after=2, **TRAIN_KW)
    straight = bapps.train(data=data, checkpoint_dir=b, stop_after=2, **TRAIN_KW)
    assert len(resumed.history) == 2 and resumed.history == straight.history
    assert resumed.history[0] == first.history[0]
    _assert_bitwise_equal((resumed.params, resumed.rank), (straight.params, straight.rank))
    (got, got_history), (want, want_history) = _checkpointed(a, 2), _checkpointed(b, 2)
    assert got_history == want_history == list(straight.history)
    _assert_bitwise_equal(got, want)
    assert int(got["step"]) == 2 * _cfg().steps_per_epoch
    _assert_bitwise_equal(
        {"heads": got["trainable"]["heads"], "rank": got["trainable"]["rank"]},
        {"heads": straight.params.heads, "rank": straight.rank},
    )
    assert _train_step(_cfg())._cache_size() == 1  # fresh or resumed: one compiled step


def test_a_crash_mid_write_leaves_the_previous_checkpoint_usable(mini, tmp_path, monkeypatch):
    """A run that dies while writing epoch 2's checkpoint (its arrays on disk, the folder
    not finalised) leaves epoch 1's as it was; the next run resumes from it and ends where
    an uninterrupted run ends, bit for bit."""
    import orbax.checkpoint as ocp

    from lpips_jax import bapps

    data = _train_arrays(mini)
    ck = tmp_path / "ck"
    real = ocp.StandardCheckpointHandler.async_save
    saves = []

    async def dies_in_the_second(self, *args, **kwargs):
        futures = await real(self, *args, **kwargs)
        saves.append(1)
        if len(saves) == 2:
            for f in futures or ():
                f.result()  # the arrays are written
            raise OSError("killed mid-write (simulated)")
        return futures

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", dies_in_the_second)
    with pytest.raises(OSError, match="mid-write"):
        bapps.train(data=data, checkpoint_dir=ck, **TRAIN_KW)
    monkeypatch.undo()
    left = sorted(p.name for p in ck.iterdir())
    assert left[0] == "epoch_0001" and len(left) == 2 and left[1].startswith("epoch_0002."), left
    resumed = bapps.train(data=data, checkpoint_dir=ck, **TRAIN_KW)
    straight = bapps.train(data=data, **TRAIN_KW)
    assert len(resumed.history) == 3 and resumed.history == straight.history
    _assert_bitwise_equal((resumed.params, resumed.rank), (straight.params, straight.rank))
    assert sorted(p.name for p in ck.iterdir()) == ["epoch_0002", "epoch_0003"]


@pytest.mark.parametrize("argv", [["--net", "dists"], ["--net", "alex", "--variant", "shift_tolerant"]])
def test_cli_eval_scores_the_family(prepared, tmp_path, argv):
    """``eval --net dists`` and ``--variant shift_tolerant`` score DISTS and ST-LPIPS: the
    same scores as evaluating ``distance`` with those params as a plain callable (the
    other code path: per pair, no shared reference features)."""
    import lpips_jax
    from lpips_jax import bapps

    got = _cli_eval_json(prepared, tmp_path, *argv)
    p = lpips_jax.load("dists") if "dists" in argv else lpips_jax.load("alex", variant="shift_tolerant")
    want = bapps.evaluate(lambda x, y: lpips_jax.distance(p, x, y), data_dir=prepared, batch_size=8)
    for task in ("2afc", "jnd"):
        assert got[task] == pytest.approx(want[task], abs=1e-6)


def test_cli_train_refuses_the_family(tmp_path, capsys):
    from lpips_jax.cli import main

    for argv in (["--net", "dists"], ["--variant", "shift_tolerant"]):
        assert main(["train", *argv, "--out", str(tmp_path / "o.safetensors"), "--no-progress"]) == 2
        assert "is not trainable here" in capsys.readouterr().err


def test_identical_jnd_patches_score_exactly_zero():
    """JND's ties: identical patches give exactly 0 wherever they sit in a batch (the
    official model gives 0 there), whatever rounding the batch's convolutions have."""
    import lpips_jax
    from lpips_jax.bapps import _evaluate as ev

    params = lpips_jax.load("alex")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    b = a.copy()
    b[::2] = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)  # pairs 0 and 2 differ
    (d,) = ev._lpips_batch(params, (a, b), pair=True)
    d = np.asarray(d)
    assert d[1] == 0.0 and d[3] == 0.0 and np.all(d[::2] > 0), d
