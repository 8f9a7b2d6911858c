"""A deep ensemble (Lakshminarayanan et al., 2017) trained as *the* model.

`DeepEnsemble` holds M independently initialised members; its output is the log
of the members' averaged class probabilities (valid logits: softmax gives the
average back), so any evaluation of it uses the ensemble's prediction.

`ensemble_task(task, M)` returns a copy of a task whose `model_fn` builds the
ensemble and whose `forward` runs the task's own forward on every member, so
each member is trained on its *own* loss: the training loss's gradient is the sum
of the member losses' gradients (each member gets exactly the gradient it would
get alone), while its logged value is their mean (comparable with one model).
In eval mode the loss is the ensemble's NLL on the averaged probabilities.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metalr.tasks.base import StepOutput, Task


class DeepEnsemble(nn.Module):
    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"a deep ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        outs = [m(*args, **kwargs) for m in self.members]
        if not all(isinstance(o, torch.Tensor) for o in outs):
            raise TypeError("DeepEnsemble.forward averages tensor logits; members returned non-tensors (train it through ensemble_task)")
        return average_log_probs(torch.stack(outs))


def average_log_probs(member_logits: torch.Tensor) -> torch.Tensor:
    """log(mean_m softmax(logits_m)) over the leading member dimension, computed stably."""
    m = member_logits.shape[0]
    return torch.logsumexp(member_logits.float().log_softmax(-1), dim=0) - torch.log(torch.tensor(float(m)))


def ensemble_task(task: Task, n_members: int = 5) -> Task:
    """A copy of `task` whose model is an `n_members` deep ensemble trained member by member."""
    if n_members < 2:
        raise ValueError(f"n_members must be >= 2, got {n_members}")
    base_fn = task.model_fn
    with torch.random.fork_rng(devices=[]):  # the probe model must not shift the run's random stream
        structured = hasattr(base_fn(), "crf")
    if structured:
        raise ValueError(
            f"task {task.name!r}: a deep ensemble of a CRF tagger is not defined here (averaging emissions does not average "
            "the members' CRF decodings); leave the ensemble controllers out of this task (evaluation configs: exclude_tasks)"
        )
    new = copy.copy(task)
    new.model_fn = lambda: DeepEnsemble([base_fn() for _ in range(n_members)])
    new.forward = partial(_ensemble_forward, task.forward)  # type: ignore[method-assign]
    return new


def _ensemble_forward(base_forward: Callable[[nn.Module, Any], StepOutput], model: nn.Module, batch: Any) -> StepOutput:
    if not isinstance(model, DeepEnsemble):
        return base_forward(model, batch)  # a single member (e.g. uncertainty estimation)
    outs = [base_forward(m, batch) for m in model.members]
    if any(o.logits is None for o in outs):
        raise ValueError("ensemble_task needs a forward that returns logits")
    logits = average_log_probs(torch.stack([o.logits for o in outs]))  # type: ignore[misc]
    targets, n = outs[0].targets, outs[0].batch_size
    total = torch.stack([o.loss for o in outs]).sum()
    if model.training:
        # value: mean member loss; gradient: sum of member losses (each member its own gradient)
        loss = total - total.detach() + (total / len(outs)).detach()
        return StepOutput(loss, logits.detach(), targets, n)
    if targets is not None and targets.shape == logits.shape[:-1]:
        loss = F.nll_loss(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    else:
        loss = total / len(outs)
    return StepOutput(loss, logits, targets, n)
