"""The training harness: one task, one controller, one seed -> a history.

    from metalr import train, tasks
    hist = train.run(tasks.build("digits_mlp"), "cosine", seed=0)
    hist.evals[-1]["val_accuracy"]

Every strategy goes through this same loop, so comparisons are like for like.
`setup` builds what a run trains with (also used by the HF callback, the
benchmarks and config validation); `run` is the loop over its pieces:

- `_train_step`: forward, backward, signals (only those the controller
  requires), optimizer step, controller step;
- `_evaluate`: every `eval_every` steps, between the controller's
  `on_eval_start/end` hooks (where schedule-free swaps to its averaged weights);
  then a snapshot of the last good state is kept (`_snapshot`);
- `_recover`: a non-finite training loss rolls model, optimizer, controller,
  tracker and the step counter back to that snapshot and halves the LR (up to
  `max_retries` times) before the run is declared diverged; either way it is
  recorded (`History.recoveries`, `History.diverged`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metalr import controllers
from metalr.controllers.base import Controller
from metalr.estimators import build_source
from metalr.registry import accepted_kwargs
from metalr.signals import SignalTracker
from metalr.tasks.base import Task, to_device

log = logging.getLogger(__name__)

#: A controller by registry name, "pretrained" (the shipped meta-controller), or a factory `optimizer -> Controller`.
ControllerSpec = str | Callable[[torch.optim.Optimizer], Controller]


@dataclass
class History:
    """Everything a run produced. Per step: loss, lr. Per evaluation: the task's metrics."""

    task: str
    controller: str
    seed: int
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    extras: dict[str, list[float]] = field(default_factory=dict)  # controller's extra_logs per step
    diverged: bool = False
    recoveries: int = 0
    wall_time: float = 0.0
    peak_memory_mb: float = 0.0
    peak_memory_scope: str = "process"  # "run": the most the run added to the process's memory; "process": the process's peak so far
    uncertainty: list[dict[str, float]] = field(default_factory=list)  # estimates, for evaluation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def final(self) -> dict[str, float]:
        return self.evals[-1] if self.evals else {}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def start_memory(device: torch.device) -> float | None:
    """Begin measuring one run's memory; returns the use now (MB), which `peak_memory_mb` is then read against, or None
    where the peak cannot be reset (another OS, a /proc that refuses the write).

    In an evaluation worker that trains run after run, the process's peak holds the largest of every earlier run and its
    resident memory what they left (cached data sets, heap that the allocator keeps): the peak is reset to the use now
    (the CUDA allocator's; on Linux the peak RSS, `/proc/self/clear_refs`), after glibc has returned its free heap pages
    to the system (`malloc_trim`), so that what the run allocates shows as growth over the returned value."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the free heap stays resident, and a run reusing it shows less growth than it allocates
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size to the current one (Linux >= 4.0)
    except OSError:
        return None
    return peak_memory_mb(device)


def peak_memory_mb(device: torch.device, since: float | None = None) -> float:
    """Peak memory (MB): CUDA allocator peak on GPU, the process's max RSS on CPU (the interpreter, torch and the data in
    memory included), since the last `start_memory` or else since the process started; minus `since`, `start_memory`'s
    value, where given: the most the run added to what the process held at its start."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
    return peak if since is None else max(0.0, peak - since)


def _cycle(task: Task, seed: int) -> Any:
    """Yield (epoch, batch) forever; each epoch reshuffles with a seeded generator."""
    epoch = 0
    while True:
        for batch in task.train_loader(seed * 1000 + epoch):
            yield epoch, batch
        epoch += 1


@dataclass
class Setup:
    """What a run trains with, built by `setup` (the harness, the HF callback, benchmarks, config checks)."""

    task: Task | None
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    controller: Controller
    tracker: SignalTracker
    name: str  # the controller's registered name (or its class name)


