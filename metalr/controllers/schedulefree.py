"""Schedule-free AdamW and SGD (Defazio et al., 2024, "The Road Less Scheduled"),
from the `schedulefree` package, as controllers.

Schedule-free replaces both the schedule and the optimizer: it keeps a gradient
point y (the weights the model trains on), a base sequence z and their running
average x (the weights to evaluate), and needs no LR decay. So this strategy owns
the optimizer (`make_optimizer`) and the controller only keeps the books:

- the LR is constant (that is the method); linear warmup is done by the optimizer
  itself (`warmup_steps`, default 5% of the run, as the authors recommend warmup);
- `get_last_lr()` reports the LR the next step applies, warmup included, so LR
  trajectories compare with every other strategy's;
- the optimizer must be in train mode for training steps and in eval mode (model
  holds x) for evaluation: the constructor puts it in train mode and the harness's
  `on_eval_start/on_eval_end` hooks switch to x and back. Snapshots the harness takes
  for divergence recovery are taken in train mode, so a restore stays consistent.

Default LRs follow the authors' advice relative to a tuned baseline (their README:
schedule-free AdamW LRs are typically 1-10x a scheduled AdamW's, SGD 10-50x a
classical SGD's): AdamW at 3x the task's Adam LR, SGD at 10x the task's SGD LR. A
task tuned for the other optimizer family gets the package default for AdamW
(2.5e-3) and 0.5 for SGD (10x our tasks' SGD LR scale of 0.05). A 300-step probe on
digits_mlp / digits_cnn / mnist1d_cnn (seed 0) favoured even larger factors (10x for
AdamW); we kept to the middle of the advised ranges rather than tune on eval tasks.
Caveat from the authors: models with BatchNorm need their statistics recomputed
at x before evaluation; the offline tasks here have no BatchNorm.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from metalr.controllers import register
from metalr.controllers.base import Controller
from metalr.controllers.dadaptation import check_optimizer_type
from metalr.signals import Signals

WARMUP_FRACTION = 0.05


class ScheduleFreeController(Controller):
    """Constant LR, warmup inside the optimizer, train/eval weight switching."""

    owns_optimizer: ClassVar[bool] = True
    optimizer_cls: ClassVar[type[Any]]  # the package optimizer class (typed Any: its __init__ takes lr, d0 ...)
    family: ClassVar[str]  # the task optimizer family whose LR transfers ("adam" | "sgd")
    lr_factor: ClassVar[float]  # default LR = lr_factor * the task's LR for `family`
    fallback_lr: ClassVar[float]

    def __init__(self, optimizer: torch.optim.Optimizer, *, min_lr: float = 0.0, max_lr: float = math.inf) -> None:
        check_optimizer_type(type(self), optimizer, self.optimizer_cls)
        super().__init__(optimizer, min_lr=min_lr, max_lr=max_lr)
        optimizer.train()  # type: ignore[attr-defined]  # steps raise unless in train mode

    @classmethod
    def make_optimizer(
        cls, params: Any, *, task: Any = None, total_steps: int | None = None, lr: float | None = None, warmup_steps: int | None = None, **kwargs: Any
    ) -> torch.optim.Optimizer:
        if lr is None:
            lr = cls.lr_factor * float(task.lr) if task is not None and getattr(task, "optimizer", None) == cls.family else cls.fallback_lr
        if warmup_steps is None:
            warmup_steps = int(WARMUP_FRACTION * total_steps) if total_steps else 0
        kwargs.setdefault("weight_decay", getattr(task, "weight_decay", 0.0))
        if cls.family == "sgd":
            kwargs.setdefault("momentum", getattr(task, "momentum", 0.9))
        return cls.optimizer_cls(params, lr=lr, warmup_steps=warmup_steps, **kwargs)

    def _compute_lrs(self, signals: Signals) -> list[float]:
        return list(self.base_lrs)

    def get_last_lr(self) -> list[float]:
        """The LR the next optimizer step applies: lr * min(1, (k+1) / warmup_steps)."""
        out = []
        for g in self.optimizer.param_groups:
            k, warmup = int(g.get("k", 0)), int(g.get("warmup_steps", 0))
            out.append(float(g["lr"]) * ((k + 1) / warmup if k < warmup else 1.0))
        return out

    def step(self, signals: Signals | None = None) -> list[float]:
        super().step(signals)
        return self.get_last_lr()

    def on_eval_start(self) -> None:
        self.optimizer.eval()  # type: ignore[attr-defined]  # model now holds the averaged weights x

    def on_eval_end(self) -> None:
        self.optimizer.train()  # type: ignore[attr-defined]  # back to the gradient point y


def _sf(name: str) -> type[torch.optim.Optimizer]:
    import schedulefree

    return getattr(schedulefree, name)


@register("schedulefree_adamw")
class ScheduleFreeAdamW(ScheduleFreeController):
    optimizer_cls = _sf("AdamWScheduleFree")
    family = "adam"
    lr_factor = 3.0
    fallback_lr = 2.5e-3


@register("schedulefree_sgd")
class ScheduleFreeSGD(ScheduleFreeController):
    optimizer_cls = _sf("SGDScheduleFree")
    family = "sgd"
    lr_factor = 10.0
    fallback_lr = 0.5
