"""D-Adaptation (Defazio & Mishchenko, 2023, "Learning-Rate-Free Learning by
D-Adaptation"), DAdaptAdam variant from the `dadaptation` package, as a controller.

The method replaces the optimizer: it estimates the distance to the solution, d,
online and steps with d * lr. So this strategy owns the optimizer
(`make_optimizer`), keeps the user-facing `lr` multiplier at the authors'
recommended 1.0 (optionally cosine-annealed, which the authors also recommend), and
reports the *effective* LR d * lr from the optimizer's `param_groups[0]["d"]` in
`get_last_lr()`, so the harness logs an LR trajectory comparable with every other
strategy's. `DAdaptiveController` is shared with Prodigy (same bookkeeping).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from metalr.controllers import register
from metalr.controllers.base import DEFAULT_TOTAL_STEPS, Controller, planned_steps, whole_steps
from metalr.controllers.cosine import cosine_lr
from metalr.signals import Signals


def check_optimizer_type(ctrl: type[Controller], optimizer: torch.optim.Optimizer, expected: type[Any]) -> None:
    """Refuse an optimizer the strategy cannot drive, saying how to build the right one."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps optimizers
    if not isinstance(inner, expected):
        raise TypeError(
            f"controller {ctrl.name!r} replaces the optimizer and needs a {expected.__module__}.{expected.__name__}, got {type(inner).__name__}; "
            f"build it with metalr.controllers.get({ctrl.name!r}).make_optimizer(params, task=task, total_steps=n)"
        )


class DAdaptiveController(Controller):
    """Bookkeeping for optimizers that scale a user `lr` by an estimated distance `d`.

    The LR written into the optimizer is the multiplier (1.0, or its cosine
    annealing); `get_last_lr()` is what the next step applies: d * max(group lr)
    * bias correction, exactly the `dlr` the optimizer computes.
    """

    owns_optimizer: ClassVar[bool] = True
    optimizer_cls: ClassVar[type[Any]]  # the package optimizer class (typed Any: its __init__ takes lr, d0 ...)
    default_lr: ClassVar[float] = 1.0

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        anneal: str = "none",
        total_steps: int | None = None,
        min_lr: float = 0.0,
        max_lr: float = math.inf,
    ) -> None:
        check_optimizer_type(type(self), optimizer, self.optimizer_cls)
        if anneal not in ("none", "cosine"):
            raise ValueError(f"anneal must be 'none' or 'cosine', got {anneal!r}")
        if anneal == "cosine":
            total_steps = planned_steps(self.name, total_steps)
        elif total_steps is None:
            total_steps = DEFAULT_TOTAL_STEPS  # (not read without annealing)
        else:
            total_steps = whole_steps(self.name, total_steps)
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.anneal, self.total_steps = anneal, int(total_steps)
        self._past_end = "the LR holds the annealing's last value" if anneal == "cosine" else ""
        super().__init__(optimizer, min_lr=min_lr, max_lr=max_lr)

    @classmethod
    def make_optimizer(cls, params: Any, *, task: Any = None, total_steps: int | None = None, lr: float | None = None, **kwargs: Any) -> torch.optim.Optimizer:
        """The authors' defaults: lr=1.0 (d does the scaling); the task's weight decay."""
        kwargs.setdefault("weight_decay", getattr(task, "weight_decay", 0.0))
        return cls.optimizer_cls(params, lr=cls.default_lr if lr is None else lr, **kwargs)

    def _compute_lrs(self, signals: Signals) -> list[float]:
        if self.anneal == "cosine":
            return [cosine_lr(min(self.last_step, self.total_steps), b, self.total_steps) for b in self.base_lrs]
        return list(self.base_lrs)

    def get_last_lr(self) -> list[float]:
        """The effective LR of the next step: d * lr (* Adam bias correction if enabled)."""
        groups = self.optimizer.param_groups
        g0 = groups[0]
        lr = max(float(g["lr"]) for g in groups)  # both packages use the max over groups
        bias_correction = 1.0
        if g0.get("use_bias_correction", False):
            beta1, beta2 = g0["betas"]
            k = g0["k"]
            bias_correction = math.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1))
        return [float(g0["d"]) * lr * bias_correction for _ in groups]

    def step(self, signals: Signals | None = None) -> list[float]:
        super().step(signals)
        return self.get_last_lr()

    def extra_logs(self) -> dict[str, float]:
        return {"d": float(self.optimizer.param_groups[0]["d"])}


def _dadapt_adam() -> type[torch.optim.Optimizer]:
    from dadaptation import DAdaptAdam

    return DAdaptAdam


@register("dadaptation")
class DAdaptation(DAdaptiveController):
    """D-Adapt Adam with decoupled (AdamW-style) weight decay, lr multiplier 1.0."""

    optimizer_cls = _dadapt_adam()

    @classmethod
    def make_optimizer(cls, params: Any, *, task: Any = None, total_steps: int | None = None, lr: float | None = None, **kwargs: Any) -> torch.optim.Optimizer:
        wd = kwargs.get("weight_decay", getattr(task, "weight_decay", 0.0))
        kwargs.setdefault("decouple", wd > 0)  # the authors' advice for AdamW-style decay (the flag only matters with decay)
        return super().make_optimizer(params, task=task, total_steps=total_steps, lr=lr, **kwargs)
