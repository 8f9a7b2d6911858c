"""Cosine annealing with optional linear warmup.

Without warmup the LR is `torch.optim.lr_scheduler.CosineAnnealingLR(T_max=total_steps,
eta_min)`; with warmup it is `SequentialLR([LinearLR(start_factor, total_iters=warmup_steps),
CosineAnnealingLR(T_max=total_steps - warmup_steps, eta_min)], milestones=[warmup_steps])`.
Closed form (one plain function, as in nanoGPT), so resuming is exact.
"""

from __future__ import annotations

import math

import torch

from metalr.controllers import register
from metalr.controllers.base import Controller, planned_steps
from metalr.signals import Signals


def cosine_lr(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0, eta_min: float = 0.0, warmup_start_factor: float = 1.0 / 3) -> float:
    """LR at `step` of a linear-warmup + cosine schedule."""
    if step < warmup_steps:
        return base_lr * (warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps)
    t, horizon = step - warmup_steps, max(1, total_steps - warmup_steps)
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t / horizon)) / 2


@register("cosine")
class Cosine(Controller):
    """Cosine decay from the base LR to `eta_min` over `total_steps`, after `warmup_steps`."""

    _past_end = "the LR rises again along the cosine, as torch's CosineAnnealingLR does"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        total_steps: int | None = None,
        warmup_steps: int = 0,
        eta_min: float = 0.0,
        warmup_start_factor: float = 1.0 / 3,
        min_lr: float = 0.0,
        max_lr: float = math.inf,
    ) -> None:
        total_steps = planned_steps("cosine", total_steps)
        if total_steps < 1 or not 0 <= warmup_steps < total_steps:
            raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps < total_steps, got {total_steps}, {warmup_steps}")
        if not 0.0 < warmup_start_factor <= 1.0:
            raise ValueError(f"warmup_start_factor must be in (0, 1], got {warmup_start_factor}")
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.eta_min, self.warmup_start_factor = float(eta_min), float(warmup_start_factor)
        super().__init__(optimizer, min_lr=min_lr, max_lr=max_lr)

    def _lrs_at(self, step: int) -> list[float]:
        return [cosine_lr(step, b, self.total_steps, self.warmup_steps, self.eta_min, self.warmup_start_factor) for b in self.base_lrs]

    def _initial_lrs(self) -> list[float]:
        return self._lrs_at(0)

    def _compute_lrs(self, signals: Signals) -> list[float]:
        return self._lrs_at(self.last_step)
