"""Atomic file writes: a reader sees the old file or the new one, never part of either.

The new content goes to a temporary file in the destination's folder; the file is
flushed to disk (``fsync``), moved onto the destination with ``os.replace`` (atomic
within one file system), and the folder is flushed too, so that the rename itself
survives a crash. If writing fails, the temporary file is removed and the destination
is left as it was. Checkpoints, saved networks, run-folder files and reports all go
through here.

This module sits on the ground floor: it imports nothing from the package.

>>> import tempfile
>>> from pathlib import Path
>>> p = Path(tempfile.mkdtemp()) / "x.bin"
>>> atomic_write(p, b"abc").read_bytes()
b'abc'
>>> atomic_write(p, lambda f: f.write(b"new")).read_bytes()
b'new'
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_output", "atomic_write"]


def atomic_write(
    path: str | os.PathLike[str], data: bytes | bytearray | Callable[[BinaryIO], object]
) -> Path:
    """Replace ``path`` atomically by ``data``, or by what ``data(f)`` writes to ``f``.

    :param path: the destination; its folder must exist.
    :param data: the bytes to write, or a writer called with the temporary file open
        for binary writing (e.g. ``lambda f: torch.save(state, f)``).
    :returns: ``path``, as a :class:`~pathlib.Path`.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x.txt"
    >>> _ = atomic_write(p, b"old")
    >>> def broken(f):
    ...     f.write(b"half")
    ...     raise OSError("disk full")
    >>> atomic_write(p, broken)
    Traceback (most recent call last):
    ...
    OSError: disk full
    >>> p.read_bytes(), sorted(q.name for q in p.parent.iterdir())
    (b'old', ['x.txt'])
    """
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        if isinstance(data, bytes | bytearray):
            f.write(data)
        else:
            data(f)
    return Path(path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for the block to write; when the block
    ends without error, flush it to disk and rename it onto ``path``.

    For writers that want a path rather than an open file (``to_netcdf``,
    ``torch.jit.save``, ONNX exporters). If the block raises, the temporary file is
    removed and ``path`` is left as it was.

    :param path: the destination; its folder must exist.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x.txt"
    >>> with atomic_output(p) as tmp:
    ...     _ = tmp.write_text("hi")
    >>> p.read_text()
    'hi'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
