"""Running the grid: each run trained and evaluated in child processes, then profiled; finished runs are skipped, and
no run folder is removed but the same run's unfinished one, or one of other settings that --overwrite replaces."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from ..backbones import BACKBONES
from ..io.outputs import write_text_atomically
from ..io.records import Record, read_checkpoint
from ..layers.fusion import for_inference
from ..models import MODELS
from ..profiling import count_madds, count_parameters, example_input, measure_latency
from ..recipe_files import find_recipe
from ..reference import DETECTOR_PAPER_FIGURES, DETECTOR_PAPER_OPTIONS, PAPER_FIGURES, SEGMENTER_PAPER_FIGURES
from ..sizes import height_width
from ..tasks import TASKS
from .plan import Resolution, Run, resolution_text

WARMUP = 2  # untimed forward passes before the timed ones


def task_network(config: dict, class_names: list[str], category_ids: list) -> tuple[torch.nn.Module, dict]:
    """The network the task trains for this config and these classes, and its model options (untrained)."""
    record = Record("", "", task=config["task"], class_names=class_names, category_ids=category_ids, config=config)
    task = TASKS.get(config["task"]).from_record(record)
    return task.model, task.model_options


def profile_network(model: torch.nn.Module, resolution: Resolution, runs: int) -> dict:
    """Parameters and multiply-adds of the network; latency (batch 1) of its inference copy, None for runs=0."""
    example = example_input(resolution)
    figures = {"params": count_parameters(model), "madds": count_madds(model, example), "latency_ms": None}
    if runs > 0:
        figures["latency_ms"] = round(measure_latency(for_inference(model), example, runs, WARMUP), 3)
    return figures


def paper_figures(model: str, options: dict, resolution: Resolution) -> tuple[float, float] | None:
    """The papers' (params, multiply-adds) of this network where mbtasks.reference lists it, else None."""
    entry = MODELS.get(model)

    def built_with(wanted: dict) -> bool:
        return all(options.get(k, entry.defaults.get(k, v)) == v for k, v in wanted.items())

    width = float(options.get("width_mult", 1.0))
    hw = height_width(resolution)
    if model in BACKBONES and hw[0] == hw[1]:
        if built_with({"num_classes": 1000, "reduced_tail": False, "output_stride": 32}):
            return PAPER_FIGURES.get((model, width, hw[0]))
    elif entry.kind == "detector" and hw[0] == hw[1]:
        if built_with({"num_classes": 91, **DETECTOR_PAPER_OPTIONS.get(model, {})}):
            return DETECTOR_PAPER_FIGURES.get((model, width, hw[0]))
    elif width == 1.0:
        for (name, wanted, size), figures in SEGMENTER_PAPER_FIGURES.items():
            if name == model and size == hw and isinstance(figures[0], float) and built_with(dict(wanted)):
                return figures
    return None


def _child_commands(run: Run, recipes: list[Path], run_dir: Path) -> dict[str, list[str]]:
    train = ["train", *(a for recipe in recipes for a in ("--config", str(recipe))), "--task", run.config.task]
    for assignment in [*run.overrides, f"train.out_dir={run_dir}"]:
        train += ["--set", assignment]
    evaluate = [
        "evaluate",
        "--checkpoint",
        str(run_dir / "checkpoints" / "best.ckpt"),
        "--json",
        str(run_dir / "metrics.json"),
        "--set",
        "train.progress_bar=false",
    ]
    return {"train": train, "evaluate": evaluate}


def _run_children(commands: dict[str, list[str]], log_path: Path) -> int:
    """`mbtasks train`, then `mbtasks evaluate` of its best checkpoint, each in a process of its own, both printing
    into `log_path`; the first non-zero exit status, else 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log keeps stdout and stderr in the order they were written
    with open(log_path, "a") as log:
        for name in ("train", "evaluate"):
            log.write("$ mbtasks " + shlex.join(commands[name]) + "\n")
            log.flush()
            # The console entry through this interpreter: the `mbtasks` script need not be on PATH.
            child = subprocess.run(
                [sys.executable, "-m", "mbtasks.cli", *commands[name]], stdout=log, stderr=subprocess.STDOUT, env=env
            )
            if child.returncode != 0:
                return child.returncode
    return 0


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return (lines[-1] if lines else "no output").removeprefix("mbtasks: error: ")


def headline_metric(task: str, metrics: dict) -> tuple[str, float | None]:
    """(name, value) of the task's headline figure in an `mbtasks evaluate --json` file's contents."""
    keys = TASKS.get(task).headline_metrics
    name = next((key for key in keys if key in metrics), keys[0])
    value = metrics.get(name)
    return name, None if value is None else float(value)


def run_one(run: Run, recipes: list[Path], run_dir: Path, profile_only: bool, latency_runs: int) -> dict:
    """Train and evaluate `run` in child processes (unless profile-only), then profile it: one results row."""
    task, spec = run.config.task, TASKS.get(run.config.task)
    row = {
        "task": task,
        "version": run.version.removeprefix("mobilenet_"),
        "width": run.width,
        "resolution": resolution_text(run.resolution),
        "model": run.model,
        "status": "ok",
        "error": "",
        "run": run_dir.name,
        "metric_name": "" if profile_only else spec.headline_metrics[0],
    }
    try:
        if profile_only:
            class_count = run.config.model.options.get("num_classes", spec.profile_classes)
            record = Record(
                run.model,
                run.version,
                config=run.config.to_dict(),
                class_names=[f"class_{i}" for i in range(class_count)],
                category_ids=list(range(1, class_count + 1)),
            )
        else:
            commands = _child_commands(run, recipes, run_dir)
            (run_dir / "commands.json").write_text(json.dumps(commands, indent=2))
            if _run_children(commands, run_dir / "log.txt") != 0:
                return {**row, "status": "failed", "error": _last_line(run_dir / "log.txt")}
            metrics = json.loads((run_dir / "metrics.json").read_text())
            row["metric_name"], row["metric"] = headline_metric(task, metrics)
            record = read_checkpoint(run_dir / "checkpoints" / "best.ckpt", task)
        model, options = task_network(record.config, record.class_names, record.category_ids)
        row.update(profile_network(model, run.resolution, latency_runs))
        row["paper_params"], row["paper_madds"] = paper_figures(run.model, options, run.resolution) or (None, None)
    except Exception as error:  # noqa: BLE001  (any failure of one run is that run's result; the grid goes on)
        lines = str(error).strip().splitlines() or [type(error).__name__]
        return {**row, "status": "failed", "error": lines[-1]}
    return row


def _settings(run: Run, profile_only: bool) -> dict:
    """What a finished run's result depends on: the resolved config (less its output folder) and the mode."""
    config = run.config.to_dict()
    config["train"].pop("out_dir")
    return json.loads(json.dumps({"config": config, "profile_only": profile_only}))  # as result.json reads back


