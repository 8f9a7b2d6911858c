"""Uncertainty-driven LR: confident model -> larger steps, uncertain model -> smaller.

Every `interval` steps the model's predictive uncertainty u in [0, 1] is
estimated on a fixed probe batch (see `metalr.estimators`); on that step

    u <  threshold (0.1)  ->  LR *= increase (1.2)
    u >= threshold        ->  LR *= decrease (0.8)

and the LR is kept on every other step. `uncertainty` estimates u by MC Dropout
(p = 0.5, 50 passes, predictive entropy by default); `uncertainty_ensemble`
trains a 5-member deep ensemble *as the model* and uses its members'
disagreement (mutual information). The controller only declares the estimate
(`signal_sources`: an `UncertaintyRequest`); the tracker runs it on those steps
and keeps every estimate (step, uncertainty, error_rate, confidence on the
probe batch), which the harness copies into `History.uncertainty`.

Default LR bounds (not given by the plan): [base/100, 10 * base], which suits
both SGD (base ~0.05) and Adam (base ~1e-3).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from metalr.controllers import register
from metalr.controllers.base import MultiplicativeController, relative_lr_bounds
from metalr.ensemble import ensemble_task
from metalr.estimators import MEASURES, PROBES, UncertaintyRequest
from metalr.signals import Signals

#: Upper bound on MC-Dropout passes: beyond this an estimate costs more than the training it steers.
MAX_PASSES = 1000


class _UncertaintyController(MultiplicativeController):
    """The shared rule; subclasses declare their estimate in `_request`."""

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
        lo, hi = relative_lr_bounds(optimizer, min_lr, max_lr)
        super().__init__(optimizer, min_lr=lo, max_lr=hi)

    def signal_sources(self) -> tuple[UncertaintyRequest, ...]:
        """One estimate every `interval` steps (1, 1 + interval, ...) on the fixed probe batch."""
        return (self._request(),)

    def _request(self) -> UncertaintyRequest:
        raise NotImplementedError

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

    def _request(self) -> UncertaintyRequest:
        return UncertaintyRequest(
            "mc_dropout",
            self.interval,
            self.measure,
            self.probe,
            self.probe_size,
            self.probe_seed,
            passes=self.passes,
            dropout_p=self.dropout_p,
            mode=self.mode,
        )


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
    def prepare_task(cls, task: Any, n_members: int = 5, **controller_kwargs: Any) -> Any:
        """The task whose model is an `n_members` deep ensemble (called by `metalr.train.setup`)."""
        return ensemble_task(task, n_members)

    def _request(self) -> UncertaintyRequest:
        return UncertaintyRequest("ensemble", self.interval, self.measure, self.probe, self.probe_size, self.probe_seed, n_members=self.n_members)
