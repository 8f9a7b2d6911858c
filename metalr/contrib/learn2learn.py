"""Meta-training tasks from learn2learn task distributions (optional extra).

learn2learn is not a dependency: it does not build from PyPI on Python 3.11 and
its `__init__` imports torchvision and gym. Install it with
`scripts/install_learn2learn.sh` (plus a torchvision matching your torch); then

    import learn2learn as l2l
    from metalr.contrib.learn2learn import task_from_l2l
    taskset = l2l.data.TaskDataset(meta_dataset, task_transforms=[...])
    task = task_from_l2l(taskset, model_fn=lambda: MyNet(n_ways), num_classes=n_ways)

turns one sampled learn2learn task into a metalr `Task` (its samples split into
train and validation), ready for `metalr.train.run` or as a meta-training task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from metalr.tasks.base import Task

INSTALL_HINT = (
    "learn2learn is an optional extra that is not installed (or its torchvision/gym imports failed). "
    "Install it with `bash scripts/install_learn2learn.sh` and a torchvision build matching your torch; see README 'Optional: learn2learn'."
)


def require_learn2learn() -> Any:
    """Import learn2learn or raise an ImportError that says how to install it."""
    try:
        import learn2learn
    except Exception as e:  # ImportError, or torchvision's own errors on a CPU-only build
        raise ImportError(f"{INSTALL_HINT} ({type(e).__name__}: {e})") from None
    return learn2learn


def task_from_batch(
    x: torch.Tensor, y: torch.Tensor, model_fn: Callable[[], nn.Module], num_classes: int, val_fraction: float = 0.5, name: str = "l2l_task", **task_kwargs: Any
) -> Task:
    """A metalr Task from one few-shot batch: labels remapped to 0..k-1, a fixed train/val split."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    _, y = torch.unique(y, return_inverse=True)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    n_val = max(1, int(len(y) * val_fraction))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    features = float(x[0].numel())
    return Task(
        name=name, train_data=TensorDataset(x[train_idx], y[train_idx]), val_data=TensorDataset(x[val_idx], y[val_idx]),
        model_fn=model_fn, num_classes=num_classes, num_features=features, **task_kwargs,
    )  # fmt: skip


def task_from_l2l(taskset: Any, model_fn: Callable[[], nn.Module], num_classes: int, **kwargs: Any) -> Task:
    """Sample one task from a learn2learn `TaskDataset` and wrap it as a metalr Task."""
    require_learn2learn()
    x, y = taskset.sample()
    return task_from_batch(torch.as_tensor(x), torch.as_tensor(y), model_fn, num_classes, **kwargs)
