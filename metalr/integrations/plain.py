"""A controller in a plain PyTorch loop with one added line, like `ReduceLROnPlateau.step(metric)`.

    ctrl = metalr.hook("cosine", opt, total_steps=200)
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctrl.step(loss)              # sets the LR of the next step (logits=, targets= for batch accuracy)

`hook` binds the controller to the optimizer's step pre-hook
(`Optimizer.register_step_pre_hook`): when `opt.step()` starts, gradients are final
and parameters not yet updated, which is exactly when the gradient statistics the
controller `requires` (norm, cosine with the previous gradient, hypergradient) are
read. `ctrl.step(loss)` then adds the loss and steps the controller. The LRs are those
of the long form (`SignalTracker` + `collect` between backward and step +
`controller.step(signals)`), which stays the way to drive controllers that need more
than the loop can give (the uncertainty controllers need a metalr Task; refused here).

Caveats: optimizers that take a closure (LBFGS) compute gradients inside `step`,
after the pre-hook; use the long form there. If `opt.step()` did not run before
`ctrl.step` (e.g. `GradScaler` skipped an overflowing step), the statistics are read
at `ctrl.step` instead, logged once. A wrapped optimizer (accelerate's `prepare`) is
hooked where the wrapped one steps; under `accelerator.accumulate`, call `ctrl.step(loss)`
only when `accelerator.sync_gradients` (on the optimizer's real steps), or the controller
counts every micro-batch as a step. A second `hook` on the same optimizer (a notebook cell
run again) detaches the first, logged: one controller sets an optimizer's LR.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch

from metalr.controllers.base import Controller
from metalr.integrations.base import Binding, ControllerSpec, build_for_model, check_spec
from metalr.signals import SignalTracker

log = logging.getLogger(__name__)


class HookedController:
    """A controller that gathers its own signals through its optimizer's step pre-hook.

    Build it with `metalr.hook`. `step(loss)` after `optimizer.step()` is the whole loop
    integration; `state_dict()` holds the controller's and the tracker's state (tensors,
    numbers, strings, lists and dicts: `torch.load(..., weights_only=True)` reads it).
    """

    def __init__(self, controller: Controller, *, total_steps: int | None = None, task_info: dict[str, Any] | None = None) -> None:
        if total_steps is None:
            total = getattr(controller, "total_steps", None)
            total_steps = total if isinstance(total, int) else None
        self.binding = Binding(controller, total_steps=total_steps, task_info=task_info)
        self._attached = False
        self._replaced_by: str | None = None
        stepping = _stepping(controller.optimizer)
        earlier = _HOOKED.get(stepping)
        prior = earlier() if earlier is not None else None
        if prior is not None and prior._attached:  # (a notebook cell run again, most often; a replaced one is detached already)
            prior.remove()
            prior._replaced_by = controller.name
            log.warning(
                "metalr.hook: this optimizer already had a controller hooked (%s, at step %d); it is detached, and this one "
                "(%s) sets the LR from now on (the earlier one's step() raises)", prior.controller.name, prior.last_step, controller.name,
            )  # fmt: skip
        self._handle = stepping.register_step_pre_hook(self._before_step)
        self._attached = True
        _HOOKED[stepping] = weakref.ref(self)
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ per step
    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.binding.pending is not None:
            self._warn_once("double", "optimizer.step() ran twice without ctrl.step(loss) in between; the controller sees the latest step only")
        self.binding.before_step()

    def step(self, loss: torch.Tensor | float | None = None, logits: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> list[float]:
        """After `optimizer.step()`: step the controller with this step's signals; returns the next step's LRs."""
        if self._replaced_by is not None:
            raise RuntimeError(
                f"this {self.controller.name} controller was replaced by a later metalr.hook({self._replaced_by!r}, ...) on the same "
                "optimizer, which sets its LR now: step that one"
            )
        if self.binding.pending is None:
            self._warn_once("skipped", "ctrl.step() without optimizer.step() since the last one (a skipped step?); gradient statistics read now")
            self.binding.before_step()
        return self.binding.after_step(loss, logits, targets)

    def record_eval(self, val_loss: float, val_accuracy: float | None = None) -> None:
        """An evaluation result, seen by the controller at its next step (plateau, meta ...)."""
        self.binding.record_eval(val_loss, val_accuracy)

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s: %s", self.controller.name, msg)

    # ------------------------------------------------------------- the protocol
    @property
    def controller(self) -> Controller:
        return self.binding.controller

    @property
    def tracker(self) -> SignalTracker:
        return self.binding.tracker

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.binding.controller.optimizer

    @property
    def last_step(self) -> int:
        return self.binding.controller.last_step

    @property
    def lrs(self) -> list[float]:
        """The LR (first param group) every optimizer step applied."""
        return self.binding.lrs

    def get_last_lr(self) -> list[float]:
        return self.binding.controller.get_last_lr()

    def on_eval_start(self) -> None:
        self.binding.controller.on_eval_start()

    def on_eval_end(self) -> None:
        self.binding.controller.on_eval_end()

    def extra_logs(self) -> dict[str, float]:
        return self.binding.controller.extra_logs()

    def state_dict(self) -> dict[str, Any]:
        return self.binding.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.binding.load_state_dict(state)

    def remove(self) -> None:
        """Detach from the optimizer (the controller keeps its LR; `step` then reads signals itself)."""
        self._handle.remove()
        self._attached = False

    def __repr__(self) -> str:
        return f"HookedController({self.controller!r})"


#: The controller `hook` last attached to each optimizer (the one whose `step` updates the weights): a second hook on
#: the same optimizer detaches the first, logged, rather than having two controllers write one LR.
_HOOKED: weakref.WeakKeyDictionary[torch.optim.Optimizer, weakref.ref[HookedController]] = weakref.WeakKeyDictionary()


def _stepping(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer whose own `step` updates the weights. A wrapper that holds it as `.optimizer` and calls its `step`
    (accelerate's `AcceleratedOptimizer`, which has no step hooks of its own) is looked through, so that the pre-hook
    fires on the real step; the controller keeps the wrapper, whose param groups and state are the wrapped optimizer's."""
    inner = optimizer
    for _ in range(8):  # (wrappers of wrappers; a cycle stops here)
        wrapped = getattr(inner, "optimizer", None)
        if not isinstance(wrapped, torch.optim.Optimizer) or wrapped is inner:
            break
        inner = wrapped
    if inner is not optimizer:
        log.info("metalr.hook: %s wraps %s; the gradient statistics are read when the wrapped optimizer steps", type(optimizer).__name__, type(inner).__name__)
    return inner


