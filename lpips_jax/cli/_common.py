"""The conventions every ``lpips-jax`` subcommand shares.

Exit codes 0 (ok), 1 (some input failed, or the run failed), 2 (usage: a bad option, a
folder that does not exist, weights that cannot be loaded). Messages go to stderr, results
to stdout and to output files, which are written whole or not at all. Numeric options are
checked by argparse types that name the value and what was expected (exit 2).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

import numpy as np

from lpips_jax._outputs import atomic_file, progress_bar

__all__ = ["atomic_file"]

PROG = "lpips-jax"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad option, a missing folder, weights that cannot be loaded: exit code 2."""


class InputError(Exception):
    """An input (image, dataset) or the run itself failed: exit code 1."""


def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def exit_code(e: SystemExit) -> int:
    """argparse's ``SystemExit`` as an exit code: 0 for ``--help``, 2 for a usage error."""
    return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)


def fmt(v: float) -> str:
    """A distance as text: the shortest decimal that reads back as the same float32."""
    v = np.float32(v)
    return "nan" if not np.isfinite(v) else str(v)


# ---------------------------------------------------------------------------------------
# Option types: each raises ArgumentTypeError naming the text and what was expected.


def _number(text: str, kind: type, ok: Any, expected: str) -> Any:
    try:
        v = kind(text)
    except ValueError:
        v = None
    if v is None or not (math.isfinite(v) and ok(v)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
    return v


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a positive number")


def fraction(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def probability_below_1(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


# ---------------------------------------------------------------------------------------
# Options more than one subcommand has, as argparse parents.


WEIGHTS_HELP = "params file written by convert or by training"


def model_options(
    *, net: str | None = None, version: str | None = None, weights: str | None = WEIGHTS_HELP
) -> argparse.ArgumentParser:
    """``--net``, ``--version``, ``--variant`` and, unless ``weights`` (its help) is ``None``,
    ``--weights``."""
    from lpips_jax._checks import NETS, VARIANTS, VERSIONS

    parent = argparse.ArgumentParser(add_help=False)
    g = parent.add_argument_group("model")
    g.add_argument(
        "--net", choices=(*NETS, "dists"), default=net, help="LPIPS trunk, or dists for DISTS (default: alex)"
    )
    g.add_argument(
        "--version", choices=VERSIONS, default=version, help="LPIPS head weights version (default: 0.1)"
    )
    g.add_argument(
        "--variant", choices=VARIANTS, default="vanilla",
        help="shift_tolerant: ST-LPIPS (alex, vgg; default: vanilla)",
    )  # fmt: skip
    if weights is not None:
        g.add_argument("--weights", metavar="FILE", help=weights)
    return parent


def progress_options() -> argparse.ArgumentParser:
    """``--progress/--no-progress``: every subcommand takes it; those that loop show a bar."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )  # fmt: skip
    return parent


def progress(args: argparse.Namespace, total: int, unit: str, desc: str) -> Any:
    return progress_bar(args.progress, total, desc=desc, unit=unit)


# ---------------------------------------------------------------------------------------
# Checks before any computing.


def load_params(args: argparse.Namespace) -> Any:
    import lpips_jax

    try:
        if args.net == "dists":
            if args.version not in (None, "0.1") or args.variant != "vanilla":
                raise ValueError("--net dists takes no --version or --variant")
            return lpips_jax.load("dists", path=args.weights)
        if args.weights:
            return lpips_jax.load(args.net, version=args.version, variant=args.variant, path=args.weights)
        return lpips_jax.load(args.net or "alex", version=args.version or "0.1", variant=args.variant)
    except (lpips_jax.WeightsError, FileNotFoundError, ValueError) as e:
        raise UsageError(f"cannot load weights: {e}") from e


def check_output(path: str | None, what: str) -> None:
    """Fail early (exit 2) when ``path`` cannot be written, before any computing."""
    if path is None:
        return
    if os.path.isdir(path):
        raise UsageError(f"{what} {path!r} is a folder: expected a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{what} {path!r}: folder {parent!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{what} {path!r}: folder {parent!r} is not writable")


def existing_folder(path: str) -> str:
    if not os.path.exists(path):
        raise UsageError(f"folder {path!r} does not exist")
    if not os.path.isdir(path):
        raise UsageError(f"{path!r} is not a folder")
    return path
