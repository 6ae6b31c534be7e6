"""``lpips-jax``: LPIPS distances of image files from the shell, and BAPPS evaluation/training.

``--net``: ``alex`` (default), ``vgg``, ``squeeze`` (LPIPS; ``--variant shift_tolerant``:
ST-LPIPS), ``dists`` (DISTS) or ``elpips`` (E-LPIPS: random, ``--samples``, ``--seed``,
``--scale-levels``; row ``i`` of ``dirs``, ``allpairs`` and ``eval`` draws on
``fold_in(key(seed), i)``).

Commands (each has ``--help``; ``docs/cli.md`` is the reference)::

    lpips-jax dist A B [--json]                 distance of two images (stdout: the number)
    lpips-jax map A B -o MAP.png [--overlay]    spatial distance map as a colour heat map
    lpips-jax dirs DIR0 DIR1 [-o OUT.csv]       same-named files of two folders
    lpips-jax allpairs DIR [-o OUT.csv]         every unordered pair of images in a folder
    lpips-jax eval / train                      BAPPS scores, head training
    lpips-jax convert ...                       PyTorch checkpoints -> params (python -m convert)

Where things are: ``_common`` (exit codes, errors, option types, progress, atomic writes,
weights loading), ``_reading`` (image pairs, the jitted computations), ``_batches``
(read-ahead threads, fixed-size device batches), ``pairs`` (dist, map), ``folders`` (dirs,
allpairs), ``bapps`` (eval, train), ``convert``.

Exit codes: 0 ok, 1 some inputs failed (unreadable, wrong size, too small) or the run
failed, 2 usage errors (bad options, a folder that does not exist, weights that cannot be
loaded). Messages go to stderr; results to stdout and to output files, which are written
whole or not at all. ``dirs``, ``allpairs`` and ``eval`` split each batch over the local
devices and, under ``jax.distributed``, the work over the processes
(:mod:`lpips_jax._sharding`); then process 0 prints and writes, and every process
returns the largest exit code of all.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import jax

from lpips_jax import _sharding
from lpips_jax.cli import bapps, convert, folders, pairs
from lpips_jax.cli._common import (
    EXIT_FAILED,
    EXIT_USAGE,
    PROG,
    InputError,
    UsageError,
    asks_distributed,
    c_stdout_to_stderr,
    err,
    exit_code,
    fmt,
    model_options,
    progress_options,
    quiet,
    start_parallel,
)
from lpips_jax.cli._reading import reading_options

__all__ = ["build_parser", "enable_compilation_cache", "fmt", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``lpips-jax`` argument parser, with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="LPIPS perceptual distance of image files (JAX port of lpips 0.1.4), and "
        "ST-LPIPS, DISTS, E-LPIPS (--net).",
        epilog="exit codes: 0 ok, 1 some inputs failed, 2 usage error. "
        f"'{PROG} COMMAND --help' describes a command.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    images = [model_options(), reading_options(), progress_options()]
    pairs.register(sub, images)
    folders.register(sub, images)
    bapps.register(sub, progress_options())
    convert.register(sub)
    return parser


def enable_compilation_cache() -> str | None:
    """Keep compiled programs across runs: JAX's persistent compilation cache.

    In ``$XDG_CACHE_HOME/lpips_jax/xla`` (default ``~/.cache/lpips_jax/xla``), unless
    ``LPIPS_JAX_NO_CACHE`` is set or JAX's cache is configured already
    (``JAX_COMPILATION_CACHE_DIR``). Returns the folder used, or ``None``.
    """
    if os.environ.get("LPIPS_JAX_NO_CACHE") or jax.config.jax_compilation_cache_dir:
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "lpips_jax", "xla")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    if not os.access(path, os.W_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run ``lpips-jax`` with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Run as the command (``argv`` is ``None``), it also turns on the persistent compilation
    cache (:func:`enable_compilation_cache`); called with ``argv`` from Python, it leaves
    JAX's configuration alone.
    """
    if argv is None:
        enable_compilation_cache()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "convert":  # every other argument belongs to convert's parser
        return convert.cmd_convert(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return exit_code(e)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_usage(sys.stderr)
        err(f"{PROG}: error: give a command (dist, map, dirs, allpairs, eval, train, convert)")
        return EXIT_USAGE
    with c_stdout_to_stderr(asks_distributed(args)):
        try:
            code, message = _dispatch(func, args)
        except BaseException:  # a bug: the other processes still get an exit code, then it shows
            if _multi_process():
                _sharding.agree(EXIT_FAILED, "crashed (its traceback is on its stderr)")
            raise
        if message:
            print(message, file=sys.stderr, flush=True)
        if _multi_process():
            # One exit code for every process; process 0 also tells what the others said.
            code, notes = _sharding.agree(code, message)
            for i, note in notes:
                err(f"process {i}: {note}")
    return code


def _multi_process() -> bool:
    return jax.distributed.is_initialized() and jax.process_count() > 1


def _dispatch(func, args: argparse.Namespace) -> tuple[int, str | None]:
    """Run a command: ``(exit code, error message or None)``. Processes other than 0 of a
    multi-process run print no messages and no results (process 0 reports for all)."""
    try:
        start_parallel(args)
        with quiet(_multi_process() and jax.process_index() != 0):
            return int(func(args)), None
    except UsageError as e:
        return EXIT_USAGE, f"{PROG}: error: {e}"
    except (InputError, _sharding.OutOfStep) as e:
        return EXIT_FAILED, f"{PROG}: error: {e}"
    except KeyboardInterrupt:
        return 130, f"{PROG}: interrupted; nothing written"
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        first = str(e).strip().splitlines()[0]
        return EXIT_FAILED, f"{PROG}: error: out of device memory ({first}); try a smaller --batch-size"
    except BrokenPipeError:  # stdout closed early (| head): stop quietly
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED, None
    except OSError as e:  # writing an output failed (disk full, permissions): nothing written
        return EXIT_FAILED, f"{PROG}: error: {e}"
