"""Atomic file writes that behave like ordinary files.

A temporary file beside the target is written, given the mode a plain ``open``
would give it (``0o666`` less the umask, not ``mkstemp``'s ``0o600``), flushed to
disk (``fsync``) and renamed over the target; the directory entry is then synced
too. A kill at any point leaves either the old file or the new one, never a part.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` would create a file with, ``0o666 & ~umask``."""
    return 0o666 & ~umask()


def fsync_path(path, directory: bool = False) -> None:
    """Flush a written file (or a directory's entries) to disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories cannot be opened on some systems
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # file systems without fsync (some network mounts) keep the rename
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path):
    """Yield a temporary path that replaces ``path`` on success, vanishes on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent, directory=True)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sync_tree(root: Path) -> None:
    """Give a staged tree ordinary modes and flush it to disk."""
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            os.chmod(path, 0o777 & ~umask())  # as mkdir gives, not mkdtemp's 0o700
            fsync_path(path, directory=True)
        else:
            fsync_path(path)


@contextmanager
def atomic_directory(path, last: str | None = None):
    """Yield an empty staging directory that becomes ``path`` on success.

    A new ``path`` appears whole (one rename). An existing ``path`` (a model
    directory that also holds its run's checkpoints) keeps its other entries: the
    staged ones replace theirs one rename each, ``last`` (e.g. ``config.json``, the
    file that says a model is complete) after all others. On error the staging
    directory vanishes and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        sync_tree(staging)
        if not path.exists():
            os.replace(staging, path)
        else:
            entries = sorted(staging.iterdir(), key=lambda p: p.name == last)
            for entry in entries:
                target = path / entry.name
                if target.is_dir() and entry.is_dir():
                    old = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=path))
                    os.replace(target, old / entry.name)
                    os.replace(entry, target)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(entry, target)
            staging.rmdir()
        fsync_path(path.parent, directory=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
