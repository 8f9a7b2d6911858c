"""The meta-learned controller: a frozen 64-32 policy reading scale-free training signals.

    ctrl = controllers.build("meta", optimizer, total_steps=1000)          # the shipped checkpoint
    ctrl = controllers.build("meta", optimizer, checkpoint="my.safetensors", total_steps=1000)
    ctrl = metalr.load_pretrained(optimizer=optimizer, total_steps=1000)   # the same

Each step it calls `metalr.meta.rule.lr_rule`, the very function meta-training
unrolled: the step's loss, gradient norm and gradient alignment
(`metalr.gradstats`) are folded into the features, the policy proposes a bounded
log-LR change, a fixed guard cuts the LR at once when the loss blows up, and the
LR stays within [min_factor, max_factor] x base LR (the checkpoint's range, x0.001 to x1000
for the shipped one; `min_factor=`/`max_factor=` narrow it, e.g. `max_factor=3` when
fine-tuning a pretrained model, whose LR should stay near the usual one). Every param group
keeps its own base LR; one multiplier scales them all.

It reads only the loss, the gradients and the relative size of the last update
(a sample of at most 4096 weights): no logits, no accuracy. A format-4 checkpoint
also reads the loss of the run's evaluations when it gets one (`Signals.val_loss`,
from `record_eval`: the harness and the integrations pass it; in a plain loop,
`metalr.hook`'s `ctrl.record_eval(val_loss)` after evaluating) and acts without it when it does not. A checkpoint whose rule
has `decide_every` = k (`metalr.meta.rule`) reads the gradient statistics and the
update size, and runs the policy, only every k-th step (`signal_every`: the tracker
computes them only then); the loss and the divergence guard stay per step. Pass `total_steps`
(the harness and the integrations do): the policy's `progress` feature and the
per-step size of its changes depend on the run's length. Without it the rule
assumes `default_total_steps` from the checkpoint and says so in the log.

One rule (`metalr.meta.rule.lr_rule`), always on the host, whatever the signals' device:
- CPU (signals are Python numbers): features in Python floats, the policy in
  numpy (`HostPolicy`), the LR applied every step; a few tens of microseconds.
- GPU (the controller declares `device_signals`, so for parameters off the CPU the
  tracker hands it the loss and gradient statistics as 0-d device tensors): each
  step's tensors are kept as they are (no kernel, no read); every `sync_every`
  steps they are read back together, one host-device synchronisation, and the rule
  runs over them step by step. Default 1: the exact rule, one synchronisation per
  step. With `sync_every=k`: 1/k synchronisations per step; the rule still takes
  every step's signals, in order, but the optimizer's LR takes the rule's changes only
  every k steps (held over blocks of k, following the warmup; the guard acts up to k-1
  steps late). That delay is why the default stays 1: with k = 8 (the read-backs on the
  policy's own steps, so only the guard waits) the selection tasks lose 1.7 points from
  a 10^1.5x LR (`scripts/meta_sync_probe.py`, docs/meta_training/README.md, session 20).
  Running the rule on the device instead (about a hundred tiny kernels a step) cost
  more than the synchronisation it saved (`benchmarks/README.md`, CUDA).
- `read_lag=1` (option, default 0): the rule runs every step, one step late. Each step's signals are copied to the
  host without waiting (`StagedRead`: pinned memory and an event on CUDA) and read at the next step, so the LR of
  step t + 1 comes from the signals up to step t - 1 (the warmup still follows the step). Every decision and every
  guard cut takes effect one step later than with the exact rule; on a GPU the host waits only for a step the
  device has usually finished. The same LRs on every device (tested on the CPU). Not the default, and not advised:
  one step of delay costs as much as `sync_every=8` (`scripts/meta_sync_probe.py --lag`, session 22: 2.1 points on
  the selection tasks from a 10^1.5x LR, where the guard's first cut must come at once), and its CUDA
  synchronisation count is still to be measured on a GPU.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from dataclasses import replace
from typing import Any

import torch

from metalr.controllers import register
from metalr.controllers.base import Controller, StagedRead, group_base_lrs, read_back, whole_steps
from metalr.meta.checkpoint import FrozenPolicy, cached_policy
from metalr.meta.features import FEATURE_NAMES
from metalr.meta.policy import HostPolicy
from metalr.meta.rule import RuleConfig, RuleState, lr_rule, warmup_factor, warmup_steps
from metalr.signals import Signals

log = logging.getLogger(__name__)


@register("meta")
class MetaController(Controller):
    """LR multiplier set by the meta-learned policy (frozen: no learning at deployment)."""

    requires = frozenset({"loss", "grad_align", "update_size"})
    device_signals = True
    _state_keys = ("log_rel", "rule_state")  # (and the run's length, which every planned controller's state keeps)
    _past_end = "the policy reads the run as finished (progress 1) from here on and its LR goes on with its end-of-run decay"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        checkpoint: str | os.PathLike[str] | FrozenPolicy | None = None,
        total_steps: int | None = None,
        sync_every: int = 1,
        read_lag: int = 0,
        min_factor: float | None = None,
        max_factor: float | None = None,
    ) -> None:
        self.frozen = checkpoint if isinstance(checkpoint, FrozenPolicy) else cached_policy(checkpoint)
        if self.frozen.policy.n_features > FEATURE_NAMES.index("val_rise"):  # a format-4 policy also reads the evaluations' loss
            self.requires = type(self).requires | {"val_loss"}  # type: ignore[misc]
        self.rule = _narrowed(self.frozen.rule, min_factor, max_factor)
        self.signal_every = self.rule.decide_every  # the tracker computes the gradient statistics only on the policy's steps
        if total_steps is not None and whole_steps("meta controller", total_steps) < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if isinstance(sync_every, bool) or not isinstance(sync_every, (int, numbers.Integral)) or sync_every < 1:
            raise ValueError(f"sync_every must be an int >= 1, got {sync_every!r}")
        if isinstance(read_lag, bool) or read_lag not in (0, 1):
            raise ValueError(f"read_lag must be 0 (the exact rule) or 1 (the rule one step late), got {read_lag!r}")
        if read_lag and sync_every != 1:
            raise ValueError(f"read_lag=1 reads every step's signals one step late; it does not combine with sync_every={sync_every}")
        if total_steps is None:
            log.warning("meta controller: total_steps not given; assuming a %d-step run (pass total_steps=...)", self.rule.default_total_steps)
        self.total_steps = int(total_steps or self.rule.default_total_steps)
        _warn_if_shorter_than_trained(self.frozen, self.rule, self.total_steps)
        self._warmup_steps = warmup_steps(self.rule, self.total_steps)
        self.sync_every = int(sync_every)
        self.read_lag = int(read_lag)
        self._staged: list[tuple[int, StagedRead]] = []  # read_lag=1: (step, its signals on their way to the host)
        self._phase_warned = False
        self._nonfinite_warned = False
        self._host_policy = HostPolicy(self.frozen.policy)  # the frozen policy in numpy
        self._log_rel = 0.0  # log(LR / base LR)
        self._rule_state = RuleState()
        self._pending: list[tuple[int, Any, Any, Any, Any, Any]] = []  # (step, loss, grad_norm, grad_align, update_size, val_loss) not read back yet
        bases = group_base_lrs(optimizer)
        lowest = self.rule.min_factor * warmup_factor(self.rule, 1, self.total_steps)  # the LR floor times the warmup's first step
        super().__init__(optimizer, min_lr=[b * lowest for b in bases], max_lr=[b * self.rule.max_factor for b in bases])

    def _run_length_changed(self) -> None:
        self._warmup_steps = warmup_steps(self.rule, self.total_steps)  # the restored run's length

    def _initial_lrs(self) -> list[float]:
        return [b * warmup_factor(self.rule, 1, self.total_steps) for b in self.base_lrs]  # the first step's LR: the rule's warmup

    @property
    def log_rel(self) -> float:
        self._flush()
        return self._log_rel

    @log_rel.setter
    def log_rel(self, value: float) -> None:
        self._log_rel = float(value)

    @property
    def rule_state(self) -> dict[str, Any]:
        self._flush()
        return self._rule_state.state_dict()

    @rule_state.setter
    def rule_state(self, state: dict[str, Any]) -> None:
        self._rule_state = RuleState.from_state(state)
        self._pending = []  # a restored state replaces whatever was not read back yet
        self._staged = []

    def _compute_lrs(self, signals: Signals) -> list[float]:
        if self.signal_every > 1 and signals.step and signals.step % self.signal_every != self.last_step % self.signal_every and not self._phase_warned:
            self._phase_warned = True  # the statistics arrive on other steps than the policy's: it would decide on stale features
            log.warning(
                "meta controller: the tracker is at step %d but the controller at step %d; with decide_every=%d the gradient "
                "statistics then miss the policy's steps. Build the tracker with metalr.train.build_tracker and restore both together.",
                signals.step, self.last_step, self.signal_every,
            )  # fmt: skip
        loss, norm, align, size, val = signals.loss, signals.grad_norm, signals.grad_align, signals.update_size, signals.val_loss
        tensor = torch.Tensor
        if self.read_lag:  # the last step's signals (read now, their copy long done) into the rule; this step's on their way
            self._read_staged()
            self._staged.append((self.last_step, StagedRead((loss, norm, align, size, val))))
        elif isinstance(loss, tensor) or isinstance(align, tensor) or isinstance(norm, tensor) or isinstance(size, tensor) or self._pending:
            # Tensors on the parameters' device (a GPU): kept as they are, no kernel and no read; every
            # `sync_every` steps they are read back at once and the host rule runs over them, step by step
            # (a step without tensors while some are kept waits its turn behind them).
            self._pending.append((self.last_step, loss, norm, align, size, val))
            if self.last_step % self.sync_every:
                # Between read-backs the multiplier of the last one is held (the policy's and the guard's changes wait
                # for the next; a read for inspection, `log_rel`, changes nothing here), under this step's warmup.
                if self.last_step > self._warmup_steps:
                    return list(self._last_lr)
                ratio = self._warmup(self.last_step) / self._warmup(self.last_step - 1)
                return [lr * ratio for lr in self._last_lr]
            self._flush()
        else:
            self._rule_step(self.last_step, loss, norm, align, size, val)
        factor = math.exp(self._log_rel)
        if self.last_step < self._warmup_steps:  # the next step is still in the warmup
            factor *= warmup_factor(self.rule, self.last_step + 1, self.total_steps)
        return [b * factor for b in self.base_lrs]

    def _warmup(self, step: int) -> float:
        """The warmup envelope of the LR set after controller step `step` (that of step `step` + 1; 1 once it is over)."""
        return warmup_factor(self.rule, step + 1, self.total_steps) if step < self._warmup_steps else 1.0

    def _rule_step(self, step: int, loss: Any, norm: Any, align: Any, size: Any, val: Any = None) -> None:
        """One step of the rule on the host (Python and numpy numbers)."""
        if loss is not None and type(loss) is not float:  # a numpy scalar, an int: the number it is (the rule reads floats)
            loss = float(loss)
        if norm is not None and type(norm) is not float:
            norm = float(norm)
        if align is not None and type(align) is not float:
            align = float(align)
        if size is not None and type(size) is not float:
            size = float(size)
        if val is not None and type(val) is not float:
            val = float(val)
        if loss is not None and not math.isfinite(loss) and not self._nonfinite_warned:
            self._nonfinite_warned = True
            log.warning(
                "meta controller: non-finite loss (%s) at step %d; the divergence guard cuts the LR x%g unless it cut in the "
                "last %d steps (logged once; extra_logs()['meta_guard_fired'] counts every cut)", loss, step, self.rule.guard_factor, self.rule.guard_cooldown,
            )  # fmt: skip
        self._log_rel = lr_rule(self._host_policy, self.rule, self._rule_state, self._log_rel, loss, norm, align, step, self.total_steps, size, val)

    def _read_staged(self) -> None:
        """read_lag=1: run the rule over the staged steps, in order."""
        staged, self._staged = self._staged, []
        for step, signals in staged:
            self._rule_step(step, *signals.get())

    def _flush(self) -> None:
        """Read the kept device signals back (one host-device synchronisation for all of them) and run the rule over them in order."""
        if self._staged:  # (read_lag=1: reading one step early changes no LR: the next step reads up to this one anyway)
            self._read_staged()
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        values = iter(read_back([v for row in pending for v in row[1:]]))
        for step, *signals in pending:
            self._rule_step(step, *(next(values) for _ in signals))

    def policy_features(self) -> list[float]:
        """The feature vector as of the last step, in `FEATURE_NAMES` order (what the policy reads at a decision step;
        for inspection and research scripts: with device signals this reads the kept ones back)."""
        self._flush()
        return [float(v) for v in self._rule_state.features.features(min(1.0, self.last_step / self.total_steps), self._log_rel)]

    def extra_logs(self) -> dict[str, float]:
        """As of the last step; with device signals, as of the last read-back (no extra host read)."""
        return {"meta_lr_factor": math.exp(self._log_rel), "meta_guard_fired": float(self._rule_state.guard_fired)}


def _warn_if_shorter_than_trained(frozen: FrozenPolicy, rule: RuleConfig, total_steps: int) -> None:
    """Log a run shorter than any the policy was meta-trained on: its moves scale with 1/T, so there one decision can
    multiply the LR by far more than on the runs it learned from (README, "Caveats")."""
    trained = (frozen.metadata.get("config") or {}).get("steps_range")
    if not (isinstance(trained, (list, tuple)) and len(trained) == 2 and total_steps < int(trained[0])):
        return
    shortest = int(trained[0])
    per_step = float(frozen.policy.model_args.get("max_log_step", 0.2)) * rule.decide_every * max(1.0, rule.small_step_gain)

    def most(steps: int) -> float:  # the largest LR multiplier of one decision (a rise while the small-step gain applies)
        return math.exp(per_step * rule.horizon_scale(steps))

    log.warning(
        "meta controller: a %d-step run is shorter than any the policy was meta-trained on (%d-%d steps). Its moves scale "
        "with the run's length: one decision may multiply the LR by up to x%.3g here (x%.3g on a %d-step run)%s",
        total_steps, shortest, int(trained[1]), most(total_steps), most(shortest), shortest,
        f"; max_factor keeps the LR within x{rule.max_factor:g} of the base LR" if rule.max_factor < frozen.rule.max_factor
        else "; bound it with max_factor= (e.g. 3.0) or give the run more steps",
    )  # fmt: skip


def _narrowed(rule: RuleConfig, min_factor: float | None, max_factor: float | None) -> RuleConfig:
    """`rule` with a narrower LR range [min_factor, max_factor] x base LR, for a user who knows the LR must stay
    near the base LR (a pretrained model's fine-tune). Only narrower: the policy never saw an LR outside its own range."""
    if min_factor is None and max_factor is None:
        return rule
    lo = rule.min_factor if min_factor is None else float(min_factor)
    hi = rule.max_factor if max_factor is None else float(max_factor)
    own = f"the checkpoint's range is [{rule.min_factor:g}, {rule.max_factor:g}]"
    if not rule.min_factor <= lo < 1:
        raise ValueError(f"min_factor must be in [{rule.min_factor:g}, 1) ({own}), got {min_factor!r}")
    if not 1 < hi <= rule.max_factor:
        raise ValueError(f"max_factor must be in (1, {rule.max_factor:g}] ({own}), got {max_factor!r}")
    return replace(rule, min_factor=lo, max_factor=hi)


def load_pretrained(path: str | os.PathLike[str] | None = None, optimizer: torch.optim.Optimizer | None = None, **kwargs: Any) -> Any:
    """The shipped (or given) meta-controller: a `MetaController` bound to `optimizer`, else the `FrozenPolicy`."""
    frozen = cached_policy(path)
    if optimizer is None:
        if kwargs:
            raise TypeError(f"keyword arguments {sorted(kwargs)} need an optimizer (they configure the bound controller)")
        return frozen
    return MetaController(optimizer, checkpoint=frozen, **kwargs)
