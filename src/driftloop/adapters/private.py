"""Files that hold user text are readable by their owner only: files 0600, folders 0700.

The log writers, compaction, the S3 cache and spool, the DVC data sets and the privacy ledger
create what they write through these helpers, with the mode given to ``open(2)`` itself (no
window in which a file exists with a wider mode, no process-wide umask flipped under other
threads). DVC writes its cache files itself (read-only, 0444): :func:`restrict_tree` takes the
group and other bits off everything under a folder after DVC wrote there, and the folder above
is 0700 anyway.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
_GROUP_OTHER = stat.S_IRWXG | stat.S_IRWXO


def private_dir(path: Path) -> Path:
    """``path`` and every missing folder above it, created 0700 (``Path.mkdir(mode=…, parents=True)``
    gives the parents the umask's mode); a folder that exists is left as it is."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=DIR_MODE)
    return path


def open_private(path: Path, flags: int) -> int:
    """``os.open(path, flags, 0o600)``: a file this creates is the owner's only."""
    return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)


def write_private(path: Path, data: bytes, *, durable: bool = True) -> Path:
    """Replace ``path`` atomically with ``data`` in a new 0600 file (temp file beside it, fsync,
    rename, fsync the folder when ``durable``)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}{path.suffix}")
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def restrict(path: Path) -> None:
    """Take the group and other bits off one file or folder (0644 -> 0600, 0444 -> 0400)."""
    with contextlib.suppress(FileNotFoundError):
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        if mode & _GROUP_OTHER and not Path(path).is_symlink():
            os.chmod(path, mode & ~_GROUP_OTHER)


def restrict_tree(root: Path) -> None:
    """:func:`restrict` on ``root`` and everything below it (what another library wrote: DVC)."""
    root = Path(root)
    if not root.exists():
        return
    restrict(root)
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            restrict(Path(folder) / name)
