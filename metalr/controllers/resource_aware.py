"""Resource-aware LR: set the LR from dataset complexity and resource pressure.

At the first step and then once per epoch (the plan's monitoring interval; or
every `interval_steps`), with K = number of classes and F = mean features or
tokens per example (from `task.info()`), and the readings of
`metalr.estimators.ResourceMonitor` (fractions in [0, 1]):

    complexity  c = 0.5 * clip(log K / log ref_classes) + 0.5 * clip(log F / log ref_features)
    pressure    r = max(gpu_util, gpu_mem)  if any GPU reading is there, else  max(cpu_util, mem_util)
    factors     complexity_factor = 1.5 - c,   resource_factor = 1.5 - r      (each in [0.5, 1.5])
    LR          base_lr * (0.5 * complexity_factor + 0.5 * resource_factor) * sqrt(B / B_task)

clamped to the plan's [1e-6, 1e-2]. A missing or non-finite input makes its
factor neutral (1.0). B is the batch size seen (B_task: the task's batch size),
so the batch term is 1 unless the batch size changes. Simpler data and idle
hardware give larger steps; complex data and a loaded machine smaller ones.

Caveats: the link between load and a good LR is the plan's assumption, not an
established result; CPU load on a shared machine varies, so runs are not
reproducible unless readings are injected (`reader=`, or `signals.resources`);
the plan's upper bound 1e-2 caps SGD tasks whose base LR is higher (e.g. 0.05).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from metalr.controllers import register
from metalr.controllers.base import Controller
from metalr.estimators import ResourceRequest
from metalr.signals import Signals

log = logging.getLogger(__name__)

READINGS = ("cpu_util", "mem_util", "gpu_util", "gpu_mem")


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def complexity_score(num_classes: Any, num_features: Any, ref_classes: float = 1000.0, ref_features: float = 10000.0) -> float | None:
    """Dataset complexity in [0, 1] from class and feature counts (None when unknown)."""
    k, f = _finite(num_classes), _finite(num_features)
    if k is None or f is None or k < 1 or f < 1:
        return None
    clip = lambda x: min(max(x, 0.0), 1.0)  # noqa: E731
    return 0.5 * clip(math.log(k) / math.log(ref_classes)) + 0.5 * clip(math.log(f) / math.log(ref_features))


def resource_pressure(readings: dict[str, float] | None) -> float | None:
    """max of the GPU readings if any, else of the CPU ones, clipped to [0, 1] (None when none)."""
    if not readings:
        return None
    gpu = [v for v in (_finite(readings.get(k)) for k in ("gpu_util", "gpu_mem")) if v is not None]
    cpu = [v for v in (_finite(readings.get(k)) for k in ("cpu_util", "mem_util")) if v is not None]
    values = gpu or cpu
    return min(max(max(values), 0.0), 1.0) if values else None


@register("resource_aware")
class ResourceAware(Controller):
    """LR = base * (0.5 complexity factor + 0.5 resource factor) * batch term, once per epoch, in [1e-6, 1e-2]."""

    requires = frozenset({"resources"})
    _state_keys = ("decision_step", "decision_epoch", "complexity_factor", "resource_factor", "readings")

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        complexity_weight: float = 0.5,
        resource_weight: float = 0.5,
        interval_steps: int | None = None,
        ref_classes: float = 1000.0,
        ref_features: float = 10000.0,
        reader: Callable[[], dict[str, float]] | None = None,
        min_lr: float = 1e-6,
        max_lr: float = 1e-2,
    ) -> None:
        if not (complexity_weight >= 0 and resource_weight >= 0 and complexity_weight + resource_weight > 0):
            raise ValueError(f"weights must be >= 0 with a positive sum, got {complexity_weight}, {resource_weight}")
        if interval_steps is not None and interval_steps < 1:
            raise ValueError(f"interval_steps must be >= 1 or None (per epoch), got {interval_steps}")
        if not (ref_classes > 1 and ref_features > 1):
            raise ValueError("ref_classes and ref_features must be > 1")
        total = complexity_weight + resource_weight
        self.complexity_weight, self.resource_weight = complexity_weight / total, resource_weight / total
        self.interval_steps, self.ref_classes, self.ref_features, self.reader = interval_steps, float(ref_classes), float(ref_features), reader
        self.decision_step, self.decision_epoch = -1, -1
        self.complexity_factor, self.resource_factor = 1.0, 1.0
        self.readings: dict[str, float] = {}
        super().__init__(optimizer, min_lr=min_lr, max_lr=max_lr)

    def signal_sources(self) -> tuple[ResourceRequest, ...]:
        """Readings on the decision steps only: the tracker's schedule is the same as `due`'s."""
        return (ResourceRequest(self.interval_steps, self.reader),)

    def due(self, step: int, epoch: int) -> bool:
        """Whether the step `step` (1-based) of epoch `epoch` recomputes the LR."""
        if self.decision_step < 0:
            return True
        if self.interval_steps is None:
            return epoch != self.decision_epoch
        return step - self.decision_step >= self.interval_steps

    def _compute_lrs(self, signals: Signals) -> list[float]:
        if not self.due(self.last_step, signals.epoch):
            return list(self._last_lr)
        self.decision_step, self.decision_epoch = self.last_step, signals.epoch
        info = signals.task_info or {}
        c = complexity_score(info.get("num_classes"), info.get("num_features"), self.ref_classes, self.ref_features)
        r = resource_pressure(signals.resources)
        self.readings = {k: v for k in READINGS if (v := _finite((signals.resources or {}).get(k))) is not None}
        self.complexity_factor = 1.0 if c is None else 1.5 - c
        self.resource_factor = 1.0 if r is None else 1.5 - r
        b, b_task = _finite(signals.batch_size), _finite(info.get("batch_size"))
        batch_term = math.sqrt(b / b_task) if b and b_task and b > 0 and b_task > 0 else 1.0
        scale = (self.complexity_weight * self.complexity_factor + self.resource_weight * self.resource_factor) * batch_term
        log.info(
            "resource_aware step %d: readings %s, complexity %.3f, resource %.3f, batch term %.3f",
            self.last_step,
            self.readings or "none",
            self.complexity_factor,
            self.resource_factor,
            batch_term,
        )
        return [base * scale for base in self.base_lrs]

    def extra_logs(self) -> dict[str, float]:
        logs = {f"resource_{k}": self.readings.get(k, math.nan) for k in READINGS}
        logs.update(complexity_factor=self.complexity_factor, resource_factor=self.resource_factor)
        return logs
