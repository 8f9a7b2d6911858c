"""The meta-learned controller: a frozen 64-32 policy reading scale-free training signals.

    ctrl = controllers.build("meta", optimizer, total_steps=1000)          # the shipped checkpoint
    ctrl = controllers.build("meta", optimizer, checkpoint="my.safetensors", total_steps=1000)
    ctrl = metalr.load_pretrained(optimizer=optimizer, total_steps=1000)   # the same

Each step it calls `metalr.meta.rule.lr_rule`, the very function meta-training
unrolled: the step's loss, gradient norm and gradient alignment
(`metalr.gradstats`) are folded into the features, the policy proposes a bounded
log-LR change, a fixed guard cuts the LR at once when the loss blows up, and the
LR stays within [min_factor, max_factor] x base LR. Every param group keeps its
own base LR; one multiplier scales them all.

It reads only the loss and gradients: no logits, no accuracy. Pass `total_steps`
(the harness and the integrations do): the policy's `progress` feature and the
per-step size of its changes depend on the run's length. Without it the rule
assumes `default_total_steps` from the checkpoint and says so in the log.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch

from metalr.controllers import register
from metalr.controllers.base import Controller
from metalr.meta.checkpoint import FrozenPolicy, cached_policy
from metalr.meta.rule import RuleState, lr_rule
from metalr.signals import Signals

log = logging.getLogger(__name__)


@register("meta")
class MetaController(Controller):
    """LR multiplier set by the meta-learned policy (frozen: no learning at deployment)."""

    requires = frozenset({"loss", "grad_align"})
    _state_keys = ("log_rel", "rule_state", "total_steps")

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        checkpoint: str | os.PathLike[str] | FrozenPolicy | None = None,
        total_steps: int | None = None,
    ) -> None:
        self.frozen = checkpoint if isinstance(checkpoint, FrozenPolicy) else cached_policy(checkpoint)
        self.rule = self.frozen.rule
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if total_steps is None:
            log.warning("meta controller: total_steps not given; assuming a %d-step run (pass total_steps=...)", self.rule.default_total_steps)
        self.total_steps = int(total_steps or self.rule.default_total_steps)
        self.log_rel = 0.0
        self._rule_state = RuleState()  # live object; `rule_state` is its plain-dict form for state_dict()
        bases = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        super().__init__(optimizer, min_lr=min(bases) * self.rule.min_factor, max_lr=max(bases) * self.rule.max_factor)

    @property
    def rule_state(self) -> dict[str, Any]:
        return self._rule_state.state_dict()

    @rule_state.setter
    def rule_state(self, state: dict[str, Any]) -> None:
        self._rule_state = RuleState.from_state(state)

    def _compute_lrs(self, signals: Signals) -> list[float]:
        with torch.no_grad():
            log_rel = lr_rule(
                self.frozen.policy, self.rule, self._rule_state, torch.tensor(self.log_rel, dtype=torch.float64), signals.loss, signals.grad_norm, signals.grad_align,
                self.last_step, self.total_steps,
            )  # fmt: skip
        value = float(log_rel)
        self.log_rel = value if math.isfinite(value) else self.log_rel  # cannot happen with finite weights and clipped features
        factor = float(torch.exp(torch.tensor(self.log_rel, dtype=torch.float64)))  # exactly as the unroll computes it
        return [b * factor for b in self.base_lrs]

    def extra_logs(self) -> dict[str, float]:
        return {"meta_lr_factor": math.exp(self.log_rel), "meta_guard_fired": float(self._rule_state.guard_fired)}


def load_pretrained(path: str | os.PathLike[str] | None = None, optimizer: torch.optim.Optimizer | None = None, **kwargs: Any) -> Any:
    """The shipped (or given) meta-controller: a `MetaController` bound to `optimizer`, else the `FrozenPolicy`."""
    frozen = cached_policy(path)
    if optimizer is None:
        if kwargs:
            raise TypeError(f"keyword arguments {sorted(kwargs)} need an optimizer (they configure the bound controller)")
        return frozen
    return MetaController(optimizer, checkpoint=frozen, **kwargs)
