"""The small YAML (or JSON) file of class names that the folder formats keep beside their images."""

from __future__ import annotations

from pathlib import Path

import yaml

from mbtasks.errors import MbtasksError


def read_classes_file(root: Path, names: tuple[str, ...]) -> tuple[Path, dict]:
    """(the file, its mapping): the first of the file `names` found in `root`, read with yaml.safe_load (which reads
    JSON too)."""
    path = next((root / name for name in names if (root / name).is_file()), None)
    if path is None:
        raise MbtasksError(f"no {' or '.join(names)} here (the class names: `classes: [name, ...]`)", root)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise MbtasksError(
            f"{where}not valid YAML or JSON ({getattr(error, 'problem', None) or error})", path
        ) from None
    if not isinstance(values, dict):
        raise MbtasksError("expected a mapping with the class names (`classes: [name, ...]`)", path)
    return path, values


def class_list(value: object, key: str, path: Path) -> tuple[str, ...]:
    """Class names given as a list, or as {index: name} over the indices 0..N-1 (as Ultralytics' data.yaml may give
    them), checked: at least one, each a distinct non-empty string."""
    if isinstance(value, dict):
        indices = list(value)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices) or sorted(indices) != list(
            range(len(indices))
        ):
            raise MbtasksError(
                f"{key}: a mapping of class names must have the indices 0..{len(indices) - 1}, got {indices!r}", path
            )
        value = [value[i] for i in range(len(indices))]
    if not isinstance(value, list) or not value or not all(isinstance(name, str) and name.strip() for name in value):
        raise MbtasksError(f"{key} must be a non-empty list of class names, got {value!r}", path)
    repeated = sorted({name for name in value if value.count(name) > 1})
    if repeated:
        raise MbtasksError(f"{key} names {repeated[0]!r} twice", path)
    return tuple(value)
