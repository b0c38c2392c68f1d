"""Recipe files: those shipped in mbtasks/recipes/ found by name (the file's stem, unique across its folders), any
recipe read with the recipes it extends merged under it, and the listing `mbtasks recipes` prints.

A recipe extends another with a top-level `base: NAME` (a packaged recipe's name, or a file: relative to the
recipe's own folder, else to the working folder). The values merge deeply: mappings key by key, the later over the
earlier; lists and scalars are replaced whole. Several recipes given together (`--config A --config B`) merge the
same way, in order."""

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import MbtasksError

PACKAGED = Path(__file__).with_name("recipes")
BASE_KEY = "base"


def packaged_recipes() -> dict[str, Path]:
    """name -> file of every recipe shipped with the package, by name."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGED.rglob("*.yaml")):
        if path.stem in found:  # a mistake of the package, not the user's: names address recipes
            raise MbtasksError(f"two packaged recipes are named {path.stem}: {found[path.stem]} and {path}")
        found[path.stem] = path
    return dict(sorted(found.items()))


def recipe_names() -> list[str]:
    """The names of the packaged recipes, sorted."""
    return list(packaged_recipes())


def find_recipe(name_or_path: str | Path, beside: Path | None = None) -> Path:
    """The recipe file: an existing file (first in `beside`'s folder, for a base named by a recipe), else the packaged
    recipe of that name; neither is one line naming the closest packaged names."""
    given = Path(name_or_path)
    for path in ([beside.parent / given] if beside is not None and not given.is_absolute() else []) + [given]:
        if path.is_file():
            return path
    packaged = packaged_recipes()
    if str(name_or_path) in packaged:
        return packaged[str(name_or_path)]
    raise MbtasksError(f"no such recipe file, and no packaged recipe of that name{_closest(given.stem)}", name_or_path)


def _closest(name: str) -> str:
    """ " (did you mean a, b?)" naming the packaged recipes closest to `name`, else where to find their names."""
    close = difflib.get_close_matches(name, recipe_names(), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else " (`mbtasks recipes` lists them)"


def merged(under: dict, over: dict) -> dict:
    """`over` merged into a copy of `under`: mappings key by key (deeply), anything else replaced by `over`'s."""
    result = dict(under)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def read_recipe(name_or_path: str | Path) -> dict:
    """A recipe's values, those of the recipes it extends (`base:`) merged under them."""
    return _resolved(find_recipe(name_or_path), [])


def _resolved(path: Path, chain: list[Path]) -> dict:
    if path.resolve() in chain:
        circle = " -> ".join(p.stem for p in [*chain[chain.index(path.resolve()) :], path])
        raise MbtasksError(f"recipes extend each other in a circle ({circle})", path)
    values = read_yaml(path)
    base = values.pop(BASE_KEY, None)
    if base is None:
        return values
    if not isinstance(base, str) or not base:
        raise MbtasksError(f"{BASE_KEY} must be the name or file of the recipe this one extends, got {base!r}", path)
    try:
        under = find_recipe(base, beside=path)
    except MbtasksError:
        raise MbtasksError(f"{BASE_KEY} {base}: no such recipe file or packaged recipe{_closest(base)}", path) from None
    return merged(_resolved(under, [*chain, path.resolve()]), values)


def read_yaml(path: Path) -> dict:
    """One recipe file's own mapping (YAML, safely loaded)."""
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise MbtasksError(f"{where}not valid YAML ({getattr(error, 'problem', error)})", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise MbtasksError(f"cannot be read as a recipe ({error})", path) from None
    if not isinstance(values, dict):
        raise MbtasksError("a config must be a YAML mapping", path)
    return values


@dataclass
class RecipeEntry:
    """One packaged recipe as `mbtasks recipes` lists it (its values resolved through its bases)."""

    name: str
    task: str
    model: str  # empty: it names none (a base, or the task's default model)
    data_format: str  # empty: recognised from the data's layout
    data_root: str | None  # None: the task's embedded set
    description: str
    extends: str | None  # the `base:` it names
    is_base: bool  # other packaged recipes extend it: shared settings rather than a run of its own
    path: str


def recipe_listing() -> list[RecipeEntry]:
    """Every packaged recipe, by name."""
    packaged = packaged_recipes()
    own = {name: read_yaml(path) for name, path in packaged.items()}
    bases = {values.get(BASE_KEY) for values in own.values()}
    entries = []
    for name, path in packaged.items():
        values = read_recipe(path)
        model, data = _section(values, "model"), _section(values, "data")
        entries.append(
            RecipeEntry(
                name=name,
                task=str(values.get("task") or ""),
                model=str(model.get("name") or ""),
                data_format=str(data.get("format") or ""),
                data_root=None if data.get("root") is None else str(data["root"]),
                description=str(values.get("description") or ""),
                extends=own[name].get(BASE_KEY),
                is_base=name in bases,
                path=str(path),
            )
        )
    return entries


def _section(values: dict, key: str) -> dict[str, Any]:
    section = values.get(key)
    return section if isinstance(section, dict) else {}
