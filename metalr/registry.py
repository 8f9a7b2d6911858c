"""A tiny name -> factory registry that refuses unknown names and keywords.

Used for controllers and tasks alike, so a config can select either by string
and a typo fails at once with the list of valid choices.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            if inspect.isclass(obj):
                obj.name = name  # type: ignore[attr-defined]
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.available())}")
        return self._entries[name]

    def available(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def accepted_kwargs(fn: Callable[..., Any]) -> list[str]:
    """Keyword names accepted by a class's __init__ (walking its MRO) or a function."""
    names: list[str] = []
    targets = [vars(k)["__init__"] for k in inspect.getmro(fn) if "__init__" in vars(k)] if inspect.isclass(fn) else [fn]
    for target in targets:
        params = inspect.signature(target).parameters.values()
        for p in params:
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("self", "optimizer") and p.name not in names:
                names.append(p.name)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def check_kwargs(kind: str, name: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Raise TypeError naming the unknown keywords and the valid ones."""
    valid = accepted_kwargs(fn)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"{kind} {name!r} got unknown keyword(s) {unknown}; valid: {', '.join(sorted(valid)) or '(none)'}")
