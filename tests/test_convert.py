"""convert/: PyTorch checkpoints -> lpips_jax safetensors.

The reference for every converted tensor is the PyTorch tensor itself, transposed here
OIHW -> HWIO with numpy and compared for exact equality (a conversion only moves bytes).
Trunks are random-initialised torchvision models (no download); heads are the ``.pth``
files inside the installed ``lpips==0.1.4`` wheel.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch
import torchvision
from conftest import REPO
from safetensors import safe_open
from safetensors.numpy import load_file

import lpips_jax
from convert import main as convert_main

LPIPS_WEIGHTS = Path(lpips.__file__).parent / "weights"
MODELS = {
    "alex": torchvision.models.alexnet,
    "vgg": torchvision.models.vgg16,
    "squeeze": torchvision.models.squeezenet1_1,
}


def _ours_name(key: str) -> str:
    """torchvision ``features.3.squeeze.weight`` -> ``trunk/features_3/squeeze/kernel``."""
    _, idx, *sub, kind = key.split(".")
    return "/".join(["trunk", f"features_{idx}", *sub, "kernel" if kind == "weight" else "bias"])


def _expected_trunk(sd: dict) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sd.items():
        if k.startswith("classifier."):
            continue
        a = v.detach().numpy()
        out[_ours_name(k)] = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a
    return out


def _expected_heads(sd: dict) -> dict[str, np.ndarray]:
    return {
        f"heads/{k.split('.')[0]}/kernel": v.detach().numpy().transpose(2, 3, 1, 0) for k, v in sd.items()
    }


def _assert_exact(got: dict, expected: dict):
    assert sorted(got) == sorted(expected)
    for k in expected:
        assert got[k].dtype == np.float32, k
        assert got[k].shape == expected[k].shape, k
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


def _meta(path) -> dict:
    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata())


@pytest.fixture(scope="module")
def tv(tmp_path_factory):
    """Random torchvision state dicts, saved with torch.save: net -> (path, state dict).

    AlexNet and SqueezeNet keep their classifier keys (which the converter ignores);
    VGG16's 400 MB classifier is left out of the file to keep the test fast.
    """
    d = tmp_path_factory.mktemp("tv")
    out = {}
    for seed, (net, ctor) in enumerate(MODELS.items()):
        torch.manual_seed(seed)
        sd = ctor(weights=None).state_dict()
        if net == "vgg":
            sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
        else:
            assert any(k.startswith("classifier.") for k in sd)
        torch.save(sd, d / f"{net}.pth")
        out[net] = (d / f"{net}.pth", sd)
    return out


def _convert_subprocess(pth, out) -> subprocess.CompletedProcess:
    """``python -m convert --net alex`` from the repo root, as the README runs it."""
    return subprocess.run(
        [sys.executable, "-m", "convert", "--net", "alex", "--trunk", str(pth), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_round_trip_cli_subprocess(tv, tmp_path):
    """``python -m convert`` from the repo root, as the README runs it."""
    pth, sd = tv["alex"]
    out = tmp_path / "alex.safetensors"
    r = _convert_subprocess(pth, out)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    _assert_exact(load_file(str(out)), _expected_trunk(sd))
    assert _meta(out) == {"format": "lpips_jax/1", "net": "alex"}


@pytest.mark.parametrize("net", ["vgg", "squeeze"])
def test_round_trip_in_process(tv, tmp_path, net):
    pth, sd = tv[net]
    out = tmp_path / f"{net}.safetensors"
    assert convert_main(["--net", net, "--trunk", str(pth), "--out", str(out)]) == 0
    _assert_exact(load_file(str(out)), _expected_trunk(sd))
    assert not any(k.startswith("heads/") for k in load_file(str(out)))


def test_trunk_only_file_loads_with_lpips_false(tv, tmp_path):
    pth, sd = tv["squeeze"]
    out = tmp_path / "sq.safetensors"
    assert convert_main(["--net", "squeeze", "--trunk", str(pth), "--out", str(out)]) == 0
    p = lpips_jax.load(path=out, lpips=False)
    assert (p.net, p.lpips, p.heads) == ("squeeze", False, None)
    exp = _expected_trunk(sd)
    for path, leaf in lpips_jax._weights.flatten(p.trunk, "trunk/").items():
        np.testing.assert_array_equal(np.asarray(leaf), exp[path], err_msg=path)
    with pytest.raises(lpips_jax.WeightsError, match=r"sq\.safetensors holds a trunk only"):
        lpips_jax.load(path=out)
    with pytest.raises(lpips_jax.WeightsError, match=r"pass lpips=False, or convert with --heads"):
        lpips_jax.load(path=out, lpips=True)


def _bad(sd: dict, case: str) -> tuple[dict, str]:
    # features only: a smaller file (the classifier is covered by the round trips)
    sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    if case == "missing":
        del sd["features.3.weight"]
        return sd, r"\n - features\.3\.weight \(192, 64, 5, 5\)"
    if case == "extra":
        sd["features.1.weight"] = torch.zeros(2)  # index 1 is AlexNet's first ReLU
        return sd, r"\n \+ features\.1\.weight \(2,\)"
    if case == "extra_other":
        sd["backbone.stem.weight"] = torch.zeros(3)
        return sd, r"\n \+ backbone\.stem\.weight \(3,\)"
    if case == "shape":
        sd["features.8.weight"] = sd["features.8.weight"][:, :100]
        return (
            sd,
            r"\n ! features\.8\.weight: got shape \(256, 100, 3, 3\), expected \(256, 384, 3, 3\)",
        )
    raise ValueError(case)


@pytest.mark.parametrize("existed", [False, True], ids=["new_out", "existing_out"])
@pytest.mark.parametrize("case", ["missing", "extra", "extra_other", "shape"])
def test_bad_state_dict_fails_naming_the_key(tv, tmp_path, capsys, case, existed):
    sd, msg = _bad(tv["alex"][1], case)
    pth = tmp_path / "bad.pth"
    torch.save(sd, pth)
    out = tmp_path / "out.safetensors"
    if existed:
        out.write_bytes(b"the previous file")
    rc = convert_main(["--net", "alex", "--trunk", str(pth), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith(f"convert: error: {pth} does not match the 'alex' trunk: ")
    assert "missing (-), unexpected (+), wrong shape (!)" in err
    assert re.search(msg, err), err
    assert "classifier" not in err  # classifier keys are ignored, not reported
    if existed:
        assert out.read_bytes() == b"the previous file"
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["bad.pth"] + (["out.safetensors"] if existed else [])
    )


def test_bad_state_dict_subprocess_exit_code(tv, tmp_path):
    sd, msg = _bad(tv["alex"][1], "missing")
    pth = tmp_path / "bad.pth"
    torch.save(sd, pth)
    out = tmp_path / "out.safetensors"
    r = _convert_subprocess(pth, out)
    assert r.returncode == 1
    assert "features.3.weight" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_trunk_for_another_net(tv, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    rc = convert_main(["--net", "vgg", "--trunk", str(tv["alex"][0]), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert "does not match the 'vgg' trunk" in err
    assert " ! features.0.weight: got shape (64, 3, 11, 11), expected (64, 3, 3, 3)" in err
    assert " - features.28.weight (512, 512, 3, 3)" in err


@pytest.mark.parametrize("version", ["0.0", "0.1"])
def test_legacy_lpips_heads(tv, tmp_path, version):
    """The wheel's head files are legacy pickles tagged cuda:0; they convert on the CPU."""
    heads_pth = LPIPS_WEIGHTS / f"v{version}" / "alex.pth"
    out = tmp_path / "alex.safetensors"
    argv = ["--net", "alex", "--trunk", str(tv["alex"][0]), "--heads", str(heads_pth)]
    assert convert_main([*argv, "--out", str(out)]) == 0
    ref = torch.load(heads_pth, map_location="cpu", weights_only=True)
    assert sorted(ref) == [f"lin{k}.model.1.weight" for k in range(5)]
    _assert_exact(load_file(str(out)), {**_expected_trunk(tv["alex"][1]), **_expected_heads(ref)})
    assert _meta(out) == {"format": "lpips_jax/1", "net": "alex", "version": version}
    p = lpips_jax.load(path=out)
    assert (p.net, p.version, p.lpips) == ("alex", version, True)
    # --version overrides what the path says
    out2 = tmp_path / "other.safetensors"
    other = "0.0" if version == "0.1" else "0.1"
    assert convert_main([*argv, "--version", other, "--out", str(out2)]) == 0
    assert _meta(out2)["version"] == other


