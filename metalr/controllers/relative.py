"""The scale-free decision shared by the calibrated heuristics (`*_relative`).

The research plans compare a signal with an absolute number: "uncertainty <
0.1", "variability higher than last time". Whether 0.1 is low depends on the
dropout rate, the number of classes and the model; "higher than last time"
fires on noise. The calibrated variants instead ask whether a reading is
clearly above or below *its own recent level*:

    reference  m = median of the previous `history` finite readings
    ratio      r = x / m
    side       +1 if r > 1 + band,  -1 if r < 1 / (1 + band),  0 otherwise (dead band)
    decision   the side, once it has held for `confirm` consecutive readings (else 0)

Why each piece: the ratio makes the rule invariant to the signal's scale
(multiplying every reading by a constant changes no decision); the median is a
reference that one outlier cannot move; the dead band (symmetric in log-ratio)
keeps the LR still while the signal only wanders; `confirm` > 1 is a simple
hysteresis for noisy signals: a single reading on one side never moves the LR,
and a run of them keeps moving it. Until `history` readings are held, the rule
only watches (decision 0). A non-finite or negative reading is ignored: it
changes neither the reference nor the streak. A reference of 0 gives no ratio,
so no decision.
"""

from __future__ import annotations

import math
import statistics


class RelativeLevel:
    """Mixin for a `Controller`: `_init_level(...)` in `__init__`, then `_level_side(x)` per reading.

    Its state is two plain attributes, listed in `LEVEL_STATE_KEYS` for the
    controller's `_state_keys`, so the stock `state_dict()` saves them.
    """

    LEVEL_STATE_KEYS = ("level_readings", "level_streak")

    level_band: float
    level_history: int
    level_confirm: int
    level_readings: list[float]
    level_streak: int

    def _init_level(self, band: float, history: int, confirm: int) -> None:
        if not (band >= 0.0 and math.isfinite(band)):
            raise ValueError(f"band must be finite and >= 0, got {band}")
        if history < 1 or confirm < 1:
            raise ValueError(f"history and confirm must be >= 1, got {history}, {confirm}")
        self.level_band, self.level_history, self.level_confirm = float(band), int(history), int(confirm)
        self.level_readings = []
        self.level_streak = 0  # signed: +n = the last n readings were above the band, -n below

    @property
    def level_reference(self) -> float:
        """The current reference (median of the held readings), NaN while fewer than `history`."""
        if len(self.level_readings) < self.level_history:
            return math.nan
        return float(statistics.median(self.level_readings))

    def _level_side(self, x: float | None) -> int:
        """+1 (clearly above its recent level), -1 (clearly below) or 0, and remember `x`."""
        if x is None or not math.isfinite(x) or x < 0.0:
            return 0
        x = float(x)
        ref = self.level_reference
        decision = 0
        if ref > 0.0:
            ratio = x / ref
            side = 1 if ratio > 1.0 + self.level_band else -1 if ratio * (1.0 + self.level_band) < 1.0 else 0
            self.level_streak = self.level_streak + side if side and (self.level_streak > 0) == (side > 0) else side
            if abs(self.level_streak) >= self.level_confirm:
                decision = side
        elif ref == 0.0:
            self.level_streak = 0
        self.level_readings = (self.level_readings + [x])[-self.level_history :]
        return decision
