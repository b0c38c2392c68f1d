"""Registry: names -> things, filled where the things are defined (torchvision's `register_model` pattern), and by
third-party packages through an entry-point group (loaded on the first lookup, so `mbtasks --help` stays instant)."""

import difflib
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Generic, TypeVar

from .errors import MbtasksError

T = TypeVar("T")


def closest(name: str, known: list[str]) -> str:
    """' (did you mean X?)' for the known name nearest a mistyped one, or '' when none is near."""
    match = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Registry(Generic[T]):
    """A mapping of names to registered objects; registering a name twice raises, and `get` of an unknown name is a
    one-line error naming the closest known name. What a registered object must be is the owning registry's
    docstring.

    Args:
        kind: what the entries are, for messages ("task", "data format", "model").
        group: the entry-point group third-party packages register under (e.g. `mbtasks.tasks`): each entry point
            names a module (imported: its decorators register) or an object (registered under the entry point's
            name unless importing it registered it already). A plugin that fails to load is one warning line naming
            it; the others and the built-in entries keep working.
        name_attribute: an attribute set on each registered object to its name (a task class's `task`).
    """

    def __init__(self, kind: str, group: str | None = None, name_attribute: str | None = None):
        self.kind, self.group, self.name_attribute = kind, group, name_attribute
        self._entries: dict[str, T] = {}
        self._plugins_loaded = group is None
        self.broken_plugins: dict[str, str] = {}  # entry point name -> why it did not load

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """`@registry.register(name)` above a definition, or `registry.register(name, obj)`."""
        if obj is not None:
            return self._add(name, obj)
        return lambda defined: self._add(name, defined)

    def _add(self, name: str, obj: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if self.name_attribute is not None:
            setattr(obj, self.name_attribute, name)
        self._entries[name] = obj
        return obj

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # first: a plugin that looks itself up while loading must not load again
        for entry_point in metadata.entry_points(group=self.group):
            try:
                loaded = entry_point.load()
                if not isinstance(loaded, type(sys)) and entry_point.name not in self._entries:
                    if not any(obj is loaded for obj in self._entries.values()):
                        self._add(entry_point.name, loaded)
            except Exception as error:  # noqa: BLE001  (any failure of a plugin is that plugin's, told in one line)
                why = (str(error).strip().splitlines() or [type(error).__name__])[-1]
                self.broken_plugins[entry_point.name] = f"{type(error).__name__}: {why}"
                print(
                    f"mbtasks: warning: {self.kind} plugin {entry_point.name!r} ({entry_point.value}) failed to "
                    f"load and is left out: {type(error).__name__}: {why}",
                    file=sys.stderr,
                )

    def get(self, name: str) -> T:
        """The object registered as `name`, or MbtasksError naming the closest known names."""
        self._load_plugins()
        if name not in self._entries:
            if name in self.broken_plugins:
                raise MbtasksError(f"{self.kind} {name!r} is a plugin that failed to load: {self.broken_plugins[name]}")
            raise MbtasksError(
                f"unknown {self.kind} {name!r}{closest(name, self.names())}; known: {', '.join(self._entries)}"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        self._load_plugins()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self._load_plugins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._entries)

    def names(self) -> list[str]:
        """Registered names in registration order (built-in first, then plugins)."""
        self._load_plugins()
        return list(self._entries)

    def items(self):
        self._load_plugins()
        return list(self._entries.items())

    def values(self) -> list[T]:
        self._load_plugins()
        return list(self._entries.values())
