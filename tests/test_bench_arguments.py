"""The benches' bad arguments: one line naming the value, exit 2, before any work. Each bench runs as its own
`__main__` in this process (runpy, as `python bench/SCRIPT` runs it): what is checked is its argument parsing, not a
process of its own, which would spend 10 s importing torch, torchvision and mbtasks for each line."""

import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize(
    "script, args, expected",
    [
        ("data.py", ["--workers", "-1"], "argument --workers: must be an integer of at least 0, got '-1'"),
        ("data.py", ["--repeats", "0"], "argument --repeats: must be an integer of at least 1, got '0'"),
        ("coco_eval.py", ["--backends", "fast"], "argument --backends: fast: unknown COCO evaluation backend"),
        ("deploy.py", ["--runs", "3"], "argument --runs: must be an integer of at least 7, got '3'"),
    ],
)
def test_a_bad_bench_argument_is_one_line_and_exit_2(script, args, expected, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))  # where `python bench/SCRIPT` finds the benches' own modules
    monkeypatch.setattr(sys, "argv", [str(BENCH / script), *args])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(BENCH / script), run_name="__main__")
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exited.value.code == 2 and len(lines) == 1 and expected in lines[0], captured
    assert lines[0].startswith(f"{script}: error: ") and captured.out == ""