def test_heads_for_another_net(tv, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    heads = LPIPS_WEIGHTS / "v0.1" / "vgg.pth"
    rc = convert_main(
        ["--net", "alex", "--trunk", str(tv["alex"][0]), "--heads", str(heads), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert "does not match the 'alex' heads" in err
    assert " ! lin1.model.1.weight: got shape (1, 128, 1, 1), expected (1, 192, 1, 1)" in err


def test_negative_heads_rejected(tv, tmp_path, capsys):
    sd = torch.load(LPIPS_WEIGHTS / "v0.1" / "alex.pth", map_location="cpu", weights_only=True)
    sd["lin2.model.1.weight"] = -sd["lin2.model.1.weight"]
    torch.save(sd, tmp_path / "neg.pth")
    out = tmp_path / "o.safetensors"
    argv = ["--net", "alex", "--trunk", str(tv["alex"][0]), "--heads", str(tmp_path / "neg.pth")]
    assert convert_main([*argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "negative head weights in ['lin2.model.1.weight']: LPIPS heads are >= 0" in err
    assert not out.exists()


def _lpips_state_dict(tmp_path, lpips_flag=True):
    """A whole official model, its trunk drawn from torch's RNG as torchvision's alexnet."""
    torch.manual_seed(7)
    m = lpips.LPIPS(net="alex", pnet_rand=True, lpips=lpips_flag, verbose=False)
    torch.save(m.state_dict(), tmp_path / "lpips_model.pth")
    return tmp_path / "lpips_model.pth", m.state_dict()


def test_lpips_state_dict_equals_trunk_plus_heads(tmp_path):
    whole, sd = _lpips_state_dict(tmp_path)
    # lpips registers each head twice (lin{k} and lins.{k}): a real state dict has both
    assert "lins.0.model.1.weight" in sd and "lin0.model.1.weight" in sd
    out_whole = tmp_path / "whole.safetensors"
    assert convert_main(["--net", "alex", "--lpips-state-dict", str(whole), "--out", str(out_whole)]) == 0

    # The same model from its parts: torchvision's alexnet drawn from the same seed, and
    # the wheel's v0.1 heads (which lpips.LPIPS loads by default).
    torch.manual_seed(7)
    tv_sd = torchvision.models.alexnet(weights=None).state_dict()
    torch.save(tv_sd, tmp_path / "tv.pth")
    heads = LPIPS_WEIGHTS / "v0.1" / "alex.pth"
    out_parts = tmp_path / "parts.safetensors"
    argv = ["--net", "alex", "--trunk", str(tmp_path / "tv.pth"), "--heads", str(heads)]
    assert convert_main([*argv, "--out", str(out_parts)]) == 0

    a, b = load_file(str(out_whole)), load_file(str(out_parts))
    _assert_exact(a, b)
    assert _meta(out_whole) == _meta(out_parts)
    # and both equal the official model's own tensors
    ref = {k: v for k, v in sd.items() if k.startswith("lin") and not k.startswith("lins")}
    for k, v in _expected_heads(ref).items():
        np.testing.assert_array_equal(a[k], v)
    np.testing.assert_array_equal(
        a["trunk/features_3/kernel"], sd["net.slice2.3.weight"].numpy().transpose(2, 3, 1, 0)
    )


def test_lpips_state_dict_without_heads(tmp_path):
    whole, sd = _lpips_state_dict(tmp_path, lpips_flag=False)
    assert not any(k.startswith("lin") for k in sd)
    out = tmp_path / "o.safetensors"
    assert convert_main(["--net", "alex", "--lpips-state-dict", str(whole), "--out", str(out)]) == 0
    assert _meta(out) == {"format": "lpips_jax/1", "net": "alex"}
    p = lpips_jax.load(path=out, lpips=False)
    assert p.heads is None


def test_lpips_state_dict_bad(tmp_path, capsys):
    whole, sd = _lpips_state_dict(tmp_path)
    sd = dict(sd)
    sd["lins.2.model.1.weight"] = sd["lins.2.model.1.weight"] * 2
    del sd["net.slice4.8.bias"]
    torch.save(sd, tmp_path / "bad.pth")
    out = tmp_path / "o.safetensors"
    argv = ["--net", "alex", "--lpips-state-dict", str(tmp_path / "bad.pth"), "--out", str(out)]
    assert convert_main(argv) == 1
    err = capsys.readouterr().err
    assert " + lins.2.model.1.weight (differs from lin2.model.1.weight" in err
    sd["lins.2.model.1.weight"] = sd["lin2.model.1.weight"]
    sd["scaling_layer.scale"] = sd["scaling_layer.scale"] * 0 + 1
    torch.save(sd, tmp_path / "bad.pth")
    assert convert_main(argv) == 1
    assert " + scaling_layer.scale = [1.0, 1.0, 1.0]" in capsys.readouterr().err
    sd["scaling_layer.scale"] = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
    torch.save(sd, tmp_path / "bad.pth")
    assert convert_main(argv) == 1
    assert " - net.slice*.8.bias (256,)" in capsys.readouterr().err
    assert not out.exists()
    # --lpips-state-dict replaces --trunk and --heads
    assert convert_main([*argv, "--trunk", str(whole)]) == 1
    assert "give one or the other" in capsys.readouterr().err


def test_unreadable_checkpoints(tv, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    (tmp_path / "garbage.pth").write_bytes(b"\x80\x02not a checkpoint" * 10)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    torch.save({"features.0.weight": torch.zeros(1), "step": 3}, tmp_path / "mixed.pth")
    cases = {
        "garbage.pth": r"garbage\.pth: cannot be read as a PyTorch state dict with "
        r"torch\.load\(weights_only=True\) \(.+\); expected a file written by torch\.save",
        "list.pth": r"list\.pth: expected a state dict, got list",
        "mixed.pth": r"mixed\.pth: entry 'step' is a int, not a tensor",
        "missing.pth": r"checkpoint '.*missing\.pth' does not exist",
    }
    for name, msg in cases.items():
        rc = convert_main(["--net", "alex", "--trunk", str(tmp_path / name), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 1, name
        assert re.search(msg, err), err
        assert "weights_only` set to `False`" not in err  # torch's unsafe advice is not passed on
    # a whole pickled module is refused (weights_only never runs pickled code)
    torch.save(torchvision.models.squeezenet1_1(weights=None), tmp_path / "module.pth")
    assert convert_main(["--net", "squeeze", "--trunk", str(tmp_path / "module.pth"), "--out", str(out)]) == 1
    assert "a pickled object, not a plain state dict" in capsys.readouterr().err
    assert not out.exists()


def test_unwritable_out(tv, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "dir" / "o.safetensors"
    rc = convert_main(["--net", "alex", "--trunk", str(tv["alex"][0]), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith(f"convert: error: cannot write {out}: ") and "Traceback" not in err
    assert not (tmp_path / "no").exists()


def test_state_dict_wrapped_in_dict(tv, tmp_path):
    pth, sd = tv["squeeze"]
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    out = tmp_path / "o.safetensors"
    assert convert_main(["--net", "squeeze", "--trunk", str(tmp_path / "ckpt.pth"), "--out", str(out)]) == 0
    _assert_exact(load_file(str(out)), _expected_trunk(sd))


# ---- the metric family: the shipped files are what our converter makes of the sources ----


def _family_sources():
    pytest.importorskip("DISTS_pytorch")
    pytest.importorskip("stlpips_pytorch")
    import importlib.util

    def folder(pkg):
        return Path(importlib.util.find_spec(pkg).submodule_search_locations[0])

    return folder("DISTS_pytorch") / "weights.pt", folder("stlpips_pytorch") / "weights" / "vST0.0"


def test_family_sources_convert_to_the_shipped_files(tmp_path):
    """DISTS_pytorch's weights.pt and stlpips-pytorch's two state dicts, converted here,
    give the shipped tensors bit for bit (alpha/beta as (1475,); ST trunk HWIO, heads)."""
    dists_pt, st_dir = _family_sources()
    runs = [(["--net", "dists", "--dists-weights", str(dists_pt)], "dists_weights.safetensors")]
    for net in ("alex", "vgg"):
        src = st_dir / f"{net}_shift_tolerant.pth"
        runs.append((["--net", net, "--stlpips-state-dict", str(src)], f"{net}_shift_tolerant.safetensors"))
    for args, name in runs:
        out = tmp_path / name
        assert convert_main([*args, "--out", str(out)]) == 0
        got, want = load_file(str(out)), load_file(str(REPO / "weights" / name))
        assert got.keys() == want.keys(), name
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name} {k}")
    # and the tensors are the sources' own: alpha by hand, one ST conv kernel transposed
    w = torch.load(str(dists_pt), map_location="cpu", weights_only=True)
    np.testing.assert_array_equal(load_file(str(tmp_path / "dists_weights.safetensors"))["dists/alpha"],
                                  w["alpha"].numpy().reshape(-1))  # fmt: skip
    sd = torch.load(str(st_dir / "alex_shift_tolerant.pth"), map_location="cpu", weights_only=True)
    k = load_file(str(tmp_path / "alex_shift_tolerant.safetensors"))["trunk/features_5/kernel"]
    np.testing.assert_array_equal(k, sd["net.slice2.5.weight"].numpy().transpose(2, 3, 1, 0))


def test_stlpips_state_dict_with_a_wrong_blur_filter_fails(tmp_path, capsys):
    _, st_dir = _family_sources()
    sd = torch.load(str(st_dir / "alex_shift_tolerant.pth"), map_location="cpu", weights_only=True)
    sd["net.slice1.1.filt"] = sd["net.slice1.1.filt"] * 2
    torch.save(sd, tmp_path / "bad.pth")
    out = tmp_path / "bad.safetensors"
    assert (
        convert_main(["--net", "alex", "--stlpips-state-dict", str(tmp_path / "bad.pth"), "--out", str(out)])
        == 1
    )
    assert "net.slice1.1.filt: not the 3x3 binomial blur filter" in capsys.readouterr().err
    assert not out.exists()
    src = str(st_dir / "alex_shift_tolerant.pth")
    assert convert_main(["--net", "squeeze", "--stlpips-state-dict", src, "--out", str(out)]) == 1
    assert "exists for net 'alex' and 'vgg', not 'squeeze'" in capsys.readouterr().err
