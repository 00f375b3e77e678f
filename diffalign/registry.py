"""Name -> factory registries (scorers, algorithms, benchmarks), extensible through entry points."""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

from diffalign.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories.

    ``entry_point_group`` lets other installed packages add entries: an entry point
    ``name = "pkg.module:factory"`` in that group is registered under ``name`` on first lookup.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._factories: dict[str, Callable[..., T]] = {}
        self._loaded_entry_points = False

    def register(self, name: str, factory: Callable[..., T] | None = None, *, overwrite: bool = False):
        """Register ``factory`` under ``name``; usable as a decorator."""

        def add(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories and not overwrite and self._factories[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = obj
            return obj

        return add(factory) if factory is not None else add

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points or self.entry_point_group is None:
            return
        self._loaded_entry_points = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name not in self._factories:
                self._factories[ep.name] = ep.load()

    def get(self, name: str) -> Callable[..., T]:
        self._load_entry_points()
        if name not in self._factories:
            known = ", ".join(sorted(self._factories)) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._factories[name]

    def build(self, name: str, **options) -> T:
        return self.get(name)(**options)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
