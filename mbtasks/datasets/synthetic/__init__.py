"""Embedded data sets, written in the real formats from a seed."""
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from ...errors import MbtasksError

SYNTH_MARKER = "mbtasks_synth.json"  # written last: a folder without it is incomplete


def write_synthetic_once(out_dir: str | os.PathLike, write: Callable, options: dict) -> None:
    """Write an embedded data set with `write(folder, **options)` unless a complete copy with these options is there.

    It is written into a fresh sibling folder and renamed into place with its marker file, so an interrupted run
    leaves no half-written folder under `out_dir`, and processes racing to write it keep one complete copy. A folder
    this function did not write (files but no marker) is refused, never replaced: it may be the user's data.
    Empty folders (no files) are written into.
    """
    out = Path(out_dir)
    wanted = json.loads(json.dumps({"writer": write.__name__, **options}))  # the marker's form: tuples are lists

    def complete() -> bool:
        try:
            return json.loads((out / SYNTH_MARKER).read_text()).get("options") == wanted
        except (OSError, ValueError):
            return False

    if complete():
        return
    if out.is_dir() and not (out / SYNTH_MARKER).is_file() and any(p.is_file() for p in out.rglob("*")):
        raise MbtasksError(f"holds files but no {SYNTH_MARKER}: not an embedded data set mbtasks wrote, so it is "
                           "left alone; set data.synth_dir to a new or empty folder (or data.root to use it)", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        write(staging, **options)
        (staging / SYNTH_MARKER).write_text(json.dumps({"options": wanted}))
        if complete():  # another process finished first
            return
        if out.exists():  # no files, or written by us with other options: ours replaces it
            stale = out.parent / f".{out.name}.stale-{uuid.uuid4().hex[:8]}"
            os.rename(out, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(staging, out)
        except OSError:
            if not complete():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