def setup(
    controller: ControllerSpec,
    *,
    total_steps: int,
    task: Task | None = None,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    controller_kwargs: dict[str, Any] | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    task_info: dict[str, Any] | None = None,
) -> Setup:
    """Task -> model -> optimizer -> controller -> tracker (with its signal sources), in that order.

    Give a `task` (its `model_fn` and optimizer are used) or a ready `model` and
    `optimizer` (e.g. a `transformers.Trainer`'s). `controller_kwargs` go to the
    controller, `total_steps` filled in when it takes it; `optimizer_kwargs`
    among them go to `make_optimizer`. `seed`, if given, seeds every RNG right
    before the model is built.
    """
    kwargs = dict(controller_kwargs or {})
    optimizer_kwargs = kwargs.pop("optimizer_kwargs", {})
    cls = controller_class(controller)
    if task is not None:
        task = cls.prepare_task(task, **kwargs)  # e.g. a deep ensemble: the model becomes the ensemble
    dev = torch.device(device)
    if model is None:
        if task is None:
            raise ValueError("setup needs a task or a model")
        if seed is not None:
            seed_everything(seed)
        model = task.model_fn().to(dev)
    if optimizer is None:
        optimizer = cls.make_optimizer(model.parameters(), task=task, total_steps=total_steps, **optimizer_kwargs)
    ctrl = build_controller(controller, optimizer, total_steps, **kwargs)
    tracker = build_tracker(ctrl, model.parameters(), total_steps=total_steps, model=model, task=task, device=dev, task_info=task_info)
    name = controller if isinstance(controller, str) else (ctrl.name or type(ctrl).__name__)
    return Setup(task, model, optimizer, ctrl, tracker, name)


def controller_class(spec: ControllerSpec) -> type[Controller]:
    """The class behind a spec (its hooks: `prepare_task`, `make_optimizer`); a factory counts as the base `Controller`."""
    if isinstance(spec, str):
        return controllers.get("meta" if spec == "pretrained" else spec)
    return Controller


def build_controller(spec: ControllerSpec, optimizer: torch.optim.Optimizer, total_steps: int | None = None, **kwargs: Any) -> Controller:
    """The controller `spec` on `optimizer`; `total_steps` fills the keyword for controllers that take it (unless given).

    Built under a forked CPU RNG: building a controller (e.g. the first load of the
    meta-controller's policy network in a process) must not shift the training run's
    random stream, or a run would depend on what the process loaded before, and a
    framework run with a callback would not match its resumed twin.
    """
    with torch.random.fork_rng(devices=[]):
        if not isinstance(spec, str):
            return spec(optimizer)
        if total_steps is not None and "total_steps" in accepted_kwargs(controller_class(spec)):
            kwargs.setdefault("total_steps", int(total_steps))
        if spec == "pretrained":
            from metalr.controllers.meta import load_pretrained

            return load_pretrained(optimizer=optimizer, **kwargs)  # type: ignore[no-any-return]
        return controllers.build(spec, optimizer, **kwargs)


def build_tracker(
    ctrl: Controller,
    params: Any,
    *,
    total_steps: int | None,
    model: torch.nn.Module | None = None,
    task: Task | None = None,
    device: str | torch.device = "cpu",
    task_info: dict[str, Any] | None = None,
    as_tensors: bool | None = None,
    sync_ranks: bool | None = None,
) -> SignalTracker:
    """The tracker that computes what `ctrl` requires, owning the signal sources it declares (`signal_sources()`).

    `as_tensors` (default: when `ctrl.device_signals` and the parameters are off the CPU) leaves the
    loss and gradient statistics on the device (`SignalTracker`). `sync_ranks` (default: in a data-parallel
    run) averages the rank-local signals over the ranks (`metalr.distributed`).
    """
    sources = [build_source(r, model=model, task=task, device=torch.device(device)) for r in ctrl.signal_sources()]
    info = task.info() if task is not None else dict(task_info or {})
    params = _trained(ctrl, [p for p in params])
    # Device-resident signals only pay off off the CPU: there reading a tensor is no synchronisation, and Python numbers are cheaper.
    if as_tensors is None:
        as_tensors = ctrl.device_signals and any(p.device.type != "cpu" for p in params)
    return SignalTracker(
        params,
        ctrl.optimizer,
        requires=ctrl.requires,
        total_steps=total_steps,
        task_info=info,
        sources=sources,
        as_tensors=as_tensors,
        every=ctrl.signal_every,
        sync_ranks=sync_ranks,
    )


