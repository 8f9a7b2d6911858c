"""Any metalr controller sets the LR of a `LightningModule`'s optimizer (Lightning 2.x), checkpoints included.

    trainer = L.Trainer(max_epochs=3, callbacks=[MetalrCallback("pretrained")])
    trainer.fit(module)                                  # checkpoints carry the controller's state
    trainer.fit(module, ckpt_path="last.ckpt")           # ... and resume it

`pip install -e ".[lightning]"`. How it fits Lightning's loop (automatic optimization,
one optimizer; `configure_optimizers` returns the optimizer only, no LR scheduler):

- `on_train_start` (optimizer built, checkpoint restored): builds the controller on the
  module's optimizer (`total_steps` from `trainer.estimated_stepping_batches`) with its
  tracker, and loads the state saved in the checkpoint, if resuming (the meta-controller
  on a module holding a `from_pretrained` model is capped at 2x the base LR unless
  `max_factor` is given: `metalr.integrations.base.build_for_model`, logged);
- `on_before_optimizer_step` (gradients accumulated; Lightning clips them only after
  this hook, so the statistics are of the unclipped gradient): gradient statistics
  and the LR this step applies;
- `on_train_batch_end`: the loss Lightning already has (`outputs["loss"]`, which
  Lightning divides by `accumulate_grad_batches`; the controller sees the micro-batch
  mean) steps the controller, which sets the LR of the next step; the applied LR is
  logged as `charts/lr` through the trainer's loggers (TensorBoard by default) every
  `log_every_n_steps`. If `training_step` returns a dict with `logits` and
  `targets`, the controller also sees batch accuracy;
- `on_validation_end`: the logged `val_loss` (and `val_accuracy`; names configurable)
  reach the controller on its next step; schedule-free's train/eval weight switch wraps
  validation;
- `state_dict` / `load_state_dict`: the controller's, tracker's and applied-LR state go
  into every Lightning checkpoint (`checkpoint["callbacks"]`), as tensors, numbers,
  strings, lists and dicts (`weights_only` loading works).

Strategies that own the optimizer (Prodigy, D-Adaptation, schedule-free) need it
returned by `configure_optimizers`: `metalr.controllers.get("prodigy").make_optimizer(
self.parameters(), total_steps=n)`. Uncertainty controllers are refused (they need a
metalr Task).
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch

from metalr.controllers.base import Controller
from metalr.integrations.base import Binding, ControllerSpec, build_for_model, check_spec


class MetalrCallback(pl.Callback):
    """Let `controller` (a registered name, "pretrained", or `optimizer -> Controller`) set the LR.

    Args:
        controller: e.g. "cosine", "hypergradient", "pretrained", or a factory.
        val_loss_key, val_accuracy_key: names under which the module logs validation
            metrics (`self.log("val_loss", ...)`); read after each validation run.
        **controller_kwargs: passed to the controller (`total_steps` is filled in).

    `lrs` holds the LR each optimizer step applied (the whole run's, across a resume).
    """

    def __init__(
        self, controller: ControllerSpec = "cosine", *, val_loss_key: str = "val_loss", val_accuracy_key: str = "val_accuracy", **controller_kwargs: Any
    ) -> None:
        check_spec(controller, "the Lightning Trainer")
        self.spec = controller
        self.controller_kwargs = controller_kwargs
        self.val_loss_key, self.val_accuracy_key = val_loss_key, val_accuracy_key
        self.binding: Binding | None = None
        self._saved: dict[str, Any] | None = None  # state from a checkpoint, loaded before the optimizer exists
        self._loss_sum: torch.Tensor | float = 0.0
        self._n_micro = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(controller=self.spec if isinstance(self.spec, str) else getattr(self.spec, "__name__", "factory"))

    @property
    def controller(self) -> Controller | None:
        return self.binding.controller if self.binding is not None else None

    @property
    def lrs(self) -> list[float]:
        return self.binding.lrs if self.binding is not None else []

    # ------------------------------------------------------------------ building
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"MetalrCallback drives one optimizer; configure_optimizers returned {len(trainer.optimizers)}")
        if trainer.lr_scheduler_configs:
            raise ValueError("MetalrCallback sets the LR itself: return only the optimizer from configure_optimizers, not an LR scheduler")
        steps = trainer.estimated_stepping_batches
        total = int(steps) if math.isfinite(steps) else None
        try:
            ctrl = build_for_model(self.spec, trainer.optimizers[0], total, pl_module, f"MetalrCallback({self.spec!r})", **self.controller_kwargs)
        except TypeError as e:
            if "make_optimizer" in str(e):
                raise TypeError(f"{e}; return that optimizer from configure_optimizers") from e
            raise
        self.binding = Binding(ctrl, params=pl_module.parameters(), total_steps=total, model=pl_module, device=pl_module.device)
        if self._saved is not None:
            if int(self._saved["global_step"]) != trainer.global_step:
                raise ValueError(f"MetalrCallback state was saved at step {self._saved['global_step']} but the trainer resumes at {trainer.global_step}")
            self.binding.load_state_dict(self._saved["binding"])
            self._saved = None
        elif trainer.global_step > 0:
            raise RuntimeError(
                f"MetalrCallback: training resumes at step {trainer.global_step} from a checkpoint without metalr state; "
                "the controller would restart from step 0. Resume from a checkpoint saved with this callback."
            )
        self._loss_sum, self._n_micro = 0.0, 0

    # ---------------------------------------------------------------- per step
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        if self.binding is not None:
            self.binding.before_step()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.binding is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            # undo Lightning's division; a float64 tensor on the loss's device, no host read (as `metalr.integrations.hf`)
            self._loss_sum = self._loss_sum + loss.detach().float().double() * trainer.accumulate_grad_batches
            self._n_micro += 1
        if self.binding.pending is None:  # accumulating: no optimizer step in this batch
            return
        mean = self._loss_sum / self._n_micro if self._n_micro else None
        self._loss_sum, self._n_micro = 0.0, 0
        logits = outputs.get("logits") if isinstance(outputs, dict) else None
        targets = outputs.get("targets") if isinstance(outputs, dict) else None
        self.binding.after_step(mean, logits, targets)
        every = int(getattr(trainer, "log_every_n_steps", 50) or 0)  # set by Lightning's logger connector; 0 = barebones
        if every > 0 and trainer.global_step % every == 0:
            for logger in trainer.loggers:
                logger.log_metrics({"charts/lr": self.binding.applied_lrs()[0]}, step=trainer.global_step)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.binding is not None:
            self.binding.controller.on_eval_start()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.binding is None:
            return
        self.binding.controller.on_eval_end()
        if trainer.sanity_checking or self.val_loss_key not in trainer.callback_metrics:
            return
        acc = trainer.callback_metrics.get(self.val_accuracy_key)
        self.binding.record_eval(float(trainer.callback_metrics[self.val_loss_key]), None if acc is None else float(acc))

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.binding is None:
            return dict(self._saved) if self._saved is not None else {}
        return {"global_step": self.binding.controller.last_step, "binding": self.binding.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called while restoring a checkpoint, before the optimizer exists: applied in `on_train_start`."""
        self._saved = dict(state_dict) if state_dict else None
