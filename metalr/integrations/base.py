"""What every integration shares: build the controller, give it a tracker, checkpoint both.

The HF Trainer callback, the Lightning callback and the optimizer-hooked plain loop
(`metalr.hook`) each drive one `Binding`: a controller, the `SignalTracker` that
computes what it `requires`, and the LRs applied so far. Per optimizer step:

    binding.before_step(...)   # gradients final, optimizer not yet stepped: gradient statistics, applied LR
    optimizer.step()
    binding.after_step(loss)   # the controller sets the LR of the next step

`state_dict()` holds the controller's state, the tracker's (previous gradient and
parameters, step and epoch counters, a pending evaluation) and the applied LRs, as
tensors, numbers, strings, lists and dicts only, so any framework can checkpoint it
and `torch.load(..., weights_only=True)` reads it back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import torch

from metalr import controllers
from metalr.controllers.base import Controller, set_group_lr
from metalr.signals import Signals
from metalr.train import ControllerSpec, build_controller, build_tracker

__all__ = ["PRETRAINED_MAX_FACTOR", "Binding", "ControllerSpec", "build_controller", "build_for_model", "check_spec", "pretrained_source"]

log = logging.getLogger(__name__)

STATE_VERSION = 1

#: The LR cap (x the base LR) the framework callbacks give the meta-controller when the model was loaded from pretrained
#: weights and no `max_factor` is given. Uncapped, the shipped controller collapses fine-tunes of pretrained transformers
#: (README, "Use with HF Trainer": the MiniLM example, 3 of 3 runs); with this cap it matched or beat the Trainer's schedule.
PRETRAINED_MAX_FACTOR = 2.0


def pretrained_source(model: torch.nn.Module | None) -> str:
    """Where `model`, or a module inside it, was loaded from with transformers' `from_pretrained`, or "".

    Read from `config._name_or_path`, which `from_pretrained` sets (so does a model built from a config that was
    itself loaded by name: then the cap below is a logged, overridable default on a model that did not need it).
    """
    if model is None:
        return ""
    for m in model.modules():
        name = getattr(getattr(m, "config", None), "_name_or_path", "")
        if isinstance(name, str) and name:
            return name
    return ""


def build_for_model(
    spec: ControllerSpec, optimizer: torch.optim.Optimizer, total_steps: int | None, model: torch.nn.Module | None, where: str, **kwargs: Any
) -> Controller:
    """`build_controller`, with one safe default for the framework callbacks: the meta-controller ("pretrained" or
    "meta") on a model loaded from pretrained weights gets `max_factor=PRETRAINED_MAX_FACTOR` unless `max_factor` is
    given (logged). `max_factor=None` keeps the checkpoint's whole range (logged as a warning: it collapses such fine-tunes).
    """
    meta = isinstance(spec, str) and spec in ("pretrained", "meta")
    source = pretrained_source(model) if meta else ""
    if not source:
        return build_controller(spec, optimizer, total_steps, **kwargs)
    if "max_factor" in kwargs:
        ctrl = build_controller(spec, optimizer, total_steps, **kwargs)
        if kwargs["max_factor"] is None:
            log.warning(
                "%s: the model was loaded from %r (pretrained) and max_factor=None keeps the meta-controller's whole range (up to x%g "
                "of the base LR), which collapses fine-tunes of pretrained models (README, \"Use with HF Trainer\").",
                where, source, getattr(getattr(ctrl, "rule", None), "max_factor", float("nan")),
            )  # fmt: skip
        return ctrl
    from metalr.meta.checkpoint import FrozenPolicy, cached_policy

    source_file = kwargs.get("path" if spec == "pretrained" else "checkpoint")
    frozen = source_file if isinstance(source_file, FrozenPolicy) else cached_policy(source_file)  # (draws nothing from the run's RNG)
    ceiling = frozen.rule.max_factor
    if ceiling <= PRETRAINED_MAX_FACTOR:  # the checkpoint's own range is already this narrow
        return build_controller(spec, optimizer, total_steps, **kwargs)
    log.warning(
        "%s: the model was loaded from %r (pretrained), so the meta-controller keeps the LR at most x%g of the base LR "
        "(max_factor=%g; its checkpoint allows x%g, which collapses fine-tunes of pretrained models). Pass max_factor=... to "
        "choose the cap, max_factor=None for the checkpoint's whole range.",
        where, source, PRETRAINED_MAX_FACTOR, PRETRAINED_MAX_FACTOR, ceiling,
    )  # fmt: skip
    return build_controller(spec, optimizer, total_steps, **kwargs, max_factor=PRETRAINED_MAX_FACTOR)


def check_spec(spec: ControllerSpec | Controller, where: str) -> None:
    """Fail at construction, not at train time: unknown names (listing valid ones) and controllers `where` cannot drive.

    Uncertainty controllers estimate u on a probe batch drawn from a metalr Task with the
    task's forward (and `uncertainty_ensemble` trains a DeepEnsemble *as the model*); a
    framework loop has neither, so they are refused here with the way to run them.
    """
    if isinstance(spec, Controller):
        cls: type[Controller] = type(spec)
    elif isinstance(spec, str):
        cls = controllers.get("meta" if spec == "pretrained" else spec)
    elif callable(spec):
        return
    else:
        raise TypeError(f"controller must be a registered name, 'pretrained', a Controller or a callable optimizer -> Controller, got {spec!r}")
    if "uncertainty" in cls.requires:
        raise ValueError(
            f"controller {cls.name!r} cannot run under {where}: it measures predictive uncertainty on a probe batch drawn from a "
            "metalr Task with the task's forward pass (uncertainty_ensemble also trains a DeepEnsemble as the model), which "
            f"{where} does not provide. Run it through metalr.train.run(task, {cls.name!r}), or in a plain loop with the long form "
            "(metalr.train.build_tracker(ctrl, model.parameters(), total_steps=, model=, task=) + tracker.collect + ctrl.step(signals), see README)."
        )


def _lr_mark(lr: Any) -> Any:
    if isinstance(lr, torch.Tensor):
        try:
            return (id(lr), lr._version)
        except RuntimeError:  # an inference-mode tensor keeps no version counter: its value (a read)
            return float(lr)
    return float(lr)


class Binding:
    """A controller, its tracker, and the LRs it applied, driven by some training loop.

    Args:
        controller: bound to the optimizer the loop steps.
        params: the trained parameters (default: the optimizer's).
        total_steps: planned optimizer steps, for `signals.progress`.
        task_info: e.g. {"num_classes": k}, for controllers that read it.
        model, device: for the signal sources the controller declares (`Controller.signal_sources`).
    """

    def __init__(
        self,
        controller: Controller,
        *,
        params: Iterable[torch.nn.Parameter] | None = None,
        total_steps: int | None = None,
        task_info: dict[str, Any] | None = None,
        model: torch.nn.Module | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        check_spec(controller, "this loop")
        self.controller = controller
        optimizer = controller.optimizer
        if params is None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
        # the harness's own set-up path (`metalr.train.setup` uses the same function): the same signal sources
        self.tracker = build_tracker(controller, params, total_steps=total_steps, model=model, device=device, task_info=task_info)
        self.lrs: list[float] = []  # LR of the first param group applied at each optimizer step
        self.applied: list[float] | None = None  # LRs the latest optimizer step applied
        self.pending: Signals | None = None
        self._written = self._group_lrs()
        self._warned_override = False

    # ------------------------------------------------------------------ per step
    def before_step(
        self, loss: torch.Tensor | float | None = None, logits: torch.Tensor | None = None, targets: torch.Tensor | None = None, batch_size: int | None = None
    ) -> Signals:
        """Gradients are final and the optimizer has not stepped: gather signals, record the LR this step applies.

        If something else wrote the LR since the controller did (a framework's own
        scheduler, ReduceLROnPlateau after an evaluation), the controller's LR is put
        back, once logged: the controller owns the LR.
        """
        self.controller.check_param_groups()  # before the step: a group added since would step at an LR nobody set
        groups = self.controller.optimizer.param_groups
        if self._group_lrs() != self._written:
            if not self._warned_override:
                log.warning(
                    "%s: the LR was changed outside the controller (%s -> %s); restoring the controller's",
                    self.controller.name,
                    self.controller.get_last_lr(),
                    [float(g["lr"]) for g in groups],
                )
                self._warned_override = True
            for group, lr in zip(groups, self.controller.get_last_lr()):
                set_group_lr(group, lr)
            self._written = self._group_lrs()
        self.pending = self.tracker.collect(loss=loss, logits=logits, targets=targets, batch_size=batch_size, complete=False)
        self.applied = self.controller.get_last_lr()  # read before the step: Prodigy/D-Adaptation's step updates d
        self.lrs.append(self.applied[0])
        return self.pending

    def after_step(self, loss: torch.Tensor | float | None = None, logits: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> list[float]:
        """The optimizer stepped: hand the signals (plus the loss, if only known now) to the controller."""
        if self.pending is None:
            raise RuntimeError("after_step without before_step: no optimizer step to account for")
        s, self.pending = self.pending, None
        lrs = self.controller.step(self.tracker.complete(s, loss, logits, targets))
        self._written = self._group_lrs()
        return lrs

    def record_eval(self, val_loss: float, val_accuracy: float | None = None) -> None:
        """An evaluation result for the controller's next step (non-finite losses are dropped, logged)."""
        if not math.isfinite(float(val_loss)):
            log.warning("%s: non-finite validation loss %s not passed to the controller", self.controller.name, val_loss)
            return
        self.tracker.record_eval(val_loss, val_accuracy)

    def applied_lrs(self) -> list[float]:
        """The LRs the latest optimizer step applied (before any step: those the first will apply)."""
        return list(self.applied) if self.applied is not None else self.controller.get_last_lr()

    def _group_lrs(self) -> list[Any]:
        """Each group's LR as it is now, to tell an outside write from the controller's: the number, or for a tensor
        LR its identity and version counter (a write in place bumps it), which reads nothing from the device."""
        return [_lr_mark(g["lr"]) for g in self.controller.optimizer.param_groups]

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Controller, tracker and applied LRs: tensors, numbers, strings, lists and dicts only."""
        return {
            "version": STATE_VERSION,
            "controller": self.controller.state_dict(),
            "tracker": self.tracker.state_dict(),
            "lrs": list(self.lrs),
            "applied": None if self.applied is None else list(self.applied),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`; refuses another version, another controller or another model's tracker state."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"metalr integration state version {state.get('version') if isinstance(state, dict) else state!r} != {STATE_VERSION}")
        self.tracker.check_state(state["tracker"])  # before anything changes: another model's state is refused whole
        self.controller.load_state_dict(state["controller"])
        self.tracker.load_state_dict(state["tracker"])
        self.lrs = [float(x) for x in state["lrs"]]
        self.applied = None if state["applied"] is None else [float(x) for x in state["applied"]]
        self.pending = None
        self._written = self._group_lrs()