def read_result(run_dir: Path) -> dict:
    """RUN_DIR/result.json ({"settings", "row"}; row None while the run is under way), or {} where there is none or
    it cannot be read: such a folder is not taken for one of ours."""
    try:
        result = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return {}
    return result if isinstance(result, dict) and "settings" in result else {}


def run_folder(runs_dir: Path, name: str, settings: dict, overwrite: bool) -> Path:
    """Where the run `name` with these settings goes: the folder that holds them (NAME, or NAME-2, NAME-3, ... from
    earlier changes of settings), else NAME-N, the first free one; with `overwrite`, NAME itself when it holds a run
    of other settings. A folder without a readable result.json (not ours, or broken) is never chosen."""

    def named(number: int) -> Path:
        return runs_dir / (name if number == 1 else f"{name}-{number}")

    suffixes = [p.name[len(name) + 1 :] for p in runs_dir.glob(f"{name}-*")]
    numbers = [1] + [int(suffix) for suffix in suffixes if suffix.isdigit()]
    for number in sorted(numbers):
        if read_result(named(number)).get("settings") == settings:
            return named(number)
    if overwrite and read_result(named(1)):
        return named(1)
    return named(next(n for n in range(1, len(numbers) + 2) if not named(n).exists()))


def prepare_run_folder(run_dir: Path, settings: dict) -> None:
    """The run's folder emptied and marked as ours, before the run starts in it."""
    # Ours (run_folder): this run unfinished or failed, or another one that --overwrite replaces. Its checkpoints
    # would make the new `mbtasks train` refuse the folder.
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Written first, so that an interrupted run's folder is known for ours; replaced whole, never half-written.
    write_text_atomically(run_dir / "result.json", json.dumps({"settings": settings, "row": None}))


def grid_folders(runs: list[Run], out: str | Path, profile_only: bool, overwrite: bool) -> list[tuple[Run, Path, dict]]:
    """Every run of the grid with its folder under OUT/runs/ (run_folder) and its settings."""
    points = []
    for run in runs:
        settings = _settings(run, profile_only)
        points.append((run, run_folder(Path(out).resolve() / "runs", run.name, settings, overwrite), settings))
    return points


def collected_rows(points: list[tuple[Run, Path, dict]]) -> list[dict]:
    """The rows of the points that have ended (result.json with their settings), in grid order."""
    results = [read_result(run_dir) for _, run_dir, _ in points]
    return [
        result["row"]
        for result, (_, _, settings) in zip(results, points)
        if result.get("settings") == settings and result.get("row")
    ]


def run_ablation(
    runs: list[Run],
    recipes: list[str | Path],
    out: str | Path,
    profile_only: bool = False,
    latency_runs: int = 10,
    log=print,
    overwrite: bool = False,
) -> list[dict]:
    """Run (or reuse) every run of the grid under OUT/runs/ (run_folder); returns the results rows in grid order."""
    recipes = [find_recipe(recipe).resolve() for recipe in recipes]  # whole paths in the commands.json of each run
    rows = []
    for index, run in enumerate(runs, 1):
        settings = _settings(run, profile_only)
        run_dir = run_folder(Path(out).resolve() / "runs", run.name, settings, overwrite)
        previous = read_result(run_dir)
        if previous.get("settings") == settings and (previous.get("row") or {}).get("status") == "ok":
            row, what = previous["row"], "finished before, skipped"
        else:
            prepare_run_folder(run_dir, settings)
            row = run_one(run, recipes, run_dir, profile_only, latency_runs)
            write_text_atomically(run_dir / "result.json", json.dumps({"settings": settings, "row": row}, indent=2))
            what = _summary(row)
        log(f"[{index}/{len(runs)}] {run_dir.name}: {what}")
        rows.append(row)
    return rows


def _summary(row: dict) -> str:
    if row["status"] != "ok":
        return f"failed: {row['error']}"
    text = f"{row['params'] / 1e6:.2f}M params, {row['madds'] / 1e6:.1f}M MAdds"
    if row.get("latency_ms") is not None:
        text += f", {row['latency_ms']:.1f} ms"
    if row.get("metric") is not None:
        text += f", {row['metric_name']} {row['metric']:.4f}"
    return text
