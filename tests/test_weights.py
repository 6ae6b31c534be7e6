"""Shipped weights and the safetensors loader.

References: the sha256 values are recomputed here with ``hashlib`` and read from
``weights/README.md``; the shipped heads are compared with the ``.pth`` files of the
installed ``lpips==0.1.4`` wheel (transposed with numpy), exactly.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import lpips
import numpy as np
import pytest
import torch
from conftest import REPO
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import lpips_jax
from lpips_jax import _weights
from lpips_jax._registry import SHIPPED

WEIGHTS = REPO / "weights"
LPIPS_WEIGHTS = Path(lpips.__file__).parent / "weights"
TAPS = {"alex": 5, "vgg": 5, "squeeze": 7}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def fresh_cache():
    _weights._read.cache_clear()
    yield
    _weights._read.cache_clear()


def test_registry_matches_readme_and_files():
    table = re.findall(
        r"^\| `([\w.]+\.safetensors)` \| `([0-9a-f]{64})` \| (\d+) \|",
        (WEIGHTS / "README.md").read_text(),
        flags=re.M,
    )
    readme = {name: sha for name, sha, _ in table}
    assert readme == SHIPPED
    assert sorted(p.name for p in WEIGHTS.glob("*.safetensors")) == sorted(SHIPPED)
    for name, sha, size in table:
        assert _sha(WEIGHTS / name) == sha, name
        assert (WEIGHTS / name).stat().st_size == int(size), name
    # what load() reads by default, from a checkout, is this folder
    if "LPIPS_JAX_WEIGHTS" not in os.environ:
        assert _weights.weights_dir().resolve() == WEIGHTS.resolve()


@pytest.fixture
def weights_copy(tmp_path, monkeypatch):
    """A private copy of the alex files, pointed at by LPIPS_JAX_WEIGHTS."""
    d = tmp_path / "w"
    d.mkdir()
    for name in ("alex_trunk.safetensors", "alex_heads_v0.1.safetensors"):
        shutil.copy(WEIGHTS / name, d / name)
    monkeypatch.setenv("LPIPS_JAX_WEIGHTS", str(d))
    return d


def test_env_var_copy_loads(weights_copy):
    p = lpips_jax.load("alex")
    assert (p.net, p.version, p.lpips) == ("alex", "0.1", True)


@pytest.mark.parametrize("name", ["alex_trunk.safetensors", "alex_heads_v0.1.safetensors"])
def test_tampered_file_names_file_and_hashes(weights_copy, name):
    f = weights_copy / name
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01  # a bit of the last tensor: still a valid safetensors file
    f.write_bytes(bytes(data))
    got = _sha(f)
    assert got != SHIPPED[name]
    msg = rf"{re.escape(str(f.resolve()))}: sha256 mismatch: file has {got}, "
    msg += rf"expected {SHIPPED[name]}"
    with pytest.raises(lpips_jax.WeightsError, match=msg):
        lpips_jax.load("alex")


def test_missing_shipped_file(weights_copy):
    (weights_copy / "alex_heads_v0.1.safetensors").unlink()
    with pytest.raises(
        lpips_jax.WeightsError,
        match=r"shipped weights file 'alex_heads_v0.1.safetensors' not found in .*w "
        r"\(broken install\? set LPIPS_JAX_WEIGHTS",
    ):
        lpips_jax.load("alex")
    assert lpips_jax.load("alex", lpips=False).heads is None  # the trunk is still there


@pytest.mark.parametrize("lpips_flag", [True, False])
def test_squeeze_says_how_to_convert(lpips_flag):
    with pytest.raises(lpips_jax.WeightsError) as e:
        lpips_jax.load("squeeze", lpips=lpips_flag)
    msg = str(e.value)
    assert msg.startswith("no SqueezeNet-1.1 trunk is shipped")
    assert "torchvision.models.squeezenet1_1(weights='IMAGENET1K_V1')" in msg
    assert "python -m convert --net squeeze --trunk squeezenet1_1.pth" in msg
    assert "lpips_jax.load(path='squeeze.safetensors')" in msg


# ---- load(path=...) ------------------------------------------------------------------


@pytest.fixture
def alex_file(tmp_path, alex_params):
    path = tmp_path / "alex.safetensors"
    lpips_jax.save(alex_params, path)
    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
    return path, load_file(str(path)), meta


def _assert_params_equal(a, b):
    assert (a.net, a.version, a.lpips) == (b.net, b.version, b.lpips)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_load_round_trip(alex_file, alex_params, tmp_path):
    path, flat, meta = alex_file
    assert meta == {"format": "lpips_jax/1", "net": "alex", "version": "0.1"}
    assert len(flat) == 10 + 5
    _assert_params_equal(lpips_jax.load(path=path), alex_params)
    _assert_params_equal(lpips_jax.load(path=str(path), net="alex", version="0.1"), alex_params)
    # lpips=False params: trunk only
    base = lpips_jax.load("alex", lpips=False)
    lpips_jax.save(base, tmp_path / "base.safetensors")
    assert len(load_file(str(tmp_path / "base.safetensors"))) == 10
    _assert_params_equal(lpips_jax.load(path=tmp_path / "base.safetensors", lpips=False), base)
    assert not list(tmp_path.glob("*.partial"))


def test_save_overwrites_atomically(alex_file, alex_params):
    path, _, _ = alex_file
    v00 = lpips_jax.load("alex", "0.0")
    lpips_jax.save(v00, path)
    _assert_params_equal(lpips_jax.load(path=path), v00)


def test_load_not_safetensors(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01junk" * 50)
    with pytest.raises(lpips_jax.WeightsError, match=r"junk\.safetensors: not a readable"):
        lpips_jax.load(path=tmp_path / "junk.safetensors")
    pth = LPIPS_WEIGHTS / "v0.1" / "alex.pth"  # a pickle: never unpickled by load
    with pytest.raises(lpips_jax.WeightsError, match=r"alex\.pth: not a readable safetensors"):
        lpips_jax.load(path=pth)
    with pytest.raises(FileNotFoundError, match=r"weights file '.*nope\.safetensors' does not"):
        lpips_jax.load(path=tmp_path / "nope.safetensors")


def test_load_other_net(alex_file):
    path, _, _ = alex_file
    with pytest.raises(
        lpips_jax.WeightsError, match=r"alex\.safetensors holds net 'alex', but net='vgg' was"
    ):
        lpips_jax.load("vgg", path=path)


def test_load_metadata_says_other_net(alex_file, tmp_path):
    """Metadata claims vgg, tensors are alex's: the shape check catches it."""
    _, flat, meta = alex_file
    save_file(flat, str(tmp_path / "f.safetensors"), metadata={**meta, "net": "vgg"})
    with pytest.raises(lpips_jax.WeightsError, match=r"trunk params do not match net 'vgg'"):
        lpips_jax.load(path=tmp_path / "f.safetensors")


