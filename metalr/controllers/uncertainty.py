"""Uncertainty-driven LR: confident model -> larger steps, uncertain model -> smaller.

Every `interval` steps the model's predictive uncertainty u in [0, 1] is
estimated on a fixed probe batch (see `metalr.estimators`); on that step

    u <  threshold (0.1)  ->  LR *= increase (1.2)
    u >= threshold        ->  LR *= decrease (0.8)

and the LR is kept on every other step. `uncertainty` estimates u by MC Dropout
(p = 0.5, 50 passes, predictive entropy by default); `uncertainty_ensemble`
trains a 5-member deep ensemble *as the model* and uses its members'
disagreement (mutual information). Every estimate is kept in
`uncertainty_records` (step, uncertainty, error_rate, confidence on the probe
batch), which the harness copies into `History.uncertainty`.

Default LR bounds (not given by the plan): [base/100, 10 * base], which suits
both SGD (base ~0.05) and Adam (base ~1e-3).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from metalr.controllers import register
from metalr.controllers.base import MultiplicativeController, relative_lr_bounds
from metalr.signals import Signals

#: Upper bound on MC-Dropout passes: beyond this an estimate costs more than the training it steers.
MAX_PASSES = 1000


class _UncertaintyController(MultiplicativeController):
    """The shared rule; subclasses build the estimator in `_make_estimator`."""

    requires = frozenset({"uncertainty"})
    _state_keys = ("last_uncertainty", "last_factor")

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        threshold: float = 0.1,
        increase: float = 1.2,
        decrease: float = 0.8,
        interval: int = 10,
        measure: str = "entropy",
        probe: str = "train",
        probe_size: int = 256,
        probe_seed: int = 0,
        min_lr: float | None = None,
        max_lr: float | None = None,
    ) -> None:
        from metalr.estimators import MEASURES, PROBES

        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if not (0.0 < decrease <= 1.0 <= increase and math.isfinite(increase)):
            raise ValueError(f"need 0 < decrease <= 1 <= increase, got decrease={decrease}, increase={increase}")
        if interval < 1 or probe_size < 1:
            raise ValueError(f"interval and probe_size must be >= 1, got {interval}, {probe_size}")
        if measure not in MEASURES or probe not in PROBES:
            raise ValueError(f"measure must be one of {MEASURES} and probe one of {PROBES}; got {measure!r}, {probe!r}")
        self.threshold, self.increase, self.decrease, self.interval = float(threshold), float(increase), float(decrease), int(interval)
        self.measure, self.probe, self.probe_size, self.probe_seed = measure, probe, int(probe_size), int(probe_seed)
        self.last_uncertainty = math.nan
        self.last_factor = 1.0
        self.uncertainty_records: list[dict[str, float]] = []
        self.estimator: Any = None
        lo, hi = relative_lr_bounds(optimizer, min_lr, max_lr)
        super().__init__(optimizer, min_lr=lo, max_lr=hi)

    # -------------------------------------------------------------- harness hook
    def attach(self, *, model: torch.nn.Module, task: Any, tracker: Any, device: torch.device | str = "cpu", **_: Any) -> None:
        """Build the estimator on a fixed probe batch and install it on the tracker."""
        from metalr.estimators import probe_batch

        batch = probe_batch(task, self.probe_size, self.probe, self.probe_seed, device)
        self.estimator = self._make_estimator(model, task, batch)
        tracker.uncertainty_fn = lambda: self.estimate(tracker.step)

    def _make_estimator(self, model: torch.nn.Module, task: Any, batch: Any) -> Any:
        raise NotImplementedError

    def estimate(self, step: int) -> float | None:
        """u on estimation steps (1, 1 + interval, ...), None otherwise; records every estimate."""
        if self.estimator is None or (step - 1) % self.interval:
            return None
        record = self.estimator.estimate(step)
        self.uncertainty_records.append(record)
        return record["uncertainty"]

    # ---------------------------------------------------------------------- rule
    def _factor(self, signals: Signals) -> float:
        u = signals.uncertainty
        self.last_factor = 1.0
        if u is None:
            return 1.0
        self.last_uncertainty = float(u)
        if math.isfinite(u):
            self.last_factor = self.increase if u < self.threshold else self.decrease
        return self.last_factor

    def extra_logs(self) -> dict[str, float]:
        return {"uncertainty": self.last_uncertainty, "uncertainty_factor": self.last_factor}


@register("uncertainty")
class MCDropoutUncertainty(_UncertaintyController):
    """MC Dropout: `passes` stochastic passes at dropout rate `dropout_p` on the probe batch.

    mode="head" (default) drops the input of the model's last nn.Linear, so models
    without Dropout layers work; mode="full" uses the model's own Dropout layers.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        passes: int = 50,
        dropout_p: float = 0.5,
        mode: str = "head",
        threshold: float = 0.1,
        increase: float = 1.2,
        decrease: float = 0.8,
        interval: int = 10,
        measure: str = "entropy",
        probe: str = "train",
        probe_size: int = 256,
        probe_seed: int = 0,
        min_lr: float | None = None,
        max_lr: float | None = None,
    ) -> None:
        if not 2 <= passes <= MAX_PASSES or not 0.0 < dropout_p < 1.0 or mode not in ("head", "full"):
            raise ValueError(f"need 2 <= passes <= {MAX_PASSES}, 0 < dropout_p < 1 and mode in (head, full); got {passes}, {dropout_p}, {mode!r}")
        self.passes, self.dropout_p, self.mode = int(passes), float(dropout_p), mode
        super().__init__(
            optimizer, threshold=threshold, increase=increase, decrease=decrease, interval=interval, measure=measure,
            probe=probe, probe_size=probe_size, probe_seed=probe_seed, min_lr=min_lr, max_lr=max_lr,
        )  # fmt: skip

    def _make_estimator(self, model: torch.nn.Module, task: Any, batch: Any) -> Any:
        from metalr.estimators import MCDropoutEstimator

        return MCDropoutEstimator(model, task.forward, batch, passes=self.passes, p=self.dropout_p, measure=self.measure, mode=self.mode, seed=self.probe_seed)


