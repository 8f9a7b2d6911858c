"""Per-run metrics, computed from one `History` (or its saved dict).

Every function here is a plain function of lists, so tests can check it against
values worked out by hand. Conventions:

- An evaluation record is one dict of `History.evals` (`step`, `wall_time`,
  `val_loss`, `val_accuracy`, ... whatever the task's `evaluate()` reports).
- Keys whose name says "loss", "ece", "error" or "perplexity" are lower-is-better;
  every other metric is higher-is-better.
- A diverged run has no final model: its `final_*` metrics are None and it never
  reaches a target (so it counts as "not reached" everywhere), but its `best_*`
  metrics before divergence are kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Eval-record keys that are bookkeeping, not task metrics.
BOOKKEEPING = frozenset({"step", "epoch", "wall_time", "peak_memory_mb"})
#: Keys of a `History.uncertainty` record: the estimate and the error it should predict.
STABILITY_WINDOW = 5
#: Name parts that make a metric lower-is-better (val_loss, val_ece, time_to_target ...).
LOWER_IS_BETTER_WORDS = frozenset({"loss", "ece", "error", "perplexity", "time", "memory", "std", "ms"})
FRACTION_OF_FINAL = 0.95


def lower_is_better(key: str) -> bool:
    """Direction of a metric, from its name (val_loss, val_ece: lower is better)."""
    return key.startswith("steps_to") or bool(LOWER_IS_BETTER_WORDS & set(key.split("_")))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def metric_keys(evals: Sequence[dict[str, Any]]) -> list[str]:
    """Task metric names present in the eval records, in first-seen order (pass-through)."""
    keys: list[str] = []
    for record in evals:
        for k, v in record.items():
            if k not in BOOKKEEPING and k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    return keys


def meets(value: Any, key: str, threshold: float) -> bool:
    """Whether `value` of metric `key` satisfies `threshold` (<= for losses, >= otherwise)."""
    if not _finite(value):
        return False
    return value <= threshold if lower_is_better(key) else value >= threshold


def first_reaching(evals: Sequence[dict[str, Any]], target: dict[str, float]) -> dict[str, Any] | None:
    """The first eval record that meets every (key, threshold) in `target`, or None."""
    if not target:
        return None
    for record in evals:
        if all(meets(record.get(k), k, t) for k, t in target.items()):
            return record
    return None


def steps_to_fraction_of_final(evals: Sequence[dict[str, Any]], key: str = "val_accuracy", fraction: float = FRACTION_OF_FINAL) -> int | None:
    """First eval step whose `key` reaches `fraction` x the run's final `key` (None if undefined)."""
    if not evals or not _finite(evals[-1].get(key)):
        return None
    goal = fraction * float(evals[-1][key])
    for record in evals:
        if _finite(record.get(key)) and record[key] >= goal:
            return int(record["step"])
    return None  # unreachable when the final value is finite, kept for type checkers


def stability(evals: Sequence[dict[str, Any]], key: str = "val_loss", window: int = STABILITY_WINDOW) -> float | None:
    """Population std (ddof=0) of `key` over the last `window` evaluations; None with < 2, inf if any is non-finite."""
    values = [r.get(key) for r in evals[-window:] if key in r]
    if len(values) < 2:
        return None
    if not all(_finite(v) for v in values):
        return math.inf
    return float(np.std(np.asarray(values, dtype=float)))


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float | None:
    """Pearson correlation; None if fewer than 3 pairs or either side is constant."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 3 or len(a) != len(b):
        return None
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denom if denom > 0 else None


def average_ranks(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (as scipy.stats.rankdata)."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=float)
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and a[order[j + 1]] == a[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float | None:
    """Spearman rank correlation (Pearson of average ranks)."""
    if len(x) < 3 or len(x) != len(y):
        return None
    return pearson(average_ranks(x), average_ranks(y))


def uncertainty_pairs(history: dict[str, Any]) -> tuple[list[float], list[float], str]:
    """(estimates, errors, source) for the uncertainty-error correlation.

    Preferred source: the `History.uncertainty` records (`metalr.estimators`:
    `uncertainty` and the probe batch's `error_rate`). Fallback when no record
    has a finite error rate (e.g. a probe without targets): the logged
    `extra_logs()["uncertainty"]` against the same step's training loss
    (source "extras_vs_loss").
    """
    est, err = [], []
    for record in history.get("uncertainty") or []:
        u, e = record.get("uncertainty"), record.get("error_rate")
        if _finite(u) and _finite(e):
            est.append(float(u))  # type: ignore[arg-type]
            err.append(float(e))  # type: ignore[arg-type]
    if est:
        return est, err, "history"
    logged = (history.get("extras") or {}).get("uncertainty") or []
    pairs = [(u, loss) for u, loss in zip(logged, history.get("loss") or []) if _finite(u) and _finite(loss)]
    return [p[0] for p in pairs], [p[1] for p in pairs], ("extras_vs_loss" if pairs else "none")


def compute(history: Any, target: dict[str, float] | None = None) -> dict[str, Any]:
    """Every per-run metric for one run (see the module docstring and README)."""
    h = history.to_dict() if hasattr(history, "to_dict") else dict(history)
    evals: list[dict[str, Any]] = list(h.get("evals") or [])
    target = dict(target or {})
    diverged = bool(h.get("diverged"))
    out: dict[str, Any] = {"diverged": diverged, "recoveries": int(h.get("recoveries") or 0), "n_evals": len(evals)}
    for key in metric_keys(evals):
        values = [r[key] for r in evals if _finite(r.get(key))]
        out[f"final_{key}"] = None if diverged or not evals or not _finite(evals[-1].get(key)) else float(evals[-1][key])
        out[f"best_{key}"] = (min(values) if lower_is_better(key) else max(values)) if values else None
    hit = None if diverged else first_reaching(evals, target)
    out["target"] = target
    out["reached_target"] = hit is not None
    out["steps_to_target"] = int(hit["step"]) if hit is not None else None
    out["time_to_target"] = float(hit["wall_time"]) if hit is not None and "wall_time" in hit else None
    out["steps_to_95pct_final_acc"] = None if diverged else steps_to_fraction_of_final(evals)
    out["stability_val_loss_std"] = stability(evals)
    est, err, source = uncertainty_pairs(h)
    out["uncertainty_source"] = source
    out["uncertainty_pearson"] = pearson(est, err)
    out["uncertainty_spearman"] = spearman(est, err)
    out["wall_time"] = float(h.get("wall_time") or 0.0)
    out["peak_memory_mb"] = float(h.get("peak_memory_mb") or 0.0)
    out["steps_run"] = len(h.get("steps") or [])
    out["ms_per_step"] = 1000.0 * out["wall_time"] / out["steps_run"] if out["steps_run"] else None  # evaluations included
    lrs = [x for x in (h.get("lr") or []) if _finite(x)]
    out["last_lr"] = float(lrs[-1]) if lrs else None  # the LR of the last step (not "final_": defined for diverged runs too)
    return out