def test_load_wrong_version(alex_file):
    path, _, _ = alex_file
    with pytest.raises(
        lpips_jax.WeightsError, match=r"holds heads of version '0\.1', but version='0\.0' was"
    ):
        lpips_jax.load(version="0.0", path=path)


def _edited(tmp_path, flat, meta, name="f.safetensors", **changes):
    flat = dict(flat)
    for k, v in changes.items():
        k = k.replace("__", "/")
        if v is None:
            del flat[k]
        else:
            flat[k] = v
    save_file(flat, str(tmp_path / name), metadata=meta)
    return tmp_path / name


def test_load_missing_tensor(alex_file, tmp_path):
    _, flat, meta = alex_file
    f = _edited(tmp_path, flat, meta, trunk__features_3__bias=None)
    msg = r"f\.safetensors: trunk params do not match net 'alex':\n - trunk/features_3/bias \(192,\)"
    with pytest.raises(lpips_jax.WeightsError, match=msg):
        lpips_jax.load(path=f)
    f = _edited(tmp_path, flat, meta, heads__lin4__kernel=None)
    with pytest.raises(lpips_jax.WeightsError, match=r"heads params .*\n - heads/lin4/kernel"):
        lpips_jax.load(path=f)


def test_load_wrong_shape_and_extra(alex_file, tmp_path):
    _, flat, meta = alex_file
    f = _edited(tmp_path, flat, meta, trunk__features_0__bias=np.zeros(65, np.float32))
    msg = r" ! trunk/features_0/bias: got shape \(65,\), expected \(64,\)"
    with pytest.raises(lpips_jax.WeightsError, match=msg):
        lpips_jax.load(path=f)
    f = _edited(tmp_path, flat, meta, trunk__features_1__kernel=np.zeros(3, np.float32))
    with pytest.raises(lpips_jax.WeightsError, match=r" \+ trunk/features_1/kernel \(3,\)"):
        lpips_jax.load(path=f)
    f = _edited(tmp_path, flat, meta, optimizer__step=np.zeros(1, np.float32))
    with pytest.raises(lpips_jax.WeightsError, match=r"unexpected tensors.*:\n \+ optimizer/step"):
        lpips_jax.load(path=f)


