"""Loss-pattern LR: recognise what the training loss is doing and react to it.

The training loss is averaged over periods: one epoch (the plan's setting, the
default) or `interval_steps` steps. When a period closes and the last `window`
(5) period losses w are known, with

    ma   = mean(w)                                 short-term moving average
    var  = population variance of w
    rate = (w[-1] - w[0]) / ((window - 1) * |ma|)   mean relative change per period
    drop = (w[-1] - w[-2]) / |w[-2]|                latest relative change

the first matching pattern sets the LR (code logged as `loss_pattern`):

    1 plateau         var < 0.001 and |rate| < 0.01          LR *= 0.8 (decrease)
    2 sharp drop      drop < -sharp_drop (0.2)               LR kept (it is working)
    3 oscillation     >= 2 sign changes among w's steps      LR *= 0.8
    4 steady decline  every step of w goes down              LR *= 1.2 (increase)
    5 rise            rate > plateau_rate                    LR *= 0.8 (our addition: a rising loss)
    0 none            anything else, or fewer than `window` periods yet: LR kept

Non-finite losses are left out of the period mean. Default bounds: [base/100, 10 * base].

Cost: on a CPU the loss is read as a Python float every step. On a GPU (`device_signals`) each
step's loss stays a device tensor and a period's losses are read back together when it closes
(one host-device synchronisation per period, or per 256 steps if a period is longer), summed in
the same order: the same LRs.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from metalr.controllers import register
from metalr.controllers.base import MAX_PENDING, MultiplicativeController, read_back, relative_lr_bounds
from metalr.signals import Signals

PATTERNS = {"none": 0, "plateau": 1, "sharp_drop": 2, "oscillation": 3, "steady_decline": 4, "rise": 5}


def classify(w: list[float], plateau_variance: float = 1e-3, plateau_rate: float = 1e-2, sharp_drop: float = 0.2) -> str:
    """The pattern of a window of period losses (see the module docstring for the rule)."""
    n = len(w)
    ma = sum(w) / n
    var = sum((x - ma) * (x - ma) for x in w) / n  # not ** 2: a float power overflows with an error, a product to inf
    rate = (w[-1] - w[0]) / ((n - 1) * max(abs(ma), 1e-12))
    drop = (w[-1] - w[-2]) / max(abs(w[-2]), 1e-12)
    steps = [b - a for a, b in zip(w[:-1], w[1:])]
    signs = [s > 0 for s in steps if s != 0]
    changes = sum(a != b for a, b in zip(signs[:-1], signs[1:]))
    if var < plateau_variance and abs(rate) < plateau_rate:
        return "plateau"
    if drop < -sharp_drop:
        return "sharp_drop"
    if changes >= 2:
        return "oscillation"
    if all(s < 0 for s in steps):
        return "steady_decline"
    if rate > plateau_rate:
        return "rise"
    return "none"


@register("loss_patterns")
class LossPatterns(MultiplicativeController):
    """Plateau or oscillation -> LR *= 0.8; steady decline -> LR *= 1.2; per epoch or every N steps."""

    requires = frozenset({"loss"})
    device_signals = True  # the loss may stay on the device until its period closes
    _state_keys = ("period_losses", "period_sum", "period_count", "period_epoch", "pattern", "last_factor", "moving_average")

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        window: int = 5,
        interval_steps: int | None = None,
        decrease: float = 0.8,
        increase: float = 1.2,
        plateau_variance: float = 1e-3,
        plateau_rate: float = 1e-2,
        sharp_drop: float = 0.2,
        min_lr: float | None = None,
        max_lr: float | None = None,
    ) -> None:
        if window < 3:
            raise ValueError(f"window must be >= 3 to see a pattern, got {window}")
        if interval_steps is not None and interval_steps < 1:
            raise ValueError(f"interval_steps must be >= 1 or None (per epoch), got {interval_steps}")
        if not (0.0 < decrease <= 1.0 <= increase and math.isfinite(increase)):
            raise ValueError(f"need 0 < decrease <= 1 <= increase, got decrease={decrease}, increase={increase}")
        if not (plateau_variance > 0 and plateau_rate > 0 and sharp_drop > 0):
            raise ValueError("plateau_variance, plateau_rate and sharp_drop must be > 0")
        self.window, self.interval_steps, self.decrease, self.increase = int(window), interval_steps, float(decrease), float(increase)
        self.plateau_variance, self.plateau_rate, self.sharp_drop = float(plateau_variance), float(plateau_rate), float(sharp_drop)
        self.period_losses: list[float] = []
        self.period_sum, self.period_count, self.period_epoch = 0.0, 0, -1
        self._pending: list[Any] = []  # this period's losses kept on the device, not read back yet (`device_signals`)
        self.pattern, self.last_factor, self.moving_average = PATTERNS["none"], 1.0, math.nan
        lo, hi = relative_lr_bounds(optimizer, min_lr, max_lr)
        super().__init__(optimizer, min_lr=lo, max_lr=hi)

    def _factor(self, signals: Signals) -> float:
        self.last_factor = 1.0
        by_epoch = self.interval_steps is None
        if by_epoch and signals.epoch != self.period_epoch:  # the first step of a new epoch closes the last one
            self._close_period()
            self.period_epoch = signals.epoch
        loss = signals.loss
        if isinstance(loss, torch.Tensor) or self._pending:
            # A device tensor (a GPU): kept, not read; the LR moves only when a period closes, so the period's losses are
            # read back together then (one synchronisation per period) and summed in order: the host path's sums.
            if loss is not None:
                self._pending.append(loss)
            if len(self._pending) >= MAX_PENDING:
                self._fold_pending()
        elif loss is not None and math.isfinite(loss):
            self.period_sum += float(loss)
            self.period_count += 1
        if not by_epoch and self.last_step % int(self.interval_steps or 1) == 0:
            self._close_period()
        return self.last_factor

    def _fold_pending(self) -> None:
        """Add the losses kept on the device to the period's sum, in order (one host-device synchronisation)."""
        pending, self._pending = self._pending, []
        for v in read_back(pending):
            if math.isfinite(v):
                self.period_sum += float(v)
                self.period_count += 1

    def state_dict(self) -> dict[str, Any]:
        if self._pending:  # the state is the host path's: kept losses folded in first
            self._fold_pending()
        return super().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._pending = []

    def _close_period(self) -> None:
        if self._pending:
            self._fold_pending()
        if self.period_count == 0:
            return
        self.period_losses = (self.period_losses + [self.period_sum / self.period_count])[-self.window :]
        self.period_sum, self.period_count = 0.0, 0
        self.moving_average = sum(self.period_losses) / len(self.period_losses)
        if len(self.period_losses) < self.window:
            self.pattern = PATTERNS["none"]
            return
        name = self._classify(self.period_losses)
        self.pattern = PATTERNS[name]
        self.last_factor = {"plateau": self.decrease, "oscillation": self.decrease, "rise": self.decrease, "steady_decline": self.increase}.get(name, 1.0)

    def _classify(self, w: list[float]) -> str:
        """The pattern name of the window `w` (the one place a variant changes the rule)."""
        return classify(w, self.plateau_variance, self.plateau_rate, self.sharp_drop)

    def extra_logs(self) -> dict[str, float]:
        return {"loss_pattern": float(self.pattern), "loss_ma": self.moving_average, "loss_pattern_factor": self.last_factor}
