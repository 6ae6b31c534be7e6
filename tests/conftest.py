"""Shared test fixtures: the official reference model, real photographs, example images."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
from pathlib import Path

import numpy as np
import pytest

# The suite is compile-bound on XLA:CPU: there it compiles with LLVM at -O0 and XLA's
# older fusion emitters (alex's fwd+bwd at 2x64x64 compiles in 0.5 s instead of 1.2 s at
# -O0 alone), set before JAX starts and inherited by the tests' subprocesses; a flag the
# environment already sets is left as it is. What the tests check does not depend on it:
# tolerances come from float64 or the official float32 spread. bench/ times XLA's
# defaults; so do the tests with LPIPS_JAX_TEST_FULL_OPT=1, or with a GPU or TPU plugin.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
if not os.environ.get("LPIPS_JAX_TEST_FULL_OPT") and not any(
    importlib.util.find_spec(m) for m in ("jax_plugins", "libtpu")
):
    _flags = os.environ.get("XLA_FLAGS", "").split()
    _named = {f.split("=")[0] for f in _flags}
    _flags += [f for f in FAST_COMPILE_FLAGS if f.split("=")[0] not in _named]
    os.environ["XLA_FLAGS"] = " ".join(_flags)

REPO = Path(__file__).resolve().parent.parent

# One persistent XLA compilation cache for the whole run, under the clone: the xdist
# workers, the slow step, the floor venv and every subprocess (CLI, scripts) compile a
# program once and share it. The cache key holds the program, XLA flags, jax version and
# devices, so nothing is shared that should not be. A cache the environment sets is kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(REPO / ".cache" / "jax")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.05")

import jax  # noqa: E402

# Test data (with source and licence) lives in tests/data: a clone runs every test.
DATA = Path(__file__).resolve().parent / "data"
EXAMPLES = DATA / "lpips_examples"
DISTS_EXAMPLES = DATA / "dists_examples"

# Strict dtype promotion: no silent float64/int promotion inside the library.
jax.config.update("jax_numpy_dtype_promotion", "strict")
# Parity at 1e-5 needs full float32 convs and matmuls: on GPUs the default would be TF32.
jax.config.update("jax_default_matmul_precision", "highest")


# The official PyTorch references of the test extra: tests marked ``torch`` need them and
# are skipped, naming what is missing, where one is not installed (.ci/floor's venv).
REFERENCES = ("torch", "torchvision", "lpips", "DISTS_pytorch", "stlpips_pytorch")


def pytest_collection_modifyitems(config, items):
    missing = [m for m in REFERENCES if importlib.util.find_spec(m) is None]
    if missing:
        skip = pytest.mark.skip(reason=f"needs the PyTorch references: {', '.join(missing)} not installed")
        for item in items:
            if item.get_closest_marker("torch"):
                item.add_marker(skip)


def pytest_report_header(config):
    """Which lpips_jax (a checkout or an installed wheel) and which versions run."""
    from importlib.metadata import version

    import lpips_jax

    versions = ", ".join(f"{name} {version(name)}" for name in ("jax", "jaxlib", "flax", "numpy"))
    return f"lpips_jax from {Path(lpips_jax.__file__).parent}; {versions}"


def trunk_state_dict(params) -> dict:
    """torchvision-format ``features.{i}[.sub].{weight,bias}`` tensors from lpips_jax params.

    Independent of convert/: a plain inverse transpose HWIO -> OIHW.
    """
    import torch

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params.trunk)[0]:
        keys = [str(p.key) for p in path]
        idx = keys[0].split("_")[1]
        sub = keys[1:-1]
        kind = "weight" if keys[-1] == "kernel" else "bias"
        a = np.asarray(leaf)
        if kind == "weight":
            a = a.transpose(3, 2, 0, 1)
        out[".".join(["features", idx, *sub, kind])] = torch.from_numpy(np.array(a, copy=True))
    return out


@contextlib.contextmanager
def torch_init_skipped():
    """Inside, torch modules are built without their random init (``torch.nn.init``'s
    fills return their tensor as it is): for references whose every used weight is loaded
    afterwards. A torchvision VGG16's init (its 120M-weight classifier, which the metrics
    never run) costs ~2.7 s a model here."""
    import torch

    init = torch.nn.init
    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(init, n) for n in names}
    try:
        for n in names:
            setattr(init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)


def official_model(net: str, version: str = "0.1", lpips_flag: bool = True, trunk_sd=None):
    """The official ``lpips.LPIPS`` with its own heads and the given torchvision trunk."""
    import lpips
    import torch

    with torch_init_skipped() if trunk_sd is not None else contextlib.nullcontext():
        m = lpips.LPIPS(
            pretrained=True, net=net, version=version, lpips=lpips_flag, pnet_rand=True, verbose=False
        )
    if trunk_sd is not None:
        sd = m.net.state_dict()
        new = {}
        for k in sd:
            _slice, idx, rest = k.split(".", 2)
            new[k] = trunk_sd[f"features.{idx}.{rest}"]
        m.net.load_state_dict(new, strict=True)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    torch.set_grad_enabled(True)
    return m


def to_nchw(x):
    import torch

    return torch.from_numpy(np.array(np.asarray(x).transpose(0, 3, 1, 2), copy=True))


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    from skimage import data

    imgs = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    return tuple(np.asarray(i[..., :3], np.uint8) for i in imgs)


def photo_crops(size: tuple[int, int], n: int, seed: int = 0) -> np.ndarray:
    """``n`` crops of real photographs (scikit-image samples), uint8 ``(n, H, W, 3)``."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = size
        if p.shape[0] < h or p.shape[1] < w:
            from PIL import Image

            p = np.asarray(Image.fromarray(p).resize((max(w, p.shape[1]), max(h, p.shape[0]))))
        y0 = rng.integers(0, p.shape[0] - h + 1)
        x0 = rng.integers(0, p.shape[1] - w + 1)
        out.append(p[y0 : y0 + h, x0 : x0 + w])
    return np.stack(out)


def distort(img: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """A real distortion of a uint8 HWC image: ``jpeg``, ``blur`` or ``noise``."""
    from PIL import Image, ImageFilter

    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=10)
        return np.asarray(Image.open(buf).convert("RGB"))
    if kind == "blur":
        return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(2.0)))
    if kind == "noise":
        rng = np.random.default_rng(seed)
        return np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)
    raise ValueError(kind)


def to_unit(img_u8: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1]."""
    return (img_u8.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return EXAMPLES


def read_rgb01(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0


@pytest.fixture(scope="session")
def alex_params():
    import lpips_jax

    return lpips_jax.load("alex")


@pytest.fixture(scope="session")
def vgg_params():
    import lpips_jax

    return lpips_jax.load("vgg")


def random_squeeze(seed: int = 0):
    """A random-initialised torchvision squeezenet1_1 state dict (no download)."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.squeezenet1_1(weights=None).state_dict()


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
