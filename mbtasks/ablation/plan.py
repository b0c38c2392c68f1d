"""The grid of an ablation: --backbones/--widths/--resolutions parsed, each point a Run with its config checked."""

from dataclasses import dataclass
from pathlib import Path

from ..backbones import BACKBONES
from ..config import Config, load_config
from ..errors import MbtasksError
from ..models import MODELS
from ..recipe_files import find_recipe
from ..sizes import height_width
from ..tasks import TASKS

Resolution = int | tuple[int, int]


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


def parse_heads(text: str) -> list[str]:
    """'ssdlite320,ssd300,fasterrcnn' -> the head families (a model is named HEAD_mobilenet_VERSION)."""
    heads = list(dict.fromkeys(filter(None, (part.strip() for part in text.split(",")))))
    if not heads:
        raise MbtasksError("--heads names no head family")
    return heads


def _headed(head: str, version: str) -> str:
    name = f"{head}_{version}"
    if name not in MODELS:
        raise MbtasksError(f"no model {name} for --heads {head}")
    return name


def default_config(task: str) -> Path:
    """The task's demo recipe (its `demo_recipe`: a packaged recipe's name, or a plugin's file beside its module)."""
    recipe = TASKS.get(task).demo_recipe
    try:
        return find_recipe(recipe).absolute()
    except MbtasksError:
        raise MbtasksError(f"no demo config for {task} ({recipe or 'none named'}): pass --config") from None


def config_resolution(config: Config) -> Resolution:
    """The config's own input size (det: from data.size or the model)."""
    size = TASKS.get(config.task).data_module.input_size(config)
    if size is None:
        raise MbtasksError("the config sets no data.size: pass --resolutions")
    size = height_width(size)
    return size[0] if size[0] == size[1] else size


def plan_runs(
    task: str,
    recipes: list[str | Path],
    overrides: list[str],
    versions: list[str],
    widths: dict[str, list[float]],
    resolutions: list[Resolution] | None,
    heads: list[str] | None = None,
) -> list[Run]:
    """Every combination, each config loaded (the recipes merged in order, `overrides` on top) and checked before any
    run starts. `heads`: head families (frameworks), each on every version, each at its own size unless
    `resolutions` are given; else the recipe's model on every version, at the recipe's size."""
    base = load_config(recipes, overrides, task)
    runs = []
    spec = TASKS.get(task)
    for version in versions:
        for model in (
            [_headed(head, version) for head in heads] if heads else [spec.ablation_model(base.model.name, version)]
        ):
            sizes = resolutions or ([MODELS.get(model).size] if heads else [config_resolution(base)])
            for width, resolution in ((w, r) for w in widths[version] for r in sizes):
                size = resolution if isinstance(resolution, int) else list(resolution)
                grid = [f"model.name={model}", f"model.options.width_mult={width:g}", *spec.size_overrides(size)]
                run_overrides = ["train.progress_bar=false", *overrides, *grid]
                runs.append(
                    Run(version, width, resolution, model, load_config(recipes, run_overrides, task), run_overrides)
                )
    return runs
