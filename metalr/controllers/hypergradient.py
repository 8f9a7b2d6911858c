"""Hypergradient descent (Baydin et al., 2018, "Online Learning Rate Adaptation with
Hypergradient Descent").

The derivative of the loss at step t with respect to the LR used at step t-1 is
h_t = -g_t . u_{t-1}, where u_{t-1} is the previous update direction
(theta_t = theta_{t-1} - lr * u_{t-1}): the gradient itself for SGD, m/(sqrt(v)+eps)
for Adam. The tracker measures u from the actual parameter change, so one rule
serves SGD, SGD+momentum and Adam.

- `rule="additive"` (the paper's SGD-HD / Adam-HD): lr += beta * g_t . u_{t-1}.
  beta is scale-dependent (the paper uses 1e-3 for SGD and 1e-7 for Adam). With param groups
  at different LRs each group's LR follows its own hypergradient (its parameters' g . u);
  groups that start at the same LR (a weight-decay split) share one, that of all their parameters.
- `rule="multiplicative"` (default; the paper's normalised variant):
  lr *= 1 + beta * cos(g_t, u_{t-1}); scale-free, so one beta transfers across tasks. With
  param groups at different LRs, d = theta_{t-1} - theta_t is the whole step (each group's at its
  own LR): every group's LR takes the same factor, their ratios kept; a group at LR 0 is left
  out of the cosine and stays at 0.

Consecutive gradients that agree raise the LR; ones that disagree lower it.

Cost: the tracker keeps the previous parameters (one model-sized buffer, updated in
place) and reads g_t . u_{t-1} and two norms as Python floats every step: on a GPU,
one host-device synchronisation per step, the three read together (`benchmarks/README.md`). On the CPU the
difference, the three sums and the new copy take one pass over memory
(`metalr.gradstats.host_step_dots`).
"""

from __future__ import annotations

import torch

from metalr.controllers import register
from metalr.controllers.base import Controller, group_base_lrs
from metalr.signals import Signals


@register("hypergradient")
class Hypergradient(Controller):
    """LR follows the hypergradient g_t . u_{t-1} (additive or normalised multiplicative)."""

    requires = frozenset({"hypergrad"})

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        beta: float = 0.02,
        rule: str = "multiplicative",
        min_lr: float | None = None,
        max_lr: float | None = None,
    ) -> None:
        if rule not in ("additive", "multiplicative"):
            raise ValueError(f"rule must be additive or multiplicative, got {rule!r}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta, self.rule = float(beta), rule
        if rule == "additive":  # each group's LR its own hypergradient
            self.requires = frozenset({"hypergrad", "hypergrad_groups"})  # type: ignore[misc]
        bases = group_base_lrs(optimizer)
        # Default bounds relative to each group's base LR: HD can otherwise run away on noisy tasks.
        super().__init__(
            optimizer, min_lr=[b * 1e-3 for b in bases] if min_lr is None else min_lr, max_lr=[b * 10.0 for b in bases] if max_lr is None else max_lr
        )  # fmt: skip
        # The additive rule's param groups that start at one LR (a weight-decay split: the HF Trainer's decay and no-decay
        # groups) are one LR, moved by the hypergradient of all their parameters; groups at different LRs each by their own.
        self._tied = [[j for j, b in enumerate(bases) if b == base] for base in bases]

    def _compute_lrs(self, signals: Signals) -> list[float]:
        if self.rule == "additive":  # each group's LR follows its own hypergradient (one value when one LR moves every group)
            hs = signals.hypergrad_groups
            if hs is None or len(hs) != len(self._last_lr):  # (signals of a tracker that gave no per-group values)
                h = signals.hypergrad
                return [lr + self.beta * h for lr in self._last_lr] if h is not None else list(self._last_lr)
            tied = [sum(hs[j] for j in self._tied[i]) for i in range(len(hs))]  # groups that started at one LR share it
            return [lr + self.beta * h for lr, h in zip(self._last_lr, tied)]
        c = signals.hypergrad_cos
        return [lr * (1.0 + self.beta * c) for lr in self._last_lr] if c is not None else list(self._last_lr)
