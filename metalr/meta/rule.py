"""The meta-controller's LR rule: one function, called by meta-training and by deployment.

    state = RuleState()
    for each step t = 1..T (after the optimizer step):
        log_rel = lr_rule(policy, cfg, state, log_rel, loss, grad_norm, grad_align, t, T, update_size)
        lr = base_lr * exp(log_rel) * warmup_factor(cfg, t + 1, T)   # the LR of the next step

`metalr.meta.unroll` calls it with `log_rel` a tensor that carries gradients into
the policy; `metalr.controllers.meta.MetaController` calls it frozen. Nothing
else computes the meta-controller's LR, and `tests/test_meta.py` checks that the
two callers give the same LR sequence on the same run.

Per step:
1. fold the step's loss / gradient statistics / update size into the `FeatureState`;
2. the policy reads the features and proposes a log-LR change in
   [-max_log_step, max_log_step], read as the change for one `1/horizon_steps`
   of the run: a T-step run applies `horizon_steps / T` of it per step (capped),
   so the same policy bends the LR by the same amount over 100 or 10,000 steps;
3. a fixed ceiling on the update size: while the weights already move by more than
   10**update_ceiling of their norm per step (the `update_size` feature), the policy may
   not raise the LR, and must lower it by `ceiling_pull` per decade above the ceiling. A
   meta-gradient does not see the cliff where a too-high LR collapses training (the loss
   is flat past it), so, like divergence, this is not left to be learned;
4. a fixed safety guard: a non-finite loss, or a fast loss average more than
   `guard_ratio` times the guard's reference loss, multiplies the LR by `guard_factor` at
   once (then waits `guard_cooldown` steps before it can fire again). Learned
   changes are deliberately slow; blowing up is not something to learn slowly.
   The reference is the largest of the first `guard_window` losses, and the ratio test starts
   once they are in (`guard_window` = 1: the first loss, as every checkpoint before it had). A run
   that starts from trained weights (a fine-tune, a second stage) has a low, noisy first loss, and a
   single batch as the reference reads that noise as a blow-up (`scripts/meta_continue_probe.py`).
   But a window also delays the ratio test by W steps and lets an early blow-up into the reference:
   from a too-high LR the loss can run away within those steps (held-out x10 runs, session 13).
   `guard_rebase` keeps the first-loss reference (W = 1) and instead raises it, each time the ratio
   test fires, to the fast loss average that tripped it: a loss that keeps climbing trips it again
   (1.5x higher), a transient or noisy level above a low first loss trips it once;
5. log(LR / base LR) stays in [log min_factor, log max_factor];
6. an optional gate on rises (`rise_cap` > 0, off in every checkpoint before it): until the loss average
   has fallen `rise_drop` below the first loss, the policy may not take the LR above `rise_cap` x the base
   LR (it may lower it; the gate closes again if the loss climbs back). A pretrained model fine-tuned at a
   sound LR shows the same inputs as a randomly initialised one trained too slowly (a flat loss, small
   updates): raising the LR is right for the second and collapses the first, and a collapse to chance level
   never lifts the loss above its first value, so the divergence guard cannot see it
   (docs/meta_training/README.md, "Session 14"). The gate asks for evidence that the run is learning
   before it leaves the base LR's neighbourhood. `rise_align` < 1 also opens it while the slow average of
   `grad_align` exceeds it: successive gradients that agree say the steps are too short (the hypergradient's
   signal), which a run at a too-low LR shows from its first steps, long before its loss has fallen.

7. an optional warmup (`warmup` > 0, off in every checkpoint before it): the LR of step t is multiplied by
   min(1, t / W), W = `warmup` x the run's length (`warmup_factor`; the callers apply it when they turn log_rel
   into an LR). From a too-high base LR a model can be wrecked in its first few steps, before the guard sees a
   loss 1.5x the first; a linear warmup, the practitioner's usual protection, keeps those steps small. The
   policy does not see the envelope: its `lr_rel` is the LR it would set without it.

8. an optional faster rise while the steps are small (`small_step_gain` > 1, off in every checkpoint before it): at a
   decision step a positive proposal of the policy is multiplied by `small_step_gain` while the `update_size` feature
   (log10 of the last update's size relative to the weights) is below `small_step_below`: the weights move so little
   that the LR is likely too low. From a too-high LR the updates are large and the rises keep their pace (a faster rise
   everywhere overshoots there: `scripts/meta_rise_gain_probe.py`, docs/meta_training/README.md, session 21).

Decision interval (`decide_every` = k, a rule setting stored in the checkpoint; 1 when absent). The loss is
folded in and the guard checked every step; the gradient statistics and the update size
(steps 1 and 3) and the policy (step 2) only on steps t with t % k == 0, where the change is
k times the per-step change (the same LR movement per run), and the feature averages of those
signals take each reading with beta**k (`FeatureState.update`: the same time scales in steps as at
k = 1, so a policy trained at k = 1 reads the same features, from fewer readings). On the other steps those signals
are ignored if given, so a tracker that computes them every step gives the same LRs as one that
computes them only when they are read (`SignalTracker(every=k)`, which is what makes k > 1
cheap: the statistics and the policy cost 1/k per step).

The features are Python floats (`FeatureState`) on every path: meta-training differentiates
through the policy's output and the LR, not through the features; the deployed controller
reads a GPU's signals back in batches and runs this rule on the host (`metalr.controllers.meta`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from metalr.meta.features import _EPS, FEATURE_NAMES, FeatureState, fold_loss
from metalr.meta.policy import HostPolicy, MetaPolicy

_UPDATE_SIZE = FEATURE_NAMES.index("update_size")


@dataclass(frozen=True)
class RuleConfig:
    """Everything the rule needs besides the policy (stored in every checkpoint's metadata)."""

    horizon_steps: int = 100  # the policy's output is the change per 1/horizon_steps of a run
    max_horizon_scale: float = 4.0  # runs shorter than horizon_steps take at most this many times the step
    min_factor: float = 1e-3  # LR >= min_factor * base LR
    max_factor: float = 30.0  # LR <= max_factor * base LR
    guard_ratio: float = 1.5  # fast loss EMA > guard_ratio * first loss: diverging
    guard_factor: float = 0.3  # ... then LR *= guard_factor at once
    guard_cooldown: int = 5  # steps before the guard may fire again
    default_total_steps: int = 1000  # assumed run length when the caller gives none (logged)
    update_ceiling: float = 0.0  # log10 update size above which the policy may not raise the LR (0: the weights' own norm, i.e. off)
    ceiling_pull: float = 0.0  # ... and must lower it by at least this much per decade above the ceiling (per 1/horizon_steps)
    decide_every: int = 1  # the policy decides on every k-th step only (k x the per-step change); see the module docstring
    guard_window: int = 1  # the guard's reference loss is the largest of the first guard_window losses (1: the first loss)
    guard_rebase: bool = False  # when the ratio test fires, the reference becomes the loss average that tripped it
    rise_cap: float = 0.0  # > 0: the policy may not raise the LR above rise_cap x base LR until the loss has dropped (0: off)
    rise_drop: float = 0.1  # ... i.e. until the loss average (EMA 0.9) is this fraction below the first loss
    rise_align: float = 1.0  # ... or the slow gradient-alignment average exceeds this (1: never, only the loss drop opens the gate)
    warmup: float = 0.0  # > 0: the LR rises linearly over this share of the run (`warmup_factor`), outside the policy (0: off)
    small_step_gain: float = 1.0  # > 1: the policy's rises are this many times larger while the update size is small (1: off)
    small_step_below: float = -3.0  # ... i.e. while the `update_size` feature (log10 |dtheta| / |theta|) is below this

    def __post_init__(self) -> None:
        if isinstance(self.decide_every, bool) or not isinstance(self.decide_every, int) or self.decide_every < 1:
            raise ValueError(f"decide_every must be an int >= 1, got {self.decide_every!r}")
        if isinstance(self.guard_window, bool) or not isinstance(self.guard_window, int) or self.guard_window < 1:
            raise ValueError(f"guard_window must be an int >= 1, got {self.guard_window!r}")
        if not isinstance(self.guard_rebase, bool):
            raise ValueError(f"guard_rebase must be true or false, got {self.guard_rebase!r}")
        if self.horizon_steps < 1 or self.max_horizon_scale <= 0 or self.default_total_steps < 1 or self.guard_cooldown < 0:
            raise ValueError(f"invalid RuleConfig {self}")
        if not 0 < self.min_factor < 1 < self.max_factor or not math.isfinite(self.max_factor):
            raise ValueError(f"need 0 < min_factor < 1 < max_factor (finite), got {self.min_factor}, {self.max_factor}")
        if not (self.update_ceiling <= 0 and self.ceiling_pull >= 0):
            raise ValueError(f"need update_ceiling <= 0 and ceiling_pull >= 0, got {self.update_ceiling}, {self.ceiling_pull}")
        if not (self.rise_cap == 0 or 1 < self.rise_cap <= self.max_factor) or not 0 < self.rise_drop < 1 or not -1 <= self.rise_align <= 1:
            raise ValueError(
                f"need rise_cap 0 (off) or in (1, max_factor], 0 < rise_drop < 1 and -1 <= rise_align <= 1, got {self.rise_cap}, {self.rise_drop}, {self.rise_align}"
            )
        if not (isinstance(self.warmup, (int, float)) and not isinstance(self.warmup, bool) and 0 <= self.warmup < 1):
            raise ValueError(f"warmup must be a share of the run in [0, 1), got {self.warmup!r}")
        if not (math.isfinite(self.small_step_gain) and self.small_step_gain >= 1 and -6 <= self.small_step_below <= 0):
            raise ValueError(f"need small_step_gain >= 1 and -6 <= small_step_below <= 0, got {self.small_step_gain}, {self.small_step_below}")
        if not (self.guard_ratio > 1 and 0 < self.guard_factor < 1):
            raise ValueError(f"need guard_ratio > 1 and 0 < guard_factor < 1, got {self.guard_ratio}, {self.guard_factor}")

    @functools.cached_property
    def log_bounds(self) -> tuple[float, float]:
        return math.log(self.min_factor), math.log(self.max_factor)

    def horizon_scale(self, total_steps: int) -> float:
        return min(self.max_horizon_scale, self.horizon_steps / max(1, total_steps))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def warmup_factor(cfg: RuleConfig, step: int, total_steps: int) -> float:
    """The warmup envelope: the LR of step `step` (1-based) of a `total_steps`-step run is base LR x
    exp(log_rel) x this. min(1, step / W) with W = max(1, round(warmup x total_steps)); 1 when warmup is 0.

    It multiplies the LR, not the rule's state: the policy reads `lr_rel` = log_rel, the LR it would run at
    without the envelope, and the envelope is over by W steps whatever the policy does."""
    width = warmup_steps(cfg, total_steps)
    return min(1.0, step / width) if width else 1.0


def warmup_steps(cfg: RuleConfig, total_steps: int) -> int:
    """W, the warmup's length in steps (0 when off): from step W on, `warmup_factor` is 1."""
    return max(1, round(cfg.warmup * total_steps)) if cfg.warmup else 0


@dataclass
class RuleState:
    """What the rule carries from one step to the next (plain numbers)."""

    features: FeatureState = field(default_factory=FeatureState)
    cooldown: int = 0  # steps before the guard may fire again
    guard_fired: int = 0  # times it fired
    guard_ref: float = math.nan  # the guard's reference loss (NaN: no finite loss yet)
    guard_seen: int = 0  # finite losses folded into guard_ref (up to guard_window)

    def state_dict(self) -> dict[str, Any]:
        return {
            "features": self.features.state_dict(),
            "cooldown": int(self.cooldown),
            "guard_fired": int(self.guard_fired),
            "guard_ref": float(self.guard_ref),
            "guard_seen": int(self.guard_seen),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RuleState:
        feats = FeatureState.from_state(state["features"])
        if "guard_ref" in state:
            ref, seen = float(state["guard_ref"]), int(state["guard_seen"])
        else:  # metalr <= 0.3 states, of rules whose guard reference was the first loss (guard_window 1)
            ref, seen = (math.nan, 0) if feats.loss0 is None else (feats.loss0, 1)
        return cls(feats, int(state["cooldown"]), int(state["guard_fired"]), ref, seen)

    def fold_guard_loss(self, loss: Any, window: int) -> None:
        """Fold a step's loss into the guard's reference: the largest of the first `window` finite losses (floored as the features floor them)."""
        if self.guard_seen < window and isinstance(loss, (int, float)) and math.isfinite(loss):  # as FeatureState reads a loss
            v = max(float(loss), _EPS)
            self.guard_ref = v if self.guard_seen == 0 else max(float(self.guard_ref), v)
            self.guard_seen += 1


def lr_rule(
    policy: MetaPolicy | HostPolicy,
    cfg: RuleConfig,
    state: RuleState,
    log_rel: Any,
    loss: float | None,
    grad_norm: float | None,
    grad_align: float | None,
    step: int,
    total_steps: int,
    update_size: float | None = None,
    val_loss: float | None = None,
) -> Any:
    """The next log(LR / base LR) after step `step` of `total_steps` (see module docstring).

    `log_rel` is the current value: a 0-d float64 tensor (it may carry gradients, and so does the
    result) with a `MetaPolicy` (meta-training), or a Python float with a `HostPolicy` (the frozen, deployed
    path: then everything is Python and numpy numbers, and so is the result).
    The signals are Python floats (or None: missing). `state` is updated in place. `val_loss` is a validation
    loss measured after the previous step (`SignalTracker.record_eval`), on the steps that have one: it is folded
    in whatever the step, and read (`val_rise`) only by a policy with that feature (format 4).
    """
    feats = state.features
    if val_loss is not None:
        feats.fold_val(val_loss)
    decide = step % cfg.decide_every == 0
    lo, hi = cfg.log_bounds
    if decide:
        progress = min(1.0, max(0.0, step / total_steps))
        scale = cfg.horizon_scale(total_steps) * cfg.decide_every  # the change for k steps, made at once
        feats.update(loss, grad_norm, grad_align, update_size, cfg.decide_every)  # type: ignore[arg-type]
    elif loss is not None and isinstance(loss, (int, float)) and math.isfinite(loss):  # between decisions (7 in 8 for the shipped
        fold_loss(feats, loss)  # rule): the loss alone, as `FeatureState.update` takes it (one call: here a call costs more than its arithmetic)
    delta: Any = 0.0
    if decide:
        host = isinstance(policy, HostPolicy)
        x = feats.features(progress, float(log_rel if host else log_rel.detach()))
        if policy.n_features < len(x):
            x = x[: policy.n_features]  # an earlier format's policy reads its own (leading) features
        out: Any = policy(x) if isinstance(policy, HostPolicy) else policy(torch.tensor(x, dtype=policy.feature_shift.dtype))
        if cfg.small_step_gain != 1.0 and x[_UPDATE_SIZE] < cfg.small_step_below and float(out if host else out.detach()) > 0:
            out = cfg.small_step_gain * out  # the weights move little (an LR that is likely too low): the rise is taken faster
        delta = scale * out
        excess = float(feats.update_excess(cfg.update_ceiling))  # a Python float here (host features)
        if excess > 0:  # the weights already move fast: no raise (and a pull down, if configured)
            cap = -scale * cfg.ceiling_pull * excess
            delta = min(delta, cap) if isinstance(policy, HostPolicy) else torch.clamp(delta, max=cap)
        if cfg.rise_cap and not feats.rise_evidence(cfg.rise_drop, cfg.rise_align):  # no evidence yet that a higher LR is wanted: no rise past the cap
            headroom = max(0.0, math.log(cfg.rise_cap) - float(log_rel if isinstance(policy, HostPolicy) else log_rel.detach()))
            delta = min(delta, headroom) if isinstance(policy, HostPolicy) else torch.clamp(delta, max=headroom)
    nonfinite_loss = loss is not None and not math.isfinite(loss)  # type: ignore[arg-type]
    window = cfg.guard_window
    if state.guard_seen < window:  # (a host int: once the reference is in, the fold is skipped, as it would do nothing)
        state.fold_guard_loss(loss, window)
    if state.cooldown > 0:
        state.cooldown -= 1
    elif nonfinite_loss or (state.guard_seen >= window and (fast := feats.l_fast) is not None and fast > cfg.guard_ratio * float(state.guard_ref)):
        # (`feats.diverging(cfg.guard_ratio, ref)` written out: this test runs every step)
        delta = delta + math.log(cfg.guard_factor)
        state.cooldown = cfg.guard_cooldown
        state.guard_fired += 1
        if cfg.guard_rebase and not nonfinite_loss:  # fired on the ratio: the tripping level is the new reference
            state.guard_ref = float(feats.l_fast)  # type: ignore[arg-type]
    if isinstance(policy, HostPolicy):
        return min(hi, max(lo, float(log_rel) + delta))
    return torch.clamp(log_rel + delta, lo, hi)
