"""Private files (keys, kubeconfigs, tenant plans, port maps): the one way to write them.

A private file is 0600 from its first byte (no umask window, no chmod after the fact) and
sits in a 0700 directory: `write_file` creates a missing parent that way, and `make_dir`
also tightens a directory the caller owns. A write is atomic and durable: the data goes to
a temporary sibling, is fsynced and renamed over the target, then the directory is fsynced,
so a crash or power loss leaves the old content or the new one, never a torn key.
Directories the caller does not own (an existing parent) are left as they are.
Everything here blocks: call it from a worker thread or at start-up, not on the trio loop.
The one exception is `kube/creds.py`, which imports nothing of ours (DESIGN §2) and keeps
its own short-lived PEM files for `ssl.load_cert_chain`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["DIR_MODE", "make_dir", "write_file"]

DIR_MODE = 0o700


def make_dir(path: Path) -> Path:
    """Create `path` (and missing parents) and make it 0700, also when it already existed."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return path


def write_file(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` (str as UTF-8) atomically and durably, mode 0600.

    A missing parent is created 0700. Whoever reads `path` sees the old or the new
    content, never a part; a symlink at `path` is replaced, not followed.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` survive a power loss (the file's own fsync does not cover it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
