"""1cycle policy (Smith & Topin, 2017, "Super-Convergence"), with
`torch.optim.lr_scheduler.OneCycleLR` semantics: the same phases, the same
annealing, the same momentum cycling, so `onecycle` with `peak_lr=x` gives the LR
sequence of `OneCycleLR(max_lr=x)` step for step (tested).

Differences, all deliberate: the peak defaults to each group's base LR (the task's
tuned LR) instead of being required; torch's `max_lr` is called `peak_lr` here
because `max_lr` is the base class's upper clamp; stepping past `total_steps`
holds the final LR (step total_steps - 1's) instead of raising; torch still
computes step total_steps by extrapolating past the end, which with linear
annealing gives a negative LR. Closed form in the step count, so resuming
from a state_dict is exact.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from metalr.controllers import register
from metalr.controllers.base import Controller, planned_steps
from metalr.signals import Signals


def _anneal(start: float, end: float, pct: float, strategy: str) -> float:
    if strategy == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


def onecycle_phases(total_steps: int, pct_start: float, three_phase: bool) -> list[tuple[float, str, str, str, str]]:
    """(end_step, start_lr, end_lr, start_momentum, end_momentum) per phase, as in torch."""
    if three_phase:
        return [
            (float(pct_start * total_steps) - 1, "initial", "peak", "max_m", "base_m"),
            (float(2 * pct_start * total_steps) - 2, "peak", "initial", "base_m", "max_m"),
            (total_steps - 1, "initial", "min", "max_m", "max_m"),
        ]
    return [(float(pct_start * total_steps) - 1, "initial", "peak", "max_m", "base_m"), (total_steps - 1, "peak", "min", "base_m", "max_m")]


def onecycle_value(step: int, points: dict[str, float], phases: list[tuple[float, str, str, str, str]], strategy: str, momentum: bool = False) -> float:
    """The LR (or, with momentum=True, the momentum) at `step`."""
    start_step = 0.0
    for i, (end_step, lr0, lr1, m0, m1) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            pct = (step - start_step) / (end_step - start_step) if end_step != start_step else 1.0
            a, b = (m0, m1) if momentum else (lr0, lr1)
            return _anneal(points[a], points[b], pct, strategy)
        start_step = end_step
    raise AssertionError("unreachable")


@register("onecycle")
class OneCycle(Controller):
    """Warm up from peak/div_factor to the peak over pct_start of the run, then anneal to peak/div_factor/final_div_factor."""

    _past_end = "the LR holds the schedule's last value"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        total_steps: int | None = None,
        peak_lr: float | list[float] | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        min_lr: float = 0.0,
        max_lr: float = math.inf,
    ) -> None:
        total_steps = planned_steps("onecycle", total_steps)
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        if not (div_factor > 0 and final_div_factor > 0):
            raise ValueError(f"div_factor and final_div_factor must be > 0, got {div_factor}, {final_div_factor}")
        if cycle_momentum and "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
            raise ValueError("cycle_momentum needs an optimizer with momentum or betas; pass cycle_momentum=False")
        if peak_lr is not None:  # like torch, the peak overrides the optimizer's LR
            peaks = list(peak_lr) if isinstance(peak_lr, (list, tuple)) else [peak_lr] * len(optimizer.param_groups)
            if len(peaks) != len(optimizer.param_groups) or not all(math.isfinite(p) and p > 0 for p in peaks):
                raise ValueError(f"peak_lr must be one positive LR or one per param group, got {peak_lr}")
            for group, peak in zip(optimizer.param_groups, peaks):
                group["initial_lr"] = float(peak)
        self.total_steps, self.pct_start, self.anneal_strategy = int(total_steps), float(pct_start), anneal_strategy
        self.cycle_momentum, self.base_momentum, self.max_momentum = bool(cycle_momentum), float(base_momentum), float(max_momentum)
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)
        self.three_phase = bool(three_phase)
        self.phases = onecycle_phases(self.total_steps, self.pct_start, self.three_phase)
        super().__init__(optimizer, min_lr=min_lr, max_lr=max_lr)

    def _run_length_changed(self) -> None:
        self.phases = onecycle_phases(self.total_steps, self.pct_start, self.three_phase)

    def _lrs_at(self, step: int) -> list[float]:
        step = min(step, self.total_steps - 1)  # hold the final LR (torch extrapolates one step past it)
        out = []
        for peak, group in zip(self.base_lrs, self.optimizer.param_groups):
            initial = peak / self.div_factor
            points = {"initial": initial, "peak": peak, "min": initial / self.final_div_factor, "max_m": self.max_momentum, "base_m": self.base_momentum}
            out.append(onecycle_value(step, points, self.phases, self.anneal_strategy))
            if self.cycle_momentum:
                _set_momentum(group, onecycle_value(step, points, self.phases, self.anneal_strategy, momentum=True))
        return out

    def _initial_lrs(self) -> list[float]:
        return self._lrs_at(0)

    def _compute_lrs(self, signals: Signals) -> list[float]:
        return self._lrs_at(self.last_step)


def _set_momentum(group: dict[str, Any], momentum: float) -> None:
    if "betas" in group:
        group["betas"] = (momentum, *group["betas"][1:])
    else:
        group["momentum"] = momentum
