"""Embedded data sets, written in the real formats from a seed."""
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

SYNTH_MARKER = "mbtasks_synth.json"  # written last: a folder without it is incomplete


def write_synthetic_once(out_dir: str | os.PathLike, write: Callable, options: dict) -> None:
    """Write an embedded data set with `write(folder, **options)` unless a complete copy with these options is there.

    It is written into a fresh sibling folder and renamed into place with its marker file, so an interrupted run
    leaves no half-written folder under `out_dir`, and processes racing to write it keep one complete copy.
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
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        write(staging, **options)
        (staging / SYNTH_MARKER).write_text(json.dumps({"options": wanted}))
        if complete():  # another process finished first
            return
        if out.exists():  # incomplete, or written with other options: ours replaces it
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
