"""A package, not a checkout: the wheel `pip wheel .` builds carries the recipes, and the installed package, with no
source tree in sight, lists them, trains one by name, ablates a task on its demo recipe and prints a COCO recipe
resolved through its base."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mbtasks.config import load_config

ROOT = Path(__file__).resolve().parents[1]
STANDALONE = Path(__file__).with_name("data") / "standalone_coco_recipes"
TINY_TRAINING = [
    "model.name=ssdlite320_mobilenet_v3_small",
    "model.options={width_mult: 0.5}",
    "data.size=128",
    "data.synth={seed: 0, num_train: 4, num_val: 2, image_size: 128}",
    "data.batch_size=2",
    "data.val_batch_size=2",
    "data.num_workers=0",
    "train.epochs=1",
    "train.limit_train_batches=1",
    "train.limit_val_batches=1",
    "train.loggers=[csv]",
    "train.progress_bar=false",
]


def _run(command: list[str], **options) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, **options)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The package built as a wheel from a copy of the source (the checkout stays clean) and installed into a folder
    of its own: the environment that runs it from an empty working folder, that folder, and the install folder."""
    root = tmp_path_factory.mktemp("wheel")
    source, wheels, target, work = root / "source", root / "wheels", root / "target", root / "work"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "mbtasks", source / "mbtasks", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    # No build isolation and no index: the build uses this environment's setuptools, nothing is downloaded.
    built = _run([*pip, "wheel", str(source), "--no-deps", "--no-index", "--no-build-isolation", "-w", str(wheels)])
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("mbtasks-*.whl")
    done = _run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)])
    assert done.returncode == 0, done.stderr[-3000:]
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    return {"env": env, "work": work, "target": target}


def _at(installed: dict) -> dict:
    """Where the installed package runs: an empty working folder, PYTHONPATH its install folder alone."""
    return {"cwd": installed["work"], "env": installed["env"]}


def _mbtasks(installed: dict, *args: str) -> subprocess.CompletedProcess:
    result = _run([sys.executable, "-m", "mbtasks", *args], **_at(installed))
    assert result.returncode == 0, (args, result.stderr[-3000:])
    return result


def test_the_installed_package_is_the_one_that_runs(installed):
    where = _run([sys.executable, "-c", "import mbtasks; print(mbtasks.__file__)"], **_at(installed))
    assert Path(where.stdout.strip()).is_relative_to(installed["target"]), where.stdout + where.stderr
    recipes = sorted(path.stem for path in (installed["target"] / "mbtasks" / "recipes").rglob("*.yaml"))
    assert recipes == sorted(path.stem for path in (ROOT / "mbtasks" / "recipes").rglob("*.yaml"))


def test_the_installed_package_lists_trains_ablates_and_prints_recipes_by_name(installed):
    listed = _mbtasks(installed, "recipes").stdout
    assert "det_shapes" in listed and "coco_detection_base (base)" in listed

    out = installed["work"] / "run"
    sets = [*TINY_TRAINING, f"data.synth_dir={installed['work'] / 'data'}", f"train.out_dir={out}"]
    _mbtasks(installed, "train", "--config", "det_shapes", *(a for s in sets for a in ("--set", s)))
    assert (out / "checkpoints" / "last.ckpt").is_file()

    ablation = installed["work"] / "ablation"
    grid = ["--backbones", "v3_small", "--widths", "0.5", "--resolutions", "96", "--runs", "0"]
    printed = _mbtasks(installed, "ablate", "--task", "det", "--profile-only", *grid, "--out", str(ablation)).stdout
    assert "1 profile-only det runs from " in printed and (ablation / "results.csv").is_file()
    # the demo recipe the installed package shipped, by its whole path
    assert str(installed["target"] / "mbtasks" / "recipes" / "demo" / "det_shapes.yaml") in printed

    name = "ssdlite320_mobilenet_v3_large_coco"
    resolved = yaml.safe_load(_mbtasks(installed, "train", "--config", name, "--print-config").stdout)
    standalone = load_config(STANDALONE / f"{name}.yaml").to_dict()
    assert resolved == {**standalone, "description": load_config(name).description}
