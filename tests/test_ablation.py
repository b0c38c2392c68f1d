"""`mbtasks ablate`: profile-only grids against the papers, a trained detection grid end to end, reruns, failures."""

import ast
import contextlib
import csv
import io
import json
from pathlib import Path

import pytest
import torch

import mbtasks.ablation
from mbtasks.ablation import parse_resolutions, parse_widths
from mbtasks.cli import main
from mbtasks.datasets.synthetic.shapes_coco import write_shapes_coco
from mbtasks.models import build_model
from mbtasks.profiling import count_madds, count_parameters, example_input
from mbtasks.reference import PAPER_FIGURES, TIMM_FIGURES, TORCHVISION_FIGURES

FAMILY = [
    "--backbones",
    "v1,v2,v3_large,v3_small",
    "--widths",
    "v1=0.25,0.5,0.75,1.0",
    "--widths",
    "v2=0.35,0.5,0.75,1.0,1.4",
    "--widths",
    "v3_large=0.75,1.0",
    "--widths",
    "v3_small=0.75,1.0",
    "--resolutions",
    "128,160,192,224",
]
# The v2 paper's parameter counts are not those of its own network as torchvision, timm and mbtasks build it; those
# two rows are held to torchvision's (1.0) and timm's (1.4) published counts instead.
LIBRARY_PARAMS = {
    key[:2]: figures[0] for key, figures in {**TORCHVISION_FIGURES, **TIMM_FIGURES}.items() if key[0] == "mobilenet_v2"
}


def read_rows(out) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_profile_only_grid_writes_the_table(tmp_path, capsys):
    out = tmp_path / "grid"
    args = [
        "ablate",
        "--task",
        "cls",
        "--profile-only",
        "--backbones",
        "v3_small,v1",
        "--widths",
        "0.75",
        "--resolutions",
        "160,192x160",
        "--runs",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "4 runs done, 0 failed" in capsys.readouterr().out
    rows = read_rows(out)
    assert [(r["version"], r["resolution"]) for r in rows] == [
        ("v3_small", "160"),
        ("v3_small", "192x160"),
        ("v1", "160"),
        ("v1", "192x160"),
    ]
    for row in rows:
        resolution = tuple(int(v) for v in row["resolution"].split("x"))
        model = build_model(row["model"], width_mult=0.75)  # 1000 classes: ImageNet's, as the papers
        assert int(row["params"]) == count_parameters(model)
        assert int(row["madds"]) == count_madds(
            model, example_input(resolution if len(resolution) == 2 else resolution[0])
        )
        assert float(row["latency_ms"]) > 0 and row["status"] == "ok" and row["metric"] == ""
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| model | width | input | MAdds | paper | params | paper | latency (ms) |")
    assert table[2].startswith("| mobilenet_v1 | 0.75 | 160 |")  # v1 before v3, each by multiply-adds
    assert table[3].startswith("| mobilenet_v1 | 0.75 | 192x160 |")
    assert (out / "latency_vs_madds.png").stat().st_size > 0
    assert not (out / "metric_vs_madds.png").exists()  # nothing was trained: no metric to plot


def test_whole_family_agrees_with_the_papers(tmp_path):
    out = tmp_path / "family"
    assert main(["ablate", "--task", "cls", "--profile-only", *FAMILY, "--runs", "0", "--out", str(out)]) == 0
    rows = read_rows(out)
    assert len(rows) == (4 + 5 + 2 + 2) * 4 and all(r["status"] == "ok" for r in rows)
    by_key = {(r["model"], float(r["width"]), int(r["resolution"])): r for r in rows}
    assert set(PAPER_FIGURES) <= set(by_key)
    for key, (paper_params, paper_madds) in PAPER_FIGURES.items():
        row = by_key[key]
        assert float(row["paper_params"]) == paper_params and float(row["paper_madds"]) == paper_madds
        assert int(row["madds"]) == pytest.approx(paper_madds, rel=0.02), key
        params, expected = int(row["params"]), LIBRARY_PARAMS.get(key[:2], paper_params)
        # The papers print one decimal of millions (v1 0.25: 0.5M for 470,000): within 2%, or equal as printed.
        assert params == pytest.approx(expected, rel=0.02) or round(params / 1e6, 1) == expected / 1e6, key
    assert sum(r["paper_madds"] != "" for r in rows) == len(PAPER_FIGURES)  # no paper figure where none is known
    assert "| mobilenet_v1 | 1 | 224 | 568.7M | 569M | 4.23M | 4.2M |  |" in (out / "results.md").read_text()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A tiny embedded detection set and the --set settings that shrink the demo config to it."""
    root = tmp_path_factory.mktemp("ablate_det")
    write_shapes_coco(root / "data", seed=1, num_train=12, num_val=4, image_size=64)
    settings = [
        f"data.root={root / 'data'}",
        "data.batch_size=6",
        "data.val_batch_size=4",
        "data.num_workers=0",
        "train.epochs=1",
        "train.log_every=1",
    ]
    return root, [a for s in settings for a in ("--set", s)]


def ablate(args: list[str]) -> str:
    """Run `mbtasks ablate ARGS` in this process; returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["ablate", *args]) == 0
    return printed.getvalue()


