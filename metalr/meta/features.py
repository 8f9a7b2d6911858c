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

Two implementations of the same running statistics, tested to agree
(`tests/test_meta.py::test_device_features_equal_host_features`):
- `FeatureState`: Python floats. On a CPU the signals are Python numbers at no
  cost, and a dozen float operations are far cheaper than the same number of
  tensor operations (each one a few microseconds of dispatch), so this is the
  CPU path, of the deployed controller and of meta-training alike.
- `DeviceFeatureState`: one float64 vector on the signals' device (a statistic not
  yet seen is NaN), updated with a fixed sequence of tensor operations. No Python
  branch looks at a value, so a step never synchronises host and device: the
  path for signals that live on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

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
)
CLIP: tuple[tuple[float, float], ...] = ((0, 1), (-8, 8), (-1, 1), (-1, 1), (0, 3), (-8, 3), (0, 1), (-1, 1), (-1, 1), (-3, 3), (-6, 0))
SHIFT: tuple[float, ...] = (0.5, 0.0, 0.0, 0.0, 0.2, -1.0, 0.3, 0.0, 0.0, 0.0, -2.5)
SCALE: tuple[float, ...] = (0.3, 2.0, 0.05, 0.05, 0.3, 1.0, 0.3, 0.4, 0.3, 0.3, 1.0)
#: log10 of an update size is clipped to this before it is averaged (an update of exactly 0 is skipped).
UPDATE_LOG_RANGE = (-8.0, 1.0)
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
    u_mid: float | None = None  # EMA 0.9 of log10(update size)

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
        )
        isfinite = math.isfinite
        # `_clip` inline: a non-finite value becomes 0, then min(hi, max(lo, v))
        return [min(hi, max(lo, v if isfinite(v) else 0.0)) for v, (lo, hi) in zip(raw, CLIP)]

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


# The state vector: slots 0-8 are running averages of an observation (slot 0, "the first loss",
# is an average with beta 1: set once, then kept), slots 9-10 the running min / max of slot 2.
STATE_NAMES: tuple[str, ...] = ("loss0", "l_fast", "l_mid", "l_slow", "a_fast", "a_slow", "g_fast", "g_slow", "u_mid", "l_min", "l_max")
_L0, _LF, _LM, _LS, _AF, _AS, _GF, _GS, _UM, _LMIN, _LMAX = range(11)
_N_AVG = 9
_BETA = (1.0, 0.5, 0.9, 0.99, 0.5, 0.95, 0.5, 0.95, 0.9)  # EMA_beta(x) = beta * old + (1 - beta) * x
_OBS = (0, 0, 0, 0, 1, 1, 2, 2, 3)  # which observation (loss, grad_align, grad_norm, log10 update size) feeds each averaged slot
# Observation bounds: the loss is floored at _EPS, the alignment clipped to [-1, 1], log10(update size) to
# UPDATE_LOG_RANGE; a gradient norm must be > 0 (an update size too: its log is taken before the check).
_OBS_LO, _OBS_HI = (_EPS, -1.0, -math.inf, UPDATE_LOG_RANGE[0]), (math.inf, 1.0, math.inf, UPDATE_LOG_RANGE[1])
_OBS_FLOOR = (-math.inf, -math.inf, 0.0, -math.inf)
# Log-ratio features: log(state[num] / state[den]), in the order trend_fast, trend_slow, above_min, vs_first, gnorm_trend.
_NUM, _DEN = (_LF, _LM, _LM, _LM, _GF), (_LM, _LS, _LMIN, _L0, _GS)
# The feature vector from [progress, lr_rel, log-ratios (5), minmax, align_fast, align_slow, update_size]: FEATURE_NAMES order.
_ORDER = (0, 1, 2, 3, 4, 5, 7, 8, 9, 6, 10)


class _Consts:
    """Index and bound tensors of the update, made once per (device, every)."""

    def __init__(self, device: torch.device, every: int = 1) -> None:
        def f64(values: Any) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float64, device=device)

        def idx(values: Any) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        self.beta = f64([b if obs == 0 else b**every for b, obs in zip(_BETA, _OBS)])  # gradient-level readings: beta**every
        self.one_minus_beta = 1.0 - self.beta
        self.obs = idx(_OBS)
        self.lo, self.hi, self.floor = f64(_OBS_LO), f64(_OBS_HI), f64(_OBS_FLOOR)
        self.num, self.den = idx(_NUM), idx(_DEN)
        self.order = idx(_ORDER)
        self.clip_lo = f64([c[0] for c in CLIP])
        self.clip_hi = f64([c[1] for c in CLIP])
        self.nan = f64(math.nan)
        self.zero = f64(0.0)
        self.min_first = torch.tensor([True, False], device=device)
        self.u_unseen = f64(SHIFT[10])


_CONSTS: dict[tuple[torch.device, int], _Consts] = {}


def _consts(device: torch.device, every: int = 1) -> _Consts:
    c = _CONSTS.get((device, every))
    if c is None:
        c = _CONSTS[(device, every)] = _Consts(device, every)
    return c


