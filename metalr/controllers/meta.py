"""The meta-learned controller: a frozen 64-32 policy reading scale-free features.

    ctrl = controllers.build("meta", optimizer)                       # the shipped checkpoint
    ctrl = controllers.build("meta", optimizer, checkpoint="my.safetensors", total_steps=1000)
    ctrl = metalr.load_pretrained(optimizer=optimizer)                # the same

Each step it folds the signals into `metalr.meta.features.FeatureState` (the
code the meta-training unroll uses), asks the policy for a log-LR change of at
most ±max_log_step, and keeps the LR within [min_factor, max_factor] x base LR.
Every param group keeps its own base LR; one multiplier scales them all.
Pass `total_steps` (the harness does) so the `progress` feature is meaningful and
the per-step change is scaled to the run's length (`metalr.meta.policy.horizon_scale`);
without it the tracker's `signals.progress` is used (0 when unknown) and no scaling.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from metalr.controllers import register
from metalr.controllers.base import Controller
from metalr.meta.checkpoint import FrozenPolicy, cached_policy
from metalr.meta.features import FeatureState
from metalr.meta.policy import horizon_scale
from metalr.signals import Signals


@register("meta")
class MetaController(Controller):
    """LR multiplier set by the meta-learned policy (frozen: no learning at deployment)."""

    requires = frozenset({"loss", "accuracy", "grad_norm", "grad_cos"})
    _state_keys = ("log_rel", "feature_state", "total_steps")

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        checkpoint: str | os.PathLike[str] | FrozenPolicy | None = None,
        total_steps: int | None = None,
        min_factor: float | None = None,
        max_factor: float | None = None,
    ) -> None:
        self.frozen = checkpoint if isinstance(checkpoint, FrozenPolicy) else cached_policy(checkpoint)
        self.min_factor = self.frozen.min_factor if min_factor is None else float(min_factor)
        self.max_factor = self.frozen.max_factor if max_factor is None else float(max_factor)
        if not 0 < self.min_factor < 1 < self.max_factor or not math.isfinite(self.max_factor):
            raise ValueError(f"need 0 < min_factor < 1 < max_factor (finite), got {self.min_factor}, {self.max_factor}")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = total_steps
        self.log_rel = 0.0
        self.feature_state: dict[str, Any] = FeatureState().state_dict()
        bases = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        super().__init__(optimizer, min_lr=min(bases) * self.min_factor, max_lr=max(bases) * self.max_factor)

    def _compute_lrs(self, signals: Signals) -> list[float]:
        fs = FeatureState.from_state(self.feature_state)
        fs.update(signals.loss, signals.accuracy, signals.grad_norm, signals.grad_cos)
        self.feature_state = fs.state_dict()
        if self.total_steps:
            progress = min(1.0, self.last_step / self.total_steps)
        else:
            progress = signals.progress if isinstance(signals.progress, (int, float)) and math.isfinite(signals.progress) else 0.0
        feats = torch.tensor(fs.features(min(1.0, max(0.0, progress)), self.log_rel), dtype=torch.float32)
        with torch.no_grad():
            delta = float(self.frozen.policy(feats)) * horizon_scale(self.frozen.horizon_steps, self.total_steps)
        if not math.isfinite(delta):  # cannot happen with finite weights and clipped features; stay put if it does
            delta = 0.0
        self.log_rel = min(math.log(self.max_factor), max(math.log(self.min_factor), self.log_rel + delta))
        return [b * math.exp(self.log_rel) for b in self.base_lrs]

    def extra_logs(self) -> dict[str, float]:
        return {"meta_lr_factor": math.exp(self.log_rel)}