@pytest.fixture(scope="module")
def trained(shapes):
    """2 versions trained and evaluated on the demo detection config, in one command (each run is two child
    processes, about 20 s of the suite: the profile-only grids cover widths and resolutions)."""
    root, settings = shapes
    out = root / "grid"
    args = [
        "--task",
        "det",
        "--backbones",
        "v3_small,v2",
        "--widths",
        "0.25",
        "--resolutions",
        "64",
        "--runs",
        "2",
        "--out",
        str(out),
        *settings,
    ]
    return out, args, ablate(args)


def test_trained_grid_writes_all_four_outputs(trained):
    out, _, printed = trained
    assert "2 runs done, 0 failed" in printed
    rows = read_rows(out)
    assert [(r["model"], r["width"]) for r in rows] == [
        ("ssdlite320_mobilenet_v3_small", "0.25"),
        ("ssdlite320_mobilenet_v2", "0.25"),
    ]
    for row in rows:
        run = out / "runs" / row["run"]
        metrics = json.loads((run / "metrics.json").read_text())  # written by `mbtasks evaluate --json`
        assert row["status"] == "ok" and row["metric_name"] == "AP" and float(row["metric"]) == metrics["AP"]
        assert int(row["madds"]) > 0 and float(row["latency_ms"]) > 0
        commands = json.loads((run / "commands.json").read_text())
        log = (run / "log.txt").read_text()  # both child processes print into the run's log, each after its command
        assert log.startswith("$ mbtasks train --config ") and "\n$ mbtasks evaluate --checkpoint " in log
        assert "model.options.width_mult=" + row["width"] in commands["train"] and "data.size=64" in commands["train"]
        # The profile is the trained network's: the data set's few classes, not COCO's 91.
        record = torch.load(run / "checkpoints/best.ckpt", weights_only=True)["mbtasks"]
        assert record["options"]["num_classes"] < 10 and record["options"]["width_mult"] == float(row["width"])
        assert int(row["params"]) == count_parameters(build_model(record["model"], **record["options"]))
    table = (out / "results.md").read_text()
    assert table.splitlines()[0].endswith("| latency (ms) | AP |") and table.count("| ssdlite320_mobilenet_") == 2
    for plot in ("metric_vs_madds.png", "metric_vs_latency.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG")


def test_rerun_skips_finished_runs(trained):
    out, args, _ = trained
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/checkpoints/best.ckpt")}
    assert ablate(args).count("finished before, skipped") == 2
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/checkpoints/best.ckpt")} == before
    assert len(read_rows(out)) == 2


def test_a_failed_run_is_recorded_and_the_rest_go_on(shapes, tmp_path):
    _, settings = shapes
    # Two frameworks on v1: SSD300's heads take a head_kernel option, SSDLite's do not.
    args = [
        "ablate",
        "--task",
        "det",
        "--backbones",
        "v1",
        "--heads",
        "ssdlite320,ssd300",
        "--widths",
        "0.25",
        "--resolutions",
        "64",
        "--runs",
        "1",
        "--out",
        str(tmp_path),
        *settings,
        "--set",
        "model.options.head_kernel=1",
    ]
    assert main(args) == 0
    rows = {row["model"]: row for row in read_rows(tmp_path)}
    failed, done = rows["ssdlite320_mobilenet_v1"], rows["ssd300_mobilenet_v1"]
    assert failed["status"] == "failed"
    assert failed["error"] == "unknown option(s) for ssdlite320_mobilenet_v1: head_kernel"
    assert failed["params"] == "" and failed["metric"] == ""
    assert done["status"] == "ok" and done["metric"] != ""
    table = (tmp_path / "results.md").read_text()
    assert "- ssdlite320_mobilenet_v1_w0.25_r64: unknown option(s)" in table


