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
from metalr.meta.tasks import TaskSpec, batch_stream, materialise
from metalr.signals import SignalTracker

ControllerFactory = Callable[[torch.optim.Optimizer, int], Controller]


def run_spec(spec: TaskSpec, make_controller: ControllerFactory | None, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Train `spec` under the controller (None: constant LR); final validation loss/accuracy on the whole val set."""
    task = materialise(spec, dtype)
    model = task.model
    opt = task.make_optimizer()
    ctrl = make_controller(opt, spec.steps) if make_controller is not None else None
    tracker = SignalTracker(model.parameters(), opt, requires=ctrl.requires if ctrl else (), total_steps=spec.steps, every=ctrl.signal_every if ctrl else 1)
    lrs: list[float] = []
    diverged = False
    model.train()
    for idx in batch_stream(task):
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
    model.eval()
    with torch.no_grad():
        logits = model(task.x_val)
        val_loss = float(task.loss(logits, task.y_val))
        acc = float((logits.argmax(-1) == task.y_val).float().mean())
    if diverged or not math.isfinite(val_loss):
        acc, diverged = 0.0, True
    return {"lrs": lrs, "val_loss": val_loss, "val_accuracy": acc, "diverged": diverged}
