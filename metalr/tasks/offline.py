"""Small real tasks that ship inside installable packages (no hub, no download).

- digits (scikit-learn, 1797 8x8 images, 10 classes): MLP and small CNN.
- MNIST-1D (`mnist1d` package, generated deterministically, 4000/1000, length 40): 1-D CNN.
- wine, breast_cancer (scikit-learn tabular): MLP.
- Fashion-MNIST (Debian package `dataset-fashion-mnist`, IDX files): MLP on a subset.

Each factory returns a `Task` with the "cpu" preset's sizes by default.
"""

from __future__ import annotations

import gzip
import os
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from metalr.tasks import register
from metalr.tasks.base import Task

FASHION_MNIST_DIR = Path(os.environ.get("METALR_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def _split(x: np.ndarray, y: np.ndarray, n_val: int, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Fixed shuffled split (the data split never depends on the run's seed)."""
    idx = np.random.default_rng(seed).permutation(len(y))
    xt, yt = torch.tensor(x[idx], dtype=torch.float32), torch.tensor(y[idx], dtype=torch.long)
    return TensorDataset(xt[n_val:], yt[n_val:]), TensorDataset(xt[:n_val], yt[:n_val])


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


def mlp(n_in: int, n_out: int, hidden: tuple[int, ...] = (128,), dropout: float = 0.0) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(n_in, h), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        n_in = h
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class SmallCNN2d(nn.Module):
    def __init__(self, channels: int = 1, n_out: int = 10, width: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Dropout(dropout), nn.Linear(8 * width, n_out),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN1d(nn.Module):
    """The MNIST-1D paper's style of small 1-D CNN."""

    def __init__(self, n_out: int = 10, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, width, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Dropout(dropout), nn.Linear(width * 5, n_out),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.unsqueeze(1) if x.dim() == 2 else x)


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target


@register("digits_mlp")
def digits_mlp(preset: str = "cpu") -> Task:
    x, y = _digits()
    train, val = _split(x, y, n_val=360)
    return Task(
        name="digits_mlp", train_data=train, val_data=val, model_fn=lambda: mlp(64, 10, (128,)), num_classes=10, num_features=64,
        optimizer="adam", lr=1e-3, batch_size=64, steps=400 if preset == "cpu" else 2000, eval_every=40, target={"val_accuracy": 0.95},
        description="scikit-learn digits 8x8, MLP 64-128-10",
    )  # fmt: skip


@register("digits_cnn")
def digits_cnn(preset: str = "cpu") -> Task:
    x, y = _digits()
    train, val = _split(x.reshape(-1, 1, 8, 8), y, n_val=360)
    return Task(
        name="digits_cnn", train_data=train, val_data=val, model_fn=lambda: SmallCNN2d(1, 10, 16), num_classes=10, num_features=64,
        optimizer="sgd", lr=0.05, batch_size=64, steps=400 if preset == "cpu" else 2000, eval_every=40, target={"val_accuracy": 0.95},
        description="scikit-learn digits 8x8, 2-layer CNN",
    )  # fmt: skip


@cache
def _mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())  # deterministic, generated locally; never downloads
    return d["x"].astype(np.float32), d["y"], d["x_test"].astype(np.float32), d["y_test"]


@register("mnist1d_cnn")
def mnist1d_cnn(preset: str = "cpu") -> Task:
    x, y, xt, yt = _mnist1d()
    mu, sd = x.mean(), x.std()
    train = TensorDataset(torch.tensor((x - mu) / sd), torch.tensor(y, dtype=torch.long))
    val = TensorDataset(torch.tensor((xt - mu) / sd), torch.tensor(yt, dtype=torch.long))
    return Task(
        name="mnist1d_cnn", train_data=train, val_data=val, model_fn=lambda: SmallCNN1d(10, 32), num_classes=10, num_features=40,
        optimizer="adam", lr=1e-2, batch_size=100, steps=1000 if preset == "cpu" else 6000, eval_every=100, target={"val_accuracy": 0.75},
        description="MNIST-1D (4000/1000, length 40), 3-layer 1-D CNN; Adam 1e-2, batch 100 as in the MNIST-1D reference setup",
    )  # fmt: skip


def _tabular(name: str, loader: str, preset: str, hidden: tuple[int, ...], target: float) -> Task:
    import sklearn.datasets

    d = getattr(sklearn.datasets, loader)()
    x, y = _standardise(d.data.astype(np.float32)), d.target
    k = int(y.max()) + 1
    train, val = _split(x, y, n_val=len(y) // 4)
    return Task(
        name=name, train_data=train, val_data=val, model_fn=lambda: mlp(x.shape[1], k, hidden), num_classes=k, num_features=x.shape[1],
        optimizer="sgd", lr=0.01, batch_size=32, steps=300 if preset == "cpu" else 1500, eval_every=30, target={"val_accuracy": target},
        description=f"scikit-learn {loader[5:]} (tabular), MLP",
    )  # fmt: skip


@register("wine_mlp")
def wine_mlp(preset: str = "cpu") -> Task:
    return _tabular("wine_mlp", "load_wine", preset, (32,), 0.9)


@register("breast_cancer_mlp")
def breast_cancer_mlp(preset: str = "cpu") -> Task:
    return _tabular("breast_cancer_mlp", "load_breast_cancer", preset, (32,), 0.93)


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip IDX file (the MNIST / Fashion-MNIST format)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@cache
def load_fashion_mnist_local(root: str = str(FASHION_MNIST_DIR)) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r = Path(root)
    files = [r / f"{s}-{k}-ubyte.gz" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found: {missing}. Install them with `apt-get install dataset-fashion-mnist` "
            "or set METALR_FASHION_MNIST_DIR to a folder holding {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz."
        )
    xtr, ytr, xte, yte = (read_idx(f) for f in files)
    return xtr, ytr, xte, yte


@register("fashion_mnist_mlp")
def fashion_mnist_mlp(preset: str = "cpu") -> Task:
    xtr, ytr, xte, yte = load_fashion_mnist_local()
    n_train, n_val = (10000, 2000) if preset == "cpu" else (60000, 10000)
    rng = np.random.default_rng(0)
    itr, ite = rng.permutation(len(ytr))[:n_train], rng.permutation(len(yte))[:n_val]
    norm = lambda a: torch.tensor((a.reshape(len(a), -1).astype(np.float32) / 255.0 - 0.286) / 0.353)  # noqa: E731
    train = TensorDataset(norm(xtr[itr]), torch.tensor(ytr[itr], dtype=torch.long))
    val = TensorDataset(norm(xte[ite]), torch.tensor(yte[ite], dtype=torch.long))
    return Task(
        name="fashion_mnist_mlp", train_data=train, val_data=val, model_fn=lambda: mlp(784, 10, (256, 128)), num_classes=10, num_features=784,
        optimizer="sgd", lr=0.05, batch_size=128, steps=800 if preset == "cpu" else 10 * 469, eval_every=80, target={"val_accuracy": 0.82},
        description="Fashion-MNIST 28x28 (Debian dataset-fashion-mnist), MLP 784-256-128-10",
    )  # fmt: skip
