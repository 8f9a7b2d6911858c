"""The optional learn2learn adapter: clear error without it; the batch->Task conversion works without it."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from metalr import train
from metalr.contrib.learn2learn import require_learn2learn, task_from_batch


def test_missing_learn2learn_says_how_to_install() -> None:
    try:
        import learn2learn  # noqa: F401

        pytest.skip("learn2learn importable here")
    except Exception:
        pass
    with pytest.raises(ImportError, match="install_learn2learn.sh"):
        require_learn2learn()


def test_task_from_a_few_shot_batch_trains() -> None:
    torch.manual_seed(0)
    centers = torch.randn(5, 8) * 3
    y = torch.tensor([10, 20, 30, 40, 50]).repeat_interleave(20)  # l2l labels are arbitrary ids
    x = centers.repeat_interleave(20, 0) + 0.3 * torch.randn(100, 8)
    task = task_from_batch(x, y, lambda: torch.nn.Linear(8, 5), num_classes=5, optimizer="sgd", lr=0.1, batch_size=10, steps=60, eval_every=30)
    assert len(task.train_data) == 50 and len(task.val_data) == 50  # type: ignore[arg-type]
    assert set(task.train_data.tensors[1].tolist()) <= set(range(5))  # type: ignore[attr-defined]
    assert train.run(task, "constant").final["val_accuracy"] > 0.9


@pytest.mark.skipif(importlib.util.find_spec("learn2learn") is None, reason="optional extra learn2learn not installed")
def test_real_learn2learn_taskset() -> None:  # pragma: no cover - runs only where the extra is installed
    l2l = require_learn2learn()
    from metalr.contrib.learn2learn import task_from_l2l

    data = torch.utils.data.TensorDataset(torch.randn(200, 4), torch.arange(200) % 10)
    meta = l2l.data.MetaDataset(data)
    ts = l2l.data.TaskDataset(
        meta, task_transforms=[l2l.data.transforms.NWays(meta, 3), l2l.data.transforms.KShots(meta, 4), l2l.data.transforms.LoadData(meta)]
    )
    task = task_from_l2l(ts, lambda: torch.nn.Linear(4, 3), num_classes=3)
    assert task.num_classes == 3
