"""Conversion of torchvision trunks and lpips heads into lpips_jax params."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lpips_jax import _checks, _metric
from lpips_jax._weights import FORMAT, compare, expected_shapes, write_flat


class ConversionError(ValueError):
    """A checkpoint does not match the net it is converted for."""


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A PyTorch state dict file as ``name -> float32 numpy``.

    Loads on the CPU (lpips' head files are legacy pickles tagged cuda:0) with
    ``weights_only=True``, so no arbitrary code runs. A full ``nn.Module`` pickle or a
    dict holding a ``state_dict`` entry is accepted too.
    """
    import torch

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise ConversionError(f"{path}: cannot be read as a PyTorch checkpoint ({e})") from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a state dict, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not hasattr(v, "detach"):
            raise ConversionError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v.detach().cpu().to(torch.float64 if v.dtype == torch.float64 else torch.float32).numpy()
    return out


def _to_hwio(w: np.ndarray) -> np.ndarray:
    # torch OIHW -> flax HWIO
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0))).astype(np.float32)


_FEATURE = re.compile(r"^features\.(\d+)\.(?:(squeeze|expand1x1|expand3x3)\.)?(weight|bias)$")
_HEAD = re.compile(r"^lin(\d+)\.model\.1\.weight$")


def _check(found: dict[str, np.ndarray], net: str, part: str, source: str, unmapped: list[str]):
    problems = compare({k: tuple(v.shape) for k, v in found.items()}, expected_shapes(net, part))
    problems += [f" + {k} (not a {part} parameter of {net!r})" for k in unmapped]
    if problems:
        raise ConversionError(
            f"{source} does not match the {net!r} {part}: "
            "missing (-), unexpected (+), wrong shape (!):\n" + "\n".join(problems)
        )


def convert_trunk(sd: Mapping[str, np.ndarray], net: str, source: str = "trunk") -> dict:
    """torchvision ``features.{i}[.sub].{weight,bias}`` -> ``trunk/features_{i}[/sub]/{kernel,bias}``.

    ``classifier.*`` keys are ignored; any other key is reported as unexpected.
    """
    _checks.check_net(net)
    out, unmapped = {}, []
    for k, v in sd.items():
        if k.startswith("classifier."):
            continue
        m = _FEATURE.match(k)
        if not m:
            unmapped.append(k)
            continue
        idx, sub, kind = m.groups()
        name = f"trunk/features_{idx}" + (f"/{sub}" if sub else "")
        if kind == "weight":
            if np.ndim(v) != 4:
                unmapped.append(f"{k} {tuple(np.shape(v))} (expected a 4-d conv weight)")
                continue
            out[f"{name}/kernel"] = _to_hwio(v)
        else:
            out[f"{name}/bias"] = np.asarray(v, np.float32)
    _check(out, net, "trunk", source, unmapped)
    return out


def convert_heads(sd: Mapping[str, np.ndarray], net: str, source: str = "heads") -> dict:
    """lpips ``lin{k}.model.1.weight`` ``(1, C, 1, 1)`` -> ``heads/lin{k}/kernel`` ``(1, 1, C, 1)``."""
    _checks.check_net(net)
    out, unmapped = {}, []
    for k, v in sd.items():
        m = _HEAD.match(k)
        if not m or np.ndim(v) != 4:
            unmapped.append(k if m is None else f"{k} {tuple(np.shape(v))}")
            continue
        out[f"heads/lin{m.group(1)}/kernel"] = _to_hwio(v)
    _check(out, net, "heads", source, unmapped)
    neg = [k for k, v in out.items() if np.any(v < 0)]
    if neg:
        raise ConversionError(f"{source}: negative head weights in {neg}: LPIPS heads are >= 0")
    return out


_SLICE = re.compile(r"^net\.slice\d+\.(\d+)\.(.*)$")


def convert_lpips_state_dict(
    sd: Mapping[str, np.ndarray], net: str, source: str = "lpips state dict"
) -> tuple[dict, dict]:
    """A whole ``lpips.LPIPS().state_dict()`` -> ``(trunk, heads)`` flat dicts.

    ``net.slice{s}.{i}.*`` is torchvision's ``features.{i}.*``; ``scaling_layer`` buffers
    are checked against the known constants and dropped.
    """
    trunk_sd, head_sd, other = {}, {}, []
    for k, v in sd.items():
        m = _SLICE.match(k)
        if m:
            trunk_sd[f"features.{m.group(1)}.{m.group(2)}"] = v
        elif k.startswith("lin"):
            head_sd[k] = v
        elif k == "scaling_layer.shift":
            if not np.allclose(np.ravel(v), _metric.SHIFT, atol=1e-7):
                other.append(f"{k} = {np.ravel(v).tolist()} (expected {_metric.SHIFT})")
        elif k == "scaling_layer.scale":
            if not np.allclose(np.ravel(v), _metric.SCALE, atol=1e-7):
                other.append(f"{k} = {np.ravel(v).tolist()} (expected {_metric.SCALE})")
        else:
            other.append(k)
    if other:
        raise ConversionError(f"{source}: unexpected entries:\n" + "\n".join(f" + {k}" for k in other))
    trunk = convert_trunk(trunk_sd, net, source)
    heads = convert_heads(head_sd, net, source) if head_sd else {}
    return trunk, heads


def _version_from_path(path: str) -> str | None:
    m = re.search(r"v(0\.[01])", str(path))
    return m.group(1) if m else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m convert",
        description="Convert PyTorch checkpoints (torchvision trunks, lpips heads, whole "
        "lpips.LPIPS state dicts) into an lpips_jax safetensors file.",
    )
    p.add_argument("--net", required=True, choices=_checks.NETS)
    p.add_argument("--trunk", help="torchvision model state dict (features.N.* keys)")
    p.add_argument("--heads", help="lpips head file (lin{k}.model.1.weight)")
    p.add_argument("--lpips-state-dict", help="a whole lpips.LPIPS().state_dict(), instead of both")
    p.add_argument(
        "--version", choices=_checks.VERSIONS,
        help="version of the heads (default: read from a v0.x in the heads path, else 0.1)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output .safetensors file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.lpips_state_dict:
            if args.trunk or args.heads:
                raise ConversionError("--lpips-state-dict replaces --trunk and --heads: give one or the other")
            trunk, heads = convert_lpips_state_dict(
                read_state_dict(args.lpips_state_dict), args.net, args.lpips_state_dict
            )
            heads_src = args.lpips_state_dict
        else:
            if not args.trunk and not args.heads:
                raise ConversionError("give --trunk (and optionally --heads), or --lpips-state-dict")
            trunk = convert_trunk(read_state_dict(args.trunk), args.net, args.trunk) if args.trunk else {}
            heads = convert_heads(read_state_dict(args.heads), args.net, args.heads) if args.heads else {}
            heads_src = args.heads
        meta = {"format": FORMAT, "net": args.net}
        if heads:
            meta["version"] = args.version or _version_from_path(heads_src or "") or "0.1"
        write_flat({**trunk, **heads}, meta, args.out)
    except (ConversionError, FileNotFoundError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    parts = " + ".join(p for p, d in (("trunk", trunk), ("heads", heads)) if d)
    print(f"wrote {args.out}: {args.net} {parts} ({len(trunk) + len(heads)} tensors)")
    return 0
