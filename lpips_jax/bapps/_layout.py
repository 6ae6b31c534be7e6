"""The official BAPPS layout on disk: where each subset lives, and how one example is read.

No tensorflow-datasets here: this module only knows folders, tarballs, PNGs and ``.npy``.

Layout of the official ``dataset/`` folder (``scripts/download_dataset.sh`` of the
official repository)::

    2afc/{train,val}/{subset}/{ref,p0,p1}/*.png   2afc/{train,val}/{subset}/judge/*.npy
    jnd/val/{subset}/{p0,p1}/*.png                jnd/val/{subset}/same/*.npy

The tarballs hold the same tree: ``twoafc_train.tar.gz`` starts at ``train/``,
``twoafc_val.tar.gz`` at ``val/`` and ``jnd.tar.gz`` at ``jnd/``.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

CONFIGS = ("2afc", "jnd")
SUBSETS = {
    "2afc": {
        "train": ("traditional", "cnn", "mix"),
        "val": ("traditional", "cnn", "superres", "deblur", "color", "frameinterp"),
    },
    "jnd": {"val": ("traditional", "cnn")},
}
PARTS = {"2afc": ("ref", "p0", "p1", "judge"), "jnd": ("p0", "p1", "same")}
IMAGE_PARTS = {"2afc": ("ref", "p0", "p1"), "jnd": ("p0", "p1")}
LABEL = {"2afc": "judge", "jnd": "same"}
PATCH = 64
# The official data loader's file filters (data/image_folder.py).
IMAGE_EXTENSIONS = (
    ".jpg",
    ".JPG",
    ".jpeg",
    ".JPEG",
    ".png",
    ".PNG",
    ".ppm",
    ".PPM",
    ".bmp",
    ".BMP",
)
TARBALLS = {"twoafc_train.tar.gz": "2afc", "twoafc_val.tar.gz": "2afc", "jnd.tar.gz": "jnd"}
URL = "https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset"

INSTRUCTIONS = f"""\
BAPPS (Berkeley-Adobe Perceptual Patch Similarity, Zhang et al. 2018) is not downloaded
automatically. Get it with the official script `scripts/download_dataset.sh` of
https://github.com/richzhang/PerceptualSimilarity, or fetch the three tarballs yourself:
  {URL}/twoafc_train.tar.gz   (2AFC train: traditional, cnn, mix)
  {URL}/twoafc_val.tar.gz     (2AFC val: traditional, cnn, superres, deblur, color, frameinterp)
  {URL}/jnd.tar.gz            (JND val: traditional, cnn)
Then put into the manual directory (tfds `manual_dir`, `--data` of `lpips-jax eval/train`)
either the tarballs as they are, or the extracted folder in the official layout:
  <manual_dir>/2afc/train/<subset>/{{ref,p0,p1,judge}}/...
  <manual_dir>/2afc/val/<subset>/{{ref,p0,p1,judge}}/...
  <manual_dir>/jnd/val/<subset>/{{p0,p1,same}}/...
(the `dataset/` folder made by the official script may also be given, or sit inside it).
Any subset of the tarballs or subsets may be given; only those found are prepared."""


class BappsDataError(FileNotFoundError):
    """BAPPS is missing from the manual directory or is not in the official layout."""


def split_name(split: str, subset: str) -> str:
    """tfds split name of one subset, e.g. ``val_traditional``."""
    return f"{split}_{subset}"


def check_config(config: str) -> str:
    if config not in CONFIGS:
        raise ValueError(f"BAPPS config {config!r} is not known: expected one of {CONFIGS}")
    return config


def check_subset(config: str, split: str, subset: str) -> None:
    check_config(config)
    if split not in SUBSETS[config]:
        raise ValueError(f"BAPPS {config} has no split {split!r}: expected one of {tuple(SUBSETS[config])}")
    if subset not in SUBSETS[config][split]:
        raise ValueError(
            f"BAPPS {config} {split} has no subset {subset!r}: expected one of {SUBSETS[config][split]}"
        )


# ---------------------------------------------------------------------------- finding data


def _has_parts(path: Path, config: str) -> bool:
    return all((path / part).is_dir() for part in PARTS[config])


def _candidates(base: Path, config: str, split: str, subset: str) -> list[Path]:
    return [
        base / config / split / subset,
        base / "dataset" / config / split / subset,
        # an extracted twoafc_{train,val}.tar.gz starts at {train,val}/
        base / split / subset,
    ]


def locate(bases: list[Path], config: str) -> dict[str, Path]:
    """``split name -> folder holding the parts`` for every subset found under ``bases``."""
    check_config(config)
    found: dict[str, Path] = {}
    for split, subsets in SUBSETS[config].items():
        for subset in subsets:
            for base in bases:
                hits = [c for c in _candidates(base, config, split, subset) if _has_parts(c, config)]
                if hits:
                    found.setdefault(split_name(split, subset), hits[0])
                    break
    return found


def describe(path: Path, limit: int = 12) -> str:
    """A short listing of ``path``'s top level, for error messages."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is not a directory"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not entries:
        return f"{path} is empty"
    more = f", ... ({len(entries)} entries)" if len(entries) > limit else ""
    return f"{path} holds: " + ", ".join(entries[:limit]) + more


def _list(folder: Path, exts: tuple[str, ...]) -> list[Path]:
    # As the official make_dataset: every file below `folder` with a known extension, sorted.
    out = []
    for root, _dirs, files in os.walk(folder):
        out += [Path(root) / f for f in files if f.endswith(exts)]
    return sorted(out, key=lambda p: str(p))


