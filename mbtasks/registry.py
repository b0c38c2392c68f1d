"""Registry: names -> things, filled where the things are defined (torchvision's `register_model` pattern)."""
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import MbtasksError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping of names to registered objects; registering a name twice raises, and `get` of an unknown name is a
    one-line error that lists the known names. What a registered object must be is the owning registry's docstring."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """`@registry.register(name)` above a definition, or `registry.register(name, obj)`."""
        if obj is not None:
            return self._add(name, obj)
        return lambda defined: self._add(name, defined)

    def _add(self, name: str, obj: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> T:
        """The object registered as `name`, or MbtasksError naming the known names."""
        if name not in self._entries:
            raise MbtasksError(f"unknown {self.kind} {name!r}; known: {', '.join(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def items(self):
        return self._entries.items()
