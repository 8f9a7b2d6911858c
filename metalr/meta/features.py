"""The meta-controller's input: a fixed, documented, scale-free feature vector.

The same `FeatureState` runs inside the meta-training unroll and inside the
deployed controller, so the policy sees at deployment exactly what it was
trained on. Every feature is a ratio, a cosine, a fraction or a log of a ratio:
nothing depends on the loss's units, the gradient's scale, the model's size or
the optimizer's base LR, which is what lets one controller transfer across tasks,
models and optimizers. Missing or non-finite signals leave the state unchanged
(a NaN loss never poisons the moving averages) and every feature is clipped, so
the policy's input is always finite and bounded.

| # | name          | definition                                              | range      |
|---|---------------|---------------------------------------------------------|------------|
| 0 | loss_rel      | log(EMA_0.9(loss) / first loss)                         | [-5, 5]    |
| 1 | loss_slope    | log(EMA_0.7(loss) / EMA_0.95(loss)): short vs long trend| [-1, 1]    |
| 2 | grad_rel      | log(EMA_0.9(grad_norm) / first grad_norm)               | [-5, 5]    |
| 3 | grad_cos      | EMA_0.9 of the cosine of consecutive gradients          | [-1, 1]    |
| 4 | accuracy      | EMA_0.9 of batch accuracy (0 when the task has none)    | [0, 1]     |
| 5 | progress      | fraction of the planned run done                        | [0, 1]     |
| 6 | lr_rel        | log(current LR / base LR)                               | [-5, 5]    |

The policy sees `(feature - shift) / scale` with the fixed `SHIFT`/`SCALE` below
(stored in every checkpoint, so a checkpoint carries its own normalisation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

FEATURE_NAMES: tuple[str, ...] = ("loss_rel", "loss_slope", "grad_rel", "grad_cos", "accuracy", "progress", "lr_rel")
CLIP: tuple[tuple[float, float], ...] = ((-5.0, 5.0), (-1.0, 1.0), (-5.0, 5.0), (-1.0, 1.0), (0.0, 1.0), (0.0, 1.0), (-5.0, 5.0))
SHIFT: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.0)
SCALE: tuple[float, ...] = (1.0, 0.1, 1.0, 0.5, 0.5, 0.5, 1.0)
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
    loss_ema: float | None = None
    loss_fast: float | None = None
    loss_slow: float | None = None
    grad0: float | None = None
    grad_ema: float | None = None
    cos_ema: float | None = None
    acc_ema: float | None = None

    def update(self, loss: float | None, accuracy: float | None, grad_norm: float | None, grad_cos: float | None) -> None:
        """Fold one step's signals in; missing or non-finite ones are skipped."""
        if _finite(loss):
            v = max(float(loss), _EPS)  # type: ignore[arg-type]
            if self.loss0 is None:
                self.loss0 = v
            self.loss_ema = _ema(self.loss_ema, v, 0.9)
            self.loss_fast = _ema(self.loss_fast, v, 0.7)
            self.loss_slow = _ema(self.loss_slow, v, 0.95)
        if _finite(grad_norm) and grad_norm > 0:  # type: ignore[operator]
            g = float(grad_norm)  # type: ignore[arg-type]
            if self.grad0 is None:
                self.grad0 = g
            self.grad_ema = _ema(self.grad_ema, g, 0.9)
        if _finite(grad_cos):
            self.cos_ema = _ema(self.cos_ema, min(1.0, max(-1.0, float(grad_cos))), 0.9)  # type: ignore[arg-type]
        if _finite(accuracy):
            self.acc_ema = _ema(self.acc_ema, min(1.0, max(0.0, float(accuracy))), 0.9)  # type: ignore[arg-type]

    def features(self, progress: float, lr_rel: float) -> list[float]:
        """The raw (clipped, always finite) feature vector, in `FEATURE_NAMES` order."""
        raw = [
            _log_ratio(self.loss_ema, self.loss0),
            _log_ratio(self.loss_fast, self.loss_slow),
            _log_ratio(self.grad_ema, self.grad0),
            self.cos_ema if self.cos_ema is not None else 0.0,
            self.acc_ema if self.acc_ema is not None else 0.0,
            progress,
            lr_rel,
        ]
        return [_clip(v, lo, hi) for v, (lo, hi) in zip(raw, CLIP)]

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FeatureState:
        return cls(**{k: (None if v is None else float(v)) for k, v in state.items()})


def _log_ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or a <= 0 or b <= 0:
        return 0.0
    return math.log(a / b)


def _clip(v: float, lo: float, hi: float) -> float:
    """Clip to [lo, hi]; a non-finite value becomes 0 clipped into range (the neutral input)."""
    if not math.isfinite(v):
        v = 0.0
    return min(hi, max(lo, v))
