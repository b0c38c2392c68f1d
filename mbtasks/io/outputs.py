"""Where commands write: output folders checked (and created) before any work, files replaced atomically."""

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import MbtasksError


def output_folder(path: str | os.PathLike) -> Path:
    """The folder, created with its parents if missing; one error if it cannot be created or written into."""
    folder = Path(path)
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise MbtasksError("is a file, not a folder to write into", blocking)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a parent that is a file, no permission, a read-only file system
        raise MbtasksError(f"cannot create this output folder ({error.strerror or error})", folder) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MbtasksError("output folder is not writable", folder)
    return folder


def output_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """The file's folder checked as output_folder does; one error if the path is a folder, or an existing file
    unless `overwrite` (a user's file is never replaced without being asked to)."""
    file = Path(path)
    if file.is_dir():
        raise MbtasksError("is a folder, not a file to write", file)
    if file.exists() and not overwrite:
        raise MbtasksError("exists: pass --overwrite to replace it, or choose another path", file)
    output_folder(file.parent)
    return file


@contextlib.contextmanager
def replaced_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix, so writers pick the format from it; beside it, so a small
    $TMPDIR does not fail a write that has room) that replaces `path` when the block ends without an error: a reader,
    or a rerun after a kill, sees the old file or the new one, never half. The temporary file is removed however the
    block ends; a write that fails (a full disk, a read-only place) is one error naming `path`."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        raise write_error(error, path) from None
    finally:
        temporary.unlink(missing_ok=True)


# what a write meets on a full disk (ENOSPC, EDQUOT), a read-only place (EROFS, EACCES, EPERM) or a file size limit
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


@contextlib.contextmanager
def writing_to(path: str | os.PathLike) -> Iterator[None]:
    """A block that writes `path` (and its own temporary files): a write that fails for want of room or of
    permission is one error naming `path`."""
    try:
        yield
    except OSError as error:
        if error.errno not in WRITE_ERRNOS:
            raise
        raise write_error(error, path) from None


def write_error(error: OSError, path: str | os.PathLike) -> MbtasksError:
    """The one line of a write that failed: the path and the system's reason (no space left on device, read-only
    file system, permission denied, file too large)."""
    reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
    return MbtasksError(f"cannot write this file ({reason}); earlier files are left as they were", path)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write a text file through replaced_atomically."""
    with replaced_atomically(path) as temporary:
        temporary.write_text(text)
