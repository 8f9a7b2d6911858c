"""The meta-training task distribution: base tasks x widths x optimizers x base LRs x subsets.

A `TaskSpec` is drawn from a seeded generator, so the i-th task of meta-step s is
the same whether one process or several draw it (that is what makes the
multi-process meta-gradient equal to the single-process one). Which base tasks
are used, and which are held out, is chosen in config, never here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch import nn

from metalr import tasks
from metalr.tasks.offline import SmallCNN2d, mlp

#: Base tasks this sampler knows how to vary (plus the generated `synthetic_blobs`).
SUPPORTED = ("digits_mlp", "digits_cnn", "wine_mlp", "breast_cancer_mlp", "synthetic_blobs")


@dataclass(frozen=True)
class TaskSpec:
    base: str
    optimizer: str  # sgd | adam
    lr: float
    width: int
    train_fraction: float
    steps: int
    batch_size: int
    seed: int


@dataclass
class InnerTask:
    """Tensors and a model factory: everything one inner trajectory needs."""

    spec: TaskSpec
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    model: nn.Module

    def make_optimizer(self) -> torch.optim.Optimizer:
        if self.spec.optimizer == "sgd":
            return torch.optim.SGD(self.model.parameters(), lr=self.spec.lr, momentum=0.9)
        return torch.optim.Adam(self.model.parameters(), lr=self.spec.lr)


def task_seed(seed: int, meta_step: int, index: int) -> int:
    """Seed of the `index`-th task of `meta_step` (independent of the process count)."""
    return (seed * 1_000_003 + meta_step * 10_007 + index * 101) % (2**31 - 1)


def sample_spec(
    seed: int,
    base_tasks: list[str],
    optimizers: list[str],
    base_lrs: dict[str, float],
    lr_factor_range: tuple[float, float],
    widths: list[int],
    steps: list[int],
    train_fraction_range: tuple[float, float],
) -> TaskSpec:
    g = torch.Generator().manual_seed(seed)

    def pick(xs: list) -> object:  # type: ignore[type-arg]
        return xs[int(torch.randint(len(xs), (1,), generator=g))]

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand(1, generator=g))

    opt = str(pick(optimizers))
    lo, hi = lr_factor_range
    factor = math.exp(uniform(math.log(lo), math.log(hi)))
    base = str(pick(base_tasks))
    return TaskSpec(
        base=base,
        optimizer=opt,
        lr=base_lrs[opt] * factor,
        width=int(pick(widths)),  # type: ignore[call-overload]
        train_fraction=uniform(*train_fraction_range),
        steps=int(pick(steps)),  # type: ignore[call-overload]
        batch_size=int(pick([16, 32, 64])) if base != "digits_cnn" else 32,  # type: ignore[call-overload]
        seed=seed,
    )


@cache
def _base_tensors(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    if name == "synthetic_blobs":
        raise ValueError("synthetic_blobs is generated per seed")
    t = tasks.build(name)
    xt, yt = t.train_data.tensors  # type: ignore[attr-defined]
    xv, yv = t.val_data.tensors  # type: ignore[attr-defined]
    return xt, yt, xv, yv, t.num_classes


def _blobs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """A Gaussian-mixture classification problem with random size and overlap."""
    rng = np.random.default_rng(seed)
    d, k = int(rng.integers(5, 40)), int(rng.integers(2, 8))
    centres = rng.normal(size=(k, d)) * rng.uniform(0.5, 2.0)
    y = rng.integers(0, k, size=1200)
    x = (centres[y] + rng.normal(size=(1200, d))).astype(np.float32)
    xt, yt = torch.tensor(x), torch.tensor(y, dtype=torch.long)
    return xt[:900], yt[:900], xt[900:], yt[900:], k


def materialise(spec: TaskSpec) -> InnerTask:
    """Data subset and a freshly initialised model (seeded by the spec; global RNG untouched)."""
    if spec.base not in SUPPORTED:
        raise ValueError(f"unknown meta-training task {spec.base!r}; valid: {', '.join(SUPPORTED)}")
    xt, yt, xv, yv, k = _blobs(spec.seed) if spec.base == "synthetic_blobs" else _base_tensors(spec.base)
    g = torch.Generator().manual_seed(spec.seed + 1)
    n = max(spec.batch_size * 2, int(len(yt) * spec.train_fraction))
    idx = torch.randperm(len(yt), generator=g)[:n]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed + 2)
        if spec.base == "digits_cnn":
            model: nn.Module = SmallCNN2d(1, 10, max(4, spec.width // 8))
        else:
            model = mlp(xt[0].numel(), k, (spec.width,))
    return InnerTask(spec, xt[idx], yt[idx], xv, yv, model)


def batch_stream(task: InnerTask) -> torch.Tensor:
    """Indices of every training batch of the trajectory (reshuffled each epoch), shape (steps, batch)."""
    g = torch.Generator().manual_seed(task.spec.seed + 3)
    n, b = len(task.y_train), task.spec.batch_size
    rows: list[torch.Tensor] = []
    while len(rows) < task.spec.steps:
        perm = torch.randperm(n, generator=g)
        rows.extend(perm[i : i + b] for i in range(0, n - b + 1, b))
    return torch.stack(rows[: task.spec.steps])
