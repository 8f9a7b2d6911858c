"""Task registry: `build(name, preset="cpu", **overrides)` and `available()`.

A task factory takes `preset` ("cpu": trains in minutes on 2 cores; "full": the
research plans' settings) and keyword overrides of any `Task` field
(`lr`, `batch_size`, `steps`, `optimizer` ...).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from metalr.registry import Registry
from metalr.tasks.base import StepOutput, Task

TaskFactory = Callable[..., Task]
REGISTRY: Registry[TaskFactory] = Registry("task")
register = REGISTRY.register
PRESETS = ("cpu", "full")
_TASK_FIELDS = {f.name for f in dataclasses.fields(Task)}


def build(name: str, preset: str = "cpu", **overrides: Any) -> Task:
    """Build task `name`; `overrides` replace Task fields (e.g. lr=0.1, steps=200)."""
    _import_all()
    factory = REGISTRY.get(name)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - _TASK_FIELDS)
    if unknown:
        raise TypeError(f"task {name!r} got unknown override(s) {unknown}; valid: {', '.join(sorted(_TASK_FIELDS))}")
    task = factory(preset=preset)
    return dataclasses.replace(task, **overrides) if overrides else task


def available() -> list[str]:
    _import_all()
    return REGISTRY.available()


_IMPORTED = False


def _import_all() -> None:
    global _IMPORTED
    if _IMPORTED:
        return
    _IMPORTED = True
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = ["StepOutput", "Task", "available", "build", "register", "REGISTRY", "PRESETS"]
