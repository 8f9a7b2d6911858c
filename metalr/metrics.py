"""Evaluation metrics, as plain functions of predictions and targets.

Everything here is checked in tests against values computed by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def accuracy(pred: Sequence[int] | np.ndarray, target: Sequence[int] | np.ndarray) -> float:
    pred, target = np.asarray(pred), np.asarray(target)
    return float((pred == target).mean()) if len(target) else float("nan")


def macro_f1(pred: Sequence[int] | np.ndarray, target: Sequence[int] | np.ndarray, num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes present in target or pred."""
    pred, target = np.asarray(pred), np.asarray(target)
    classes = np.arange(num_classes) if num_classes else np.union1d(pred, target)
    f1s = []
    for c in classes:
        tp = int(((pred == c) & (target == c)).sum())
        fp = int(((pred == c) & (target != c)).sum())
        fn = int(((pred != c) & (target == c)).sum())
        if tp + fp + fn == 0:
            continue  # class absent from both: not counted (sklearn's zero_division aside)
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else float("nan")


def expected_calibration_error(probs: torch.Tensor | np.ndarray, target: Sequence[int] | np.ndarray, n_bins: int = 15) -> float:
    """ECE with `n_bins` equal-width confidence bins (Guo et al., 2017).

    sum_b |B_b|/N * |acc(B_b) - conf(B_b)|, confidence = max class probability,
    bins (0, 1/n], (1/n, 2/n], ... as in the usual implementation.
    """
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    target = np.asarray(target)
    if len(target) == 0:
        return float("nan")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == target).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