def _contents(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _classes(run_dir: Path) -> int:
    return json.loads((run_dir / "result.json").read_text())["settings"]["config"]["model"]["options"]["num_classes"]


def test_runs_of_other_settings_are_kept_and_overwrite_replaces_them(tmp_path):
    out = tmp_path / "grid"
    args = [
        "--task",
        "cls",
        "--profile-only",
        "--backbones",
        "v3_small",
        "--widths",
        "0.5",
        "--resolutions",
        "64",
        "--runs",
        "0",
        "--out",
        str(out),
    ]
    ablate([*args, "--set", "model.options.num_classes=3"])
    first = out / "runs" / "mobilenet_v3_small_w0.5_r64"
    kept = _contents(first)
    # Other settings: a run of its own beside the first, which stays as it was.
    printed = ablate([*args, "--set", "model.options.num_classes=10"])
    second = first.with_name(first.name + "-2")
    assert "mobilenet_v3_small_w0.5_r64-2: " in printed and _contents(first) == kept and _classes(second) == 10
    (row,) = read_rows(out)
    assert row["run"] == second.name and int(row["params"]) == count_parameters(
        build_model("mobilenet_v3_small", width_mult=0.5, num_classes=10)
    )
    # Each is found again by its settings.
    assert "finished before, skipped" in ablate([*args, "--set", "model.options.num_classes=3"])
    assert "finished before, skipped" in ablate([*args, "--set", "model.options.num_classes=10"])
    # A folder whose result.json cannot be read (an older version killed while writing it, or not ours) is left alone.
    broken = first.with_name(first.name + "-3")
    broken.mkdir()
    (broken / "result.json").write_text('{"settings": {"conf')
    (broken / "mine.txt").write_text("a file of the user's")
    untouched = _contents(broken)
    assert "mobilenet_v3_small_w0.5_r64-4: " in ablate([*args, "--set", "model.options.num_classes=5"])
    assert _contents(broken) == untouched
    # --overwrite: the run of other settings in the run's own folder is replaced; the others stay.
    assert "mobilenet_v3_small_w0.5_r64: " in ablate([*args, "--set", "model.options.num_classes=7", "--overwrite"])
    assert _classes(first) == 7 and _classes(second) == 10 and _contents(broken) == untouched
    # A run of the same settings that never finished (killed: its result.json has no row yet) runs again in place.
    started = json.loads((first / "result.json").read_text())
    (first / "result.json").write_text(json.dumps({**started, "row": None}))
    (first / "stale.txt").write_text("left by the killed run")
    assert "mobilenet_v3_small_w0.5_r64: " in ablate([*args, "--set", "model.options.num_classes=7"])
    assert not (first / "stale.txt").exists() and read_rows(out)[0]["status"] == "ok"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--task", "pose"], "unknown task 'pose'; known: det, seg, attr, embed, cls"),
        (
            ["--task", "cls", "--backbones", "v1,v4"],
            "unknown backbone 'v4' in --backbones; known: v1, v2, v3_large, v3_small",
        ),
        (["--task", "cls", "--widths", "0.5,wide"], "--widths must be numbers separated by commas, got '0.5,wide'"),
        (["--task", "cls", "--widths", "0,1"], "--widths must be positive numbers separated by commas, got '0,1'"),
        (["--task", "cls", "--backbones", "v2", "--widths", "v1=0.5"], "--widths v1=0.5: v1 is not in --backbones"),
        (
            ["--task", "cls", "--resolutions", "224,big"],
            "resolution must be N or HxW (positive integers), got 'big' in --resolutions",
        ),
        (["--task", "cls", "--set", "train.lrr=1"], "unknown key train.lrr"),
    ],
)
def test_bad_names_give_one_line_errors_before_any_run(args, message, tmp_path, capsys):
    assert main(["ablate", *args, "--profile-only", "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mbtasks: error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_width_and_resolution_lists():
    versions = ["mobilenet_v1", "mobilenet_v2"]
    assert parse_widths(["0.5,1.0", "v2=0.35,1.4"], versions) == {
        "mobilenet_v1": [0.5, 1.0],
        "mobilenet_v2": [0.35, 1.4],
    }
    assert parse_widths([], versions) == {"mobilenet_v1": [1.0], "mobilenet_v2": [1.0]}
    assert parse_resolutions("160, 320x512") == [160, (320, 512)]


def test_ablation_imports_nothing_of_the_cli():
    """The cli sits above ablation: the runs' child processes are `python -m mbtasks.cli` commands, not imports."""
    package = Path(mbtasks.ablation.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ["mbtasks", "ablation"][: 3 - node.level] if node.level else []
                modules = [".".join([*base, *filter(None, [node.module])])]
                modules += [f"{modules[0]}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            assert not any(m == "mbtasks.cli" or m.startswith("mbtasks.cli.") for m in modules), path.name


def test_frameworks_on_one_backbone_in_one_table(tmp_path, capsys):
    """SSDLite, SSD and Faster R-CNN on v3-Large (and v1, where the v1 paper lists SSD300 and Faster R-CNN), each at
    its own size, in one table; the paper's figure beside a network it describes, with its note."""
    out = tmp_path / "frameworks"
    heads = ["--heads", "ssdlite320,ssd300,fasterrcnn", "--backbones", "v3_large,v1"]
    assert main(["ablate", "--task", "det", "--profile-only", *heads, "--runs", "0", "--out", str(out)]) == 0
    assert "6 runs done, 0 failed" in capsys.readouterr().out
    rows = read_rows(out)
    assert [(r["model"], r["resolution"]) for r in rows] == [
        ("ssdlite320_mobilenet_v3_large", "320"),
        ("ssd300_mobilenet_v3_large", "300"),
        ("fasterrcnn_mobilenet_v3_large", "600"),
        ("ssdlite320_mobilenet_v1", "320"),
        ("ssd300_mobilenet_v1", "300"),
        ("fasterrcnn_mobilenet_v1", "600"),
    ]
    table = (out / "results.md").read_text()
    assert all(f"| {r['model']} | 1 | {r['resolution']} |" in table for r in rows)
    assert "| fasterrcnn_mobilenet_v1 | 1 | 600 | 30536.1M | 54400M | 6.07M | 6.1M |" in table
    assert "Note on fasterrcnn_mobilenet_v1 at 600: the v1 paper's 54.4B at 600" in table