def test_load_negative_or_bad_heads(alex_file, tmp_path):
    _, flat, meta = alex_file
    neg = -flat["heads/lin2/kernel"]
    f = _edited(tmp_path, flat, meta, heads__lin2__kernel=neg)
    with pytest.raises(
        lpips_jax.WeightsError,
        match=r"heads/lin2/kernel has negative weights; LPIPS heads are >= 0",
    ):
        lpips_jax.load(path=f)
    # the trunk alone is still usable
    assert lpips_jax.load(path=f, lpips=False).heads is None
    nan = flat["heads/lin0/kernel"].copy()
    nan[0, 0, 3, 0] = np.nan
    f = _edited(tmp_path, flat, meta, heads__lin0__kernel=nan)
    with pytest.raises(lpips_jax.WeightsError, match=r"heads/lin0/kernel contains NaN or inf"):
        lpips_jax.load(path=f)
    f = _edited(tmp_path, flat, meta, heads__lin0__kernel=flat["heads/lin0/kernel"].astype(np.int32))
    with pytest.raises(lpips_jax.WeightsError, match=r"heads/lin0/kernel has dtype int32"):
        lpips_jax.load(path=f)


def test_load_foreign_safetensors(alex_file, tmp_path):
    _, flat, meta = alex_file
    f = _edited(tmp_path, flat, {})
    with pytest.raises(lpips_jax.WeightsError, match=r"metadata format=None, expected 'lpips_jax/1'"):
        lpips_jax.load(path=f)
    f = _edited(tmp_path, flat, {**meta, "net": "resnet"})
    with pytest.raises(lpips_jax.WeightsError, match=r"metadata net='resnet' is not a known net"):
        lpips_jax.load(path=f)
    heads_only = {k: v for k, v in flat.items() if k.startswith("heads/")}
    save_file(heads_only, str(tmp_path / "h.safetensors"), metadata=meta)
    with pytest.raises(lpips_jax.WeightsError, match=r"holds no trunk params"):
        lpips_jax.load(path=tmp_path / "h.safetensors")


# ---- the shipped tensors -------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.0", "0.1"])
@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_shipped_heads_equal_lpips_wheel(net, version):
    ref = torch.load(LPIPS_WEIGHTS / f"v{version}" / f"{net}.pth", map_location="cpu")
    assert sorted(ref) == sorted(f"lin{k}.model.1.weight" for k in range(TAPS[net]))
    # read through the verifying reader (squeeze has no shipped trunk, so no load())
    name = f"{net}_heads_v{version}.safetensors"
    flat, meta = _weights.read_file(WEIGHTS / name, SHIPPED[name])
    assert meta == {"format": "lpips_jax/1", "net": net, "version": version}
    assert sorted(flat) == sorted(f"heads/lin{k}/kernel" for k in range(TAPS[net]))
    for k in range(TAPS[net]):
        w = ref[f"lin{k}.model.1.weight"].numpy()  # (1, C, 1, 1)
        assert w.dtype == np.float32
        np.testing.assert_array_equal(flat[f"heads/lin{k}/kernel"], w.transpose(2, 3, 1, 0))


@pytest.mark.parametrize("version", ["0.0", "0.1"])
def test_load_picks_the_version(alex_params, version):
    p = lpips_jax.load("alex", version=version)
    ref = torch.load(LPIPS_WEIGHTS / f"v{version}" / "alex.pth", map_location="cpu")
    np.testing.assert_array_equal(
        np.asarray(p.heads["lin3"]["kernel"]).reshape(-1), ref["lin3.model.1.weight"].reshape(-1)
    )
    base = lpips_jax.load("alex", version, lpips=False)
    assert (base.version, base.lpips, base.heads) == (version, False, None)
    for a, b in zip(jax.tree_util.tree_leaves(base), jax.tree_util.tree_leaves(alex_params.trunk)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # one trunk for both


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_loaded_params_are_float32_jax_arrays(net, alex_params, vgg_params):
    p = {"alex": alex_params, "vgg": vgg_params}[net]
    leaves = jax.tree_util.tree_leaves(p)
    assert len(leaves) == 2 * {"alex": 5, "vgg": 13}[net] + 5
    for leaf in leaves:
        assert isinstance(leaf, jax.Array)
        assert leaf.dtype == jnp.float32
    for k in range(5):
        assert float(jnp.min(p.heads[f"lin{k}"]["kernel"])) >= 0
