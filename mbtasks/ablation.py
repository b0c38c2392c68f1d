"""Grids of runs -> CSV, Markdown, plots: versions x widths x resolutions of one task, as the papers' tables.

Each run trains and evaluates in a child process of its own (`python -m mbtasks.ablation RUN_DIR` runs the
`mbtasks train` and `mbtasks evaluate` commands written to RUN_DIR/commands.json), so a crash in one run is
recorded and the others go on; the parent then profiles the trained network. A run whose RUN_DIR/result.json holds
a finished result for the same resolved config is not run again; one finished with other settings is run again in a
fresh RUN_DIR.
"""
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .backbones import BACKBONES
from .config import Config, load_config
from .errors import MbtasksError
from .profiling import (DETECTOR_PAPER_FIGURES, DETECTOR_PAPER_OPTIONS, PAPER_FIGURES, SEGMENTER_PAPER_FIGURES,
                        count_madds, count_parameters, example_input, measure_latency)

Resolution = int | tuple[int, int]

COLUMNS = ["task", "version", "width", "resolution", "model", "params", "madds", "latency_ms", "paper_params",
           "paper_madds", "metric_name", "metric", "status", "error", "run"]
WARMUP = 2  # untimed forward passes before the timed ones


@dataclass
class Run:
    """One point of the grid: a backbone version at a width and an input resolution, as a model of the task."""

    version: str  # a BACKBONES name
    width: float
    resolution: Resolution
    model: str
    config: Config  # the task's config with the grid's settings applied
    overrides: list[str]  # the --set assignments that make `config` from the config file

    @property
    def name(self) -> str:
        return f"{self.model}_w{self.width:g}_r{resolution_text(self.resolution)}"


def resolution_text(resolution: Resolution) -> str:
    return str(resolution) if isinstance(resolution, int) else f"{resolution[0]}x{resolution[1]}"


# ---- the grid ----


def _version(name: str, where: str) -> str:
    """'v1' or 'mobilenet_v1' -> 'mobilenet_v1'."""
    full = name if name.startswith("mobilenet_") else f"mobilenet_{name}"
    if full not in BACKBONES:
        known = ", ".join(v.removeprefix("mobilenet_") for v in BACKBONES)
        raise MbtasksError(f"unknown backbone {name!r} in {where}; known: {known}")
    return full


def parse_versions(text: str) -> list[str]:
    """'v1,v3_large' (or full names) -> BACKBONES names."""
    versions = [_version(item, "--backbones") for item in filter(None, (part.strip() for part in text.split(",")))]
    if not versions:
        raise MbtasksError("--backbones names no backbone")
    return versions