def _trained(ctrl: Controller, params: list[Any]) -> list[Any]:
    """`params` without those of param groups at LR 0, which every controller keeps at 0 (frozen): the gradient
    statistics (norm, update size, alignment, hypergradient) are those of the parameters being trained, the same as
    with the frozen ones at `requires_grad=False` or outside the optimizer. Logged when any is left out."""
    groups = ctrl.optimizer.param_groups
    frozen = {id(p) for g, hi in zip(groups, ctrl.max_lrs) if hi == 0.0 for p in g["params"]}
    kept = [p for p in params if id(p) not in frozen] if frozen else params
    if len(kept) < len(params):
        log.info(
            "signals: %d of %d parameter tensors are in param groups at lr 0 (frozen: no controller moves them) and are left out "
            "of the gradient statistics", len(params) - len(kept), len(params),
        )  # fmt: skip
    return kept


def run(
    task: Task,
    controller: ControllerSpec = "constant",
    *,
    controller_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    steps: int | None = None,
    epochs: int | None = None,
    eval_every: int | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    device: str = "cpu",
    nan_recovery: bool = True,
    max_retries: int = 3,
    recovery_lr_factor: float = 0.5,
    run_name: str | None = None,
) -> History:
    """Train `task.model_fn()` under `controller` and return its `History`.

    Args:
        controller: a registered name, or a callable `optimizer -> Controller`.
        steps / epochs: run length (default: the task's `steps`); epochs are converted to steps.
        log_dir: if given, TensorBoard scalars go to `log_dir/<task>__<controller>__<seed>`.

    `History.peak_memory_mb` is the most the run added to the process's memory (`start_memory`: the process's peak-RSS
    counter, or CUDA's peak statistics, is reset at the start).
    """
    if steps is not None and epochs is not None:
        raise ValueError("give steps or epochs, not both")
    steps_per_epoch = max(1, len(task.train_loader(seed)))
    total = int(epochs * steps_per_epoch) if epochs is not None else int(steps or task.steps)
    if total < 1:
        raise ValueError(f"a run needs at least one step, got {total}")
    eval_every = int(eval_every or task.eval_every)
    dev = torch.device(device)
    mem0 = start_memory(dev)
    s = setup(controller, task=task, total_steps=total, controller_kwargs=controller_kwargs, seed=seed, device=dev)
    assert s.task is not None
    hist = History(task=task.name, controller=run_name or s.name, seed=seed, peak_memory_scope="process" if mem0 is None else "run")
    logger = _Logger(log_dir, f"{task.name}__{hist.controller}__{seed}", total if progress else 0)
    good = _snapshot(s)
    batches = _cycle(s.task, seed)
    start = time.perf_counter()
    while s.tracker.step < total:  # the one step counter: the tracker's (the controller's `last_step` equals it)
        epoch, batch = next(batches)
        s.tracker.epoch = epoch
        loss = _train_step(s, to_device(batch, dev), hist)
        if loss is None:  # non-finite loss
            if nan_recovery and hist.recoveries < max_retries:
                _recover(s, good, hist, recovery_lr_factor)
                continue
            hist.diverged = True
            break
        logger.step(s.tracker.step, hist.lr[-1], loss)
        if s.tracker.step % eval_every == 0 or s.tracker.step == total:
            metrics = _evaluate(s, epoch, start, dev, mem0)
            hist.evals.append(metrics)
            logger.eval(s.tracker.step, metrics)
            if math.isfinite(metrics["val_loss"]):
                good = _snapshot(s)
    hist.wall_time = time.perf_counter() - start
    hist.uncertainty = s.tracker.records("uncertainty")
    hist.peak_memory_mb = peak_memory_mb(dev, mem0)
    logger.close()
    return hist


