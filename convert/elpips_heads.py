"""E-LPIPS' heads: the authors' ``vgg_full_avg.npy`` to ``weights/elpips_heads.safetensors``.

    python -m convert.elpips_heads PATH/vgg_full_avg.npy [--out weights/elpips_heads.safetensors]

Source: the repository mkettune/elpips (commit 9192007, BSD-2-Clause, Aalto University),
file ``elpips/vgg_full_avg.npy``: a pickled dict (``np.save`` of a dict) of 14 arrays
``lin{k}.model.1.weight`` of shape ``(1, 1, C_k, 1)`` (TensorFlow HWIO, already our
layout), C = 3, 64, 64, 128, 128, 256, 256, 256, 512 x 6, all >= 0: the heads E-LPIPS'
authors trained on the average-pooled VGG16 (taps: the input and every conv's ReLU).

Unpickling runs code, so the file is opened only if its sha256 is the published one
(``--any-sha256`` skips that check, for a file you trust). Only ``convert/`` unpickles.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from lpips_jax._weights import FORMAT, expected_shapes, sha256, write_flat

SOURCE_SHA256 = "2f9171c0fb542223efc240fed40c0e56ad3014d5a9153e4a3fdc00cf7b1bb16e"
# E-LPIPS' trunk table in lpips_jax._nets (its 14 taps give the heads' channels).
NET = "vgg_avg"
REPO = Path(__file__).resolve().parent.parent


class ConversionError(ValueError):
    """The file is not E-LPIPS' heads."""


def read_npy_dict(path: str | Path, *, check_sha256: bool = True) -> dict[str, np.ndarray]:
    """The pickled dict of ``path`` as ``name -> float32 array`` (after the sha256 check)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    if check_sha256:
        got = sha256(path)
        if got != SOURCE_SHA256:
            raise ConversionError(
                f"{path}: sha256 {got}, expected {SOURCE_SHA256} (mkettune/elpips 9192007 "
                "elpips/vgg_full_avg.npy); it is a pickle, so it is not opened: pass "
                "--any-sha256 for a file you trust"
            )
    obj = np.load(path, allow_pickle=True)
    if obj.dtype != object or obj.shape != ():
        raise ConversionError(f"{path}: expected a pickled dict, got an array {obj.dtype} {obj.shape}")
    obj = obj.item()
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {str(k): np.asarray(v, np.float32) for k, v in obj.items()}


def convert(d: dict[str, np.ndarray], source: str = "E-LPIPS heads") -> dict[str, np.ndarray]:
    """``lin{k}.model.1.weight`` ``(1, 1, C, 1)`` -> ``heads/lin{k}/kernel`` (same layout),
    checked against the expected names and shapes (missing ``-``, unexpected ``+``,
    wrong shape ``!``), finite and >= 0."""
    expected = {f"{k.split('/')[1]}.model.1.weight": (k, s) for k, s in expected_shapes(NET, "heads").items()}
    problems = [f" - {k} {s}" for k, (_, s) in expected.items() if k not in d]
    problems += [f" + {k} {d[k].shape}" for k in d if k not in expected]
    problems += [
        f" ! {k}: got shape {d[k].shape}, expected {expected[k][1]}"
        for k in d
        if k in expected and d[k].shape != expected[k][1]
    ]
    if problems:
        raise ConversionError(f"{source} does not match E-LPIPS' 14 heads:\n" + "\n".join(problems))
    out = {}
    for k, (name, _) in expected.items():
        v = d[k]
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise ConversionError(f"{source}: {k} has negative or non-finite weights; heads are >= 0")
        out[name] = np.ascontiguousarray(v)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convert.elpips_heads", description=__doc__.splitlines()[0])
    p.add_argument("src", help="vgg_full_avg.npy of mkettune/elpips")
    p.add_argument("--out", default=str(REPO / "weights" / "elpips_heads.safetensors"))
    p.add_argument("--any-sha256", action="store_true", help="open a source whose sha256 differs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        flat = convert(read_npy_dict(args.src, check_sha256=not args.any_sha256), str(args.src))
    except (ConversionError, FileNotFoundError) as e:
        print(f"elpips_heads: error: {e}", file=sys.stderr)
        return 1
    write_flat(flat, {"format": FORMAT, "net": "elpips"}, args.out)
    print(f"wrote {args.out}: {len(flat)} heads, sha256 {sha256(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
