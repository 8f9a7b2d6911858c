"""The meta-controller's input: a fixed, documented, scale-free feature vector.

The same `FeatureState` runs inside the meta-training unroll and inside the
deployed controller (both through `metalr.meta.rule`), so the policy sees at
deployment exactly what it was trained on. Every feature is a ratio, a cosine,
a fraction or a log of a ratio: nothing depends on the loss's units, the
gradient's scale, the model's size or the optimizer's base LR, which is what lets
one controller transfer across tasks, models and optimizers. Missing or
non-finite signals leave the state unchanged (a NaN loss never poisons the
averages) and every feature is clipped, so the policy's input is always finite.

The inputs are only what any training loop has: the loss, the gradient's
norm and alignment with the optimizer's running average, and the relative size
of the last update (`metalr.gradstats`).
No accuracy (a plain loop may not give logits), no absolute LR.

Loss features follow the Celo recipe (Moudgil et al. 2025): the loss seen
through EMAs at several time scales, normalised by its own history (first value,
running minimum and maximum), so "the loss is rising above its best" or "the
loss is stuck" read the same on any task.

| #  | name         | definition                                                     | clip        |
|----|--------------|----------------------------------------------------------------|-------------|
| 0  | progress     | fraction of the planned run done                               | [0, 1]      |
| 1  | lr_rel       | log(current LR / base LR)                                      | [-8, 8]     |
| 2  | trend_fast   | log(EMA_0.5(loss) / EMA_0.9(loss))                             | [-1, 1]     |
| 3  | trend_slow   | log(EMA_0.9(loss) / EMA_0.99(loss))                            | [-1, 1]     |
| 4  | above_min    | log(EMA_0.9(loss) / running min of EMA_0.9(loss))              | [0, 3]      |
| 5  | vs_first     | log(EMA_0.9(loss) / first loss)                                | [-8, 3]     |
| 6  | minmax       | (EMA_0.9 - min) / (max - min) of EMA_0.9(loss) over the run     | [0, 1]      |
| 7  | align_fast   | EMA_0.5 of grad_align (cos(gradient, optimizer's moment))       | [-1, 1]     |
| 8  | align_slow   | EMA_0.95 of grad_align                                         | [-1, 1]     |
| 9  | gnorm_trend  | log(EMA_0.5(grad norm) / EMA_0.95(grad norm))                  | [-3, 3]     |
| 10 | update_size  | EMA_0.9 of log10(|theta_t - theta_{t-1}| / |theta_t|)           | [-6, 0]     |
| 11 | val_rise     | log(last validation loss / lowest validation loss so far)       | [0, 3]      |

`val_rise` (format 4) is the only feature that sees over-fitting: a training loss that
still falls while the validation loss climbs above its best. It comes from the
evaluations a run already makes (`SignalTracker.record_eval`, which the harness and
the HF / Lightning / plain-loop integrations call after each evaluation), so it is
*optional*: a loop that never evaluates gives none, and the feature then reads 0,
its value before any rise. A format-4 policy is meta-trained with the readings
absent from a random half of its runs (`metalr.meta.tasks.val_reading_every`), so
it acts sensibly either way. Format-3 policies read the first 11 features only.

`update_size` (`metalr.gradstats.UpdateSize`, format 3) is the only feature that
sees the LR's absolute level: how far one step moves the weights, relative to the
weights, whatever the optimizer. The loss and gradient features see an LR 10x too
high mostly through its consequences, which often look like an LR too low (a loss
that falls slowly); this one sees the cause.

Under a rule with `decide_every` = k > 1 (`metalr.meta.rule`) the loss is folded in
every step, the gradient alignment, gradient norm and update size only every k-th
step, and the features are read on those steps only. Those three averages then take
each reading with beta**k instead of beta, so every average spans the same number of
steps whatever k (the betas above are per step): a policy sees the same time scales
at k = 8 as at k = 1, from fewer, equally weighted readings.

The policy sees `(feature - SHIFT) / SCALE` (stored in every checkpoint, so a
checkpoint carries its own normalisation).

`FeatureState` holds them as Python floats: a dozen float operations cost far less
than the same number of tensor operations (each a few microseconds of dispatch, and on
a GPU a kernel launch), so this is the one implementation, of the deployed controller
(which reads a GPU's signals back in batches, `metalr.controllers.meta`) and of
meta-training alike.
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
    "update_size",
    "val_rise",
)
CLIP: tuple[tuple[float, float], ...] = ((0, 1), (-8, 8), (-1, 1), (-1, 1), (0, 3), (-8, 3), (0, 1), (-1, 1), (-1, 1), (-3, 3), (-6, 0), (0, 3))
# val_rise's shift is 0: a run without validation readings feeds the policy an exact 0 there, so its input weights get
# no meta-gradient from such runs and a format-3 policy widened with zero weights computes exactly what it did.
SHIFT: tuple[float, ...] = (0.5, 0.0, 0.0, 0.0, 0.2, -1.0, 0.3, 0.0, 0.0, 0.0, -2.5, 0.0)
SCALE: tuple[float, ...] = (0.3, 2.0, 0.05, 0.05, 0.3, 1.0, 0.3, 0.4, 0.3, 0.3, 1.0, 0.1)
#: log10 of an update size is clipped to this before it is averaged (an update of exactly 0 is skipped).
UPDATE_LOG_RANGE = (-8.0, 1.0)
N_FEATURES = len(FEATURE_NAMES)
#: The policy formats this metalr reads, by their number of features (a prefix of FEATURE_NAMES): format 3 has no val_rise.
FORMAT_FEATURES: dict[int, int] = {3: 11, 4: 12}
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
    u_mid: float | None = None  # EMA 0.9 of log10(update size)
    v_last: float | None = None  # the last validation loss (`fold_val`)
    v_min: float | None = None  # the lowest validation loss so far

    def update(self, loss: float | None, grad_norm: float | None, grad_align: float | None, update_size: float | None = None, every: int = 1) -> None:
        """Fold one step's signals in; missing or non-finite ones (and an update size <= 0) are skipped.

        `every` = k: the gradient-level readings come once per k steps, so their averages take them with
        beta**k (each average spans the same number of steps whatever k); the loss comes every step."""
        if _finite(loss):
            fold_loss(self, loss)  # type: ignore[arg-type]
        if _finite(grad_norm) and grad_norm > 0:  # type: ignore[operator]
            g = float(grad_norm)  # type: ignore[arg-type]
            self.g_fast = _ema(self.g_fast, g, 0.5**every)
            self.g_slow = _ema(self.g_slow, g, 0.95**every)
        if _finite(grad_align):
            a = min(1.0, max(-1.0, float(grad_align)))  # type: ignore[arg-type]
            self.a_fast = _ema(self.a_fast, a, 0.5**every)
            self.a_slow = _ema(self.a_slow, a, 0.95**every)
        if _finite(update_size) and update_size > 0:  # type: ignore[operator]
            u = min(UPDATE_LOG_RANGE[1], max(UPDATE_LOG_RANGE[0], math.log10(update_size)))  # type: ignore[arg-type]
            self.u_mid = _ema(self.u_mid, u, 0.9**every)

    def features(self, progress: float, lr_rel: float) -> list[float]:
        """The raw (clipped, always finite) feature vector, in `FEATURE_NAMES` order."""
        l_mid, l_min, l_max = self.l_mid, self.l_min, self.l_max
        span = (l_max - l_min) if l_max is not None and l_min is not None else 0.0
        raw = (
            progress,
            lr_rel,
            _log_ratio(self.l_fast, l_mid),
            _log_ratio(l_mid, self.l_slow),
            _log_ratio(l_mid, l_min),
            _log_ratio(l_mid, self.loss0),
            ((l_mid - l_min) / span) if span > 0 and l_mid is not None and l_min is not None else 0.0,
            self.a_fast if self.a_fast is not None else 0.0,
            self.a_slow if self.a_slow is not None else 0.0,
            _log_ratio(self.g_fast, self.g_slow),
            self.u_mid if self.u_mid is not None else SHIFT[10],  # unseen: the neutral input
            _log_ratio(self.v_last, self.v_min),  # 0 without readings
        )
        isfinite = math.isfinite
        # `_clip` inline: a non-finite value becomes 0, then min(hi, max(lo, v))
        return [min(hi, max(lo, v if isfinite(v) else 0.0)) for v, (lo, hi) in zip(raw, CLIP)]

    def fold_val(self, val_loss: float | None) -> None:
        """Fold one validation loss in (`val_rise`); a missing or non-finite one is skipped."""
        if _finite(val_loss):
            v = max(float(val_loss), _EPS)  # type: ignore[arg-type]
            self.v_last = v
            self.v_min = v if self.v_min is None else min(self.v_min, v)

    def loss_dropped(self, fraction: float) -> bool:
        """The loss average (EMA 0.9) is at least `fraction` below the first loss (False before any loss)."""
        return self.l_mid is not None and self.loss0 is not None and self.l_mid < (1.0 - fraction) * self.loss0

    def rise_evidence(self, drop: float, align: float) -> bool:
        """The loss has dropped by `drop` (`loss_dropped`), or the slow gradient-alignment average exceeds `align`
        (successive gradients agree: the steps are too short); False while neither is seen."""
        return self.loss_dropped(drop) or (self.a_slow is not None and self.a_slow > align)

    def update_excess(self, ceiling: float) -> float:
        """Decades by which the averaged update size exceeds 10**ceiling (negative below it; 0 while unseen)."""
        return 0.0 if self.u_mid is None else self.u_mid - ceiling

    def diverging(self, ratio: float, reference: float | None = None) -> bool:
        """The fast loss average is more than `ratio` times `reference` (default: the first loss): training is blowing up."""
        ref = self.loss0 if reference is None else reference
        return self.l_fast is not None and ref is not None and self.l_fast > ratio * ref

    def state_dict(self) -> dict[str, Any]:
        """Plain floats only (a statistic not yet seen is NaN), so any framework can checkpoint it."""
        return {k: (math.nan if v is None else float(v)) for k, v in asdict(self).items()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FeatureState:
        return cls(**{k: (None if v is None or not math.isfinite(float(v)) else float(v)) for k, v in state.items()})  # u_mid absent (<= 0.3): unseen


def fold_loss(state: FeatureState, loss: float) -> None:
    """Fold one finite loss into the loss statistics of `state` (`FeatureState.update`'s first part; the rule's
    steps between decisions call it directly)."""
    v = max(float(loss), _EPS)
    if state.loss0 is None:
        state.loss0 = v
    fast, mid, slow = state.l_fast, state.l_mid, state.l_slow
    # `_ema` written out (the same arithmetic: beta * old + (1.0 - beta) * new): this runs every step
    state.l_fast = v if fast is None else 0.5 * fast + (1.0 - 0.5) * v
    state.l_mid = mid = v if mid is None else 0.9 * mid + (1.0 - 0.9) * v
    state.l_slow = v if slow is None else 0.99 * slow + (1.0 - 0.99) * v
    state.l_min = mid if state.l_min is None else min(state.l_min, mid)
    state.l_max = mid if state.l_max is None else max(state.l_max, mid)


def _log_ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or a <= 0 or b <= 0:
        return 0.0
    return math.log(a / b)


def _clip(v: float, lo: float, hi: float) -> float:
    """Clip to [lo, hi]; a non-finite value becomes 0 clipped into range (the neutral input)."""
    if not math.isfinite(v):
        v = 0.0
    return min(hi, max(lo, v))
