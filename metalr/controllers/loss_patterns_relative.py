"""Loss-pattern LR, calibrated: the same patterns, every threshold relative to the loss level.

The plan's rule (`loss_patterns`) recognises a plateau by an *absolute*
variance (var < 0.001) of the last 5 period losses, so whether a window is a
plateau depends on the loss's scale (a loss of 2.3 with 1 % wiggles is not a
plateau, a loss of 0.1 with 30 % wiggles is), and it counts every sign change
of the period-to-period steps as oscillation, however small. This variant keeps
the idea, the patterns, their order, the multipliers (x0.8 / x1.2) and the
monitoring period (one epoch, or `interval_steps`), but measures everything
relative to the window's moving average ma, so multiplying the loss by a
constant changes no decision. With w the last `window` (5) period losses,

    cv   = std(w) / |ma|                               relative spread
    rate = (w[-1] - w[0]) / ((window - 1) |ma|)        mean relative change per period
    drop = (w[-1] - w[-2]) / |w[-2]|                   latest relative change
    a step w[i+1] - w[i] counts as up / down only if its size exceeds band * |ma| (band = 0.01)

    1 plateau         cv < plateau_cv (0.02) and |rate| < plateau_rate (0.01)   LR *= 0.8
    2 sharp drop      drop < -sharp_drop (0.2)                                  LR kept
    3 oscillation     >= 2 sign changes among the steps that count              LR *= 0.8
    4 steady decline  no step that counts goes up, and rate < -plateau_rate     LR *= 1.2
    5 rise            rate > plateau_rate                                       LR *= 0.8
    0 none            anything else, or fewer than `window` periods             LR kept

The dead band is what "its own running statistics" means here: wiggles smaller
than 1 % of the current loss level are noise, not a pattern, so they neither
make a declining loss "oscillate" nor stop it from being a steady decline (the
plan's rule needs every step strictly down, and cuts the LR on any two
wiggles).
"""

from __future__ import annotations

import math

import torch

from metalr.controllers import register
from metalr.controllers.loss_patterns import LossPatterns


def classify_relative(w: list[float], plateau_cv: float = 0.02, plateau_rate: float = 1e-2, sharp_drop: float = 0.2, band: float = 1e-2) -> str:
    """The pattern of a window of period losses, every threshold relative to its mean (see the module docstring)."""
    top = max(abs(x) for x in w)
    if not math.isfinite(top):
        return "none"
    if top > 0:  # every quantity below is scale-free, so work on w / max|w|: no overflow for huge finite losses
        w = [x / top for x in w]
    n = len(w)
    ma = sum(w) / n
    level = max(abs(ma), 1e-12)
    cv = math.sqrt(sum((x - ma) * (x - ma) for x in w) / n) / level
    rate = (w[-1] - w[0]) / ((n - 1) * level)
    drop = (w[-1] - w[-2]) / max(abs(w[-2]), 1e-12)
    steps = [b - a for a, b in zip(w[:-1], w[1:])]
    signs = [s > 0 for s in steps if abs(s) > band * level]
    changes = sum(a != b for a, b in zip(signs[:-1], signs[1:]))
    if cv < plateau_cv and abs(rate) < plateau_rate:
        return "plateau"
    if drop < -sharp_drop:
        return "sharp_drop"
    if changes >= 2:
        return "oscillation"
    if not any(signs) and rate < -plateau_rate:
        return "steady_decline"
    if rate > plateau_rate:
        return "rise"
    return "none"


@register("loss_patterns_relative")
class LossPatternsRelative(LossPatterns):
    """Plateau or oscillation -> LR x0.8; steady decline -> x1.2; thresholds relative to the loss level; per epoch or every N steps."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        window: int = 5,
        interval_steps: int | None = None,
        decrease: float = 0.8,
        increase: float = 1.2,
        plateau_cv: float = 0.02,
        plateau_rate: float = 1e-2,
        sharp_drop: float = 0.2,
        band: float = 1e-2,
        min_lr: float | None = None,
        max_lr: float | None = None,
    ) -> None:
        if not (plateau_cv > 0 and band >= 0 and math.isfinite(band)):
            raise ValueError(f"need plateau_cv > 0 and a finite band >= 0, got {plateau_cv}, {band}")
        self.plateau_cv, self.band = float(plateau_cv), float(band)
        super().__init__(
            optimizer, window=window, interval_steps=interval_steps, decrease=decrease, increase=increase, plateau_rate=plateau_rate,
            sharp_drop=sharp_drop, min_lr=min_lr, max_lr=max_lr,
        )  # fmt: skip

    def _classify(self, w: list[float]) -> str:
        return classify_relative(w, self.plateau_cv, self.plateau_rate, self.sharp_drop, self.band)
