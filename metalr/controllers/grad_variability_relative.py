"""Gradient-variability LR, calibrated: react to variability relative to its own recent level.

The plan's rule (`grad_variability`) compares the variability v of the last 5
gradient norms (their coefficient of variation) with v at the previous
decision and multiplies the LR by 0.9 if it rose and by 1.1 if it fell. A
coefficient of variation over 5 samples has a relative spread of about 35 %,
so "rose" and "fell" are coin flips and the LR random-walks. This variant keeps
the idea (noisier gradients -> smaller steps, steadier -> larger), the plan's
signal, window, interval and multipliers, but compares v with its own recent
level (`metalr.controllers.relative`): every `interval` (5) steps, with m the
median of the previous `history` (5) values of v,

    v > m * (1 + band)   ->  LR *= 1 - adjustment (0.9)   clearly noisier than lately
    v < m / (1 + band)   ->  LR *= 1 + adjustment (1.1)   clearly steadier than lately
    otherwise            ->  LR kept                      (band = 0.25)

and only once the same side has held for `confirm` (2) decisions in a row. The
band is wider than the uncertainty variants' (0.1) because v is far noisier;
`confirm` is the hysteresis that keeps single noisy windows from moving the LR.
Both are relative, so multiplying v (or every gradient) by a constant changes no
decision. measure="direction" works as in the plan rule. A step whose reading is
missing or non-finite makes no decision (the plan rule would re-judge the same
window).
"""

from __future__ import annotations

import math

import torch

from metalr.controllers import register
from metalr.controllers.grad_variability import GradVariability
from metalr.controllers.relative import RelativeLevel


@register("grad_variability_relative")
class GradVariabilityRelative(RelativeLevel, GradVariability):
    """Gradient-norm variability against its running median: clearly higher -> LR x0.9, clearly lower -> x1.1, else kept."""

    _state_keys = (*GradVariability._state_keys, *RelativeLevel.LEVEL_STATE_KEYS)  # type: ignore[assignment]  # the base inferred a fixed-length tuple

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        window: int = 5,
        adjustment: float = 0.1,
        interval: int = 5,
        measure: str = "norm_cv",
        band: float = 0.25,
        history: int = 5,
        confirm: int = 2,
        min_lr: float | None = None,
        max_lr: float | None = None,
    ) -> None:
        self._init_level(band, history, confirm)
        super().__init__(optimizer, window=window, adjustment=adjustment, interval=interval, measure=measure, min_lr=min_lr, max_lr=max_lr)

    def _on_reading(self, reading: float | None, decide: bool) -> float:
        self.last_factor = 1.0
        if reading is None:  # a non-finite gradient norm: no new information, so no decision this step
            return 1.0
        self.window_values = (self.window_values + [reading])[-self.window :]
        if not decide or len(self.window_values) < self.window:
            return 1.0
        v = self._variability()
        if not math.isfinite(v):
            return 1.0
        self.prev_variability, self.variability = self.variability, v
        side = self._level_side(v)
        self.last_factor = 1.0 - self.adjustment if side > 0 else 1.0 + self.adjustment if side < 0 else 1.0
        return self.last_factor

    def extra_logs(self) -> dict[str, float]:
        return {**super().extra_logs(), "grad_variability_reference": self.level_reference}
