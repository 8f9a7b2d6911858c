"""metalr: dynamic learning-rate control for PyTorch.

- `metalr.controllers`: every LR strategy behind one LRScheduler-shaped interface.
- `metalr.signals`: what controllers observe, computed once per step.
- `metalr.tasks`: registered tasks (data + model + loss + metrics).
- `metalr.train.run`: the training harness.
- `metalr.load_pretrained`: the shipped meta-learned controller.
- `metalr.hook`: a controller on an optimizer's step hook, for a one-line plain loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metalr._version import __version__

if TYPE_CHECKING:
    import torch


def load_pretrained(path: str | None = None, optimizer: torch.optim.Optimizer | None = None, **kwargs: Any) -> Any:
    """Load the shipped (or a given) meta-learned controller checkpoint.

    With `optimizer`, returns a bound `Controller` (pass `total_steps=` too); without,
    the frozen policy, which `controllers.build("meta", optimizer, checkpoint=frozen)` binds.
    """
    from metalr.controllers.meta import load_pretrained as _load

    return _load(path, optimizer=optimizer, **kwargs)


def hook(controller: Any, optimizer: torch.optim.Optimizer | None = None, **kwargs: Any) -> Any:
    """`controller` (name, "pretrained", factory or Controller) gathering its own signals from `optimizer`'s step hook.

    The loop then adds one line after `optimizer.step()`: `ctrl.step(loss)`. See
    `metalr.integrations.plain`.
    """
    from metalr.integrations.plain import hook as _hook

    return _hook(controller, optimizer, **kwargs)


__all__ = ["__version__", "hook", "load_pretrained"]