def hook(
    controller: ControllerSpec | Controller,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    total_steps: int | None = None,
    task_info: dict[str, Any] | None = None,
    model: torch.nn.Module | None = None,
    **controller_kwargs: Any,
) -> HookedController:
    """`controller` (a registered name, "pretrained", a factory, or a built Controller) hooked on `optimizer`.

    Args:
        optimizer: the optimizer the loop steps (not needed for a built Controller).
        total_steps: the run's planned steps; filled into the controller if it takes
            `total_steps` and used for `signals.progress`.
        task_info: e.g. {"num_classes": 10}, for controllers that read it.
        model: optional, the trained model: only to tell whether it was loaded with `from_pretrained`, in which case
            the meta-controller is capped at 2x the base LR unless `max_factor` is given, as under the HF and
            Lightning callbacks (`metalr.integrations.base.build_for_model`, logged).
        **controller_kwargs: passed to the controller.
    """
    check_spec(controller, "metalr.hook")
    if isinstance(controller, Controller):
        if controller_kwargs or model is not None or (optimizer is not None and optimizer is not controller.optimizer):
            raise TypeError("a built Controller is hooked on its own optimizer and takes no controller keywords (nor model)")
        ctrl = controller
    else:
        if optimizer is None:
            raise TypeError(f"metalr.hook({controller!r}) needs the optimizer: metalr.hook({controller!r}, optimizer, ...)")
        ctrl = build_for_model(controller, optimizer, total_steps, model, "metalr.hook", **controller_kwargs)
    return HookedController(ctrl, total_steps=total_steps, task_info=task_info)
