"""Export trained lpips_jax heads to the official PyTorch ``lpips`` format.

    python -m convert.export_heads HEADS.safetensors heads.pth [--trunk]

Reads any lpips_jax params file with heads (e.g. ``lpips-jax train --out``) and writes a
state dict ``{"lin{k}.model.1.weight": (1, C, 1, 1)}`` that the official package loads:

    lpips.LPIPS(net="alex", model_path="heads.pth")

``--trunk`` adds the trunk as ``net.slice{s}.{i}.{weight,bias}`` (after ``tune`` or
``scratch`` training); the official ``LPIPS(model_path=..., pnet_rand=True)`` then loads
both from the one file.
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path

import lpips_jax
from lpips_jax._outputs import atomic_path
from lpips_jax._weights import WeightsError
from lpips_jax.bapps import export_heads_torch_format


def export(src: str | Path, dst: str | Path, *, trunk: bool = False) -> dict:
    """Write ``dst`` (a PyTorch state dict) from the lpips_jax file ``src``; returns it."""
    import torch

    params = lpips_jax.load(path=src)
    arrays = export_heads_torch_format(params, trunk=trunk)
    sd = OrderedDict((k, torch.from_numpy(v.copy())) for k, v in arrays.items())
    with atomic_path(dst) as tmp:
        torch.save(sd, tmp)
    return sd


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m convert.export_heads",
        description="Export lpips_jax heads (safetensors) to the official lpips PyTorch format.",
    )
    p.add_argument("src", help="lpips_jax params file with heads (.safetensors)")
    p.add_argument("dst", help="output PyTorch state dict (.pth)")
    p.add_argument(
        "--trunk", action="store_true",
        help="also export the trunk (net.slice{s}.{i}.*), e.g. after tune/scratch training",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sd = export(args.src, args.dst, trunk=args.trunk)
    except (WeightsError, FileNotFoundError, ValueError) as e:
        print(f"export_heads: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst}: {len(sd)} tensors (load with lpips.LPIPS(model_path=...))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
