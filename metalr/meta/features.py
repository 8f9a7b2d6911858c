"""The meta-controller's input: a fixed, documented, scale-free feature vector.

The same `FeatureState` runs inside the meta-training unroll and inside the
deployed controller (both through `metalr.meta.rule`), so the policy sees at
deployment exactly what it was trained on. Every feature is a ratio, a cosine,
a fraction or a log of a ratio: nothing depends on the loss's units, the
gradient's scale, the model's size or the optimizer's base LR, which is what lets
one controller transfer across tasks, models and optimizers. Missing or
non-finite signals leave the state unchanged (a NaN loss never poisons the
averages) and every feature is clipped, so the policy's input is always finite.

The inputs are only what any training loop has: the loss, and the gradient's
norm and alignment with the optimizer's running average (`metalr.gradstats`).
No accuracy (a plain loop may not give logits), no absolute LR.

Loss features follow the Celo recipe (Moudgil et al. 2025): the loss seen
through EMAs at several time scales, normalised by its own history (first value,
running minimum and maximum), so "the loss is rising above its best" or "the
loss is stuck" read the same on any task.

| #  | name         | definition                                                     | clip        |
|----|--------------|----------------------------------------------------------------|-------------|
| 0  | progress     | fraction of the planned run done                               | [0, 1]      |
| 1  | lr_rel       | log(current LR / base LR)                                      | [-8, 4]     |
| 2  | trend_fast   | log(EMA_0.5(loss) / EMA_0.9(loss))                             | [-1, 1]     |
| 3  | trend_slow   | log(EMA_0.9(loss) / EMA_0.99(loss))                            | [-1, 1]     |
| 4  | above_min    | log(EMA_0.9(loss) / running min of EMA_0.9(loss))              | [0, 3]      |
| 5  | vs_first     | log(EMA_0.9(loss) / first loss)                                | [-8, 3]     |
| 6  | minmax       | (EMA_0.9 - min) / (max - min) of EMA_0.9(loss) over the run     | [0, 1]      |
| 7  | align_fast   | EMA_0.5 of grad_align (cos(gradient, optimizer's moment))       | [-1, 1]     |
| 8  | align_slow   | EMA_0.95 of grad_align                                         | [-1, 1]     |
| 9  | gnorm_trend  | log(EMA_0.5(grad norm) / EMA_0.95(grad norm))                  | [-3, 3]     |

The policy sees `(feature - SHIFT) / SCALE` (stored in every checkpoint, so a
checkpoint carries its own normalisation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

FEATURE_NAMES: tuple[str, ...] = (
    "progress",
    "lr_rel",
    "trend_fast",
    "trend_slow",
    "above_min",
    "vs_first",
    "minmax",
    "align_fast",
    "align_slow",
    "gnorm_trend",
)
CLIP: tuple[tuple[float, float], ...] = ((0, 1), (-8, 4), (-1, 1), (-1, 1), (0, 3), (-8, 3), (0, 1), (-1, 1), (-1, 1), (-3, 3))
SHIFT: tuple[float, ...] = (0.5, 0.0, 0.0, 0.0, 0.2, -1.0, 0.3, 0.0, 0.0, 0.0)
SCALE: tuple[float, ...] = (0.3, 2.0, 0.05, 0.05, 0.3, 1.0, 0.3, 0.4, 0.3, 0.3)
N_FEATURES = len(FEATURE_NAMES)
_EPS = 1e-12


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _ema(old: float | None, new: float, beta: float) -> float:
    return new if old is None else beta * old + (1.0 - beta) * new


@dataclass
class FeatureState:
    """Running statistics behind the features (plain floats: cheap to save and restore)."""

    loss0: float | None = None
    l_fast: float | None = None  # EMA 0.5
    l_mid: float | None = None  # EMA 0.9
    l_slow: float | None = None  # EMA 0.99
    l_min: float | None = None  # running min of l_mid
    l_max: float | None = None  # running max of l_mid
    a_fast: float | None = None
    a_slow: float | None = None
    g_fast: float | None = None
    g_slow: float | None = None

    def update(self, loss: float | None, grad_norm: float | None, grad_align: float | None) -> None:
        """Fold one step's signals in; missing or non-finite ones are skipped."""
        if _finite(loss):
            v = max(float(loss), _EPS)  # type: ignore[arg-type]
            if self.loss0 is None:
                self.loss0 = v
            self.l_fast = _ema(self.l_fast, v, 0.5)
            self.l_mid = _ema(self.l_mid, v, 0.9)
            self.l_slow = _ema(self.l_slow, v, 0.99)
            self.l_min = self.l_mid if self.l_min is None else min(self.l_min, self.l_mid)
            self.l_max = self.l_mid if self.l_max is None else max(self.l_max, self.l_mid)
        if _finite(grad_norm) and grad_norm > 0:  # type: ignore[operator]
            g = float(grad_norm)  # type: ignore[arg-type]
            self.g_fast = _ema(self.g_fast, g, 0.5)
            self.g_slow = _ema(self.g_slow, g, 0.95)
        if _finite(grad_align):
            a = min(1.0, max(-1.0, float(grad_align)))  # type: ignore[arg-type]
            self.a_fast = _ema(self.a_fast, a, 0.5)
            self.a_slow = _ema(self.a_slow, a, 0.95)

    def features(self, progress: float, lr_rel: float) -> list[float]:
        """The raw (clipped, always finite) feature vector, in `FEATURE_NAMES` order."""
        span = (self.l_max - self.l_min) if self.l_max is not None and self.l_min is not None else 0.0
        raw = [
            progress,
            lr_rel,
            _log_ratio(self.l_fast, self.l_mid),
            _log_ratio(self.l_mid, self.l_slow),
            _log_ratio(self.l_mid, self.l_min),
            _log_ratio(self.l_mid, self.loss0),
            ((self.l_mid - self.l_min) / span) if span > 0 and self.l_mid is not None and self.l_min is not None else 0.0,
            self.a_fast if self.a_fast is not None else 0.0,
            self.a_slow if self.a_slow is not None else 0.0,
            _log_ratio(self.g_fast, self.g_slow),
        ]
        return [_clip(v, lo, hi) for v, (lo, hi) in zip(raw, CLIP)]

    def diverging(self, ratio: float) -> bool:
        """The fast loss average is more than `ratio` times the first loss: training is blowing up."""
        return self.l_fast is not None and self.loss0 is not None and self.l_fast > ratio * self.loss0

    def state_dict(self) -> dict[str, Any]:
        """Plain floats only (a statistic not yet seen is NaN), so any framework can checkpoint it."""
        return {k: (math.nan if v is None else float(v)) for k, v in asdict(self).items()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FeatureState:
        return cls(**{k: (None if v is None or not math.isfinite(float(v)) else float(v)) for k, v in state.items()})


def _log_ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or a <= 0 or b <= 0:
        return 0.0
    return math.log(a / b)


def _clip(v: float, lo: float, hi: float) -> float:
    """Clip to [lo, hi]; a non-finite value becomes 0 clipped into range (the neutral input)."""
    if not math.isfinite(v):
        v = 0.0
    return min(hi, max(lo, v))
