"""Ensemble-disagreement LR, calibrated: react to disagreement relative to its own recent level.

The plan's rule (`uncertainty_ensemble`) multiplies the LR by 1.2 when the
members' disagreement (mutual information / log K) is below 0.1 and by 0.8
otherwise. Members trained on the same data rarely disagree by 0.1 nats per
log K, so the LR only rises until it sits on its ceiling. This variant keeps
the idea (members agree more -> larger steps, less -> smaller), the plan's
multipliers and interval, and the 5-member ensemble trained as the model, but
compares the disagreement d with its own recent level
(`metalr.controllers.relative`): every `interval` (10) steps, with m the median
of the previous `history` (5) estimates,

    d > m * (1 + band)   ->  LR *= decrease (0.8)   members drift apart
    d < m / (1 + band)   ->  LR *= increase (1.2)   members converge
    otherwise            ->  LR kept               (band = 0.1)

so multiplying d by any constant (another K, another measure's scale) changes
no decision.

The estimate costs no forward pass: the training step already ran every member
on its batch, and `metalr.ensemble` leaves those logits and the batch's targets
on the ensemble (`DeepEnsemble.last_train_logits`); the estimate is a softmax
over them and the chosen measure. The plan's estimator instead runs every
member on a 256-example probe batch. Caveat: the batch changes every step, so
estimates are noisier than on a fixed probe (the dead band absorbs most of it),
and they are measured on data the members are fitting. Each estimate's record
holds that batch's error rate under the averaged prediction.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from metalr.controllers import register
from metalr.controllers.relative import RelativeLevel
from metalr.controllers.uncertainty import EnsembleUncertainty
from metalr.signals import Signals


class TrainBatchDisagreement:
    """The members' disagreement on the latest training batch, from the logits that batch already produced."""

    def __init__(self, ensemble: Any, measure: str) -> None:
        self.ensemble, self.measure = ensemble, measure

    @torch.no_grad()
    def estimate(self, step: int = 0) -> dict[str, float]:
        from metalr.estimators import _record

        logits, targets = self.ensemble.last_train_logits, self.ensemble.last_train_targets
        if logits is None:  # no training forward yet
            return {"step": float(step), "uncertainty": math.nan, "confidence": math.nan, "error_rate": math.nan}
        probs = logits.float().reshape(logits.shape[0], -1, logits.shape[-1]).softmax(-1)  # [M, N, K]
        return _record(step, probs, targets, self.measure)


@register("uncertainty_ensemble_relative")
class EnsembleUncertaintyRelative(RelativeLevel, EnsembleUncertainty):
    """Deep-ensemble disagreement against its running median: clearly lower -> LR x1.2, clearly higher -> x0.8, else kept."""

    _state_keys = (*EnsembleUncertainty._state_keys, *RelativeLevel.LEVEL_STATE_KEYS)  # type: ignore[assignment]  # the base inferred a fixed-length tuple

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
        self._init_level(band, history, confirm)
        super().__init__(
            optimizer, n_members=n_members, measure=measure, increase=increase, decrease=decrease, interval=interval,
            probe_size=1, min_lr=min_lr, max_lr=max_lr,
        )  # fmt: skip

    def _make_estimator(self, model: torch.nn.Module, task: Any, batch: Any) -> Any:
        super()._make_estimator(model, task, batch)  # checks that the model is the n_members ensemble
        return TrainBatchDisagreement(model, self.measure)

    def _factor(self, signals: Signals) -> float:
        d = signals.uncertainty
        self.last_factor = 1.0
        if d is None:
            return 1.0
        self.last_uncertainty = float(d)
        side = self._level_side(d)
        self.last_factor = self.decrease if side > 0 else self.increase if side < 0 else 1.0
        return self.last_factor

    def extra_logs(self) -> dict[str, float]:
        return {**super().extra_logs(), "uncertainty_reference": self.level_reference}
