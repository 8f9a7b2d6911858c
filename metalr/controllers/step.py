"""Step decay: LR = base * gamma ** (step // step_size), as `torch.optim.lr_scheduler.StepLR`."""

from __future__ import annotations

import math

import torch

from metalr.controllers import register
from metalr.controllers.base import Controller
from metalr.signals import Signals


@register("step")
class StepDecay(Controller):
    """Multiply the LR by `gamma` every `step_size` steps."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, step_size: int = 100, gamma: float = 0.1, min_lr: float = 0.0, max_lr: float = math.inf) -> None:
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer, min_lr=min_lr, max_lr=max_lr)

    def _compute_lrs(self, signals: Signals) -> list[float]:
        return [base * self.gamma ** (self.last_step // self.step_size) for base in self.base_lrs]
