"""Plain (non-differentiable) runs of meta-training tasks: checkpoint selection and the parity test.

`run_spec` trains a `TaskSpec` the way a user's loop would: a real torch
optimizer, `SignalTracker` computing the signals the controller requires, and
the controller stepping after `optimizer.step()`. With the meta-controller that
is exactly the deployed path, so validation scores measure what ships.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from metalr.controllers.base import Controller
from metalr.meta.tasks import TaskSpec, batch_stream, materialise, val_batch_loss, val_subset
from metalr.signals import SignalTracker

ControllerFactory = Callable[[torch.optim.Optimizer, int], Controller]


def run_spec(
    spec: TaskSpec,
    make_controller: ControllerFactory | None,
    dtype: torch.dtype = torch.float32,
    init_state: dict[str, torch.Tensor] | None = None,
    keep_state: bool = False,
    val_reading: int = 0,
    val_batch: int = 256,
) -> dict[str, Any]:
    """Train `spec` under the controller (None: constant LR); final validation loss/accuracy on the whole val set.

    `init_state`: the model's weights to start from (a pretrained model: `state` of an earlier run with `keep_state`).
    `val_reading` = E > 0: after every E-th step (not the last) the loss on the run's validation batch (`val_subset`,
    `val_batch` examples: the unroll's) goes to `tracker.record_eval`, as a loop that evaluates every E steps does."""
    task = materialise(spec, dtype)
    model = task.model
    if init_state is not None:
        model.load_state_dict(init_state)
    opt = task.make_optimizer()
    ctrl = make_controller(opt, spec.steps) if make_controller is not None else None
    tracker = SignalTracker(
        model.parameters(),
        opt,
        requires=ctrl.requires if ctrl else (),
        total_steps=spec.steps,
        every=ctrl.signal_every if ctrl else 1,
        sync_ranks=False,  # meta-training's processes train different tasks
    )
    lrs: list[float] = []
    diverged = False
    val_idx = val_subset(task, val_batch) if val_reading else None
    model.train()
    for t, idx in enumerate(batch_stream(task), 1):
        x, y = task.x_train[idx], task.y_train[idx]
        opt.zero_grad(set_to_none=True)
        loss = task.loss(model(x), y)
        if not math.isfinite(float(loss.detach())):
            diverged = True
            break
        loss.backward()
        signals = tracker.collect(loss=loss)
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        if ctrl is not None:
            ctrl.step(signals)
        if val_idx is not None and t % val_reading == 0 and t < spec.steps:
            tracker.record_eval(val_batch_loss(task, model, val_idx))
    model.eval()
    with torch.no_grad():
        logits = model(task.x_val)
        val_loss = float(task.loss(logits, task.y_val))
        acc = float((logits.argmax(-1) == task.y_val).float().mean())
    if diverged or not math.isfinite(val_loss):
        acc, diverged = 0.0, True
    logs = ctrl.extra_logs() if ctrl is not None else {}
    out = {"lrs": lrs, "val_loss": val_loss, "val_accuracy": acc, "diverged": diverged, "controller_logs": logs}
    if keep_state:
        out["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out
