"""Every LR strategy, behind one interface and one registry.

    from metalr import controllers
    ctrl = controllers.build("cosine", optimizer, total_steps=1000, warmup_steps=50)
    for batch in loader:
        ...
        optimizer.step()
        ctrl.step(signals)          # signals from metalr.signals.SignalTracker

`available()` lists the names; an unknown name or keyword raises with the valid ones.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import torch

from metalr.controllers.base import Controller, MultiplicativeController
from metalr.registry import Registry, check_kwargs

REGISTRY: Registry[type[Controller]] = Registry("controller")
register = REGISTRY.register


def get(name: str) -> type[Controller]:
    """The controller class registered under `name`."""
    _import_all()
    return REGISTRY.get(name)


def build(name: str, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Controller:
    """Build the controller `name` bound to `optimizer`."""
    cls = get(name)
    check_kwargs("controller", name, cls, kwargs)
    return cls(optimizer, **kwargs)


def available() -> list[str]:
    """Registered controller names, sorted."""
    _import_all()
    return REGISTRY.available()


_IMPORTED = False


def _import_all() -> None:
    """Import every module in this package once, so their `@register` runs."""
    global _IMPORTED
    if _IMPORTED:
        return
    _IMPORTED = True
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = ["Controller", "MultiplicativeController", "available", "build", "get", "register", "REGISTRY"]
