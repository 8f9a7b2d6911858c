"""Uncertainty-driven LR, calibrated: react to uncertainty relative to its own recent level.

The plans' rules (`uncertainty`, `uncertainty_ensemble`) multiply the LR by
1.2 when the uncertainty u is below 0.1 and by 0.8 otherwise. Whether 0.1 is
"confident" depends on the dropout rate, the number of classes and the model:
at p = 0.5 a 10-class CNN's normalised MC-Dropout entropy is almost never below
it (the LR is cut at every estimate until it sits on its floor, although u
tracks the error well), and members of a deep ensemble trained on the same data
rarely disagree by 0.1 (the LR only rises). The variants keep the idea (more
confident -> larger steps, less confident -> smaller), the plans' multipliers
and interval, and the same estimators, but compare u with its own recent level
(`metalr.controllers.relative`): every `interval` (10) steps, with m the
median of the previous `history` (5) estimates,

    u > m * (1 + band)   ->  LR *= decrease (0.8)   less confident than lately
    u < m / (1 + band)   ->  LR *= increase (1.2)   more confident than lately
    otherwise            ->  LR kept               (band = 0.1)

Why scale-free: multiplying u by any constant (another dropout rate, another
number of classes, another measure's range) changes no decision, so nothing
needs tuning per model. In practice the LR warms up while the model is still
becoming more confident quickly, holds once u changes slowly, and is cut when
u rises (the LR is too large, or the data got harder).

Cost: each estimate reuses the training step's own forward (a
`BatchUncertaintyRequest`, served by the tracker's source; see
`metalr.estimators`), so it adds **no forward pass**:

- `uncertainty_relative`: MC Dropout on the head as in `uncertainty`, on the
  input the head received for the step's training batch: `passes` (50) head
  matmuls on that batch. (`uncertainty`: one eval-mode forward of a 256-example
  probe batch, plus the same 50 head matmuls on it.)
- `uncertainty_ensemble_relative`: the members' disagreement from the logits
  each member produced for the training batch: one softmax. (`uncertainty_ensemble`:
  one forward of every member, 5, on the probe batch.) The 5-member ensemble is
  still trained as the model, as in the plan's rule.

Caveats: the training batch changes every step, so estimates are noisier than
on a fixed probe (the dead band absorbs most of it) and are measured on data
being fitted; in a model with its own dropout before the head, the captured
features already carry the training dropout. Both need the model's last
nn.Linear to produce the task's logits (checked at every estimate).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from metalr.controllers import register
from metalr.controllers.base import MultiplicativeController, relative_lr_bounds
from metalr.controllers.relative import RelativeLevel
from metalr.controllers.uncertainty import MAX_PASSES
from metalr.ensemble import ensemble_task
from metalr.estimators import MEASURES, BatchUncertaintyRequest
from metalr.signals import Signals


class _RelativeUncertainty(RelativeLevel, MultiplicativeController):
    """The shared rule; subclasses declare their estimate in `_request`."""

    requires = frozenset({"uncertainty"})
    _state_keys = ("last_uncertainty", "last_factor", *RelativeLevel.LEVEL_STATE_KEYS)

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        increase: float,
        decrease: float,
        interval: int,
        measure: str,
        band: float,
        history: int,
        confirm: int,
        min_lr: float | None,
        max_lr: float | None,
    ) -> None:
        if not (0.0 < decrease <= 1.0 <= increase and math.isfinite(increase)):
            raise ValueError(f"need 0 < decrease <= 1 <= increase, got decrease={decrease}, increase={increase}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        if measure not in MEASURES:
            raise ValueError(f"unknown uncertainty measure {measure!r}; valid: {', '.join(MEASURES)}")
        self._init_level(band, history, confirm)
        self.increase, self.decrease, self.interval, self.measure = float(increase), float(decrease), int(interval), measure
        self.last_uncertainty = math.nan
        self.last_factor = 1.0
        lo, hi = relative_lr_bounds(optimizer, min_lr, max_lr)
        super().__init__(optimizer, min_lr=lo, max_lr=hi)

    def signal_sources(self) -> tuple[BatchUncertaintyRequest, ...]:
        """One estimate every `interval` steps (1, 1 + interval, ...) on the step's own training batch."""
        return (self._request(),)

    def _request(self) -> BatchUncertaintyRequest:
        raise NotImplementedError

    def _factor(self, signals: Signals) -> float:
        u = signals.uncertainty
        self.last_factor = 1.0
        if u is None:  # not an estimation step
            return 1.0
        self.last_uncertainty = float(u)
        side = self._level_side(u)  # non-finite or negative: 0, and the reading is not remembered
        self.last_factor = self.decrease if side > 0 else self.increase if side < 0 else 1.0
        return self.last_factor

    def extra_logs(self) -> dict[str, float]:
        return {"uncertainty": self.last_uncertainty, "uncertainty_factor": self.last_factor, "uncertainty_reference": self.level_reference}


