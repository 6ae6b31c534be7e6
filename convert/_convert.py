"""Conversion of PyTorch checkpoints into lpips_jax params: torchvision trunks, lpips
heads, whole lpips / ST-LPIPS state dicts, DISTS' alpha and beta."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError

from lpips_jax import _checks, _dists, _metric, _nets, _ops
from lpips_jax._weights import FORMAT, expected_shapes, write_flat


class ConversionError(ValueError):
    """A checkpoint does not match the net it is converted for."""


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A PyTorch state dict file as ``name -> float32 numpy``.

    Loads on the CPU (lpips' head files are legacy pickles tagged cuda:0) with
    ``weights_only=True``, so no arbitrary code runs. A dict holding a ``state_dict``
    entry is accepted too; a whole pickled ``nn.Module`` is refused (save its
    ``state_dict()`` instead).
    """
    import torch

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise ConversionError(
            f"{path}: cannot be read as a PyTorch state dict with torch.load(weights_only=True)"
            f" ({_torch_reason(e)}); expected a file written by torch.save(model.state_dict())"
        ) from e
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


def _torch_reason(e: Exception) -> str:
    """The short reason inside torch's long weights_only message (which suggests
    ``weights_only=False``: not advice to pass on for files of unknown origin)."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\s*Please use|\n\s*\n|$)", text, re.S)
    reason = m.group(1) if m else text.strip().splitlines()[0] if text.strip() else type(e).__name__
    reason = " ".join(reason.split())
    if "Unsupported global" in reason:
        reason += " (a pickled object, not a plain state dict)"
    return reason


def _to_hwio(w: np.ndarray) -> np.ndarray:
    # torch OIHW -> flax HWIO
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0))).astype(np.float32)


def _torch_name(name: str) -> str:
    """Our ``trunk/features_3/kernel`` -> torchvision ``features.3.weight``; our
    ``heads/lin2/kernel`` -> lpips ``lin2.model.1.weight``."""
    part, *rest = name.split("/")
    if part == "heads":
        return f"{rest[0]}.model.1.weight"
    layer, *sub, kind = rest
    return ".".join(["features", layer.split("_")[1], *sub, "weight" if kind == "kernel" else "bias"])


def _torch_layout(net: str, part: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Checkpoint name -> (our name, shape in PyTorch's OIHW layout) of the expected params."""
    out = {}
    for name, shape in expected_shapes(net, part).items():
        if name.endswith("/kernel"):
            h, w, i, o = shape
            shape = (o, i, h, w)
        out[_torch_name(name)] = (name, tuple(shape))
    return out


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _convert_part(
    sd: Mapping[str, np.ndarray],
    net: str,
    part: str,
    source: str,
    display: Mapping[str, str] | None = None,
) -> dict:
    """Compare ``sd`` (checkpoint names, OIHW) with the expected params of ``net``'s
    ``part``, in the checkpoint's own names and shapes, then rename and transpose.

    ``display`` maps a name in ``sd`` to the name to report (the key in the user's file).
    """
    expected = _torch_layout(net, part)
    display = display or {}
    shown = lambda k: display.get(k, k)
    problems = [f" - {shown(k)} {expected[k][1]}" for k in expected if k not in sd]
    problems += [f" + {shown(k)} {tuple(np.shape(sd[k]))}" for k in sd if k not in expected]
    problems += [
        f" ! {shown(k)}: got shape {tuple(np.shape(sd[k]))}, expected {expected[k][1]}"
        for k in sd
        if k in expected and tuple(np.shape(sd[k])) != expected[k][1]
    ]
    if problems:
        problems.sort(key=lambda line: _natural(line[3:]))
        raise ConversionError(
            f"{source} does not match the {net!r} {part}: "
            "missing (-), unexpected (+), wrong shape (!):\n" + "\n".join(problems)
        )
    out = {}
    for k, v in sd.items():
        name = expected[k][0]
        out[name] = _to_hwio(v) if name.endswith("/kernel") else np.asarray(v, np.float32)
    return out


def convert_trunk(
    sd: Mapping[str, np.ndarray],
    net: str,
    source: str = "trunk",
    display: Mapping[str, str] | None = None,
) -> dict:
    """torchvision ``features.{i}[.sub].{weight,bias}`` -> ours ``trunk/features_{i}[/sub]/...``.

    Weights become ``kernel`` (OIHW -> HWIO), biases stay ``bias``.

    ``classifier.*`` keys are ignored; any other key is reported as unexpected, and
    missing keys and wrong shapes are reported in the checkpoint's names and layout.
    """
    sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    return _convert_part(sd, net, "trunk", source, display)


