"""A sixth task as a third-party plugin, with no change to mbtasks/: tests/plugin_task/ (one Python file with its data
writer, data module, task and metric; its recipe; a dist-info whose entry_points.txt registers it under
`mbtasks.tasks`) copied outside the repository and put on PYTHONPATH, then trained, evaluated, applied to photos,
exported and ablated through the installed console script. Without it, its name is an unknown task; a plugin that
cannot be imported is one warning line and the built-in tasks keep working; `--help` imports no plugin."""

import csv
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import MBTASKS

from mbtasks import build_model
from mbtasks.datasets.image_transforms import eval_transform
from mbtasks.io.images import read_rgb_image
from mbtasks.profiling import count_parameters

PLUGIN = Path(__file__).resolve().parent / "plugin_task"
KINDS = ["circle", "square", "triangle"]  # the plugin's classes: the kinds of shape it counts


def with_path(*folders: Path) -> dict:
    """This process's environment with `folders` first on PYTHONPATH (its entries kept: a checkout's own code)."""
    entries = [str(folder) for folder in folders] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(entries), "OMP_NUM_THREADS": "1"}


def side_by_side(root: Path, commands: dict[str, tuple[list[str], dict]]) -> dict[str, subprocess.CompletedProcess]:
    """Independent `mbtasks` commands run at once (each spends seconds importing), in `root`: name -> result."""
    with ThreadPoolExecutor(len(commands)) as pool:
        running = {
            name: pool.submit(
                subprocess.run, [MBTASKS, *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
            )
            for name, (args, env) in commands.items()
        }
    return {name: future.result() for name, future in running.items()}


def write_broken_plugin(folder: Path) -> Path:
    """An installed plugin whose module cannot be imported (a package it needs is missing)."""
    (folder / "broken_plugin-0.1.dist-info").mkdir(parents=True)
    (folder / "broken_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n"
    )
    (folder / "broken_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[mbtasks.tasks]\nbroken = broken_plugin\n"
    )
    (folder / "broken_plugin.py").write_text(
        'raise ImportError("needs the package shapely_extras, which is not installed")\n'
    )
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    """Every command of this file, run once: independent ones side by side."""
    root = tmp_path_factory.mktemp("plugins")
    plugin, marker = root / "site" / "plugin", root / "plugin_imported"
    shutil.copytree(PLUGIN, plugin, ignore=shutil.ignore_patterns("__pycache__"))
    # The test's mark that the plugin module was imported (last: only a whole import writes it).
    with open(plugin / "shape_count.py", "a") as module:
        module.write(f"\nopen({str(marker)!r}, 'a').close()\n")
    broken = write_broken_plugin(root / "site" / "broken")
    recipe, ckpt = plugin / "shape_count.yaml", root / "run" / "checkpoints" / "best.ckpt"
    env, without, both = with_path(plugin), with_path(), with_path(plugin, broken)

    helps = [
        subprocess.run([MBTASKS, *args], env=both, capture_output=True, text=True, timeout=60)
        for args in (["--help"], ["train", "--help"], ["ablate", "--help"])
    ]
    imported_by_help = marker.exists()
    first = side_by_side(
        root,
        {
            "train": (
                [
                    "train",
                    "--config",
                    str(recipe),
                    "--set",
                    f"train.out_dir={root / 'run'}",
                    "--set",
                    f"data.synth_dir={root / 'data'}",
                ],
                env,
            ),
            # No --config: the task's own recipe, which the plugin keeps beside its module.
            "ablate": (
                [
                    "ablate",
                    "--task",
                    "count",
                    "--profile-only",
                    "--backbones",
                    "v3_small",
                    "--widths",
                    "0.5",
                    "--runs",
                    "0",
                    "--out",
                    str(root / "ablation"),
                ],
                env,
            ),
            "unknown": (["ablate", "--task", "count", "--profile-only", "--out", str(root / "none")], without),
            "broken": (
                [
                    "ablate",
                    "--task",
                    "cls",
                    "--profile-only",
                    "--backbones",
                    "v3_small",
                    "--widths",
                    "0.25",
                    "--resolutions",
                    "32",
                    "--runs",
                    "0",
                    "--out",
                    str(root / "builtin"),
                ],
                both,
            ),
        },
    )
    second = side_by_side(
        root,
        {
            "evaluate": (["evaluate", "--checkpoint", str(ckpt), "--json", str(root / "metrics.json")], env),
            "predict": (
                [
                    "predict",
                    "--checkpoint",
                    str(ckpt),
                    str(root / "data" / "val"),
                    "--out",
                    str(root / "photos"),
                    "--workers",
                    "0",
                    "--device",
                    "cpu",
                ],
                env,
            ),
            "export": (["export", "--checkpoint", str(ckpt), "--out", str(root / "count.onnx")], env),
        },
    )
    return SimpleNamespace(
        root=root,
        plugin=plugin,
        recipe=recipe,
        ckpt=ckpt,
        helps=helps,
        imported_by_help=imported_by_help,
        imported=marker.exists(),
        **first,
        **second,
    )


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def _val_counts(root: Path) -> dict[str, np.ndarray]:
    with open(root / "data" / "val" / "counts.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header == ["file", *KINDS]
    return {row[0]: np.array(row[1:], dtype=np.float64) for row in rows}


def test_help_imports_no_plugin(runs):
    for result in runs.helps:
        assert result.returncode == 0 and "usage: mbtasks" in result.stdout
        assert result.stderr == ""  # not even the broken plugin's warning: nothing was loaded
    assert not runs.imported_by_help
    assert runs.imported  # the same plugin, imported by the commands that look a task up


def test_plugin_task_trains_on_its_own_data_format(runs):
    printed = _ok(runs.train)
    assert "best val/negative_mae -" in printed and str(runs.ckpt) in printed
    record = torch.load(runs.ckpt, map_location="cpu", weights_only=True)["mbtasks"]
    assert record["task"] == "count" and record["model"] == "mobilenet_v3_small"
    assert record["class_names"] == KINDS and record["options"]["num_classes"] == 3
    counts = _val_counts(runs.root)
    assert sorted(counts) == [f"{i:04d}.png" for i in range(8)]
    assert len(list((runs.root / "data" / "train").glob("*.png"))) == 16
    assert all(((c >= 0) & (c <= 3) & (c == np.rint(c))).all() for c in counts.values())


def test_plugin_task_evaluates_its_metric(runs):
    printed = _ok(runs.evaluate)
    assert "evaluated 8 images" in printed and "every count right:" in printed
    assert all(f"\n{kind} " in printed for kind in KINDS)
    metrics = json.loads((runs.root / "metrics.json").read_text())
    assert metrics["num_images"] == 8 and set(metrics["per_kind"]) == set(KINDS)
    assert 0 <= metrics["exact_accuracy"] <= 1 and metrics["mean_absolute_error"] > 0
    # The figure training picked best.ckpt by, reproduced by the inference copy (batch norm folded).
    trained = torch.load(runs.ckpt, map_location="cpu", weights_only=True)["mbtasks"]["metrics"]
    assert metrics["mean_absolute_error"] == pytest.approx(trained["mean_absolute_error"], abs=1e-4)


def test_plugin_task_predicts_counts_on_photos(runs):
    printed = _ok(runs.predict)
    assert "predicted 8 images with count model mobilenet_v3_small (torch, cpu)" in printed
    entries = json.loads((runs.root / "photos" / "counts.json").read_text())
    truths = _val_counts(runs.root)
    assert sorted(Path(entry["file"]).name for entry in entries) == sorted(truths)
    for entry in entries:
        assert list(entry["counts"]) == KINDS and entry["total"] == sum(entry["counts"].values())
        assert all(value == max(0, round(entry["raw"][kind])) for kind, value in entry["counts"].items())
        assert (runs.root / "photos" / Path(entry["file"]).name).is_file()  # the photo with its counts written on
    # The same answers as evaluate scored: predict reads and pre-processes photos as validation does.
    errors = [abs(np.array([entry["raw"][k] for k in KINDS]) - truths[Path(entry["file"]).name]) for entry in entries]
    evaluated = json.loads((runs.root / "metrics.json").read_text())
    assert float(np.mean(errors)) == pytest.approx(evaluated["mean_absolute_error"], abs=1e-3)


def test_plugin_task_exports_onnx_checked_against_pytorch(runs):
    import onnxruntime

    printed = _ok(runs.export)
    assert "count mobilenet_v3_small, fp32" in printed
    difference = float(printed.split("largest |onnxruntime - pytorch| difference: ")[1].split()[0])
    assert difference < 1e-4
    session = onnxruntime.InferenceSession(str(runs.root / "count.onnx"), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == ["counts"]
    assert json.loads(session.get_modelmeta().custom_metadata_map["mbtasks"])["task"] == "count"
    # The exported graph answers as predict did: the recipe's 64x64 whole-image resize, ImageNet normalisation.
    transform = eval_transform(64, crop_fraction=None)
    for entry in json.loads((runs.root / "photos" / "counts.json").read_text())[:3]:
        image = transform(image=read_rgb_image(entry["file"]))["image"][None].numpy()
        got = session.run(["counts"], {"images": image})[0][0]
        np.testing.assert_allclose(got, [entry["raw"][k] for k in KINDS], atol=2e-4)


def test_plugin_task_ablates_with_the_recipe_beside_it(runs):
    printed = _ok(runs.ablate)
    assert f"1 profile-only count runs from {runs.recipe}" in printed
    with open(runs.root / "ablation" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(row["task"], row["model"], row["width"], row["resolution"], row["status"]) for row in rows] == [
        ("count", "mobilenet_v3_small", "0.5", "64", "ok")
    ]
    # The network the task trains: a count per kind (the recipe's dropout does not change the count).
    network = build_model("mobilenet_v3_small", width_mult=0.5, num_classes=len(KINDS))
    assert int(rows[0]["params"]) == count_parameters(network) and int(rows[0]["madds"]) > 0


def test_without_the_plugin_its_task_is_unknown_in_one_line(runs):
    assert runs.unknown.returncode == 2
    assert runs.unknown.stderr.splitlines() == [
        "mbtasks: error: unknown task 'count'; known: det, seg, attr, embed, cls"
    ]


def test_a_broken_plugin_is_one_warning_and_built_in_tasks_keep_working(runs):
    printed = _ok(runs.broken)
    assert runs.broken.stderr.splitlines() == [
        "mbtasks: warning: task plugin 'broken' (broken_plugin) failed to load and is left out: ImportError: needs "
        "the package shapely_extras, which is not installed"
    ]
    assert "1 runs done, 0 failed" in printed
    with open(runs.root / "builtin" / "results.csv", newline="") as f:
        assert [(row["task"], row["model"], row["status"]) for row in csv.DictReader(f)] == [
            ("cls", "mobilenet_v3_small", "ok")
        ]
