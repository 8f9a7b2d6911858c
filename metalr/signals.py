"""What controllers observe, computed once per step, in one place.

`Signals` is a plain record; fields a step did not compute are None.
`SignalTracker` computes them from the model, optimizer and batch outputs, and
only the ones some controller `requires`, the loss included (reading a GPU
tensor as a Python number is a host-device synchronisation, so a schedule that
reads nothing costs nothing).

Call order in a training loop (the harness does exactly this):

    loss.backward()
    signals = tracker.collect(loss=loss, logits=logits, targets=y)   # reads .grad
    optimizer.step()
    controller.step(signals)                                         # LR for next step

Host synchronisation. Gradient statistics are computed per tensor on the
parameters' device (`metalr.gradstats`: no flattened copy). By default the
tracker hands controllers Python floats, which on a GPU costs one host-device
synchronisation per converted value. A tracker built with `as_tensors=True`
(`metalr.train.build_tracker` does so when the controller declares
`device_signals`) leaves `loss`, `grad_norm` and `grad_align` as 0-d tensors on
the device and converts them not: its `collect` never synchronises for them
(`grad_cos` and `hypergrad`, and `grad_norm` beside them, stay Python numbers).

Validation results are attached with `tracker.record_eval(val_loss, val_accuracy)`;
they appear in the *next* `collect` only (`signals.val_loss` is None otherwise),
so event-driven controllers such as reduce-on-plateau react once per evaluation.

Signals that need a model-level estimate (uncertainty, resource readings) come
from *sources* the tracker owns and schedules (`metalr.estimators`): a controller
declares them (`Controller.signal_sources()`), `metalr.train.setup` builds them,
and on each `collect` the tracker reads the ones that are due (handing them the
step's logits and targets, which a training-batch estimate reuses). Nothing is
installed on the tracker from outside; the tracker's `state_dict` covers its
sources, so a restored run reads them on the same steps.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, cast

import torch

from metalr.distributed import RankMean
from metalr.gradstats import (
    GradAlign,
    KeptCopy,
    UpdateSize,
    ViewCache,
    _host_arrays,
    each_dots,
    finite_or_nan,
    global_norm,
    host_dot,
    host_dots,
    host_norm,
    host_step_dots,
)

log = logging.getLogger(__name__)

#: Every signal a controller may list in `requires`.
SIGNAL_NAMES = frozenset(
    {
        "loss",  # training loss of the batch (float; may be nan/inf)
        "accuracy",  # batch accuracy in [0, 1] (classification tasks)
        "grad_norm",  # global L2 norm of the gradient
        "grad_cos",  # cosine between this and the previous step's gradient
        "grad_align",  # cosine between the gradient and the optimizer's running gradient average (metalr.gradstats)
        "update_size",  # |theta_t - theta_{t-1}| / |theta_t|: relative size of the previous update (metalr.gradstats.UpdateSize)
        "hypergrad",  # g_t . u_{t-1}: dot of gradient and previous update direction (Baydin et al.)
        "hypergrad_groups",  # the same per param group, over the group's own parameters (each group's LR's hypergradient)
        "val_loss",  # validation loss, only on the step after an evaluation
        "val_accuracy",  # validation accuracy, idem
        "uncertainty",  # predictive uncertainty in [0, 1] (from an uncertainty source, on its steps only)
        "resources",  # dict of resource readings, fractions in [0, 1]: cpu_util, mem_util, gpu_util, gpu_mem (idem)
    }
)


#: The signals whose meaning assumes the optimizer minimizes the loss: the loss itself (lower is better), the hypergradient
#: (the sign of g_t . u_{t-1}) and the gradient's alignment with Adam's first moment (which accumulates -g under
#: `maximize=True`). Controllers that read any of them refuse an optimizer with `maximize=True` (`Controller.__init__`).
MINIMIZING_SIGNALS = frozenset({"loss", "hypergrad", "hypergrad_groups", "grad_align"})

#: The signals `SignalTracker._gradient_signals` computes (the gradient norm and what compares it with the last step).
_NORM_SIGNALS = frozenset({"grad_norm", "grad_cos", "hypergrad", "hypergrad_groups"})

#: The signals a tracker with `every=k` computes only on every k-th step: those that read the gradients or parameters.
GRADIENT_SIGNALS = frozenset({"grad_norm", "grad_cos", "grad_align", "update_size", "hypergrad", "hypergrad_groups"})


@dataclass
class Signals:
    """One step's observations. Always present: step, epoch, progress."""

    step: int = 0
    epoch: int = 0
    progress: float = 0.0  # fraction of the planned run done, in [0, 1]
    loss: float | None = None  # a 0-d tensor (as are grad_norm, grad_align) from a tracker with as_tensors=True
    accuracy: float | None = None
    grad_norm: float | None = None
    grad_cos: float | None = None
    grad_align: float | None = None
    update_size: float | None = None
    hypergrad: float | None = None
    hypergrad_cos: float | None = None  # g_t . u_{t-1} / (|g_t| |u_{t-1}|), scale-free
    hypergrad_groups: list[float] | None = None  # g_t . u_{t-1} of each param group's own parameters (its own LR's hypergradient)
    val_loss: float | None = None
    val_accuracy: float | None = None
    uncertainty: float | None = None
    batch_size: int | None = None
    resources: dict[str, float] | None = None
    task_info: dict[str, Any] = field(default_factory=dict)  # e.g. num_classes, num_features


class GroupLayout(NamedTuple):
    """Where a tracker's parameters sit in its optimizer's param groups."""

    n_groups: int
    group_of: list[int]  # each tracked parameter's group (-1: in none)
    used: tuple[int, ...]  # the groups that hold a tracked parameter
    all_in: bool  # every tracked parameter is in a group
    in_order: list[torch.Tensor]  # the tracked parameters in the optimizer's order (`grad_align` reads their state)


class SignalSource(Protocol):
    """A signal the tracker reads on the steps it is due (see `metalr.estimators`)."""

    signal: str  # the `Signals` field it fills
    records: list[dict[str, float]]  # every reading made, for evaluation

    def due(self, step: int, epoch: int) -> bool: ...
    def read(self, step: int, epoch: int, logits: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class SignalTracker:
    """Computes the requested signals for each training step.

    Args:
        params: the parameters being trained (gradients are read from them).
        optimizer: used to read the LR of the step.
        requires: signal names wanted (see `SIGNAL_NAMES`); others stay None.
        total_steps: planned length of the run, for `progress`.
        task_info: dataset facts passed on in every `Signals` (see `Task.info`).
        sources: estimators for signals that need one (uncertainty, resources).
        as_tensors: leave `loss`, `grad_norm` and `grad_align` as 0-d tensors on the parameters'
            device instead of Python floats (no host synchronisation; for controllers that
            declare `device_signals`). `grad_cos` and `hypergrad` stay Python numbers, and so
            does `grad_norm` when either is required.
        every: compute the gradient-level signals (`GRADIENT_SIGNALS`) only on steps that are
            multiples of `every` (None on the others), for a controller that reads them only then
            (`Controller.signal_every`). On the step before such a step the tracker keeps what the
            statistic needs from it (the previous gradient or parameters, the update-size sample)
            and computes nothing, so every value it reports equals what `every=1` reports on that
            step. The loss, accuracy, evaluations and signal sources are unaffected.
        sync_ranks: average the signals each rank computes from its own data (loss, accuracy,
            evaluations, uncertainty, resource readings) over the ranks of the default process
            group, so that every rank's controller sets the same LR (`metalr.distributed`).
            None (default): when torch.distributed is initialised with more than one rank and
            the controller reads one of them. False for ranks that train separate models.

    Buffers: `grad_cos` keeps the previous gradient, `hypergrad` the previous parameters
    (one model-sized buffer each, per tensor, overwritten in place); `grad_align` keeps
    nothing while the optimizer has a momentum buffer (see `metalr.gradstats`);
    `update_size` keeps a sample of at most 4096 parameter values.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        requires: Iterable[str] = (),
        total_steps: int | None = None,
        task_info: dict[str, Any] | None = None,
        sources: Iterable[SignalSource] = (),
        as_tensors: bool = False,
        every: int = 1,
        sync_ranks: bool | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        self.every = every
        self.as_tensors = bool(as_tensors)
        self.requires = frozenset(requires)
        unknown = self.requires - SIGNAL_NAMES
        if unknown:
            raise ValueError(f"unknown signal(s) {sorted(unknown)}; valid: {sorted(SIGNAL_NAMES)}")
        if "hypergrad_groups" in self.requires:  # computed with the hypergradient
            self.requires |= {"hypergrad"}
        self.sources = {s.signal: s for s in sources}
        unrequested = sorted(set(self.sources) - self.requires)
        if unrequested:
            raise ValueError(f"sources for signal(s) {unrequested} that are not required; required: {sorted(self.requires)}")
        self.params = [p for p in params if p.requires_grad]
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.task_info = dict(task_info or {})
        self.step = 0
        self.epoch = 0
        self._prev_grad = KeptCopy()
        self._prev_params = KeptCopy()
        self._prev_lr: tuple[float, ...] | None = None  # each param group's LR at the previous step (`hypergrad`)
        self._reads_lr = "hypergrad" in self.requires  # the LR is read only for the hypergradient
        self._hyper_groups = "hypergrad_groups" in self.requires
        self._groups: GroupLayout | None = None  # `_layout`, built at its first use
        layout = self._group_layout()
        self._one_group = layout.n_groups == 1 and layout.all_in  # the common case: one LR moves every tracked parameter
        self._sparse: bool | None = None  # some parameter has a sparse gradient (None: no gradient seen yet)
        self._awaits_loss = "loss" in self.requires  # until a step without the loss it reads has been logged
        self._pending_eval: tuple[float, float | None] | None = None
        self._align = GradAlign()
        self._update_size = UpdateSize()
        self._prev_views = ViewCache()  # numpy views of the kept parameters (`hypergrad`), while their buffer is the same
        self._theta_views = ViewCache()  # numpy views of the parameters themselves (`hypergrad`)
        self._ranks = RankMean.build(self.requires, sync_ranks)  # data-parallel: the rank-local signals averaged (None: not)

    def record_eval(self, val_loss: float, val_accuracy: float | None = None) -> None:
        """Attach an evaluation result to the next `collect`."""
        self._pending_eval = (float(val_loss), None if val_accuracy is None else float(val_accuracy))

    def collect(
        self,
        loss: torch.Tensor | float | None = None,
        logits: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        batch_size: int | None = None,
        *,
        complete: bool = True,
    ) -> Signals:
        """Signals for the step whose gradients are in `.grad` now (before optimizer.step).

        `complete=False` leaves the step open for outputs known only after `optimizer.step()` (a plain loop's
        `ctrl.step(loss)`): the caller then passes them to `complete` before the controller reads the signals."""
        self.step += 1
        lr: tuple[float, ...] = ()  # each group's LR, read only for the hypergradient (a CUDA tensor LR: a read is a synchronisation)
        if self._reads_lr:
            groups = self.optimizer.param_groups
            lr = (float(groups[0]["lr"]),) if len(groups) == 1 else tuple(float(g["lr"]) for g in groups)
        s = Signals(
            step=self.step,
            epoch=self.epoch,
            progress=min(1.0, self.step / self.total_steps) if self.total_steps else 0.0,
            batch_size=batch_size,
            task_info=self.task_info,
        )
        if loss is not None and "loss" in self.requires:
            if isinstance(loss, torch.Tensor):
                s.loss = loss.detach() if self.as_tensors else loss.item()  # type: ignore[assignment]
            else:
                s.loss = float(loss)
        if "accuracy" in self.requires and logits is not None and targets is not None:
            s.accuracy = batch_accuracy(logits, targets)
        if self.every > 1 and self.step % self.every:
            if self.step % self.every == self.every - 1:
                self._prime(lr)
        else:
            self._step_signals(s, lr)
        if self._pending_eval is not None:
            s.val_loss, s.val_accuracy = self._pending_eval
            self._pending_eval = None
        for name, source in self.sources.items():
            if source.due(self.step, self.epoch):
                setattr(s, name, source.read(self.step, self.epoch, logits, targets))  # the step's outputs, for sources that reuse its forward
        if complete:  # (the loss and accuracy are in already: `complete` would add only this)
            self._finish(s)
        return s

    def _finish(self, s: Signals) -> None:
        """The end of every step's signals: a missing loss the controller reads is logged (once), and in a data-parallel
        run the rank-local signals are averaged over the ranks (`sync_ranks`)."""
        if self._awaits_loss and s.loss is None:
            self._no_loss()
        if self._ranks is not None:
            self._ranks(s)

    def _no_loss(self) -> None:
        """A step finished without the loss the controller reads: logged once (the controller then acts without it)."""
        self._awaits_loss = False
        log.warning(
            "signals: the controller reads the training loss, but step %d came without one, so it acts blind to it (the meta-controller's "
            "divergence guard cannot fire). Pass it: ctrl.step(loss) after optimizer.step() in a plain loop, tracker.collect(loss=loss) in "
            "the long form; logged once", self.step,
        )  # fmt: skip

    def complete(
        self, s: Signals, loss: torch.Tensor | float | None = None, logits: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> Signals:
        """Finish the signals of a step collected with `complete=False`: the loss (and batch accuracy) if only known now,
        then, in a data-parallel run, the rank-local signals averaged over the ranks (`sync_ranks`). Returns `s`."""
        if loss is not None and "loss" in self.requires:  # read only for a controller that reads it (on a GPU a read is a synchronisation)
            if isinstance(loss, torch.Tensor):
                loss = loss.detach()
                loss = (loss if loss.dtype == torch.float64 else loss.float()).mean()  # (a float64 sum stays exact)
                s.loss = loss if self.as_tensors else float(loss)  # type: ignore[assignment]
            else:
                s.loss = float(loss)
        if "accuracy" in self.requires and logits is not None and targets is not None:
            s.accuracy = batch_accuracy(logits, targets)
        self._finish(s)
        return s

    def _grads(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        """The parameters' gradients, a sparse one (`nn.Embedding(sparse=True)`) as absent: the gradient statistics
        are those of the dense gradients (logged once, at the first gradient seen; an error if there are none)."""
        grads = [p.grad for p in params]
        if self._sparse is None and any(g is not None for g in grads):
            sparse = [i for i, g in enumerate(grads) if g is not None and g.layout != torch.strided]
            if sparse and len(sparse) == sum(g is not None for g in grads):
                raise ValueError(
                    f"every gradient of this step is sparse ({len(sparse)} parameter(s), e.g. {tuple(params[sparse[0]].shape)}; "
                    f"`nn.Embedding(sparse=True)` with `SparseAdam`?): the gradient statistics {sorted(self.requires & GRADIENT_SIGNALS)} "
                    "are those of the dense gradients and there are none. Use dense gradients (`sparse=False`) or a controller "
                    "that reads no gradient statistics (a schedule)"
                )
            self._sparse = bool(sparse)
            if sparse:
                log.warning(
                    "gradient statistics leave out %d parameter(s) with sparse gradients (%s): they are computed over the other "
                    "%d parameters' gradients", len(sparse), ", ".join(str(tuple(params[i].shape)) for i in sparse[:3]), len(grads) - len(sparse),
                )  # fmt: skip
        if self._sparse:
            return [None if g is not None and g.layout != torch.strided else g for g in grads]
        return grads

    def _step_signals(self, s: Signals, lr: tuple[float, ...]) -> None:
        """The gradient-level signals of this step (`GRADIENT_SIGNALS`), into `s`."""
        if not self.requires.isdisjoint(_NORM_SIGNALS):
            self._gradient_signals(s, lr)
        if "grad_align" in self.requires:
            params = self._layout().in_order
            grads, states = self._grads(params), [self.optimizer.state.get(p) for p in params]
            norm, s.grad_align = self._align(grads, states, host=not self.as_tensors, keep=self.every == 1)
            if s.grad_norm is None:
                s.grad_norm = norm
        if "update_size" in self.requires:
            s.update_size = self._update_size(self.params, host=not self.as_tensors)

    def _prime(self, lr: tuple[float, ...]) -> None:
        """On the step before a gradient-signal step (`every` > 1): keep only what that step's statistics compare with."""
        if "grad_cos" in self.requires:
            self._prev_grad.keep(self._grads(self.params))
        if "hypergrad" in self.requires:
            self._prev_params.keep([p.detach() for p in self.params])
            self._prev_lr = lr
        if "grad_align" in self.requires:
            params = self._layout().in_order
            self._align.prime(self._grads(params), [self.optimizer.state.get(p) for p in params])
        if "update_size" in self.requires:
            self._update_size.prime(self.params, host=not self.as_tensors)

    def _layout(self) -> GroupLayout:
        """`_group_layout`, kept; rebuilt when a group is added."""
        if self._groups is None or self._groups.n_groups != len(self.optimizer.param_groups):
            self._groups = self._group_layout()
        return self._groups

    def _group_layout(self) -> GroupLayout:
        """Where the tracked parameters sit in the optimizer's param groups."""
        groups = self.optimizer.param_groups
        index = {id(p): k for k, g in enumerate(groups) for p in g["params"]}
        group_of = [index.get(id(p), -1) for p in self.params]
        tracked = {id(p) for p in self.params}
        return GroupLayout(
            n_groups=len(groups),
            group_of=group_of,
            used=tuple(sorted({k for k in group_of if k >= 0})),
            all_in=all(k >= 0 for k in group_of),
            in_order=[p for g in groups for p in g["params"] if id(p) in tracked],
        )

    def records(self, signal: str) -> list[dict[str, float]]:
        """Every reading the source of `signal` made (empty when there is none)."""
        source = self.sources.get(signal)
        return list(source.records) if source is not None else []

    def _gradient_signals(self, s: Signals, lr: tuple[float, ...]) -> None:
        """grad_norm, grad_cos, hypergrad as Python numbers (their readers need them): per-tensor reductions, no flattened copy."""
        grads = self._grads(self.params)
        present = [g for g in grads if g is not None]
        hyper = "hypergrad" in self.requires
        prev_params = self._prev_params.tensors
        kept, theta = False, None  # kept: theta_t is in the buffer already (the one-pass host step below)
        prev_lr = self._prev_lr
        if hyper and prev_params is not None and prev_lr:
            one = self._one_group and len(prev_lr) == 1 and prev_lr[0] > 0  # the common case, told in three operations
            param_lrs, lr0 = (None, prev_lr[0]) if one else self._param_lrs(prev_lr)
            if param_lrs is not None:  # the parameters' LRs differ (param groups, a group at 0, a parameter in none): per tensor
                theta = [p.detach() for p in self.params]
                torch._foreach_sub_(prev_params, theta)  # type: ignore[arg-type]  # the buffer becomes theta_{t-1} - theta_t
                s.grad_norm = self._split_hypergrad(s, grads, cast(list[torch.Tensor], prev_params), param_lrs)
            else:
                paired = len(present) == len(prev_params) and all(q is not None for q in prev_params)  # the common case
                fused = self._host_step(present, cast(list[torch.Tensor], prev_params)) if paired and self.every == 1 else None
                absent: list[torch.Tensor] = []
                if fused is not None:  # on the CPU: one pass over memory, the buffer holding theta_t after it
                    (g_sq, dot, step_sq), kept = fused, True
                else:
                    # The buffer becomes theta_{t-1} - theta_t = lr_{t-1} u_{t-1} in place (it holds theta_t again below).
                    theta = [p.detach() for p in self.params]
                    torch._foreach_sub_(prev_params, theta)  # type: ignore[arg-type]
                    if paired:
                        steps = cast(list[torch.Tensor], prev_params)
                        g_sq, dot, step_sq = host_dots(present, steps, self._prev_views(steps))  # the buffer's views, kept
                    else:
                        steps = [q for g, q in zip(grads, prev_params) if g is not None and q is not None]
                        absent = [q for g, q in zip(grads, prev_params) if g is None and q is not None]
                        g_sq, dot, step_sq = host_dots(present, steps)  # one pass: |g|^2, g . (lr u), |lr u|^2
                step_sq += host_norm(absent) ** 2 if absent else 0.0
                s.grad_norm = finite_or_nan(math.sqrt(g_sq)) if present else math.nan
                denom = s.grad_norm * math.sqrt(step_sq)
                s.hypergrad = finite_or_nan(dot / lr0)  # g_t . u_{t-1}
                s.hypergrad_cos = finite_or_nan(dot / denom) if denom > 0 else 0.0
                if self._hyper_groups:  # (one group: several take the per-tensor path above)
                    s.hypergrad_groups = [s.hypergrad]
        elif self.as_tensors and "grad_cos" not in self.requires:  # the norm alone, for a reader of device tensors: no read
            norm: Any = global_norm(present)  # a 0-d tensor where `Signals` says float: `as_tensors`' contract
            s.grad_norm = norm
        else:
            s.grad_norm = host_norm(present)
        if "grad_cos" in self.requires:
            prev_grad = self._prev_grad.tensors
            if prev_grad is not None:
                pairs = [(g, q) for g, q in zip(grads, prev_grad) if g is not None and q is not None]
                denom = s.grad_norm * host_norm([q for q in prev_grad if q is not None])
                s.grad_cos = finite_or_nan(host_dot([g for g, _ in pairs], [q for _, q in pairs]) / denom) if denom > 0 else 0.0
            self._keep(self._prev_grad, grads)
        if hyper:
            if not kept:
                self._keep(self._prev_params, theta if theta is not None else [p.detach() for p in self.params])
            self._prev_lr = lr

    def _param_lrs(self, lrs: tuple[float, ...]) -> tuple[list[float] | None, float]:
        """(each tracked parameter's LR, NaN) at the groups' LRs `lrs`, or (None, the LR) when one LR > 0 moves every
        tracked parameter and no per-group value is asked for of several groups: the common case, summed in one pass,
        told from the groups' LRs alone (a few operations per step: the LR of a one-group run changes every step)."""
        layout = self._layout()
        group_of, used, all_in = layout.group_of, layout.used, layout.all_in
        lrs += (0.0,) * (layout.n_groups - len(lrs))  # a group added since the LRs were read: its parameters did not move
        first = lrs[used[0]] if used else 0.0
        if all_in and first > 0 and (len(lrs) == 1 or (not self._hyper_groups and all(lrs[k] == first for k in used))):
            return None, first
        return [lrs[k] if k >= 0 else 0.0 for k in group_of], math.nan

    def _split_hypergrad(self, s: Signals, grads: list[torch.Tensor | None], steps: list[torch.Tensor], param_lrs: list[float]) -> float:
        """The hypergradient signals where the parameters' LRs differ. `steps` holds each tensor's theta_{t-1} - theta_t =
        lr_i u_i. `hypergrad` is g . u (each tensor's step over its own LR), `hypergrad_groups` the same per param group,
        and `hypergrad_cos` the cosine of g and the step over the tensors that moved (a frozen group's gradient, at LR 0, is
        left out: no LR of it is being set). Returns the gradient norm."""
        each = each_dots(grads, steps)
        g_sq = sum(e[0] for e in each)
        layout = self._layout()
        per_group = [0.0] * layout.n_groups
        gg = gd = dd = 0.0
        for (a, b, c), lr, k in zip(each, param_lrs, layout.group_of):
            if lr > 0:
                gg, gd, dd = gg + a, gd + b, dd + c
                per_group[k] += b / lr
        s.hypergrad = finite_or_nan(sum(per_group))
        if self._hyper_groups:
            s.hypergrad_groups = [finite_or_nan(h) for h in per_group]
        denom = math.sqrt(gg * dd)
        s.hypergrad_cos = finite_or_nan(gd / denom) if denom > 0 else 0.0
        return finite_or_nan(math.sqrt(g_sq)) if any(g is not None for g in grads) else math.nan

    def _host_step(self, grads: list[torch.Tensor], prev: list[torch.Tensor]) -> tuple[float, float, float] | None:
        """`host_step_dots` where every tensor has numpy views (CPU, float, the buffer contiguous); else None."""
        p = self._prev_views(prev, writable=True)
        if p is None:
            return None
        t, g = self._theta_views(self.params), _host_arrays(grads)
        return None if t is None or g is None else host_step_dots(g, p, t)

    def _keep(self, kept: KeptCopy, tensors: Sequence[torch.Tensor | None]) -> None:
        """`tensors`, kept for the next step to compare with. With `every` > 1 the next step to
        compare is after a `_prime`, which fills the buffer itself: nothing is copied, the buffer is
        set aside for it, and None stands in the state meanwhile (no previous reading)."""
        if self.every == 1:
            kept.keep(tensors)
        else:
            kept.set_aside()

    def state_dict(self) -> dict[str, Any]:
        """Everything the next `collect` depends on (a copy; tensors, numbers, lists, dicts, None): recovery and checkpoints restore it."""
        pending = None if self._pending_eval is None else list(self._pending_eval)
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "total_steps": self.total_steps,
            "prev_grad": self._prev_grad.tensors,
            "prev_params": self._prev_params.tensors,
            "prev_lr": None if self._prev_lr is None else list(self._prev_lr),
            "pending_eval": pending,
            "align": self._align.state_dict(),
            "update_size": self._update_size.state_dict(),
            "sources": {name: source.state_dict() for name, source in self.sources.items()},
        }
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["sources"]) != set(self.sources):
            raise ValueError(f"tracker state has sources {sorted(state['sources'])}, this tracker {sorted(self.sources)}")
        state = copy.deepcopy(state)
        prev_grad = self._per_tensor("prev_grad", state["prev_grad"])
        prev_params = self._per_tensor("prev_params", state["prev_params"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        if state.get("total_steps") is not None:  # the saved run's length, as the controllers keep it (`progress` agrees with theirs)
            self.total_steps = int(state["total_steps"])
        self._prev_grad.load(prev_grad)
        self._prev_params.load(prev_params)
        prev_lr = state["prev_lr"]  # each group's LR; one number in states saved before per-group LRs (right for one group)
        n_groups = len(self.optimizer.param_groups)
        self._prev_lr = None if prev_lr is None else (float(prev_lr),) * n_groups if isinstance(prev_lr, (int, float)) else tuple(map(float, prev_lr))
        pending = state.get("pending_eval")
        self._pending_eval = None if pending is None else (float(pending[0]), None if pending[1] is None else float(pending[1]))
        self._align.load_state_dict(state.get("align", {"prev": None}))
        self._update_size.load_state_dict(state.get("update_size", {}))  # absent from metalr <= 0.3 states: starts afresh
        for name, source in self.sources.items():
            source.load_state_dict(state["sources"][name])

    def check_state(self, state: dict[str, Any]) -> None:
        """Raise ValueError unless `state` (from `state_dict`) fits this tracker's parameters and sources; changes nothing."""
        if set(state["sources"]) != set(self.sources):
            raise ValueError(f"tracker state has sources {sorted(state['sources'])}, this tracker {sorted(self.sources)}")
        self._per_tensor("prev_grad", state.get("prev_grad"))
        self._per_tensor("prev_params", state.get("prev_params"))

    def _per_tensor(self, key: str, saved: Any) -> list[torch.Tensor | None] | None:
        """A saved per-parameter buffer, checked against this tracker's parameters (a flat tensor from metalr <= 0.2 is split)."""
        if saved is None:
            return None
        if isinstance(saved, torch.Tensor):  # metalr <= 0.2 kept one flattened float32 copy
            n = sum(p.numel() for p in self.params)
            if saved.numel() != n:
                raise ValueError(f"saved tracker {key} has {saved.numel()} entries but the trained parameters have {n}: state of another model")
            parts = torch.split(saved.reshape(-1), [p.numel() for p in self.params])
            return [t.reshape(p.shape).to(device=p.device, dtype=p.dtype) for t, p in zip(parts, self.params)]
        if not isinstance(saved, Sequence) or len(saved) != len(self.params) or any(t is not None and t.shape != p.shape for t, p in zip(saved, self.params)):
            raise ValueError(f"saved tracker {key} does not match the trained parameters' shapes: state of another model")
        return list(saved)


def batch_accuracy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> float:
    """Fraction of correct argmax predictions, ignoring `ignore_index` targets."""
    pred = logits.detach().argmax(dim=-1)
    mask = targets != ignore_index
    n = int(mask.sum())
    return float((pred[mask] == targets[mask]).sum()) / n if n else float("nan")
