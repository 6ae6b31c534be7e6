"""What long runs show and write: progress bars on stderr, files written whole or not at all.

The one place for both (the CLI, weights files, BAPPS evaluation and training use it): a
run that fails midway leaves no half-written file behind, and an existing file keeps its
old content.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary name in ``path``'s folder to write to, renamed onto ``path`` at the end.

    The rename (``os.replace``) happens only when the block finishes without an exception;
    otherwise the temporary file is removed. The file gets the usual ``0o666 & ~umask`` mode.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".partial")
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """``open(path, mode, **kwargs)`` written whole or not at all (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def progress_bar(
    enabled: bool | None, total: int, *, desc: str, unit: str, initial: int = 0, leave: bool = True
) -> Any:
    """A tqdm bar on stderr; ``enabled=None``: only when stderr is a terminal.

    A disabled bar is still a bar (``update``, ``set_postfix``, ``close`` do nothing), so
    callers need no ``if``.
    """
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if enabled is None else bool(enabled)
    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, leave=leave,
        file=sys.stderr, disable=not show, dynamic_ncols=True,
    )  # fmt: skip
