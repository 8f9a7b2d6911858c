"""Reduce-on-plateau, with exactly the rule of `torch.optim.lr_scheduler.ReduceLROnPlateau`.

It reacts only when a new metric arrives: by default `signals.val_loss`, which the
tracker sets on the step after each evaluation (`metric="loss"` reacts every step).
It requires only its metric: the training loss is read (on a GPU, a host-device
synchronisation per step) only with `metric="loss"`.
"""

from __future__ import annotations

import math

import torch

from metalr.controllers import register
from metalr.controllers.base import Controller
from metalr.signals import Signals


@register("plateau")
class ReduceOnPlateau(Controller):
    """LR *= factor after `patience` evaluations without improvement of `metric`."""

    requires = frozenset({"val_loss"})  # the default metric's; an instance reads only its own metric
    _state_keys = ("best", "num_bad_epochs", "cooldown_counter")

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        metric: str = "val_loss",
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        eps: float = 1e-8,
        min_lr: float = 0.0,
        max_lr: float = math.inf,
    ) -> None:
        if metric not in ("val_loss", "val_accuracy", "loss"):
            raise ValueError(f"metric must be one of val_loss, val_accuracy, loss; got {metric!r}")
        if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
            raise ValueError(f"mode must be min|max and threshold_mode rel|abs, got {mode!r}, {threshold_mode!r}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if patience < 0 or cooldown < 0:
            raise ValueError("patience and cooldown must be >= 0")
        self.metric, self.mode, self.factor, self.patience = metric, mode, float(factor), int(patience)
        # only the metric it reacts to: the training loss is read (on a GPU, one synchronisation per step) only for metric="loss"
        self.requires = frozenset({metric})  # type: ignore[misc]
        self.threshold, self.threshold_mode, self.cooldown, self.eps = float(threshold), threshold_mode, int(cooldown), float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        super().__init__(optimizer, min_lr=min_lr, max_lr=max_lr)

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return a > (best * (1.0 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold)

    def _compute_lrs(self, signals: Signals) -> list[float]:
        value = getattr(signals, self.metric)
        if value is None or not math.isfinite(value):
            return list(self._last_lr)
        if self._is_better(value, self.best):
            self.best, self.num_bad_epochs = float(value), 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        lrs = list(self._last_lr)
        if self.num_bad_epochs > self.patience:
            for i, old in enumerate(lrs):
                new = max(old * self.factor, self.min_lrs[i])
                if old - new > self.eps:
                    lrs[i] = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        return lrs
