"""What controllers observe, computed once per step, in one place.

`Signals` is a plain record; fields a step did not compute are None.
`SignalTracker` computes them from the model, optimizer and batch outputs, and
only the ones some controller `requires` (flattening gradients costs a copy of
the parameters, so it is skipped for schedules that read nothing).

Call order in a training loop (the harness does exactly this):

    loss.backward()
    signals = tracker.collect(loss=loss, logits=logits, targets=y)   # reads .grad
    optimizer.step()
    controller.step(signals)                                         # LR for next step

Validation results are attached with `tracker.record_eval(val_loss, val_accuracy)`;
they appear in the *next* `collect` only (`signals.val_loss` is None otherwise),
so event-driven controllers such as reduce-on-plateau react once per evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

#: Every signal a controller may list in `requires`.
SIGNAL_NAMES = frozenset(
    {
        "loss",  # training loss of the batch (float; may be nan/inf)
        "accuracy",  # batch accuracy in [0, 1] (classification tasks)
        "grad_norm",  # global L2 norm of the gradient
        "grad_cos",  # cosine between this and the previous step's gradient
        "hypergrad",  # g_t . u_{t-1}: dot of gradient and previous update direction (Baydin et al.)
        "val_loss",  # validation loss, only on the step after an evaluation
        "val_accuracy",  # validation accuracy, idem
        "uncertainty",  # predictive uncertainty in [0, 1] (set by uncertainty estimators)
        "resources",  # dict of resource readings (cpu/gpu utilisation, memory)
    }
)


@dataclass
class Signals:
    """One step's observations. Always present: step, epoch, progress, lr."""

    step: int = 0
    epoch: int = 0
    progress: float = 0.0  # fraction of the planned run done, in [0, 1]
    lr: float = 0.0  # LR used for this step (first param group)
    base_lr: float = 0.0
    loss: float | None = None
    accuracy: float | None = None
    grad_norm: float | None = None
    grad_cos: float | None = None
    hypergrad: float | None = None
    hypergrad_cos: float | None = None  # g_t . u_{t-1} / (|g_t| |u_{t-1}|), scale-free
    val_loss: float | None = None
    val_accuracy: float | None = None
    uncertainty: float | None = None
    batch_size: int | None = None
    resources: dict[str, float] | None = None
    task_info: dict[str, Any] = field(default_factory=dict)  # e.g. num_classes, num_features

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite_or_nan(x: float) -> float:
    return x if math.isfinite(x) else float("nan")


class SignalTracker:
    """Computes the requested signals for each training step.

    Args:
        params: the parameters being trained (gradients are read from them).
        optimizer: used to read the LR of the step.
        requires: signal names wanted (see `SIGNAL_NAMES`); others stay None.
        total_steps: planned length of the run, for `progress`.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        requires: Iterable[str] = (),
        total_steps: int | None = None,
        task_info: dict[str, Any] | None = None,
    ) -> None:
        self.requires = frozenset(requires)
        unknown = self.requires - SIGNAL_NAMES
        if unknown:
            raise ValueError(f"unknown signal(s) {sorted(unknown)}; valid: {sorted(SIGNAL_NAMES)}")
        self.params = [p for p in params if p.requires_grad]
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.task_info = dict(task_info or {})
        self.step = 0
        self.epoch = 0
        self._base_lr = float(optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"]))
        self._prev_grad: torch.Tensor | None = None
        self._prev_params: torch.Tensor | None = None
        self._prev_lr: float | None = None
        self._pending_eval: tuple[float, float | None] | None = None
        self.uncertainty_fn: Any = None  # optional callable () -> float, set by the harness
        self.resource_fn: Any = None  # optional callable () -> dict, set by the harness

    def record_eval(self, val_loss: float, val_accuracy: float | None = None) -> None:
        """Attach an evaluation result to the next `collect`."""
        self._pending_eval = (float(val_loss), None if val_accuracy is None else float(val_accuracy))

    def collect(
        self,
        loss: torch.Tensor | float | None = None,
        logits: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> Signals:
        """Signals for the step whose gradients are in `.grad` now (before optimizer.step)."""
        self.step += 1
        lr = float(self.optimizer.param_groups[0]["lr"])
        s = Signals(
            step=self.step,
            epoch=self.epoch,
            progress=min(1.0, self.step / self.total_steps) if self.total_steps else 0.0,
            lr=lr,
            base_lr=self._base_lr,
            batch_size=batch_size,
            task_info=self.task_info,
        )
        if loss is not None:
            s.loss = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if "accuracy" in self.requires and logits is not None and targets is not None:
            s.accuracy = batch_accuracy(logits, targets)
        if self.requires & {"grad_norm", "grad_cos", "hypergrad"}:
            self._gradient_signals(s, lr)
        if self._pending_eval is not None:
            s.val_loss, s.val_accuracy = self._pending_eval
            self._pending_eval = None
        if "uncertainty" in self.requires and self.uncertainty_fn is not None:
            s.uncertainty = self.uncertainty_fn()
        if "resources" in self.requires and self.resource_fn is not None:
            s.resources = self.resource_fn()
        return s

    def _gradient_signals(self, s: Signals, lr: float) -> None:
        grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=p.device) for p in self.params]
        g = torch.cat(grads).detach().float()
        s.grad_norm = _finite_or_nan(float(g.norm()))
        if "grad_cos" in self.requires:
            if self._prev_grad is not None:
                denom = float(g.norm() * self._prev_grad.norm())
                s.grad_cos = _finite_or_nan(float(g @ self._prev_grad) / denom) if denom > 0 else 0.0
            self._prev_grad = g.clone()
        if "hypergrad" in self.requires:
            theta = torch.cat([p.detach().reshape(-1) for p in self.params]).float()
            if self._prev_params is not None and self._prev_lr:
                update_dir = (self._prev_params - theta) / self._prev_lr  # u_{t-1}: theta_t = theta_{t-1} - lr * u
                dot = float(g @ update_dir)
                denom = float(g.norm() * update_dir.norm())
                s.hypergrad = _finite_or_nan(dot)
                s.hypergrad_cos = _finite_or_nan(dot / denom) if denom > 0 else 0.0
            self._prev_params = theta
            self._prev_lr = lr

    def state_dict(self) -> dict[str, Any]:
        """Counters, the previous gradient/parameters and a pending evaluation (tensors, numbers, lists, None)."""
        pending = None if self._pending_eval is None else list(self._pending_eval)
        return {
            "step": self.step,
            "epoch": self.epoch,
            "prev_grad": self._prev_grad,
            "prev_params": self._prev_params,
            "prev_lr": self._prev_lr,
            "pending_eval": pending,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self._prev_grad, self._prev_params, self._prev_lr = state["prev_grad"], state["prev_params"], state["prev_lr"]
        pending = state.get("pending_eval")
        self._pending_eval = None if pending is None else (float(pending[0]), None if pending[1] is None else float(pending[1]))


def batch_accuracy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> float:
    """Fraction of correct argmax predictions, ignoring `ignore_index` targets."""
    pred = logits.detach().argmax(dim=-1)
    mask = targets != ignore_index
    n = int(mask.sum())
    return float((pred[mask] == targets[mask]).sum()) / n if n else float("nan")
