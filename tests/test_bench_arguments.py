"""The benches' bad arguments: one line naming the value, exit 2, before any work."""

import subprocess
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
def test_a_bad_bench_argument_is_one_line_and_exit_2(script, args, expected):
    result = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr
