"""The one interface every LR strategy implements.

A `Controller` is shaped like `torch.optim.lr_scheduler.LRScheduler`: it is bound
to an optimizer, sets the LR of every param group at construction (step 0), and
each `step(signals)` advances it by one step, writes the new LR into the
optimizer and returns it. Unlike a scheduler it may read what happened during
training: `signals` is a `metalr.signals.Signals` with loss, accuracy, gradient
statistics and so on. A controller declares which signals it reads in
`requires`, so the tracker only computes those.

Subclasses implement `_compute_lrs(signals)` (pure: returns the proposed LRs)
and list their scalar state in `_state_keys`. The base class guarantees the
safety contract: every LR written is finite, non-negative and inside its param
group's [min_lr, max_lr] (one range for every group, or one per group: the relative
defaults are each group's own base LR times a factor); a non-finite proposal keeps
the previous LR and is logged.

Every hook the harness (`metalr.train`) calls is declared here with a no-op
default, so a strategy overrides only what it needs:

    prepare_task(task, **kwargs)      before the model is built (deep ensemble: the model becomes the ensemble)
    make_optimizer(params, task=...)  the optimizer (default: the task's; Prodigy, schedule-free ... their own)
    signal_sources()                  estimators the tracker must run (uncertainty, resource readings)
    on_eval_start() / on_eval_end()   around each evaluation (schedule-free swaps to its averaged weights)
    extra_logs()                      scalars logged beside the LR

Data flows one way: tracker -> `Signals` -> controller -> optimizer. A
controller never reaches into the tracker; it only reads the `Signals` it gets.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from metalr.signals import MINIMIZING_SIGNALS, Signals

if TYPE_CHECKING:
    from metalr.estimators import SourceRequest

log = logging.getLogger(__name__)

STATE_VERSION = 1

#: Default LR bounds of the multiplicative heuristics, relative to the base LR.
MIN_LR_FACTOR, MAX_LR_FACTOR = 0.01, 10.0

#: An LR bound: one for every param group, or one per group (in `optimizer.param_groups` order).
Bounds = float | Sequence[float]


def set_group_lr(group: dict[str, Any], lr: float) -> None:
    """Write `lr` into a param group as torch's schedulers do: a tensor LR (`Adam(lr=torch.tensor(...))`, which
    `capturable` and CUDA-graph users need to stay the same tensor) is filled in place, anything else replaced."""
    current = group["lr"]
    if isinstance(current, torch.Tensor):
        current.fill_(lr)
    else:
        group["lr"] = lr


#: The run length assumed by a controller whose LR depends on it when none is given (logged).
DEFAULT_TOTAL_STEPS = 1000


def planned_steps(name: str, total_steps: int | None) -> int:
    """`total_steps`, or DEFAULT_TOTAL_STEPS with a logged warning when it is not given (a schedule's shape depends on it)."""
    if total_steps is None:
        log.warning("%s: total_steps not given; assuming a %d-step run (pass total_steps=...)", name, DEFAULT_TOTAL_STEPS)
        return DEFAULT_TOTAL_STEPS
    return whole_steps(name, total_steps)


def whole_steps(name: str, total_steps: Any) -> int:
    """`total_steps` as an int: an integer, or a float with a whole value (`epochs * len(loader) / accumulation` is a
    float); anything else is refused with the fix, not truncated (937.5 read as 937 would end every schedule early)."""
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Real) or not math.isfinite(total_steps) or not float(total_steps).is_integer():
        raise ValueError(
            f"{name}: total_steps must be a whole number of optimizer steps, got {total_steps!r} (e.g. math.ceil(epochs * len(loader) / accumulation_steps))"
        )
    return int(float(total_steps))  # (a whole value: exact below 2**53 steps)


def group_base_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each param group's base LR (`initial_lr` once a controller or scheduler has set it, else `lr`)."""
    return [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]


def relative_lr_bounds(optimizer: torch.optim.Optimizer, min_lr: Bounds | None, max_lr: Bounds | None) -> tuple[Bounds, Bounds]:
    """(min_lr, max_lr): a given one as given (one LR for every group, or one per group); one not given is MIN/MAX_LR_FACTOR times each
    param group's own base LR (a backbone at 1e-5 beside a head at 1e-3 each keep their range)."""
    bases = group_base_lrs(optimizer)
    lo: Bounds = [MIN_LR_FACTOR * b for b in bases] if min_lr is None else min_lr
    hi: Bounds = [MAX_LR_FACTOR * b for b in bases] if max_lr is None else max_lr
    return lo, hi


def _per_group(bound: Bounds, n: int, name: str) -> list[float]:
    """A bound as one float per param group: one number (a Python, numpy or 0-d tensor scalar) for every group, or a
    sequence of one per group."""
    if isinstance(bound, (bool, str)):
        raise TypeError(f"{name} must be an LR or one LR per param group, got {bound!r}")
    if not isinstance(bound, Sequence):
        return [float(bound)] * n
    values = [float(v) for v in bound]
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} values for {n} param groups")
    return values


class Controller:
    """Base class: bound to an optimizer, signal-driven, LRScheduler-shaped."""

    #: Registry name, set by `@register`.
    name: ClassVar[str] = ""
    #: Signal names this controller reads (see `metalr.signals.SIGNAL_NAMES`).
    requires: ClassVar[frozenset[str]] = frozenset()
    #: True when the controller can read `loss`, `grad_norm` and `grad_align` as 0-d tensors on the
    #: parameters' device: for parameters off the CPU, `metalr.train.build_tracker` then builds a
    #: `SignalTracker(as_tensors=True)`, whose signals never synchronise host and device. Other
    #: controllers (and every controller on a CPU) get Python floats (on a GPU: one sync per value).
    device_signals: ClassVar[bool] = False
    #: The controller reads the gradient-level signals (`metalr.signals.GRADIENT_SIGNALS`) only on
    #: steps that are multiples of this; `metalr.train.build_tracker` builds a tracker that computes
    #: them only then (`SignalTracker(every=...)`). A tracker that computes them every step gives the
    #: same LRs, only slower. An instance may set it (the meta-controller takes its checkpoint's).
    signal_every: int = 1
    #: True when the strategy replaces the optimizer (schedule-free, Prodigy ...) and
    #: overrides `make_optimizer`; its constructor refuses any other optimizer.
    owns_optimizer: ClassVar[bool] = False
    #: Names of attributes that make up the controller's state (beyond the base's).
    _state_keys: ClassVar[tuple[str, ...]] = ()
    #: What happens past a planned run's end (controllers with an int `total_steps`): logged once, at the
    #: first step past it, so that a `total_steps` set too low (epochs for steps, one epoch's batches) is seen
    #: ("": the LR does not depend on the run's length, nothing to say).
    _past_end: str = "the LR keeps its value at the planned end"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        min_lr: Bounds = 0.0,
        max_lr: Bounds = math.inf,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(self).__name__} needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        signed = sorted(self.requires & MINIMIZING_SIGNALS)
        if signed and any(group.get("maximize", False) for group in optimizer.param_groups):
            raise ValueError(
                f"{type(self).__name__} reads {', '.join(signed)} (signals that assume the optimizer minimizes the loss), but a param "
                "group has maximize=True (the hypergradient's sign and the loss's direction would be read backwards: the LR collapses). "
                "Minimize the negated objective instead: maximize=False, loss = -objective, ctrl.step(loss). Schedules, which read "
                "no signal, work with maximize=True."
            )
        bases = group_base_lrs(optimizer)
        lo, hi = _per_group(min_lr, len(bases), "min_lr"), _per_group(max_lr, len(bases), "max_lr")
        for a in lo:
            if not (math.isfinite(a) and a >= 0.0):
                raise ValueError(f"min_lr must be finite and >= 0, got {a}")
        if all(base == 0.0 for base in bases):
            raise ValueError(
                f"{type(self).__name__}: every param group has lr=0, and an LR rule starts from the base LR: give the optimizer the LR to start from"
            )
        for i, base in enumerate(bases):
            if base == 0.0:  # a group at lr 0 stays at 0 (no absolute bound lifts it): the rule of every controller scales the base LR
                lo[i] = hi[i] = 0.0
            elif not hi[i] > lo[i]:
                raise ValueError(f"max_lr must be > min_lr, got min_lr={lo[i]}, max_lr={hi[i]}")
        outside = [f"group {i}: {b:g} not in [{lo[i]:g}, {hi[i]:g}]" for i, b in enumerate(bases) if b > 0.0 and not lo[i] <= b <= hi[i]]
        if outside:  # (the resource-aware rule's absolute [1e-6, 1e-2] against an SGD LR of 0.1; a max_lr set below the LR)
            log.warning(
                "%s: the optimizer's LR lies outside the controller's LR range (%s): every LR it sets is clamped into that range, "
                "so the run does not train at the optimizer's LR. Widen min_lr/max_lr to keep it.",
                type(self).__name__, "; ".join(outside),
            )  # fmt: skip
        self.optimizer = optimizer
        self.min_lrs, self.max_lrs = lo, hi  # each param group's bounds
        self.min_lr, self.max_lr = min(lo), max(hi)  # the widest range (for display; the clamp is per group)
        for group in optimizer.param_groups:
            lr = group["lr"]
            group.setdefault("initial_lr", lr.clone() if isinstance(lr, torch.Tensor) else lr)  # (as torch's schedulers: a tensor LR is not aliased)
        self.base_lrs: list[float] = bases  # (each group's initial_lr, as just set where it was missing)
        self.last_step = 0
        self._last_lr: list[float] = self._apply(self._initial_lrs())

    # ----------------------------------------------------------------- subclass API
    def _initial_lrs(self) -> list[float]:
        """LRs at step 0 (before any `step`). Default: the base LRs."""
        return list(self.base_lrs)

    def _compute_lrs(self, signals: Signals) -> list[float]:
        """Propose the LRs for the step after `self.last_step` (already incremented)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public API
    def step(self, signals: Signals | None = None) -> list[float]:
        """Advance one step, write the new LR into every param group, return it."""
        self.last_step += 1
        total = getattr(self, "total_steps", None)
        if type(total) is int and self.last_step == total + 1 and self._past_end:
            log.warning(
                "%s: step %d is past total_steps=%d, the run length it was built for: %s. Pass the run's real number of optimizer steps.",
                self.name, self.last_step, total, self._past_end,
            )  # fmt: skip
        proposed = self._compute_lrs(signals if signals is not None else Signals(step=self.last_step))
        self._last_lr = self._apply(proposed)
        return list(self._last_lr)

    def get_last_lr(self) -> list[float]:
        """The LRs most recently written into the optimizer, one per param group."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Explicit, versioned state (never the whole `__dict__`)."""
        state = {
            "version": STATE_VERSION,
            "name": self.name,
            "base_lrs": list(self.base_lrs),
            "last_step": self.last_step,
            "last_lr": list(self._last_lr),
            "min_lr": self.min_lr,
            "max_lr": self.max_lr,
            "min_lrs": list(self.min_lrs),
            "max_lrs": list(self.max_lrs),
        }
        total = getattr(self, "total_steps", None)
        if type(total) is int:  # a planned run: its length, which a resumed controller keeps
            state["total_steps"] = total
        for key in self._state_keys:
            state[key] = _copy(getattr(self, key))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore state saved by `state_dict`; refuses another controller's state."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"controller state version {state.get('version')!r} != {STATE_VERSION}")
        if state.get("name") != self.name:
            raise ValueError(f"state was saved by controller {state.get('name')!r}, not {self.name!r}")
        missing = [k for k in self._state_keys if k not in state]
        if missing:
            raise ValueError(f"controller state for {self.name!r} lacks keys {missing}")
        self.base_lrs = list(state["base_lrs"])
        self.last_step = int(state["last_step"])
        n = len(self.base_lrs)  # (states before per-group bounds held one range for every group)
        self.min_lrs = [float(v) for v in state.get("min_lrs", [state["min_lr"]] * n)]
        self.max_lrs = [float(v) for v in state.get("max_lrs", [state["max_lr"]] * n)]
        self.min_lr, self.max_lr = min(self.min_lrs), max(self.max_lrs)
        self._restore_run_length(state.get("total_steps"))
        for key in self._state_keys:
            setattr(self, key, _copy(state[key]))
        self._last_lr = self._apply(list(state["last_lr"]))

    def _restore_run_length(self, saved: Any) -> None:
        """A planned run's length (`total_steps`) comes back with its state, as torch's schedulers' `T_max` does: the
        resumed controller applies the LRs the saved one would have. A run resumed with another length (a Trainer given
        more epochs or `max_steps` on resume) is logged, since its LRs are then not those of a run planned for the new
        length. States saved before run lengths were saved keep the constructor's."""
        total = getattr(self, "total_steps", None)
        if type(total) is not int or saved is None:
            return
        saved = int(saved)
        if saved != total and self._past_end:  # (a controller whose LR does not depend on the run's length: nothing to say)
            log.warning(
                "%s: the loaded state was saved by a controller planned for a %d-step run, and this one was built for %d steps: "
                "it goes on with the saved run's length (%d), so that its LRs are those the saved run would have applied (%s "
                "past step %d). To plan the LR over the new length, start the controller afresh instead of loading its state.",
                self.name, saved, total, saved, self._past_end, saved,
            )  # fmt: skip
        self.total_steps = saved
        self._run_length_changed()

    def _run_length_changed(self) -> None:
        """Recompute what a subclass derives from `total_steps` (called after a state sets it). Default: nothing."""

    def scale_lrs(self, factor: float) -> None:
        """Multiply base and current LRs by `factor` (used by divergence recovery)."""
        self.base_lrs = [b * factor for b in self.base_lrs]
        self._last_lr = self._apply([lr * factor for lr in self._last_lr])

    # ------------------------------------------------------ hooks (no-op defaults)
    @classmethod
    def prepare_task(cls, task: Any, **controller_kwargs: Any) -> Any:
        """The task to train, called with the controller's kwargs before the model is built. Default: `task`."""
        return task

    @classmethod
    def make_optimizer(cls, params: Any, *, task: Any = None, total_steps: int | None = None, **optimizer_kwargs: Any) -> torch.optim.Optimizer:
        """The optimizer this strategy drives. Default: the task's own (`task.make_optimizer`).

        Strategies that own the optimizer (`owns_optimizer`) override this; only
        they accept `optimizer_kwargs` (a config's `controller_kwargs.optimizer_kwargs`).
        """
        if optimizer_kwargs:
            raise TypeError(f"controller {cls.name!r} uses the task's optimizer; optimizer_kwargs {sorted(optimizer_kwargs)} are for strategies that own it")
        if task is None:
            raise TypeError(f"controller {cls.name!r} uses the task's optimizer: pass task= (or build the optimizer yourself)")
        return task.make_optimizer(params)

    def signal_sources(self) -> tuple[SourceRequest, ...]:
        """Estimators the tracker must own and schedule for this controller (`metalr.estimators` requests).

        Each request says what to estimate and how often; the tracker reads it on
        those steps into `Signals`. Default: none.
        """
        return ()

    def on_eval_start(self) -> None:
        """Called by the harness before evaluating the model."""

    def on_eval_end(self) -> None:
        """Called by the harness after evaluating the model."""

    def extra_logs(self) -> dict[str, float]:
        """Scalars worth logging beside the LR (pattern codes, variability ...)."""
        return {}

    # --------------------------------------------------------------------- helpers
    def check_param_groups(self) -> None:
        """Raise if the optimizer's param groups are not the ones the controller was built for (`add_param_group`)."""
        if len(self.base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(
                f"{self.name}: the optimizer has {len(self.optimizer.param_groups)} param groups, the controller was built for "
                f"{len(self.base_lrs)}: a group was added or removed after it was built (optimizer.add_param_group). Build the "
                "controller once the optimizer has all its groups (a group to unfreeze later can be in it from the start, its "
                "parameters with requires_grad=False: the optimizer skips parameters without gradients)"
            )

    def _apply(self, lrs: list[float]) -> list[float]:
        """Sanitise proposed LRs (finite, clamped) and write them into the optimizer."""
        if len(lrs) != len(self.optimizer.param_groups):
            self.check_param_groups()
            raise ValueError(f"{self.name}: {len(lrs)} LRs for {len(self.optimizer.param_groups)} param groups")
        previous = getattr(self, "_last_lr", None) or self.base_lrs
        safe = []
        for i, lr in enumerate(lrs):
            lr = float(lr)
            if not math.isfinite(lr):
                log.warning("%s proposed a non-finite LR (%s) at step %d; keeping %g", self.name, lr, self.last_step, previous[i])
                lr = float(previous[i]) if math.isfinite(previous[i]) else self.base_lrs[i]
            lr = min(max(lr, self.min_lrs[i]), self.max_lrs[i])
            safe.append(lr)
        for group, lr in zip(self.optimizer.param_groups, safe):
            set_group_lr(group, lr)
        return safe

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, lr={self._last_lr})"


class MultiplicativeController(Controller):
    """A controller whose rule is 'multiply the current LR by a factor'.

    Heuristics share this: `_factor(signals)` returns the multiplier for this step
    (1.0 = keep). The LR compounds on the previous (clamped) LR.
    """

    def _factor(self, signals: Signals) -> float:
        raise NotImplementedError

    def _compute_lrs(self, signals: Signals) -> list[float]:
        factor = self._factor(signals)
        return [lr * factor for lr in self._last_lr]


#: A controller that keeps device signals until its next decision reads them back early once it holds this many
#: (bounded memory for a long interval or epoch; the LRs are the same either way).
MAX_PENDING = 256


def read_back(values: Sequence[Any]) -> list[Any]:
    """`values` (0-d tensors, Python numbers or None) as Python numbers and None, in order, the tensors read back
    together: one host-device synchronisation for all of them (exact: `torch.cat` promotes to the widest dtype).

    For controllers with `device_signals` that keep a step's tensors until they decide (`meta`, `grad_variability`,
    `loss_patterns`): on a GPU a step that reads nothing back does not stall the step pipeline."""
    kept = [v.detach().reshape(1) for v in values if isinstance(v, torch.Tensor)]
    if not kept:
        return list(values)
    if len({t.device for t in kept}) == 1:
        read = iter(torch.cat(kept).tolist())
    else:  # tensors on two devices (a statistic of no gradient at all is a CPU NaN): read one by one, a rare step
        read = iter([t.item() for t in kept])
    return [next(read) if isinstance(v, torch.Tensor) else v for v in values]


