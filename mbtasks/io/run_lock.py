"""One run per output folder: `OUT/.lock` names the run that holds it (host and process id) for as long as it runs.

The holding is the kernel's (an exclusive `flock` on the file, which NFS clients hold across machines too): it ends
with the process however that ends, so a lock file left by a killed run is free, and the next run takes it over
with a line naming the run that left it. A run ending in any other way removes the file."""

import contextlib
import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from ..errors import MbtasksError

LOCK_NAME = ".lock"


def _holder(fd: int) -> str:
    """What the lock file says of its holder: "pid N on HOST", or "" where it is empty."""
    os.lseek(fd, 0, os.SEEK_SET)
    words = os.read(fd, 512).decode(errors="replace").split()
    return f"pid {words[1]} on {words[0]}" if len(words) >= 2 else ""


def _open_locked(path: Path) -> int:
    """The lock file, open and held exclusively by this process; one error naming the run that holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd) or "another process"
            os.close(fd)
            raise MbtasksError(
                f"another run ({holder}) is writing into this folder: wait for it to end, or set train.out_dir to "
                "another folder",
                path.parent,
            ) from None
        try:
            same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            return fd
        os.close(fd)  # the holder removed the file between our open and our lock: take the new one


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold `folder/.lock` (the folder must exist) while the block runs, the file saying who holds it; a lock held by
    a running process is one error, a file left by a process that no longer runs is taken over with a warning."""
    path = Path(folder) / LOCK_NAME
    fd = _open_locked(path)
    try:
        if earlier := _holder(fd):
            print(
                f"mbtasks: warning: {path}: took over the lock of {earlier}, which ended without releasing it",
                file=sys.stderr,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        yield path
    finally:
        # Removed while still held, so that no other run can take the file and lose it to this removal.
        path.unlink(missing_ok=True)
        os.close(fd)
