"""Exponential decay: LR = base * gamma ** step, as `torch.optim.lr_scheduler.ExponentialLR`."""

from __future__ import annotations

import math

import torch

from metalr.controllers import register
from metalr.controllers.base import Controller
from metalr.signals import Signals


@register("exponential")
class ExponentialDecay(Controller):
    """Multiply the LR by `gamma` every step."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, gamma: float = 0.999, min_lr: float = 0.0, max_lr: float = math.inf) -> None:
        if not 0.0 < gamma <= 1.0 + 1e-12:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.gamma = float(gamma)
        super().__init__(optimizer, min_lr=min_lr, max_lr=max_lr)

    def _compute_lrs(self, signals: Signals) -> list[float]:
        return [base * self.gamma**self.last_step for base in self.base_lrs]