class DeviceFeatureState:
    """`FeatureState` as one float64 vector (NaN = not seen yet) on the signals' device: no host synchronisation."""

    def __init__(self, state: torch.Tensor | None = None) -> None:
        self.s = state if state is not None else torch.full((len(STATE_NAMES),), math.nan, dtype=torch.float64)

    def _as_tensor(self, x: Any, c: _Consts) -> torch.Tensor:
        if x is None:
            return c.nan
        if isinstance(x, torch.Tensor):
            return x.detach().reshape(()).to(dtype=torch.float64, device=self.s.device)
        return torch.tensor(float(x), dtype=torch.float64, device=self.s.device)

    def update(self, loss: Any, grad_norm: Any, grad_align: Any, update_size: Any = None, every: int = 1) -> None:
        """Fold one step's signals in; missing (None) or non-finite ones (and a gradient norm or update size <= 0) are skipped.
        `every`: as in `FeatureState.update`."""
        device = next((x.device for x in (loss, grad_norm, grad_align, update_size) if isinstance(x, torch.Tensor)), self.s.device)
        if self.s.device != device:
            self.s = self.s.to(device)
        c = _consts(self.s.device, every)
        o3 = torch.stack(
            [self._as_tensor(loss, c), self._as_tensor(grad_align, c), self._as_tensor(grad_norm, c), torch.log10(self._as_tensor(update_size, c))]
        )
        ok3 = torch.isfinite(o3) & (o3 > c.floor)
        o3 = torch.clamp(o3, c.lo, c.hi)
        obs, ok = o3[c.obs], ok3[c.obs]
        old = self.s[:_N_AVG]
        ema = torch.where(torch.isnan(old), obs, old * c.beta + obs * c.one_minus_beta)
        avg = torch.where(ok, ema, old)
        mid = avg[_LM]
        mm = self.s[_N_AVG:]
        new_mm = torch.where(c.min_first, torch.fmin(mm, mid), torch.fmax(mm, mid))
        self.s = torch.cat([avg, torch.where(ok3[0], new_mm, mm)])

    def features(self, progress: float, lr_rel: torch.Tensor | float) -> torch.Tensor:
        """The raw (clipped, always finite) feature vector, float64, in `FEATURE_NAMES` order."""
        c = _consts(self.s.device)
        s = self.s
        ratios = torch.log(s[c.num] / s[c.den])  # NaN where a statistic is unseen
        span = s[_LMAX] - s[_LMIN]
        minmax = torch.where(span > 0, (s[_LM] - s[_LMIN]) / span, c.zero)
        if isinstance(lr_rel, torch.Tensor):
            lr = lr_rel.detach().reshape(()).to(dtype=torch.float64, device=s.device)
        else:
            lr = torch.full((), float(lr_rel), dtype=torch.float64, device=s.device)
        head = torch.stack([torch.full((), float(progress), dtype=torch.float64, device=s.device), lr])
        u = torch.where(torch.isnan(s[_UM]), c.u_unseen, s[_UM]).reshape(1)
        raw = torch.cat([head, ratios, minmax.reshape(1), s[_AF : _AS + 1], u])[c.order]
        return torch.clamp(torch.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0), c.clip_lo, c.clip_hi)

    def loss_dropped(self, fraction: float) -> torch.Tensor:
        """`FeatureState.loss_dropped` as a 0-d bool tensor (False while no loss is seen: NaN compares False)."""
        return self.s[_LM] < (1.0 - fraction) * self.s[_L0]

    def rise_evidence(self, drop: float, align: float) -> torch.Tensor:
        """`FeatureState.rise_evidence` as a 0-d bool tensor."""
        return self.loss_dropped(drop) | (self.s[_AS] > align)

    def update_excess(self, ceiling: float) -> torch.Tensor:
        """Decades by which the averaged update size exceeds 10**ceiling (a 0-d tensor; NaN while unseen)."""
        return self.s[_UM] - ceiling

    @property
    def l_fast(self) -> torch.Tensor:
        """The fast loss average (a 0-d tensor; NaN while unseen), as `FeatureState.l_fast`."""
        return self.s[_LF]

    def diverging(self, ratio: float, reference: torch.Tensor | None = None) -> torch.Tensor:
        """The fast loss average is more than `ratio` times `reference` (default: the first loss): blowing up (a 0-d bool tensor)."""
        ref = self.s[_L0] if reference is None else reference
        return self.s[_LF] > ratio * ref  # False while unseen (NaN compares False)

    def state_dict(self) -> dict[str, Any]:
        """Plain floats only (a statistic not yet seen is NaN), so any framework can checkpoint it."""
        return dict(zip(STATE_NAMES, (float(v) for v in self.s.tolist())))

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DeviceFeatureState:
        if set(state) - {"u_mid"} != set(STATE_NAMES) - {"u_mid"}:  # u_mid is absent from metalr <= 0.3 states (unseen)
            raise ValueError(f"feature state has keys {sorted(state)}, expected {sorted(STATE_NAMES)}")
        values = [math.nan if state.get(k) is None else float(state[k]) for k in STATE_NAMES]
        return cls(torch.tensor(values, dtype=torch.float64))

    @classmethod
    def from_host(cls, host: FeatureState, device: torch.device) -> DeviceFeatureState:
        return cls(cls.from_state(host.state_dict()).s.to(device))
