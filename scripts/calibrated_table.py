"""Plan rule beside its calibrated variant, per task, from a finished evaluation's out_dir.

    python evaluate.py --config configs/eval.yaml out_dir=results/eval ...   # the plan rules and *_relative variants among the strategies
    python scripts/calibrated_table.py results/eval > docs/results/heuristics_calibrated_table.md

Per task and idea: final val accuracy (mean ± std over seeds) of constant LR, the
plan's rule and the variant; the final LR as a multiple of the base LR (mean over
seeds); wall time per step relative to constant LR (median over seeds; includes
the task's evaluations; noisy on a shared machine); the uncertainty-error
Pearson correlation of the estimates (uncertainty ideas only). Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

#: (idea, plan rule, calibrated variant)
IDEAS = [
    ("uncertainty (MC Dropout)", "uncertainty", "uncertainty_relative"),
    ("uncertainty (deep ensemble)", "uncertainty_ensemble", "uncertainty_ensemble_relative"),
    ("gradient variability", "grad_variability", "grad_variability_relative"),
    ("loss patterns", "loss_patterns", "loss_patterns_relative"),
]


def load_runs(out_dir: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(task, label) -> the finished run records, each with its history."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted((out_dir / "runs").glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("status") == "error":
            continue
        runs.setdefault((rec["spec"]["task"], rec["spec"]["label"]), []).append(rec)
    return runs


def _mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return "—"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def _acc(recs: list[dict[str, Any]]) -> list[float]:
    return [r["metrics"].get("final_val_accuracy") for r in recs]


def _lr_ratio(recs: list[dict[str, Any]]) -> str:
    ratios = [r["history"]["lr"][-1] / r["history"]["lr"][0] for r in recs if r["history"]["lr"] and r["history"]["lr"][0] > 0]
    return f"{statistics.mean(ratios):.2g}x" if ratios else "—"


def _per_step(recs: list[dict[str, Any]]) -> float:
    return statistics.median(r["history"]["wall_time"] / max(1, len(r["history"]["lr"])) for r in recs)


def _pearson(recs: list[dict[str, Any]]) -> str:
    xs = [r["metrics"].get("uncertainty_pearson") for r in recs if r["metrics"].get("uncertainty_source") == "history"]
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return f"{statistics.mean(xs):+.2f}" if xs else "—"


def table(out_dir: Path) -> str:
    runs = load_runs(out_dir)
    tasks = sorted({t for t, _ in runs})
    lines = [
        "| task | idea | seeds (constant, plan, variant) | constant acc | plan rule acc | variant acc | final LR / base (plan, variant) | time / step vs constant (plan, variant) | unc-err Pearson (plan, variant) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task in tasks:
        const = runs.get((task, "constant"), [])
        base = _per_step(const) if const else math.nan
        for idea, plan, variant in IDEAS:
            p, v = runs.get((task, plan), []), runs.get((task, variant), [])
            if not p and not v:
                continue
            t = [f"{_per_step(r) / base:.2f}x" if r and math.isfinite(base) else "—" for r in (p, v)]
            lines.append(
                f"| {task} | {idea} | {len(const)}, {len(p)}, {len(v)} | {_mean_std(_acc(const))} | {_mean_std(_acc(p))} | {_mean_std(_acc(v))} | "
                f"{_lr_ratio(p)}, {_lr_ratio(v)} | {t[0]}, {t[1]} | {_pearson(p)}, {_pearson(v)} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path, help="an evaluate.py out_dir (holds runs/*.json)")
    print(table(ap.parse_args().out_dir))


if __name__ == "__main__":
    main()
