"""32x32 image classification from Hugging Face data sets: CIFAR-10 and Fashion-MNIST.

`cifar10` (columns `img`, `label`) and `fashion_mnist` (`image`, `label`) load
through `metalr.hub` (a local copy under `METALR_DATA_DIR` first, then the
hub, failing fast offline). CIFAR-10 is not available offline here; the offline
Fashion-MNIST tasks live in `metalr.tasks.offline` (Debian IDX files).

Preprocessing: pixels / 255, per-channel standardisation, CHW tensors; Fashion-MNIST
is padded with black to 32x32. Training batches get the usual CIFAR augmentation (random
crop with 4-pixel padding, horizontal flip; no flip for Fashion-MNIST), drawn from
torch's global RNG, which the harness seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from metalr.hub import load_hf_dataset, train_val
from metalr.tasks import register
from metalr.tasks.base import Task

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)


def images_to_tensor(images: Any, mean: tuple[float, ...], std: tuple[float, ...], size: int = 32) -> torch.Tensor:
    """PIL images or arrays (H, W[, C]) -> standardised float tensor (N, C, size, size), zero-padded to `size`."""
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    if arr.ndim == 3:
        arr = arr[..., None]
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    pad_h, pad_w = size - x.shape[2], size - x.shape[3]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"images are {tuple(x.shape[2:])}, larger than {size}x{size}")
    x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))  # black border, like the images' background
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


class Augmented(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random crop (zero padding `pad`) and optional horizontal flip of a (x, y) TensorDataset."""

    def __init__(self, base: TensorDataset, pad: int = 4, flip: bool = True) -> None:
        self.base, self.pad, self.flip = base, pad, flip

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[i]
        h, w = x.shape[1:]
        dy, dx = (int(v) for v in torch.randint(0, 2 * self.pad + 1, (2,)))
        x = F.pad(x, (self.pad,) * 4)[:, dy : dy + h, dx : dx + w]
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return x, y


def image_split(split: Any, image_col: str, mean: tuple[float, ...], std: tuple[float, ...]) -> TensorDataset:
    if image_col not in split.column_names:
        image_col = next((c for c in ("img", "image") if c in split.column_names), image_col)
    return TensorDataset(images_to_tensor(split[image_col], mean, std), torch.tensor([int(v) for v in split["label"]]))


def vision_task(
    name: str, dataset_id: str, image_col: str, mean: tuple[float, ...], std: tuple[float, ...], model_fn: Callable[[], nn.Module], preset: str, *,
    flip: bool, description: str, target: float,
) -> Task:  # fmt: skip
    cpu = preset == "cpu"
    train_split, val_split = train_val(load_hf_dataset(dataset_id), 2000 if cpu else None, 500 if cpu else None)
    train, val = image_split(train_split, image_col, mean, std), image_split(val_split, image_col, mean, std)
    batch = 64 if cpu else 128
    return Task(
        name=name, train_data=Augmented(train, flip=flip) if not cpu else train, val_data=val, model_fn=model_fn, num_classes=10, num_features=float(train.tensors[0][0].numel()),
        optimizer="sgd", lr=0.05 if cpu else 0.1, momentum=0.9, weight_decay=5e-4, batch_size=batch, eval_batch_size=256,
        steps=100 if cpu else 200 * max(1, len(train) // batch), eval_every=25 if cpu else 391 * 5, target={"val_accuracy": target}, description=description,
    )  # fmt: skip


def _resnet18(in_channels: int, width: int) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        from metalr.models.resnet import resnet18

        return resnet18(10, in_channels, width)

    return make


@register("cifar10_resnet18")
def cifar10_resnet18(preset: str = "cpu") -> Task:
    return vision_task(
        "cifar10_resnet18", "cifar10", "img", CIFAR10_MEAN, CIFAR10_STD, _resnet18(3, 16 if preset == "cpu" else 64), preset, flip=True, target=0.93,
        description="CIFAR-10 (HF `cifar10`), CIFAR-style ResNet-18 (width 16 in the cpu preset)",
    )  # fmt: skip


@register("cifar10_resnet50")
def cifar10_resnet50(preset: str = "cpu") -> Task:
    def make() -> nn.Module:
        from metalr.models.resnet import resnet50

        return resnet50(10, 3, 8 if preset == "cpu" else 64)

    return vision_task(
        "cifar10_resnet50",
        "cifar10",
        "img",
        CIFAR10_MEAN,
        CIFAR10_STD,
        make,
        preset,
        flip=True,
        target=0.94,
        description="CIFAR-10 (HF `cifar10`), CIFAR-style ResNet-50",
    )


@register("cifar10_efficientnet_b0")
def cifar10_efficientnet_b0(preset: str = "cpu") -> Task:
    def make() -> nn.Module:
        from metalr.models.efficientnet import efficientnet_b0

        return efficientnet_b0(10, 3, 0.25 if preset == "cpu" else 1.0)

    return vision_task(
        "cifar10_efficientnet_b0", "cifar10", "img", CIFAR10_MEAN, CIFAR10_STD, make, preset, flip=True, target=0.9,
        description="CIFAR-10 (HF `cifar10`), EfficientNet-B0 with a stride-1 stem",
    )  # fmt: skip


@register("fashion_mnist_resnet18")
def fashion_mnist_resnet18(preset: str = "cpu") -> Task:
    return vision_task(
        "fashion_mnist_resnet18", "fashion_mnist", "image", FASHION_MEAN, FASHION_STD, _resnet18(1, 16 if preset == "cpu" else 64), preset, flip=False, target=0.93,
        description="Fashion-MNIST (HF `fashion_mnist`, padded to 32x32), CIFAR-style ResNet-18",
    )  # fmt: skip
