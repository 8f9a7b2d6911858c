"""Any metalr controller drives the LR of an unmodified `transformers.Trainer`.

    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[MetalrCallback("cosine")])

One added argument. How it fits the Trainer's loop (transformers 4.40 - 5.x):

- `on_train_begin`: builds the controller on the Trainer's optimizer (filling
  `total_steps` from `state.max_steps`) and *adopts* the Trainer's own LR scheduler:
  its `step()` becomes a no-op and its `get_last_lr()` returns the controller's. So
  the scheduler never overwrites the controller's LR, and the Trainer's own logging
  (`learning_rate` in `log_history`, `train/learning_rate` in TensorBoard, W&B ...)
  records the LR the controller set, through the Trainer's usual code path.
- a forward hook on the model captures the training loss (and logits/labels for
  accuracy) of every micro-batch, since the Trainer hands callbacks no per-step loss;
- `on_pre_optimizer_step` (gradients final, after clipping): `SignalTracker.collect`
  computes the gradient statistics the controller `requires`;
- `on_step_end` (after the Trainer's scheduler step): `controller.step(signals)`
  sets the LR of the next optimizer step;
- `on_evaluate`: `eval_loss` / `eval_accuracy` reach the controller on the next step.

Strategies that own the optimizer (Prodigy, D-Adaptation, schedule-free) need their
optimizer passed in: `optimizers=(metalr.controllers.get("prodigy").make_optimizer(
model.parameters(), total_steps=n), None)`. The Trainer itself switches schedule-free
optimizers between train and eval mode.

Caveat: controller state is not written into Trainer checkpoints; resuming a run
restarts the controller (closed-form schedules resume exactly only from step 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from metalr import controllers
from metalr.controllers.base import Controller
from metalr.signals import Signals, SignalTracker
from metalr.train import setup

ControllerFactory = Callable[[torch.optim.Optimizer], Controller]


class MetalrCallback(TrainerCallback):
    """Let `controller` (a registered name, "pretrained", or `optimizer -> Controller`) set the Trainer's LR.

    Args:
        controller: e.g. "cosine", "hypergradient", "pretrained" (the shipped
            meta-learned controller, `metalr.load_pretrained`), or a factory.
        **controller_kwargs: passed to the controller (`total_steps` is filled in).

    After training, `lrs` holds the LR each optimizer step applied and
    `controller` the controller itself.
    """

    def __init__(self, controller: str | ControllerFactory = "cosine", **controller_kwargs: Any) -> None:
        if isinstance(controller, str) and controller != "pretrained":
            controllers.get(controller)  # fail now, listing valid names, not at train time
        elif not isinstance(controller, str) and not callable(controller):
            raise TypeError(f"controller must be a registered name, 'pretrained' or a callable optimizer -> Controller, got {controller!r}")
        self.spec = controller
        self.controller_kwargs = controller_kwargs
        self.controller: Controller | None = None
        self.tracker: SignalTracker | None = None
        self.lrs: list[float] = []
        self._applied: list[float] | None = None
        self._hook: Any = None
        self._signals: Signals | None = None
        self._reset_batch()

    # ------------------------------------------------------------------ building
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, lr_scheduler: Any = None, **kwargs: Any) -> None:
        opt = getattr(optimizer, "optimizer", optimizer)  # unwrap accelerate's AcceleratedOptimizer
        spec, controller_kwargs = self.spec, dict(self.controller_kwargs)
        if spec == "pretrained":  # metalr.load_pretrained(path=...) is the `meta` controller with checkpoint=path
            spec = "meta"
            if "path" in controller_kwargs:
                controller_kwargs["checkpoint"] = controller_kwargs.pop("path")
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
        built = setup(
            spec,
            model=model,
            optimizer=opt,
            total_steps=int(state.max_steps),
            controller_kwargs=controller_kwargs,
            device=args.device,
            task_info={"num_classes": num_labels} if num_labels else {},
        )
        self.controller, self.tracker = built.controller, built.tracker
        if lr_scheduler is not None:
            _adopt(lr_scheduler, self)
        self._hook = model.register_forward_hook(self._capture, with_kwargs=True)
        self.lrs, self._applied = [], None

    # ---------------------------------------------------------------- per step
    def _reset_batch(self) -> None:
        self._loss_sum, self._n_micro = 0.0, 0
        self._logits: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None

    def _capture(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        """Forward hook: record the training loss of each micro-batch (evaluation is skipped)."""
        if not module.training:
            return
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if loss is not None:
            self._loss_sum += float(loss.detach().float().mean())
            self._n_micro += 1
        if self.tracker is not None and "accuracy" in self.tracker.requires:
            logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
            labels = kwargs.get("labels")
            if logits is not None and labels is not None:
                self._logits, self._labels = logits.detach(), labels.detach()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self.tracker is not None and self.controller is not None, "MetalrCallback: training did not begin"
        loss = self._loss_sum / self._n_micro if self._n_micro else None
        self._signals = self.tracker.collect(loss=loss, logits=self._logits, targets=self._labels, batch_size=args.per_device_train_batch_size)
        self._reset_batch()
        self._applied = self.controller.get_last_lr()
        self.lrs.append(self._applied[0])

    def applied_lrs(self) -> list[float]:
        """The LRs the latest optimizer step applied (before any step: those the first will apply).

        Read before the step: for Prodigy/D-Adaptation the step itself updates d.
        """
        if self._applied is not None:
            return list(self._applied)
        return self.controller.get_last_lr() if self.controller is not None else []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self.tracker is not None and self.controller is not None
        self.tracker.epoch = int(state.epoch or 0)
        self.controller.step(self._signals)
        self._signals = None

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        if self.tracker is None or not metrics or "eval_loss" not in metrics:
            return
        val_loss = float(metrics["eval_loss"])
        if math.isfinite(val_loss):
            self.tracker.record_eval(val_loss, metrics.get("eval_accuracy"))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def _adopt(scheduler: Any, callback: MetalrCallback) -> None:
    """Make the Trainer's scheduler a view of the controller: no LR writes, applied LR read back.

    The Trainer steps its scheduler after every optimizer step and logs its
    `get_last_lr()` in between; replacing those two methods on this one instance
    keeps the Trainer's loop and logging unmodified while the controller owns the LR.
    """
    scheduler.step = lambda *args, **kwargs: None
    scheduler.get_last_lr = callback.applied_lrs
