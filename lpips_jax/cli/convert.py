"""``convert``: the PyTorch checkpoint converter (``python -m convert``) as a subcommand.

It needs torch and the ``convert/`` package of a source checkout; every argument after
``convert`` belongs to that converter's own parser.
"""

from __future__ import annotations

import argparse
import importlib

from lpips_jax.cli._common import EXIT_USAGE, PROG, err, exit_code


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        add_help=False,
        help="PyTorch checkpoints -> lpips_jax params (python -m convert; needs torch)",
        description="Same as 'python -m convert' from a checkout of the repository; "
        f"'{PROG} convert --help' shows its options.",
    )
    p.add_argument("convert_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda a: cmd_convert(list(a.convert_args)))


def cmd_convert(argv: list[str]) -> int:
    """``convert ...``: ``python -m convert`` (PyTorch checkpoints to safetensors params).

    ``--progress``/``--no-progress`` are accepted, as by every subcommand, and dropped:
    converting one checkpoint shows no bar.
    """
    argv = [a for a in argv if a not in ("--progress", "--no-progress")]
    try:
        importlib.import_module("torch")
    except ImportError as e:
        err(
            f"{PROG} convert: error: PyTorch is not installed ({e}). The converter reads "
            "PyTorch checkpoints: install it with\n  pip install torch torchvision\n"
            "or, from a checkout of the lpips_jax repository, pip install -e '.[convert]'"
        )
        return EXIT_USAGE
    try:
        convert = importlib.import_module("convert")
        main = convert.main
    except (ImportError, AttributeError) as e:
        err(
            f"{PROG} convert: error: the converter package convert/ is not importable ({e}). "
            "It ships with the source, not the wheel: run from a checkout of the "
            "lpips_jax repository\n  git clone <lpips_jax repository> && cd lpips_jax && "
            "pip install -e '.[convert]'\nthen run lpips-jax convert (or python -m convert) "
            "from there"
        )
        return EXIT_USAGE
    try:
        return int(main(argv) or 0)
    except SystemExit as e:  # argparse inside convert: --help (0) or a usage error (2)
        return exit_code(e)
