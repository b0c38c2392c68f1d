"""The command line: profile output and one-line errors."""
import json
import subprocess
import sys

from mbtasks.cli import main


def test_profile_json(capsys):
    assert main(["profile", "--model", "mobilenet_v3_small", "--width", "0.75", "--json", "--runs", "2"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert set(figures) == {"params", "madds", "latency_ms"}
    assert figures["params"] == 2_041_872 and abs(figures["madds"] - 43.4e6) < 0.1e6
    assert figures["latency_ms"] > 0


def test_profile_non_square_resolution(capsys):
    assert main(["profile", "--model", "mobilenet_v1", "--resolution", "160x224", "--json", "--runs", "1"]) == 0
    square = 568_740_352
    assert json.loads(capsys.readouterr().out)["madds"] < square


def test_console_script_prints_one_line_error():
    result = subprocess.run([sys.executable, "-m", "mbtasks.cli", "profile", "--model", "resnet50"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mbtasks: error: unknown model 'resnet50'; known: ")
    assert "mobilenet_v1" in lines[0] and "ssdlite320_mobilenet_v3_large" in lines[0]