def _numbers(text: str, what: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MbtasksError(f"{what} must be numbers separated by commas, got {text!r}") from None
    if not values or any(not value > 0 for value in values):
        raise MbtasksError(f"{what} must be positive numbers separated by commas, got {text!r}")
    return values


def parse_widths(specs: list[str], versions: list[str]) -> dict[str, list[float]]:
    """['0.5,1.0', 'v1=0.25,0.5'] -> widths per version: a VERSION= list is that version's, a plain list every
    other version's (default 1.0)."""
    plain, own = [1.0], {}
    for spec in specs:
        if "=" in spec:
            short, text = spec.split("=", 1)
            version = _version(short.strip(), "--widths")
            if version not in versions:
                raise MbtasksError(f"--widths {spec}: {short} is not in --backbones")
            own[version] = _numbers(text, f"--widths {short}")
        else:
            plain = _numbers(spec, "--widths")
    return {version: own.get(version, plain) for version in versions}


def parse_resolutions(text: str) -> list[Resolution]:
    """'160,224,320x512' -> [160, 224, (320, 512)] (height x width)."""
    resolutions = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            size = tuple(int(v) for v in item.lower().split("x"))
        except ValueError:
            size = ()
        if len(size) not in (1, 2) or min(size) <= 0:
            raise MbtasksError(f"resolution must be N or HxW (positive integers), got {item!r} in --resolutions")
        resolutions.append(size[0] if len(size) == 1 else size)
    if not resolutions:
        raise MbtasksError("--resolutions names no resolution")
    return resolutions


def default_config(task: str) -> Path:
    """The task's demo config, from the source tree the package sits in."""
    from .tasks import TASKS

    path = Path(__file__).resolve().parent.parent / "configs" / "demo" / TASKS.get(task).demo_config
    if not path.is_file():
        raise MbtasksError(f"no demo config for {task} next to the package ({path}): pass --config")
    return path


def model_for(task: str, config_model: str, version: str) -> str:
    """The task's model on `version`: the config's head family where it has that version (ssd300 only has v1,
    Lite R-ASPP no v1), else SSDLite / DeepLabv3; image tasks use the backbone's own name."""
    from .models import MODELS

    if task in ("attr", "embed", "cls"):
        return version
    family = config_model.split("_mobilenet_")[0] if "_mobilenet_" in config_model else ""
    fallback = {"det": "ssdlite320", "seg": "deeplabv3"}[task]
    for head in (family, fallback):
        if f"{head}_{version}" in MODELS:
            return f"{head}_{version}"
    raise MbtasksError(f"no {task} model on {version}")


def config_resolution(config: Config) -> Resolution:
    """The config's own input size (det: from data.size or the model)."""
    from .tasks import TASKS

    size = TASKS.get(config.task).data_module.input_size(config)
    if size is None:
        raise MbtasksError("the config sets no data.size: pass --resolutions")
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return size[0] if size[0] == size[1] else size


def plan_runs(task: str, config_path: str | Path, overrides: list[str], versions: list[str],
              widths: dict[str, list[float]], resolutions: list[Resolution] | None) -> list[Run]:
    """Every combination, each config loaded and checked before any run starts."""
    base = load_config(config_path, overrides, task)
    resolutions = resolutions or [config_resolution(base)]
    runs = []
    for version in versions:
        model = model_for(task, base.model.name, version)
        for width in widths[version]:
            for resolution in resolutions:
                size = resolution if isinstance(resolution, int) else list(resolution)
                grid = [f"model.name={model}", f"model.options.width_mult={width:g}", f"data.size={size}"]
                if task == "det":  # a detector's size option outranks data.size
                    grid.append(f"model.options.size={size}")
                run_overrides = ["train.progress_bar=false", *overrides, *grid]
                runs.append(Run(version, width, resolution, model, load_config(config_path, run_overrides, task),
                                run_overrides))
    return runs


# ---- one run ----


def task_network(config: dict, class_names: list[str], category_ids: list) -> tuple[torch.nn.Module, dict]:
    """The network the task trains for this config and these classes, and its model options (untrained)."""
    from .tasks import TASKS

    config = {**config, "model": {**config["model"], "weights": None, "backbone_weights": None}}
    task = TASKS.get(config["task"]).module(config, class_names, category_ids)
    return task.model, task.model_options


def profile_network(model: torch.nn.Module, resolution: Resolution, runs: int) -> dict:
    """Parameters and multiply-adds of the network; latency (batch 1) of its inference copy, None for runs=0."""
    from .layers.fusion import for_inference

    example = example_input(resolution)
    figures = {"params": count_parameters(model), "madds": count_madds(model, example), "latency_ms": None}
    if runs > 0:
        figures["latency_ms"] = round(measure_latency(for_inference(model), example, runs, WARMUP), 3)
    return figures


def paper_figures(model: str, options: dict, resolution: Resolution) -> tuple[float, float] | None:
    """The papers' (params, multiply-adds) of this network where REFERENCE.md lists it, else None."""
    import inspect

    from .models.detectors import DETECTORS, build_ssd
    from .models import MODELS

    builder = build_ssd if model in DETECTORS else MODELS.get(model).build
    defaults = {k: p.default for k, p in inspect.signature(builder).parameters.items() if p.default is not p.empty}

    def built_with(wanted: dict) -> bool:
        return all(options.get(k, defaults.get(k, v)) == v for k, v in wanted.items())

    width = float(options.get("width_mult", 1.0))
    hw = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if model in BACKBONES and hw[0] == hw[1]:
        if built_with({"num_classes": 1000, "reduced_tail": False, "output_stride": 32}):
            return PAPER_FIGURES.get((model, width, hw[0]))
    elif model in DETECTORS and hw[0] == hw[1]:
        if built_with({"num_classes": 91, **DETECTOR_PAPER_OPTIONS.get(model, {})}):
            return DETECTOR_PAPER_FIGURES.get((model, width, hw[0]))
    elif width == 1.0:
        for (name, wanted, size), figures in SEGMENTER_PAPER_FIGURES.items():
            if name == model and size == hw and isinstance(figures[0], float) and built_with(dict(wanted)):
                return figures
    return None


def _child_commands(run: Run, config_path: Path, run_dir: Path) -> dict[str, list[str]]:
    train = ["train", "--config", str(config_path), "--task", run.config.task]
    for assignment in [*run.overrides, f"train.out_dir={run_dir}"]:
        train += ["--set", assignment]
    evaluate = ["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "best.ckpt"),
                "--json", str(run_dir / "metrics.json"), "--set", "train.progress_bar=false"]
    return {"train": train, "evaluate": evaluate}


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return (lines[-1] if lines else "no output").removeprefix("mbtasks: error: ")


def headline_metric(task: str, metrics: dict) -> tuple[str, float | None]:
    """(name, value) of the task's headline figure in an `mbtasks evaluate --json` file's contents."""
    from .tasks import TASKS

    keys = TASKS.get(task).headline_metrics
    name = next((key for key in keys if key in metrics), keys[0])
    value = metrics.get(name)
    return name, None if value is None else float(value)


def run_one(run: Run, config_path: Path, run_dir: Path, profile_only: bool, latency_runs: int) -> dict:
    """Train and evaluate `run` in a child process (unless profile-only), then profile it: one results row."""
    from .tasks import TASKS

    task, spec = run.config.task, TASKS.get(run.config.task)
    row = {"task": task, "version": run.version.removeprefix("mobilenet_"), "width": run.width,
           "resolution": resolution_text(run.resolution), "model": run.model, "status": "ok", "error": "",
           "run": run.name, "metric_name": "" if profile_only else spec.headline_metrics[0]}
    try:
        if profile_only:
            class_count = run.config.model.options.get("num_classes", spec.profile_classes)
            record = {"config": run.config.to_dict(), "class_names": [f"class_{i}" for i in range(class_count)],
                      "category_ids": list(range(1, class_count + 1))}
        else:
            commands = _child_commands(run, config_path, run_dir)
            (run_dir / "commands.json").write_text(json.dumps(commands, indent=2))
            with open(run_dir / "log.txt", "w") as log:
                child = subprocess.run([sys.executable, "-m", "mbtasks.ablation", str(run_dir)], stdout=log,
                                       stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if child.returncode != 0:
                return {**row, "status": "failed", "error": _last_line(run_dir / "log.txt")}
            metrics = json.loads((run_dir / "metrics.json").read_text())
            row["metric_name"], row["metric"] = headline_metric(task, metrics)
            from .io.records import read_checkpoint

            record = read_checkpoint(run_dir / "checkpoints" / "best.ckpt", task).to_dict()
        model, options = task_network(record["config"], record["class_names"], record.get("category_ids", []))
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


def run_ablation(runs: list[Run], config_path: str | Path, out: str | Path, profile_only: bool = False,
                 latency_runs: int = 10, log=print) -> list[dict]:
    """Run (or reuse) every run of the grid under OUT/runs/<run name>; returns the results rows in grid order."""
    config_path = Path(config_path).resolve()
    rows = []
    for index, run in enumerate(runs, 1):
        run_dir = Path(out).resolve() / "runs" / run.name
        result_file = run_dir / "result.json"
        settings = _settings(run, profile_only)
        previous = json.loads(result_file.read_text()) if result_file.is_file() else {}
        if previous.get("settings") == settings and previous["row"]["status"] == "ok":
            row, what = previous["row"], "finished before, skipped"
        else:
            shutil.rmtree(run_dir, ignore_errors=True)  # a stale checkpoint would make Lightning write best-v1.ckpt
            run_dir.mkdir(parents=True)
            row = run_one(run, config_path, run_dir, profile_only, latency_runs)
            result_file.write_text(json.dumps({"settings": settings, "row": row}, indent=2))
            what = _summary(row)
        log(f"[{index}/{len(runs)}] {run.name}: {what}")
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


# ---- outputs ----


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in COLUMNS})