def convert_heads(sd: Mapping[str, np.ndarray], net: str, source: str = "heads") -> dict:
    """lpips ``lin{k}.model.1.weight`` ``(1, C, 1, 1)`` -> ``heads/lin{k}/kernel`` ``(1, 1, C, 1)``.

    Heads must be >= 0, as the official ones are.
    """
    out = _convert_part(sd, net, "heads", source)
    neg = [_torch_name(k) for k, v in out.items() if np.any(v < 0)]
    if neg:
        raise ConversionError(f"{source}: negative head weights in {neg}: LPIPS heads are >= 0")
    return out


_SLICE = re.compile(r"^net\.slice(\d+)\.(\d+)\.(.*)$")
# lpips.LPIPS keeps each head twice: as attribute lin{k} and in the ModuleList lins.{k}.
_LINS = re.compile(r"^lins\.(\d+)\.(model\.1\.weight)$")


def convert_lpips_state_dict(
    sd: Mapping[str, np.ndarray], net: str, source: str = "lpips state dict", variant: str = "vanilla"
) -> tuple[dict, dict]:
    """A whole ``lpips.LPIPS().state_dict()`` (or ST-LPIPS's, ``variant="shift_tolerant"``)
    -> ``(trunk, heads)`` flat dicts.

    ``net.slice{s}.{i}.*`` is the trunk's ``features.{i}.*``; ``lins.{k}.*`` is the same
    tensor as ``lin{k}.*`` (lpips registers each head twice) and must equal it;
    ``scaling_layer`` buffers are checked against the known constants and dropped, and so
    are ST-LPIPS's blur filters (against the 3x3 binomial filter).
    """
    try:
        _checks.check_net(net)
        _checks.check_variant(variant, net)
    except ValueError as e:
        raise ConversionError(str(e)) from e
    tname = _nets.trunk_name(net, variant)
    trunk_sd, head_sd, alias, other, display = {}, {}, {}, [], {}
    for k, v in sd.items():
        m = _SLICE.match(k)
        if m and m.group(3) == "filt" and variant != "vanilla":
            if not _is_binomial_blur(v):
                other.append(f"{k}: not the 3x3 binomial blur filter (1, 2, 1)/4 x (1, 2, 1)/4")
        elif m:
            name = f"features.{m.group(2)}.{m.group(3)}"
            trunk_sd[name] = v
            display[name] = k
        elif (m := _LINS.match(k)) is not None:
            alias[f"lin{m.group(1)}.{m.group(2)}"] = (k, v)
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
    for name, (k, v) in alias.items():
        if name not in head_sd:
            head_sd[name] = v
        elif np.shape(head_sd[name]) != np.shape(v) or not np.array_equal(head_sd[name], v):
            other.append(f"{k} (differs from {name}, which should be the same tensor)")
    if other:
        raise ConversionError(f"{source}: unexpected entries:\n" + "\n".join(f" + {k}" for k in other))
    missing = {
        name: f"net.slice*.{name.split('.', 1)[1]}"
        for name in _torch_layout(tname, "trunk")
        if name not in trunk_sd
    }
    trunk = convert_trunk(trunk_sd, tname, source, {**display, **missing})
    heads = convert_heads(head_sd, tname, source) if head_sd else {}
    return trunk, heads


def _is_binomial_blur(v: np.ndarray) -> bool:
    """A ``(C, 1, 3, 3)`` depthwise filter, each the outer product of (1, 2, 1) / 4."""
    t = np.asarray(_ops._BINOMIAL3)
    return v.ndim == 4 and v.shape[1:] == (1, 3, 3) and np.allclose(v, np.outer(t, t), rtol=0, atol=1e-7)