class StagedRead:
    """`read_back(values)` split in two: the constructor starts copying the tensors among `values` to the host and
    returns at once; `get()` gives what `read_back` would (Python numbers and None, in order).

    On a CUDA device the copy goes into pinned host memory without blocking, and an event is recorded behind it on
    the current stream: `get()` waits for that event only, i.e. for the work queued up to the copy, not for what was
    queued after it. Read one step later (`MetaController(read_lag=1)`), by which time the device has usually
    finished that step, no wait is left on the host's side of the step pipeline. On a CPU the copy is the read."""

    __slots__ = ("_values", "_host", "_event")

    def __init__(self, values: Sequence[Any]) -> None:
        self._values = list(values)
        self._host: torch.Tensor | None = None
        self._event: Any = None
        kept = [v.detach().reshape(1) for v in self._values if isinstance(v, torch.Tensor)]
        if not kept or len({t.device for t in kept}) != 1:
            return  # nothing to copy (or tensors on two devices, a rare step: `get` reads them as `read_back` does)
        flat = torch.cat(kept)
        if flat.device.type == "cuda":
            self._host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            self._host.copy_(flat, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = flat.cpu()

    def get(self) -> list[Any]:
        if self._host is None:
            return read_back(self._values)
        if self._event is not None:
            self._event.synchronize()  # the copy's own event: the work queued before it, nothing after
        read = iter(self._host.tolist())
        return [next(read) if isinstance(v, torch.Tensor) else v for v in self._values]


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return value