def _sorted(rows: list[dict]) -> list[dict]:
    order = [v.removeprefix("mobilenet_") for v in BACKBONES]
    return sorted(rows, key=lambda r: (order.index(r["version"]), r.get("madds") or 0, r["width"]))


def write_markdown(rows: list[dict], path: Path, profile_only: bool, latency_runs: int) -> None:
    """The papers' table (model, multiply-adds, parameters, latency, metric), sorted by version then MAdds."""
    done = _sorted([r for r in rows if r["status"] == "ok"])
    metric = next((r["metric_name"] for r in done), "metric")
    header = ["model", "width", "input", "MAdds", "paper", "params", "paper", "latency (ms)"]
    header += [] if profile_only else [metric]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in done:
        cells = [r["model"], f"{r['width']:g}", r["resolution"], f"{r['madds'] / 1e6:.1f}M",
                 _paper(r.get("paper_madds")), f"{r['params'] / 1e6:.2f}M", _paper(r.get("paper_params")),
                 "" if r.get("latency_ms") is None else f"{r['latency_ms']:.1f}"]
        if not profile_only:
            cells.append("" if r.get("metric") is None else f"{r['metric']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if latency_runs > 0:
        lines.append(f"Latency: median of {latency_runs} runs at batch 1 of the inference copy (batch norm folded, "
                     f"channels-last), {torch.get_num_threads()} CPU thread(s), on the machine that ran this table.")
    lines.append("paper: the papers' figures (REFERENCE.md) where they list this network.")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", "Failed runs:", ""] + [f"- {r['run']}: {r['error']}" for r in failed]
    path.write_text("\n".join(lines) + "\n")


def _paper(value: float | None) -> str:
    return "" if value is None else f"{value / 1e6:g}M"


def write_plot(rows: list[dict], x: str, y: str, path: Path, xlabel: str, ylabel: str) -> bool:
    """One line-and-markers series per version, points labelled width-resolution; False when no row has both."""
    from matplotlib.figure import Figure

    points = [r for r in rows if r["status"] == "ok" and r.get(x) is not None and r.get(y) is not None]
    if not points:
        return False
    figure = Figure(figsize=(7, 5), dpi=120)
    axes = figure.subplots()
    for version in dict.fromkeys(r["version"] for r in _sorted(points)):
        series = sorted((r for r in points if r["version"] == version), key=lambda r: r[x])
        xs = [r[x] / 1e6 if x == "madds" else r[x] for r in series]
        axes.plot(xs, [r[y] for r in series], marker="o", label=version)
        for value, r in zip(xs, series):
            axes.annotate(f"{r['width']:g}-{r['resolution']}", (value, r[y]), fontsize=6, alpha=0.7,
                          textcoords="offset points", xytext=(3, 3))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(title="version")
    figure.tight_layout()
    figure.savefig(path)
    return True


def write_outputs(rows: list[dict], out: str | Path, profile_only: bool, latency_runs: int) -> list[Path]:
    """results.csv, results.md and the plots (metric against MAdds and latency; profile-only: latency against
    MAdds); returns the files written."""
    out = Path(out)
    written = [out / "results.csv", out / "results.md"]
    write_csv(rows, written[0])
    write_markdown(rows, written[1], profile_only, latency_runs)
    metric = next((r["metric_name"] for r in rows if r.get("metric_name")), "metric")
    plots = ([("latency_ms", "madds", "latency_vs_madds.png")] if profile_only else
             [("metric", "madds", "metric_vs_madds.png"), ("metric", "latency_ms", "metric_vs_latency.png")])
    labels = {"madds": "multiply-adds (M)", "latency_ms": "latency (ms, batch 1)", "metric": metric}
    for y, x, name in plots:
        if write_plot(rows, x, y, out / name, labels[x], labels[y]):
            written.append(out / name)
    return written


def _run_commands(run_dir: str) -> int:
    """A trained run's child process: `mbtasks train`, then `mbtasks evaluate` of its best checkpoint."""
    from .cli import main

    commands = json.loads((Path(run_dir) / "commands.json").read_text())
    for name in ("train", "evaluate"):
        print("$ mbtasks " + shlex.join(commands[name]), flush=True)
        status = main(commands[name])
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(_run_commands(sys.argv[1]))