def list_examples(folder: Path, config: str) -> list[dict[str, Path]]:
    """The examples of one subset folder, paired by sorted position as the official loader.

    Raises :class:`BappsDataError` when the parts hold different numbers of files or the
    paired file names differ.
    """
    files = {}
    for part in PARTS[config]:
        exts = (".npy",) if part == LABEL[config] else IMAGE_EXTENSIONS
        files[part] = _list(folder / part, exts)
    counts = {part: len(v) for part, v in files.items()}
    if len(set(counts.values())) != 1:
        raise BappsDataError(
            f"{folder}: the parts hold different numbers of files {counts}: "
            "expected one file per example in each part (official BAPPS layout)"
        )
    if counts[PARTS[config][0]] == 0:
        raise BappsDataError(f"{folder}: no examples found in {list(PARTS[config])}")
    examples = []
    for i in range(counts[PARTS[config][0]]):
        ex = {part: files[part][i] for part in PARTS[config]}
        stems = {part: str(p.relative_to(folder / part).with_suffix("")) for part, p in ex.items()}
        if len(set(stems.values())) != 1:
            raise BappsDataError(
                f"{folder}: example {i} pairs files with different names {stems}: "
                "expected the same name in every part"
            )
        examples.append(ex)
    return examples


# ---------------------------------------------------------------------------- reading


def read_patch(path: Path | str) -> np.ndarray:
    """One patch as ``(64, 64, 3)`` uint8, resized as the official loader does.

    The official loader applies ``transforms.Resize(64)`` to the RGB PIL image: the shorter
    side becomes 64 (bilinear, aspect kept). BAPPS patches are already 64x64 (no-op).
    """
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if (w, h) != (PATCH, PATCH):
            if w <= h:
                size = (PATCH, int(PATCH * h / w))
            else:
                size = (int(PATCH * w / h), PATCH)
            im = im.resize(size, Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
    if a.shape != (PATCH, PATCH, 3):
        raise BappsDataError(
            f"{path}: patch has shape {a.shape} after resizing: expected square patches ({PATCH}, {PATCH}, 3)"
        )
    return a


def read_label(path: Path | str) -> np.float32:
    """A judgment ``.npy`` (one value in [0, 1]) as float32."""
    a = np.load(path)  # NumPy's default refuses object arrays: nothing is unserialised as code
    if a.size != 1:
        raise BappsDataError(f"{path}: holds shape {a.shape}: expected a single judgment value")
    v = float(np.asarray(a, np.float64).reshape(()))
    if not (0.0 <= v <= 1.0):
        raise BappsDataError(f"{path}: judgment {v!r} is outside [0, 1]")
    return np.float32(v)


def encode_png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def patch_png(path: Path | str) -> bytes:
    """PNG bytes of the patch :func:`read_patch` gives.

    A file that already is a 64x64 8-bit RGB PNG (every official BAPPS patch) is passed on
    as it is; anything else is decoded, converted and resized, then encoded.
    """
    from PIL import Image

    with Image.open(path) as im:
        as_is = im.format == "PNG" and im.mode == "RGB" and im.size == (PATCH, PATCH)
    if as_is:
        return Path(path).read_bytes()
    return encode_png(read_patch(path))


def iter_examples(folder: Path, config: str) -> Iterator[tuple[str, dict]]:
    """``(key, example)`` with PNG bytes for images and float32 labels, in official order."""
    for ex in list_examples(folder, config):
        out: dict = {part: patch_png(ex[part]) for part in IMAGE_PARTS[config]}
        out[LABEL[config]] = read_label(ex[LABEL[config]])
        key = str(ex[LABEL[config]].relative_to(folder / LABEL[config]).with_suffix(""))
        out["id"] = key
        yield key, out


# ---------------------------------------------------------------------------- tarballs


def tarballs(manual_dir: Path) -> dict[str, Path]:
    """The official tarballs present in ``manual_dir`` (or its ``dataset/``)."""
    out = {}
    for base in (manual_dir, manual_dir / "dataset"):
        for name in TARBALLS:
            if name not in out and (base / name).is_file():
                out[name] = base / name
    return out


def _safe_member(name: str) -> PurePosixPath | None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        return None
    return p


def extract(tarball: Path, dest: Path) -> Path:
    """Extract the BAPPS files (``.png``, ``.npy`` and other images) of one tarball.

    Idempotent: a finished extraction is marked and reused. Only regular files with safe
    relative names are written (no links, no absolute or ``..`` paths).
    """
    done = dest / ".complete"
    if done.is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    exts = IMAGE_EXTENSIONS + (".npy",)
    try:
        with tarfile.open(tarball, mode="r|*") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(exts):
                    continue
                rel = _safe_member(member.name)
                if rel is None:
                    continue
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:
                    continue
                with src, open(target, "wb") as f:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BappsDataError(f"{tarball}: cannot be read as a tar archive ({e})") from e
    done.write_text("ok\n")
    return dest


def bases_for(manual_dir: Path, extract_root: Path, config: str) -> list[Path]:
    """Folders to search for ``config``: ``manual_dir`` and extractions of its tarballs."""
    bases = [manual_dir, manual_dir / "dataset"]
    for name, path in tarballs(manual_dir).items():
        if TARBALLS[name] == config:
            bases.append(extract(path, extract_root / name.removesuffix(".tar.gz")))
    return bases


def available(manual_dir: Path | str) -> tuple[str, ...]:
    """Configs for which ``manual_dir`` holds data (a folder or a tarball), without extracting."""
    manual_dir = Path(manual_dir)
    out = []
    names = tarballs(manual_dir)
    for config in CONFIGS:
        if locate([manual_dir, manual_dir / "dataset"], config) or any(TARBALLS[n] == config for n in names):
            out.append(config)
    return tuple(out)
