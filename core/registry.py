"""One registry helper for every extension point (tasks, backends, baselines, templates, weight syncs):
a new one is one file plus one `@REGISTRY.register("name")` line."""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """A name -> entry mapping that refuses duplicate names and names the known ones on a miss."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator; a registered class gets `name` as its `name` attribute."""

        def deco(entry: T) -> T:
            self.add(name, entry)
            if isinstance(entry, type):
                entry.name = name
            return entry

        return deco

    def add(self, name: str, entry: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({self[name]!r} and {entry!r})")
        self[name] = entry
        return entry

    def lookup(self, name: str) -> T:
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {sorted(self)}")
        return self[name]