def convert_dists_weights(sd: Mapping[str, np.ndarray], source: str = "DISTS weights") -> dict:
    """``DISTS_pytorch/weights.pt`` (``alpha``, ``beta``: ``(1, 1475, 1, 1)``) -> ``dists/alpha``,
    ``dists/beta`` ``(1475,)``, checked >= 0."""
    n = sum(_dists.CHANNELS)
    problems = [f" - {k} (1, {n}, 1, 1)" for k in ("alpha", "beta") if k not in sd]
    problems += [f" + {k} {tuple(np.shape(v))}" for k, v in sd.items() if k not in ("alpha", "beta")]
    problems += [
        f" ! {k}: got shape {tuple(np.shape(sd[k]))}, expected (1, {n}, 1, 1)"
        for k in ("alpha", "beta")
        if k in sd and tuple(np.shape(sd[k])) != (1, n, 1, 1)
    ]
    if problems:
        raise ConversionError(f"{source} does not match DISTS' alpha and beta:\n" + "\n".join(problems))
    out = {f"dists/{k}": np.asarray(sd[k], np.float32).reshape(n) for k in ("alpha", "beta")}
    neg = [k for k, v in out.items() if np.any(v < 0)]
    if neg:
        raise ConversionError(f"{source}: negative weights in {neg}: DISTS' alpha and beta are >= 0")
    return out


def _version_from_path(path: str) -> str | None:
    m = re.search(r"v(0\.[01])", str(path))
    return m.group(1) if m else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m convert",
        description="Convert PyTorch checkpoints (torchvision trunks, lpips heads, whole "
        "lpips.LPIPS state dicts) into an lpips_jax safetensors file.",
    )
    p.add_argument("--net", required=True, choices=(*_checks.NETS, "dists"))
    p.add_argument("--trunk", help="torchvision model state dict (features.N.* keys)")
    p.add_argument("--heads", help="lpips head file (lin{k}.model.1.weight)")
    p.add_argument("--lpips-state-dict", help="a whole lpips.LPIPS().state_dict(), instead of both")
    p.add_argument(
        "--stlpips-state-dict",
        help="a whole ST-LPIPS state dict (stlpips_pytorch weights/vST0.0/{alex,vgg}_shift_tolerant.pth)",
    )
    p.add_argument(
        "--dists-weights",
        help="DISTS alpha and beta (DISTS_pytorch/weights.pt), with --net dists; with --trunk "
        "(torchvision vgg16) the file holds the trunk too, else load() takes the shipped one",
    )
    p.add_argument(
        "--version", choices=_checks.VERSIONS,
        help="version of the heads (default: read from a v0.x in the heads path, else 0.1)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output .safetensors file")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m convert``: 0 on success; 1, with the reason on stderr and nothing
    written at ``--out`` (an existing file there is left as it was), on failure."""
    args = build_parser().parse_args(argv)
    meta = {"format": FORMAT, "net": args.net}
    try:
        whole = args.lpips_state_dict or args.stlpips_state_dict
        if args.net == "dists" or args.dists_weights:
            if args.net != "dists" or not args.dists_weights or args.heads or whole:
                raise ConversionError("DISTS: give --net dists --dists-weights FILE (and optionally --trunk)")
            trunk = convert_trunk(read_state_dict(args.trunk), "dists", args.trunk) if args.trunk else {}
            heads = convert_dists_weights(read_state_dict(args.dists_weights), args.dists_weights)
            heads_src = None
        elif whole:
            if args.trunk or args.heads or (args.lpips_state_dict and args.stlpips_state_dict):
                raise ConversionError(
                    "--lpips-state-dict or --stlpips-state-dict replaces --trunk and --heads: "
                    "give one or the other"
                )
            variant = "shift_tolerant" if args.stlpips_state_dict else "vanilla"
            trunk, heads = convert_lpips_state_dict(read_state_dict(whole), args.net, whole, variant)
            heads_src = whole if variant == "vanilla" else None
            if variant != "vanilla":
                meta.update(variant=variant, version="0.1")
        else:
            if not args.trunk and not args.heads:
                raise ConversionError("give --trunk (and optionally --heads), or --lpips-state-dict")
            trunk = heads = {}
            if args.trunk:
                trunk = convert_trunk(read_state_dict(args.trunk), args.net, args.trunk)
            if args.heads:
                heads = convert_heads(read_state_dict(args.heads), args.net, args.heads)
            heads_src = args.heads
        if heads and args.net != "dists" and "version" not in meta:
            meta["version"] = args.version or _version_from_path(heads_src or "") or "0.1"
        try:
            write_flat({**trunk, **heads}, meta, args.out)
        except (OSError, SafetensorError) as e:
            raise ConversionError(f"cannot write {args.out}: {e}") from e
    except (ConversionError, FileNotFoundError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    parts = " + ".join(
        p for p, d in (("trunk", trunk), ("alpha/beta" if args.net == "dists" else "heads", heads)) if d
    )
    print(f"wrote {args.out}: {args.net} {parts} ({len(trunk) + len(heads)} tensors)")
    return 0
