"""LR labels for meta-training tasks: the band of peak LRs at which a cosine schedule does (nearly) best.

A label is what an LR sweep says about one task: the task is trained with cosine decay at
`GRID` (the optimizer's usual LR times 10**d, d in decades), and the band is the range of
grid LRs whose final validation accuracy is within `tol` of the best, widened by half a
grid step on each side (the optimum lies somewhere between grid points). Meta-training with
`lr_labels` (`metalr.meta.trainer`) adds a penalty for an LR outside that band, shaped by the
cosine decay, to the unrolled validation loss (`band_penalty`): a dense, low-variance signal
for finding the LR level, which the truncated validation loss alone teaches with a bias
toward decaying too early (docs/meta_training/README.md, "Stage 5").

The labelled tasks come from their own seed stream (`LABEL_SEED`): never the evaluation's
held-out tasks, the validation tasks or the development tasks.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from metalr.meta.tasks import USUAL_LR, TaskSpec, sample_spec

#: Peak LRs of the sweep, in decades around the optimizer's usual LR (meta-training draws base LRs in +-1.5).
GRID: tuple[float, ...] = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
LABEL_SEED = 560_000
LABEL_FORMAT = 1


def band_from_sweep(grid: list[float] | tuple[float, ...], acc: list[float], tol: float = 0.01) -> tuple[float, float]:
    """[lo, hi] in decades: the grid points within `tol` of the best accuracy, widened by half a grid step."""
    if len(grid) != len(acc) or len(grid) < 2:
        raise ValueError(f"need a sweep of at least 2 points with one accuracy each, got {len(grid)} points and {len(acc)} accuracies")
    best = max(acc)
    good = [g for g, a in zip(grid, acc) if a >= best - tol]
    half = 0.5 * min(b - a for a, b in zip(grid, grid[1:]))
    return min(good) - half, max(good) + half


def label_task(args: tuple[int, tuple[str, ...], tuple[int, int], int]) -> dict[str, Any]:
    """Sweep one drawn task (index `i` of the label stream) with cosine over `GRID` (a `multiprocessing` job)."""
    from metalr import controllers
    from metalr.meta.validate import run_spec

    torch.set_num_threads(1)
    i, families, steps_range, step_multiple = args
    spec = sample_spec(LABEL_SEED + i, families, steps_range=steps_range, step_multiple=step_multiple)
    spec = replace(spec, lr=USUAL_LR[spec.optimizer])
    acc = []
    for d in GRID:
        r = run_spec(replace(spec, lr=spec.lr * 10**d), lambda o, t: controllers.build("cosine", o, total_steps=t))
        acc.append(0.0 if r["diverged"] else float(r["val_accuracy"]))
    lo, hi = band_from_sweep(GRID, acc)
    return {"index": i, "spec": spec.to_dict(), "grid": list(GRID), "acc": acc, "band": [lo, hi]}


def write_labels(path: Path, entries: list[dict[str, Any]]) -> None:
    from metalr.io import atomic_write_json

    atomic_write_json(path, {"format": LABEL_FORMAT, "seed": LABEL_SEED, "grid": list(GRID), "tasks": entries})


def read_labels(path: str | Path) -> list[dict[str, Any]]:
    """The labelled tasks of a file `write_labels` wrote (refused if it is not one)."""
    try:
        data = json.loads(Path(path).read_text())
        entries = data["tasks"]
        if data.get("format") != LABEL_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {LABEL_FORMAT}")
        for e in entries:
            TaskSpec(**e["spec"])
            lo, hi = e["band"]
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"task {e.get('index')}: band {e['band']}")
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not an LR-label file of format {LABEL_FORMAT} ({type(err).__name__}: {err})") from None
    return list(entries)


def labelled_spec(entry: dict[str, Any], base_decades: float) -> tuple[TaskSpec, tuple[float, float]]:
    """The entry's task at base LR usual * 10**base_decades, and its band as log(peak LR / base LR) (natural log)."""
    spec = TaskSpec(**entry["spec"])
    spec = replace(spec, lr=USUAL_LR[spec.optimizer] * 10**base_decades)
    lo, hi = entry["band"]
    ln10 = math.log(10.0)
    return spec, ((lo - base_decades) * ln10, (hi - base_decades) * ln10)


def cosine_shape(step: int, total_steps: int, floor: float = 0.05) -> float:
    """The LR of the `cosine` controller the labels were swept with, relative to its peak, at `step`; floored (its log stays finite)."""
    from metalr.controllers.cosine import cosine_lr

    return max(floor, cosine_lr(min(step, total_steps), 1.0, total_steps))


def in_window(step: int, total_steps: int, window: tuple[float, float] | list[float]) -> bool:
    """Whether `step` of a `total_steps`-long run lies in the band penalty's progress `window`."""
    return window[0] <= step / total_steps <= window[1]


def band_penalty(log_rel: torch.Tensor, band: tuple[float, float], step: int, total_steps: int) -> torch.Tensor:
    """Squared distance (in log LR) of the LR from the band a cosine schedule peaking in `band` would be in at `step`."""
    shift = math.log(cosine_shape(step, total_steps))
    lo, hi = band[0] + shift, band[1] + shift
    return torch.relu(lo - log_rel) ** 2 + torch.relu(log_rel - hi) ** 2
