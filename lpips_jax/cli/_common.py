"""The conventions every ``lpips-jax`` subcommand shares.

Exit codes 0 (ok), 1 (some input failed, or the run failed), 2 (usage: a bad option, a
folder that does not exist, weights that cannot be loaded). Messages go to stderr, results
to stdout and to output files, which are written whole or not at all. Numeric options are
checked by argparse types that name the value and what was expected (exit 2). Under
``jax.distributed`` only process 0 prints and writes (:func:`quiet`, :func:`is_writer`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from lpips_jax import _elpips
from lpips_jax._outputs import atomic_file, progress_bar

__all__ = ["atomic_file"]

PROG = "lpips-jax"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad option, a missing folder, weights that cannot be loaded: exit code 2."""


class InputError(Exception):
    """An input (image, dataset) or the run itself failed: exit code 1."""


_QUIET = [False]  # set on processes other than 0 of a multi-process run


def err(msg: str) -> None:
    """A message on stderr (not on the quiet processes of a multi-process run)."""
    if not _QUIET[0]:
        print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet(enabled: bool) -> Iterator[None]:
    """While ``enabled``: no :func:`err` messages, no progress bar, stdout discarded."""
    if not enabled:
        yield
        return
    _QUIET[0] = True
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            yield
    finally:
        _QUIET[0] = False


def is_writer() -> bool:
    """Whether this process writes the outputs: process 0 (the only one without jax.distributed)."""
    import jax

    return jax.process_index() == 0


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


def host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 10.0.0.1:1234")
    return text


# ---------------------------------------------------------------------------------------
# Options more than one subcommand has, as argparse parents.


WEIGHTS_HELP = "params file written by convert or by training"
# E-LPIPS' options and their values when not given (scale_levels: the official elpips_vgg's).
ELPIPS_DEFAULTS = {"samples": 1, "seed": 0, "scale_levels": _elpips.LEVELS}


def model_options(
    *,
    net: str | None = None,
    version: str | None = None,
    weights: str | None = WEIGHTS_HELP,
    random: bool = True,
) -> argparse.ArgumentParser:
    """``--net``, ``--version``, ``--variant``; ``--weights`` unless ``weights`` (its help) is
    ``None``; with ``random``, E-LPIPS' ``--samples``, ``--seed`` and ``--scale-levels``
    (default ``None``, so that :func:`check_model_options` tells given from not given)."""
    from lpips_jax._checks import NETS, VARIANTS, VERSIONS

    parent = argparse.ArgumentParser(add_help=False)
    g = parent.add_argument_group("model")
    g.add_argument(
        "--net", choices=(*NETS, "dists", "elpips"), default=net,
        help="LPIPS trunk, dists for DISTS or elpips for E-LPIPS (default: alex)",
    )  # fmt: skip
    g.add_argument(
        "--version", choices=VERSIONS, default=version, help="LPIPS head weights version (default: 0.1)"
    )
    g.add_argument(
        "--variant", choices=VARIANTS, default="vanilla",
        help="shift_tolerant: ST-LPIPS (alex, vgg; default: vanilla)",
    )  # fmt: skip
    if weights is not None:
        g.add_argument("--weights", metavar="FILE", help=weights)
    if random:
        e = parent.add_argument_group("E-LPIPS (with --net elpips only)")
        e.add_argument(
            "--samples", type=positive_int, metavar="N",
            help=f"random draws averaged per distance (default: {ELPIPS_DEFAULTS['samples']})",
        )  # fmt: skip
        e.add_argument(
            "--seed", type=nonnegative_int, metavar="S",
            help=f"seed of the draws' keys (default: {ELPIPS_DEFAULTS['seed']})",
        )  # fmt: skip
        e.add_argument(
            "--scale-levels", type=positive_int, metavar="L",
            help="scale levels; images need min(H, W) >= 7 L + 2 (default: "
            f"{ELPIPS_DEFAULTS['scale_levels']}, the official elpips_vgg; the official size rule "
            "is max(1, min(H, W) // 64))",
        )  # fmt: skip
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
    return progress_bar(False if _QUIET[0] else args.progress, total, desc=desc, unit=unit)


def parallel_options() -> argparse.ArgumentParser:
    """``--devices`` and the ``jax.distributed`` options (``dirs``, ``allpairs``, ``eval``)."""
    parent = argparse.ArgumentParser(add_help=False)
    g = parent.add_argument_group("devices and hosts")
    g.add_argument(
        "--devices", type=positive_int, metavar="N",
        help="split each batch over the first N local devices (default: all of them)",
    )  # fmt: skip
    g.add_argument(
        "--distributed", action="store_true",
        help="be one process of a multi-host job (jax.distributed.initialize): the address, "
        "count and rank come from the options below or are detected (TPU pods, SLURM, Open "
        "MPI, Kubernetes, JAX_COORDINATOR_ADDRESS); each process computes a share, process 0 "
        "writes the outputs",
    )  # fmt: skip
    g.add_argument(
        "--coordinator", type=host_port, metavar="HOST:PORT",
        help="process 0's address, reachable by every process (implies --distributed)",
    )  # fmt: skip
    g.add_argument("--num-processes", type=positive_int, metavar="N", help="processes in the job")
    g.add_argument("--process-id", type=nonnegative_int, metavar="I", help="this process: 0 to N-1")
    return parent