def _train_step(s: Setup, batch: Any, hist: History) -> float | None:
    """forward, backward, signals, optimizer step, controller step; the step's loss (None if non-finite: nothing stepped)."""
    assert s.task is not None
    s.model.train()
    s.optimizer.zero_grad(set_to_none=True)
    out = s.task.forward(s.model, batch)
    loss_value = float(out.loss.detach())
    if not math.isfinite(loss_value):
        step = s.tracker.step + 1
        log.warning("%s/%s/seed %d: non-finite loss %s at step %d", hist.task, hist.controller, hist.seed, loss_value, step)
        hist.steps.append(step)
        hist.loss.append(loss_value)
        hist.lr.append(s.controller.get_last_lr()[0])
        return None
    out.loss.backward()
    signals = s.tracker.collect(loss=out.loss, logits=out.logits, targets=out.targets, batch_size=out.batch_size)
    lr_used = s.controller.get_last_lr()[0]  # the LR this step applies (d*lr for Prodigy, warmup for schedule-free; else the group LR)
    s.optimizer.step()
    s.controller.step(signals)
    hist.steps.append(s.tracker.step)
    hist.loss.append(loss_value)
    hist.lr.append(lr_used)
    for k, v in s.controller.extra_logs().items():
        hist.extras.setdefault(k, []).append(float(v))
    return loss_value


def _evaluate(s: Setup, epoch: int, start: float, device: torch.device, mem0: float | None) -> dict[str, float]:
    """The task's metrics now, between the controller's eval hooks; the result reaches the controller next step."""
    assert s.task is not None
    s.controller.on_eval_start()
    s.model.eval()
    metrics = s.task.evaluate(s.model)
    s.controller.on_eval_end()
    metrics.update(step=s.tracker.step, epoch=epoch, wall_time=time.perf_counter() - start, peak_memory_mb=peak_memory_mb(device, mem0))
    s.tracker.record_eval(metrics["val_loss"], metrics.get("val_accuracy"))
    return metrics


def _snapshot(s: Setup) -> dict[str, Any]:
    """The last good state: model, optimizer, controller and tracker, all at the same step."""
    return {
        "model": copy.deepcopy(s.model.state_dict()),
        "opt": copy.deepcopy(s.optimizer.state_dict()),
        "ctrl": copy.deepcopy(s.controller.state_dict()),
        "tracker": s.tracker.state_dict(),
    }


def _recover(s: Setup, good: dict[str, Any], hist: History, lr_factor: float) -> None:
    """Roll back to the snapshot `good` (every piece, and the step counter, to its step) and scale the LR.

    The history is cut back to that step too (the rolled-back steps are redone
    on fresh batches); `hist.recoveries` counts the rollbacks.
    """
    hist.recoveries += 1
    s.model.load_state_dict(good["model"])
    s.optimizer.load_state_dict(good["opt"])
    s.controller.load_state_dict(good["ctrl"])
    s.tracker.load_state_dict(good["tracker"])
    s.controller.scale_lrs(lr_factor)
    step = s.tracker.step
    assert s.controller.last_step == step, (s.controller.last_step, step)
    del hist.steps[step:], hist.loss[step:], hist.lr[step:]
    for values in hist.extras.values():
        del values[step:]
    hist.evals = [e for e in hist.evals if e["step"] <= step]
    good.update(ctrl=copy.deepcopy(s.controller.state_dict()))  # a second rollback to here keeps the scaled LR


class _Logger:
    """TensorBoard scalars (`charts/`, `losses/`, `eval/`) and a progress bar, each optional."""

    def __init__(self, log_dir: str | os.PathLike[str] | None, run_id: str, bar_total: int) -> None:
        self.writer = self.bar = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(log_dir) / run_id))
        if bar_total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=bar_total, desc=run_id.replace("__", "/"), leave=False)

    def step(self, step: int, lr: float, loss: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("charts/lr", lr, step)
            self.writer.add_scalar("losses/train", loss, step)
        if self.bar is not None:
            self.bar.update(1)

    def eval(self, step: int, metrics: dict[str, float]) -> None:
        if self.writer is not None:
            for k in ("val_loss", "val_accuracy"):
                if k in metrics and math.isfinite(metrics[k]):
                    self.writer.add_scalar(f"eval/{k}", metrics[k], step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