@register("uncertainty_ensemble")
class EnsembleUncertainty(_UncertaintyController):
    """Deep ensemble of `n_members` trained as the model; u = the members' disagreement.

    The harness calls `prepare_task` before building the model, so the model *is*
    a `metalr.ensemble.DeepEnsemble` whose members each train on their own loss
    and whose evaluation uses the averaged probabilities.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        n_members: int = 5,
        threshold: float = 0.1,
        increase: float = 1.2,
        decrease: float = 0.8,
        interval: int = 10,
        measure: str = "disagreement",
        probe: str = "train",
        probe_size: int = 256,
        probe_seed: int = 0,
        min_lr: float | None = None,
        max_lr: float | None = None,
    ) -> None:
        if n_members < 2:
            raise ValueError(f"n_members must be >= 2, got {n_members}")
        self.n_members = int(n_members)
        super().__init__(
            optimizer, threshold=threshold, increase=increase, decrease=decrease, interval=interval, measure=measure,
            probe=probe, probe_size=probe_size, probe_seed=probe_seed, min_lr=min_lr, max_lr=max_lr,
        )  # fmt: skip

    @classmethod
    def prepare_task(cls, task: Any, n_members: int = 5, **_: Any) -> Any:
        """The task whose model is an `n_members` deep ensemble (called by `metalr.train.run`)."""
        from metalr.ensemble import ensemble_task

        return ensemble_task(task, n_members)

    def _make_estimator(self, model: torch.nn.Module, task: Any, batch: Any) -> Any:
        from metalr.ensemble import DeepEnsemble
        from metalr.estimators import EnsembleEstimator

        if not isinstance(model, DeepEnsemble) or len(model.members) != self.n_members:
            raise ValueError(
                f"uncertainty_ensemble needs the model to be a {self.n_members}-member DeepEnsemble: run it through metalr.train.run "
                "(which calls prepare_task) or build the task with metalr.ensemble.ensemble_task"
            )
        return EnsembleEstimator(model.members, task.forward, batch, measure=self.measure)
