"""Embedded data sets, written in the real formats from a seed."""

import inspect
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from ...errors import MbtasksError
from ...io.outputs import output_folder

SYNTH_MARKER = "mbtasks_synth.json"  # written last: a folder without it is incomplete


def write_synthetic_once(out_dir: str | os.PathLike, write: Callable, options: dict) -> None:
    """Write an embedded data set with `write(folder, **options)` unless a complete copy with these options is there.

    It is written into a fresh sibling folder and renamed into place with its marker file, so an interrupted run
    leaves no half-written folder under `out_dir`, and processes racing to write it keep one complete copy. A folder
    this function did not write (files but no marker) is refused, never replaced: it may be the user's data.
    Empty folders (no files) are written into.
    """
    out = Path(out_dir)
    check_options(write, options)
    wanted = json.loads(json.dumps({"writer": write.__name__, **options}))  # the marker's form: tuples are lists

    def complete() -> bool:
        try:
            return json.loads((out / SYNTH_MARKER).read_text()).get("options") == wanted
        except (OSError, ValueError):
            return False

    if complete():
        return
    if out.exists() and not out.is_dir():
        raise MbtasksError("is a file: the embedded data set needs a new or empty folder", out)
    if out.is_dir() and not (out / SYNTH_MARKER).is_file() and any(p.is_file() for p in out.rglob("*")):
        raise MbtasksError(
            f"holds files but no {SYNTH_MARKER}: not an embedded data set mbtasks wrote, so it is "
            "left alone; set data.synth_dir to a new or empty folder (or data.root to use it)",
            out,
        )
    output_folder(out.parent)
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


def check_options(write: Callable, options: dict) -> None:
    """One error for an option the writer does not take or a value of the wrong kind: the seed and the max_ counts
    whole numbers of 0 or more, other counts and sizes positive (sizes as their default is: one number, or a pair)."""
    defaults = {name: p.default for name, p in inspect.signature(write).parameters.items() if p.default is not p.empty}
    for name, value in options.items():
        if name not in defaults:
            raise MbtasksError(f"data.synth: {write.__name__} takes no option {name!r}; known: {', '.join(defaults)}")
        default = defaults[name]
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        pair = isinstance(default, tuple)
        whole = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        low = 0 if name == "seed" or name.startswith("max_") else 1
        if not whole or len(values) != (len(default) if pair else 1) or min(values) < low:
            kind = (
                f"a list of {len(default)} positive integers"
                if pair
                else ("an integer of 0 or more" if low == 0 else "a positive integer")
            )
            raise MbtasksError(f"data.synth.{name} must be {kind}, got {value!r}")
