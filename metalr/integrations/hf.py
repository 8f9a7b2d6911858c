"""Any metalr controller drives the LR of an unmodified `transformers.Trainer`, checkpoints included.

    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[MetalrCallback("cosine")])
    trainer.train()                                   # saves checkpoint-N/ as usual, metalr state inside
    trainer.train(resume_from_checkpoint=True)        # the controller resumes where it stopped

One added argument. How it fits the Trainer's loop (transformers 4.40 - 5.x):

- `on_train_begin`: builds the controller on the Trainer's optimizer (`total_steps`
  from `state.max_steps`) with its tracker (`metalr.integrations.base.Binding`); on a
  resumed run (`state.global_step > 0`) loads the metalr state of that checkpoint. The
  meta-controller on a model loaded with `from_pretrained` is capped at 2x the base LR
  unless `max_factor` is given (`metalr.integrations.base.build_for_model`, logged).
- a forward hook on the model captures the training loss (and logits/labels for
  accuracy) of every micro-batch, since the Trainer hands callbacks no per-step
  loss; with gradient accumulation the controller sees their mean;
- `on_pre_optimizer_step` (gradients final, after clipping): the gradient
  statistics the controller `requires`, and the LR this step applies;
- `on_step_end` (after the Trainer's own scheduler step): `controller.step` sets
  the LR of the next step, overwriting whatever the Trainer's scheduler wrote;
- `on_evaluate`: `eval_loss` / `eval_accuracy` reach the controller on the next step;
- `on_save` (the Trainer has just written `checkpoint-N/`): the controller's, the
  tracker's and the callback's state go to `checkpoint-N/metalr_state.pt`
  (atomically; readable with `torch.load(..., weights_only=True)`).

The Trainer keeps its own scheduler, unmodified, so its checkpoints save and load as
always; only the LR it reports is made the applied one (its `get_last_lr()` list is
set to the controller's, a plain list of floats, so `learning_rate` in the Trainer's
logs and `train/learning_rate` in TensorBoard show the LR the controller set).

Resume: the state is looked up in `args.resume_from_checkpoint` (when it is a
directory) and `<output_dir>/checkpoint-<global_step>` (what `resume_from_checkpoint=True`
picks); a resumed run without it raises rather than silently restarting the controller.

Strategies that own the optimizer (Prodigy, D-Adaptation, schedule-free) need their
optimizer passed in: `optimizers=(metalr.controllers.get("prodigy").make_optimizer(
model.parameters(), total_steps=n), None)`; the Trainer itself switches schedule-free
optimizers between train and eval mode. The uncertainty controllers need a metalr
Task and are refused at construction (see `metalr.integrations.base.check_spec`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from metalr.controllers.base import Controller
from metalr.integrations.base import Binding, ControllerSpec, build_for_model, check_spec

log = logging.getLogger(__name__)

#: File written into every Trainer checkpoint directory.
STATE_FILE = "metalr_state.pt"


class MetalrCallback(TrainerCallback):
    """Let `controller` (a registered name, "pretrained", or `optimizer -> Controller`) set the Trainer's LR.

    Args:
        controller: e.g. "cosine", "hypergradient", "pretrained" (the shipped
            meta-learned controller, `metalr.load_pretrained`), or a factory.
        **controller_kwargs: passed to the controller (`total_steps` is filled in; for the
            meta-controller on a pretrained model, `max_factor=2` unless given).

    During and after training, `lrs` holds the LR each optimizer step applied (the
    whole run's, across a resume) and `controller` the controller itself.
    """

    def __init__(self, controller: ControllerSpec = "cosine", **controller_kwargs: Any) -> None:
        check_spec(controller, "the HF Trainer")
        self.spec = controller
        self.controller_kwargs = controller_kwargs
        self.binding: Binding | None = None
        self._hook: Any = None
        self._scheduler: Any = None
        self._reset_batch()

    @property
    def controller(self) -> Controller | None:
        return self.binding.controller if self.binding is not None else None

    @property
    def tracker(self) -> Any:
        return self.binding.tracker if self.binding is not None else None

    @property
    def lrs(self) -> list[float]:
        return self.binding.lrs if self.binding is not None else []

    # ------------------------------------------------------------------ building
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, lr_scheduler: Any = None, **kwargs: Any) -> None:
        opt = getattr(optimizer, "optimizer", optimizer)  # unwrap accelerate's AcceleratedOptimizer
        total = int(state.max_steps)
        try:
            ctrl = build_for_model(self.spec, opt, total, model, f"MetalrCallback({self.spec!r})", **self.controller_kwargs)
        except TypeError as e:
            if "make_optimizer" in str(e):  # an optimizer-owning strategy on the Trainer's AdamW
                raise TypeError(f"{e}; pass it to the Trainer: Trainer(..., optimizers=(that_optimizer, None))") from e
            raise
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
        self.binding = Binding(
            ctrl, params=model.parameters(), total_steps=total, task_info={"num_classes": num_labels} if num_labels else {}, model=model, device=args.device
        )
        if state.global_step > 0:
            self._resume(args, state)
        self._scheduler = lr_scheduler
        self._hook = model.register_forward_hook(self._capture, with_kwargs=True)
        self._reset_batch()

    def _resume(self, args: Any, state: Any) -> None:
        assert self.binding is not None
        candidates = []
        if isinstance(getattr(args, "resume_from_checkpoint", None), str):
            candidates.append(Path(args.resume_from_checkpoint))
        candidates.append(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        for folder in candidates:
            path = folder / STATE_FILE
            if path.is_file():
                saved = torch.load(path, map_location="cpu", weights_only=True)
                if int(saved["global_step"]) == int(state.global_step):
                    self.binding.load_state_dict(saved["binding"])
                    return
        raise FileNotFoundError(
            f"MetalrCallback: the Trainer resumed at global step {state.global_step}, but no {STATE_FILE} of that step is in "
            f"{', '.join(str(c) for c in candidates)}. Without it the controller would restart from step 0. Resume from a "
            f"checkpoint saved with MetalrCallback, or set TrainingArguments(resume_from_checkpoint=<that checkpoint folder>)."
        )

    # ---------------------------------------------------------------- per step
    def _reset_batch(self) -> None:
        self._loss_sum: torch.Tensor | float = 0.0
        self._n_micro = 0
        self._logits: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None

    def _capture(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        """Forward hook: record the training loss of each micro-batch (evaluation is skipped)."""
        if not module.training:
            return
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if loss is not None:
            # summed as a float64 tensor on the loss's device: no host read here (the tracker reads it, or a controller with
            # `device_signals` takes it as it is); the same number as summing Python floats
            self._loss_sum = self._loss_sum + loss.detach().float().mean().double()
            self._n_micro += 1
        if self.binding is not None and "accuracy" in self.binding.tracker.requires:
            logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
            labels = kwargs.get("labels")
            if logits is not None and labels is not None:
                self._logits, self._labels = logits.detach(), labels.detach()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self.binding is not None, "MetalrCallback: training did not begin"
        loss = self._loss_sum / self._n_micro if self._n_micro else None
        self.binding.before_step(loss=loss, logits=self._logits, targets=self._labels, batch_size=args.per_device_train_batch_size)
        self._reset_batch()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._report_applied_lr()  # transformers 5 reads the LR to log between the optimizer and scheduler steps

    def applied_lrs(self) -> list[float]:
        """The LRs the latest optimizer step applied (before any step: those the first will apply)."""
        return self.binding.applied_lrs() if self.binding is not None else []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self.binding is not None
        self.binding.tracker.epoch = int(state.epoch or 0)
        self.binding.after_step()
        self._report_applied_lr()  # transformers 4 reads it after on_step_end

    def _report_applied_lr(self) -> None:
        """Make the Trainer's scheduler report the applied LR, so the Trainer's own logging records it."""
        if self._scheduler is not None and isinstance(getattr(self._scheduler, "_last_lr", None), list):
            self._scheduler._last_lr = self.applied_lrs()

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        if self.binding is None or not metrics or "eval_loss" not in metrics:
            return
        self.binding.record_eval(float(metrics["eval_loss"]), metrics.get("eval_accuracy"))

    # -------------------------------------------------------------- checkpoints
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The Trainer has written checkpoint-<global_step>/: add the metalr state to it."""
        if self.binding is None or not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():  # e.g. hyperparameter search writes run-<id>/checkpoint-N
            log.warning("MetalrCallback: no checkpoint folder %s; the controller state of step %d is not saved", folder, state.global_step)
            return
        tmp = folder / f".{STATE_FILE}.tmp"
        torch.save({"global_step": int(state.global_step), "binding": self.binding.state_dict()}, tmp)
        os.replace(tmp, folder / STATE_FILE)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
