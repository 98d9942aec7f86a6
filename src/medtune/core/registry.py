"""One registry per pluggable part (backbones, decoders, tuning methods, dataset formats).

Each part gets a `Registry` with a `register` decorator, `names()` and `create(name, **kw)`.
Duplicate names are rejected; an unknown name is answered with the list of known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from medtune.core.errors import MedtuneInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> factory table for one kind of part (e.g. "backbone")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering `obj` under `name`; a second registration of a name raises."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The entry registered as `name`; an unknown name raises with the known names."""
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise MedtuneInputError(f"unknown {self.kind} '{name}'; known: {known}")
        return self._entries[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory registered as `name` with the given arguments."""
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