@register("uncertainty_relative")
class MCDropoutUncertaintyRelative(_RelativeUncertainty):
    """MC-Dropout uncertainty (head, training batch) against its running median: clearly lower -> LR x1.2, clearly higher -> x0.8, else kept."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        passes: int = 50,
        dropout_p: float = 0.5,
        measure: str = "entropy",
        increase: float = 1.2,
        decrease: float = 0.8,
        interval: int = 10,
        band: float = 0.1,
        history: int = 5,
        confirm: int = 1,
        seed: int = 0,
        min_lr: float | None = None,
        max_lr: float | None = None,
    ) -> None:
        if not 2 <= passes <= MAX_PASSES or not 0.0 < dropout_p < 1.0:
            raise ValueError(f"need 2 <= passes <= {MAX_PASSES} and 0 < dropout_p < 1; got {passes}, {dropout_p}")
        self.passes, self.dropout_p, self.seed = int(passes), float(dropout_p), int(seed)
        super().__init__(
            optimizer, increase=increase, decrease=decrease, interval=interval, measure=measure, band=band, history=history,
            confirm=confirm, min_lr=min_lr, max_lr=max_lr,
        )  # fmt: skip

    def _request(self) -> BatchUncertaintyRequest:
        return BatchUncertaintyRequest("mc_dropout", self.interval, self.measure, passes=self.passes, dropout_p=self.dropout_p, seed=self.seed)


@register("uncertainty_ensemble_relative")
class EnsembleUncertaintyRelative(_RelativeUncertainty):
    """Deep-ensemble disagreement (training batch) against its running median: clearly lower -> LR x1.2, clearly higher -> x0.8, else kept.

    As in `uncertainty_ensemble`, the harness calls `prepare_task` before building
    the model, so the model *is* an `n_members` `metalr.ensemble.DeepEnsemble`.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        n_members: int = 5,
        measure: str = "disagreement",
        increase: float = 1.2,
        decrease: float = 0.8,
        interval: int = 10,
        band: float = 0.1,
        history: int = 5,
        confirm: int = 1,
        min_lr: float | None = None,
        max_lr: float | None = None,
    ) -> None:
        if n_members < 2:
            raise ValueError(f"n_members must be >= 2, got {n_members}")
        self.n_members = int(n_members)
        super().__init__(
            optimizer, increase=increase, decrease=decrease, interval=interval, measure=measure, band=band, history=history,
            confirm=confirm, min_lr=min_lr, max_lr=max_lr,
        )  # fmt: skip

    @classmethod
    def prepare_task(cls, task: Any, n_members: int = 5, **controller_kwargs: Any) -> Any:
        """The task whose model is an `n_members` deep ensemble (called by `metalr.train.setup`)."""
        return ensemble_task(task, n_members)

    def _request(self) -> BatchUncertaintyRequest:
        return BatchUncertaintyRequest("ensemble", self.interval, self.measure, n_members=self.n_members)
