"""A task is data + model + loss + metrics + default training settings.

Tasks are built by registered factories (`metalr.tasks.build(name, preset=...)`),
so configs pick them by name and held-out sets are chosen in config.
The default `forward` / `evaluate` serve classification on `(x, y)` batches;
families with other shapes (NER, QA, transformers) override them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from metalr import metrics


@dataclass
class StepOutput:
    """What one forward pass gives the harness and the signal tracker."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    batch_size: int = 0


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor in it (also inside lists, tuples and dicts) moved to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


@dataclass
class Task:
    name: str
    train_data: Dataset[Any]
    val_data: Dataset[Any]
    model_fn: Callable[[], nn.Module]
    num_classes: int
    num_features: float  # input features or mean tokens per example (dataset complexity)
    family: str = "classification"  # classification | ner | qa
    optimizer: str = "adam"  # sgd | adam
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    steps: int = 500
    eval_every: int = 50
    target: dict[str, float] = field(default_factory=dict)  # e.g. {"val_accuracy": 0.9}
    collate_fn: Callable[[list[Any]], Any] | None = None
    eval_batch_size: int = 512
    description: str = ""
    data_kind: str = "real"  # real | synthetic

    # ----------------------------------------------------------- loaders and batches
    def train_loader(self, seed: int) -> DataLoader[Any]:
        g = torch.Generator().manual_seed(seed)
        return DataLoader(
            self.train_data,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=len(self.train_data) > self.batch_size,  # type: ignore[arg-type]
            generator=g,
            collate_fn=self.collate_fn,
        )

    def val_loader(self) -> DataLoader[Any]:
        return DataLoader(self.val_data, batch_size=self.eval_batch_size, shuffle=False, collate_fn=self.collate_fn)

    def make_optimizer(self, params: Any, lr: float | None = None, name: str | None = None) -> torch.optim.Optimizer:
        name, lr = name or self.optimizer, self.lr if lr is None else lr
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimizer {name!r}; valid: sgd, adam")

    def info(self) -> dict[str, Any]:
        """Dataset facts controllers may read (resource-aware: complexity)."""
        return {"num_classes": self.num_classes, "num_features": self.num_features, "train_size": len(self.train_data), "batch_size": self.batch_size}  # type: ignore[arg-type]

    # ------------------------------------------------------------ model interaction
    def forward(self, model: nn.Module, batch: Any) -> StepOutput:
        x, y = batch
        logits = model(x)
        return StepOutput(F.cross_entropy(logits, y), logits, y, len(y))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """val_loss, val_accuracy, val_macro_f1, val_ece on the whole validation set."""
        total, n, all_logits, all_y = 0.0, 0, [], []
        for batch in self.val_loader():
            out = self.forward(model, batch)
            total += float(out.loss) * out.batch_size
            n += out.batch_size
            assert out.logits is not None and out.targets is not None
            all_logits.append(out.logits.float().cpu())
            all_y.append(out.targets.cpu())
        logits, y = torch.cat(all_logits), torch.cat(all_y)
        probs = logits.softmax(-1)
        pred = probs.argmax(-1).numpy()
        return {
            "val_loss": total / max(n, 1),
            "val_accuracy": metrics.accuracy(pred, y.numpy()),
            "val_macro_f1": metrics.macro_f1(pred, y.numpy(), self.num_classes),
            "val_ece": metrics.expected_calibration_error(probs, y.numpy()),
        }
