"""Gradient-variability LR: noisier gradients -> smaller steps, steadier -> larger.

Every `interval` steps (default 5), once `window` (5) finite readings are held,
the variability v of the last `window` batches is computed and compared with v
at the previous decision:

    v > prev * (1 + tolerance)  ->  LR *= 1 - adjustment   (0.9)
    v < prev * (1 - tolerance)  ->  LR *= 1 + adjustment   (1.1)
    otherwise (or no prev yet)  ->  LR kept

measure="norm_cv" (default): coefficient of variation std/mean of the gradient
norms (scale-free). measure="direction": spread of gradient directions,
(1 - mean cosine between consecutive gradients) / 2 in [0, 1] (costs a copy of
the gradient per step). With interval == window the windows compared do not
overlap. Non-finite readings are skipped. `extra_logs` gives v and the factor
applied at each step. Default bounds: [base/100, 10 * base].

Cost: the gradient norm of every step (per-tensor reductions, no copy). On a CPU it is
read as a Python float every step. On a GPU (`device_signals`) it stays a device tensor
and the readings since the last decision are read back together on the decision step:
one host-device synchronisation per `interval` steps (at most 256 readings are kept),
the same LRs. measure="direction" reads its cosine every step (one synchronisation per
step on a GPU) and keeps the previous gradient (one model-sized buffer).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from metalr.controllers import register
from metalr.controllers.base import MAX_PENDING, MultiplicativeController, read_back, relative_lr_bounds
from metalr.signals import Signals

MEASURES = ("norm_cv", "direction")


def _finite(value: Any) -> float | None:
    """A reading as a Python float, or None when it is missing or not finite."""
    return float(value) if value is not None and math.isfinite(value) else None


def coefficient_of_variation(values: list[float]) -> float:
    """Population std / mean (NaN when the mean is not positive); scale-free, so computed on values / max to avoid overflow."""
    top = max(values)
    if not (top > 0 and math.isfinite(top)):
        return math.nan
    scaled = [v / top for v in values]
    mean = sum(scaled) / len(scaled)
    if not mean > 0:
        return math.nan
    return math.sqrt(sum((v - mean) ** 2 for v in scaled) / len(scaled)) / mean


@register("grad_variability")
class GradVariability(MultiplicativeController):
    """LR *= 0.9 when gradient variability over the last 5 batches rises, *= 1.1 when it falls."""

    device_signals = True  # the gradient norm may stay on the device until a decision step (measure="norm_cv")
    _state_keys = ("window_values", "prev_variability", "variability", "last_factor")

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        window: int = 5,
        adjustment: float = 0.1,
        interval: int = 5,
        measure: str = "norm_cv",
        tolerance: float = 0.0,
        min_lr: float | None = None,
        max_lr: float | None = None,
    ) -> None:
        if window < 2 or interval < 1:
            raise ValueError(f"need window >= 2 and interval >= 1, got {window}, {interval}")
        if not 0.0 < adjustment < 1.0 or not tolerance >= 0.0:
            raise ValueError(f"need 0 < adjustment < 1 and tolerance >= 0, got {adjustment}, {tolerance}")
        if measure not in MEASURES:
            raise ValueError(f"unknown variability measure {measure!r}; valid: {', '.join(MEASURES)}")
        self.window, self.adjustment, self.interval, self.measure, self.tolerance = int(window), float(adjustment), int(interval), measure, float(tolerance)
        self.requires = frozenset({"grad_norm", "grad_cos"} if measure == "direction" else {"grad_norm"})  # type: ignore[misc]
        self.window_values: list[float] = []
        self._pending: list[Any] = []  # device readings not read back yet (`device_signals`)
        self.prev_variability = math.nan
        self.variability = math.nan
        self.last_factor = 1.0
        lo, hi = relative_lr_bounds(optimizer, min_lr, max_lr)
        super().__init__(optimizer, min_lr=lo, max_lr=hi)

    def _factor(self, signals: Signals) -> float:
        value = signals.grad_cos if self.measure == "direction" else signals.grad_norm
        decide = self.last_step % self.interval == 0
        if isinstance(value, torch.Tensor) or self._pending:
            # A device tensor (a GPU): kept, not read; the LR moves only on decision steps, so the readings are read back
            # together there (one synchronisation per `interval` steps) and folded in order: the host path's LRs.
            self._pending.append(value)
            if decide or len(self._pending) >= MAX_PENDING:
                return self._fold_kept(decide)
            self.last_factor = 1.0
            return 1.0
        return self._on_reading(float(value) if value is not None and math.isfinite(value) else None, decide)

    def _fold_kept(self, decide: bool) -> float:
        """Read the kept readings back (one host-device synchronisation) and fold them in, in order; the last one
        decides if `decide`. The LR factor."""
        *before, last = read_back(self._pending)
        self._pending = []
        for v in before:
            self._on_reading(_finite(v), decide=False)
        return self._on_reading(_finite(last), decide=decide)

    def state_dict(self) -> dict[str, Any]:
        if self._pending:  # readings kept on the device: folded in first (no decision), so the state is the host path's
            self._fold_kept(decide=False)
        return super().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._pending = []

    def _variability(self) -> float:
        if self.measure == "direction":
            return (1.0 - sum(self.window_values) / len(self.window_values)) / 2.0
        return coefficient_of_variation(self.window_values)

    def _on_reading(self, reading: float | None, decide: bool) -> float:
        """Fold one step's reading (None: missing) into the window and, on a decision step, decide: the LR factor."""
        self.last_factor = 1.0
        values = self.window_values
        if reading is not None:
            values.append(reading)
            if len(values) > self.window:
                del values[0]  # the last `window` readings, kept in place
        if not decide or len(values) < self.window:
            return 1.0
        v = self._variability()
        if not math.isfinite(v):
            return 1.0
        prev, self.prev_variability, self.variability = self.prev_variability, v, v
        if math.isfinite(prev):
            if v > prev * (1.0 + self.tolerance):
                self.last_factor = 1.0 - self.adjustment
            elif v < prev * (1.0 - self.tolerance):
                self.last_factor = 1.0 + self.adjustment
        return self.last_factor

    def extra_logs(self) -> dict[str, float]:
        return {"grad_variability": self.variability, "grad_variability_factor": self.last_factor}
