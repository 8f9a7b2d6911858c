"""The training harness: one task, one controller, one seed -> a history.

    from metalr import train, tasks
    hist = train.run(tasks.build("digits_mlp"), "cosine", seed=0)
    hist.evals[-1]["val_accuracy"]

Every strategy goes through this same loop, so comparisons are like for like.
The loop, per step: forward, backward, signals (only those the controller
requires), optimizer step, controller step. Every `eval_every` steps the model
is evaluated (the controller's `on_eval_start/end` hooks wrap it, which is where
schedule-free swaps to its averaged weights) and a snapshot of the last good
state is kept. A non-finite training loss restores that snapshot and halves the
LR (up to `max_retries` times) before the run is declared diverged; either way
it is recorded, never dropped.
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
from metalr.signals import SignalTracker
from metalr.tasks.base import Task

log = logging.getLogger(__name__)

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


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on GPU, the process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _cycle(task: Task, seed: int) -> Any:
    """Yield (epoch, batch) forever; each epoch reshuffles with a seeded generator."""
    epoch = 0
    while True:
        for batch in task.train_loader(seed * 1000 + epoch):
            yield epoch, batch
        epoch += 1


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def build_controller(
    spec: ControllerSpec, task: Task, model: torch.nn.Module, steps: int, kwargs: dict[str, Any] | None = None
) -> tuple[torch.optim.Optimizer, Controller]:
    """The optimizer and controller for a run; fills `total_steps` for schedules that take it."""
    kwargs = dict(kwargs or {})
    if not isinstance(spec, str):
        optimizer = task.make_optimizer(model.parameters())
        return optimizer, spec(optimizer)
    cls = controllers.get(spec)
    if cls.owns_optimizer:
        optimizer = cls.make_optimizer(model.parameters(), task=task, total_steps=steps, **kwargs.pop("optimizer_kwargs", {}))  # type: ignore[attr-defined]
    else:
        optimizer = task.make_optimizer(model.parameters())
    from metalr.registry import accepted_kwargs

    if "total_steps" in accepted_kwargs(cls) and "total_steps" not in kwargs:
        kwargs["total_steps"] = steps
    return optimizer, controllers.build(spec, optimizer, **kwargs)


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
    """
    if steps is not None and epochs is not None:
        raise ValueError("give steps or epochs, not both")
    dev = torch.device(device)
    prepare_task = getattr(controllers.get(controller), "prepare_task", None) if isinstance(controller, str) else None
    if prepare_task is not None:  # e.g. a deep ensemble: the model becomes the ensemble, each member with its own loss
        task = prepare_task(task, **(controller_kwargs or {}))
    seed_everything(seed)
    model = task.model_fn().to(dev)
    steps_per_epoch = max(1, len(task.train_loader(seed)))
    total = int(epochs * steps_per_epoch) if epochs is not None else int(steps or task.steps)
    if total < 1:
        raise ValueError(f"a run needs at least one step, got {total}")
    eval_every = int(eval_every or task.eval_every)
    optimizer, ctrl = build_controller(controller, task, model, total, controller_kwargs)
    name = controller if isinstance(controller, str) else (ctrl.name or type(ctrl).__name__)
    hist = History(task=task.name, controller=run_name or name, seed=seed)

    tracker = SignalTracker(model.parameters(), optimizer, requires=ctrl.requires, total_steps=total, task_info=task.info())
    attach = getattr(ctrl, "attach", None)
    if attach is not None:
        attach(model=model, task=task, tracker=tracker, device=dev)

    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(log_dir) / f"{task.name}__{hist.controller}__{seed}"))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"{task.name}/{hist.controller}/{seed}", leave=False)

    def snapshot() -> dict[str, Any]:
        return {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(optimizer.state_dict()), "ctrl": copy.deepcopy(ctrl.state_dict())}

    good = snapshot()
    batches = _cycle(task, seed)
    start = time.perf_counter()
    step = 0
    while step < total:
        epoch, batch = next(batches)
        tracker.epoch = epoch
        model.train()
        batch = _to(batch, dev)
        optimizer.zero_grad(set_to_none=True)
        out = task.forward(model, batch)
        loss_value = float(out.loss.detach())
        if not math.isfinite(loss_value):
            log.warning("%s/%s/seed %d: non-finite loss %s at step %d", task.name, hist.controller, seed, loss_value, step)
            if nan_recovery and hist.recoveries < max_retries:
                hist.recoveries += 1
                model.load_state_dict(good["model"])
                optimizer.load_state_dict(good["opt"])
                ctrl.load_state_dict(good["ctrl"])
                ctrl.scale_lrs(recovery_lr_factor)
                good = snapshot()
                continue
            hist.diverged = True
            hist.steps.append(step + 1)
            hist.loss.append(loss_value)
            hist.lr.append(ctrl.get_last_lr()[0])
            break
        out.loss.backward()
        signals = tracker.collect(loss=out.loss, logits=out.logits, targets=out.targets, batch_size=out.batch_size)
        lr_used = ctrl.get_last_lr()[0]  # the LR this step applies (d*lr for Prodigy, warmup for schedule-free; else the group LR)
        optimizer.step()
        ctrl.step(signals)
        step += 1
        hist.steps.append(step)
        hist.loss.append(loss_value)
        hist.lr.append(lr_used)
        for k, v in ctrl.extra_logs().items():
            hist.extras.setdefault(k, []).append(float(v))
        if writer is not None:
            writer.add_scalar("charts/lr", lr_used, step)
            writer.add_scalar("losses/train", loss_value, step)
        if bar is not None:
            bar.update(1)
        if step % eval_every == 0 or step == total:
            ctrl.on_eval_start()
            model.eval()
            metrics = task.evaluate(model)
            ctrl.on_eval_end()
            metrics.update(step=step, epoch=epoch, wall_time=time.perf_counter() - start, peak_memory_mb=peak_memory_mb(dev))
            hist.evals.append(metrics)
            tracker.record_eval(metrics["val_loss"], metrics.get("val_accuracy"))
            if writer is not None:
                for k in ("val_loss", "val_accuracy"):
                    if k in metrics and math.isfinite(metrics[k]):
                        writer.add_scalar(f"eval/{k}", metrics[k], step)
            if math.isfinite(metrics["val_loss"]):
                good = snapshot()
    hist.wall_time = time.perf_counter() - start
    hist.uncertainty = [dict(r) for r in getattr(ctrl, "uncertainty_records", [])]
    hist.peak_memory_mb = peak_memory_mb(dev)
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    return hist