def asks_distributed(args: argparse.Namespace) -> bool:
    """Whether the command line asks for a ``jax.distributed`` run."""
    names = ("distributed", "coordinator", "num_processes", "process_id")
    return any(getattr(args, n, None) not in (None, False) for n in names)


@contextlib.contextmanager
def c_stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """While ``enabled``: what C code writes to stdout goes to stderr; Python's stdout stays.

    XLA:CPU's collectives (Gloo) announce each connection on the C stdout, which carries
    results (the last line is the number a script reads).
    """
    if not enabled:
        yield
        return
    sys.stdout.flush()
    try:
        python_on_fd1 = sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # redirected to an object without a file
        python_on_fd1 = False
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        if python_on_fd1:
            with (
                open(saved, "w", encoding="utf-8", errors="surrogateescape", closefd=False) as out,
                contextlib.redirect_stdout(out),
            ):
                yield
        else:
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def start_parallel(args: argparse.Namespace) -> None:
    """Join the ``jax.distributed`` job when asked, then ``args.local``: the devices to use."""
    import jax

    from lpips_jax._sharding import LocalDevices

    if not hasattr(args, "devices"):
        return
    if asks_distributed(args):
        n, i = args.num_processes, args.process_id
        if n is not None and i is not None and i >= n:
            raise UsageError(f"--process-id {i}: expected 0 to {n - 1} (--num-processes {n})")
        if not jax.distributed.is_initialized():
            try:
                jax.distributed.initialize(args.coordinator, n, i)
            except (ValueError, TypeError) as e:  # what is missing and was not detected
                raise UsageError(
                    f"cannot start jax.distributed: {e} No TPU pod, SLURM, Open MPI or Kubernetes "
                    "job was detected: give --coordinator HOST:PORT --num-processes N --process-id I"
                ) from e
            except RuntimeError as e:  # e.g. the coordinator did not answer in time
                raise InputError(f"cannot start jax.distributed: {e}") from e
    count = len(jax.local_devices())
    if args.devices is not None and args.devices > count:
        raise UsageError(f"--devices {args.devices}: expected 1 to {count}, the local device count")
    args.local = LocalDevices(args.devices)


# ---------------------------------------------------------------------------------------
# Checks before any computing.


def check_model_options(args: argparse.Namespace) -> None:
    """The model options together (exit 2 naming the clash). DISTS and E-LPIPS take no
    ``--version`` or ``--variant``, E-LPIPS no ``--weights`` (``lpips_jax.load("elpips")``
    reads no file); E-LPIPS' options go with ``--net elpips`` only (as in the library, a
    deterministic metric takes no seed or samples), where their defaults are filled in."""
    net = args.net or "alex"
    lpips_only = [f"--version {args.version}"] if args.version not in (None, "0.1") else []
    lpips_only += [f"--variant {args.variant}"] if args.variant != "vanilla" else []
    if net in ("dists", "elpips") and lpips_only:
        raise UsageError(
            f"{' '.join(lpips_only)}: --net {net} takes no --version or --variant (they choose LPIPS weights)"
        )
    if net == "elpips" and getattr(args, "weights", None):
        raise UsageError(
            f"--weights {args.weights}: --net elpips takes no weights file; E-LPIPS uses the "
            "weights it ships (lpips_jax.load('elpips') reads no file)"
        )
    given = [n for n in ELPIPS_DEFAULTS if getattr(args, n, None) is not None]
    if net != "elpips" and given:
        flags = " ".join(f"--{n.replace('_', '-')} {getattr(args, n)}" for n in given)
        raise UsageError(
            f"{flags}: E-LPIPS options, for --net elpips only; --net {net} is deterministic "
            "(it takes no seed, samples or scale levels)"
        )
    if net == "elpips":
        for n, default in ELPIPS_DEFAULTS.items():
            if getattr(args, n, None) is None:
                setattr(args, n, default)


def load_params(args: argparse.Namespace) -> Any:
    import lpips_jax

    check_model_options(args)
    try:
        if args.net == "elpips":
            return lpips_jax.load("elpips").replace(scale_levels=args.scale_levels)
        if args.net == "dists":
            return lpips_jax.load("dists", path=args.weights)
        if args.weights:
            return lpips_jax.load(args.net, version=args.version, variant=args.variant, path=args.weights)
        return lpips_jax.load(args.net or "alex", version=args.version or "0.1", variant=args.variant)
    except (lpips_jax.WeightsError, FileNotFoundError, ValueError) as e:
        raise UsageError(f"cannot load weights: {e}") from e


def draws(args: argparse.Namespace, params: Any) -> dict[str, Any]:
    """``lpips_jax.distance``'s ``key`` and ``samples`` for a random metric (E-LPIPS):
    ``jax.random.key(--seed)`` and ``--samples``; ``{}`` for a deterministic one."""
    if not getattr(params, "random", False):
        return {}
    import jax

    return {"key": jax.random.key(args.seed), "samples": args.samples}


def draws_record(args: argparse.Namespace, params: Any) -> dict[str, Any]:
    """What a random metric's numbers depend on beside its net, for JSON outputs:
    ``samples``, ``seed``, ``scale_levels`` (``{}`` for a deterministic metric)."""
    if not getattr(params, "random", False):
        return {}
    return {"samples": args.samples, "seed": args.seed, "scale_levels": params.scale_levels}


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
