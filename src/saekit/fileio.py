"""Atomic file writes: a temporary file in the target's folder, flushed, then renamed.

A reader sees the old file or the new one, never half of one, whatever happens mid-write.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


class DiskFullError(OSError):
    """No space left where saekit was writing; the message names the place and the size."""


def as_disk_full(err: BaseException, path: str | os.PathLike, need: int | None = None) -> DiskFullError | None:
    """A `DiskFullError` naming `path` if `err` is a full disk (OSError or safetensors'), else None."""
    text = str(err)
    full = (isinstance(err, OSError) and err.errno == errno.ENOSPC) or any(
        mark in text for mark in ("No space left", "StorageFull", "code: 28")
    )
    if not full:
        return None
    where = Path(path)
    size = f" (about {need / 2**20:.1f} MiB needed)" if need else ""
    try:
        free = f"; {shutil.disk_usage(where.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = ""
    error = DiskFullError(
        f"no space left on the device of {where.parent} to write {where.name}{size}{free}; "
        "free some space and rerun (with --resume for training)"
    )
    error.errno = errno.ENOSPC
    return error


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], None], need: int | None = None
) -> None:
    """Call `write(tmp_path)` to fill a temporary file next to `path`, then move it there.

    On any failure the temporary file is removed; a full disk becomes `DiskFullError`.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; a plain open would honour umask
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        full = as_disk_full(err, path, need)
        if full is not None:
            raise full from None
        raise


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib figure as a PNG atomically, then close it (also on failure)."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)
    return Path(path)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def default_file_mode() -> int:
    """The mode a new file gets from `open()`: 0o666 less the process umask."""
    return 0o666 & ~_umask()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), need=len(data))


@contextmanager
def atomic_folder(dst: str | os.PathLike, *, force: bool = False, flag: str = "--force"):
    """Yield a temporary folder beside `dst`; on success it becomes `dst` in one rename.

    An existing `dst` is refused (naming `flag`) unless `force`, and then replaced only once
    the new folder is complete. On any error the temporary folder is removed and `dst` is
    left as it was.
    """
    dst = Path(dst)
    if dst.exists() and not force:
        raise FileExistsError(f"{dst} already exists; choose another output or pass {flag}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if dst.exists():
            old = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.old.", suffix=".tmp"))
            os.replace(dst, old / dst.name)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class FolderBusyError(ValueError):
    """Another live process holds the folder's lock."""


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run folder"):
    """Hold an advisory lock on `folder` for the life of the block.

    A second process asking for it gets `FolderBusyError` naming the holder (pid, host,
    command, start time). The lock is the kernel's (`flock`): it is released on exit and
    when its holder dies, so a killed run never leaves a stale lock.
    """
    import fcntl
    import json
    import socket
    import sys
    import time

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, default_file_mode())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            who = ", ".join(f"{k} {v}" for k, v in holder.items()) or "another process"
            raise FolderBusyError(
                f"{what} {folder} is in use ({who}); wait for it to finish or choose another folder"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:200]}  # fmt: skip
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        yield
    finally:
        os.close(fd)  # closing releases the flock


LOCK_FILE = ".saekit.lock"
