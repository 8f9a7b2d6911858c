"""The four heuristic controllers against constant LR: accuracy, wall time, per-step overhead.

    nice -n 10 python scripts/heuristics_table.py [--tasks digits_mlp,mnist1d_cnn] [--seeds 0,1,2] [--steps N]

Per task and controller, over the seeds: final val accuracy (mean ± std), wall
time per run (median), the controller's time per step (fastest seed: robust to
other processes on a shared machine; includes the task's evaluations, the same
for every controller) and its ratio to constant LR, the
final LR, and for the uncertainty controllers the Pearson correlation between
the probe batch's uncertainty and its error rate over the estimates. Prints Markdown.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from metalr import tasks, train

CONTROLLERS = ["constant", "uncertainty", "uncertainty_ensemble", "grad_variability", "loss_patterns", "resource_aware"]


def uncertainty_error_corr(hist: train.History) -> float:
    u = np.array([r["uncertainty"] for r in hist.uncertainty])
    e = np.array([r["error_rate"] for r in hist.uncertainty])
    ok = np.isfinite(u) & np.isfinite(e)
    if ok.sum() < 3 or u[ok].std() == 0 or e[ok].std() == 0:
        return float("nan")
    return float(np.corrcoef(u[ok], e[ok])[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", default="digits_mlp,mnist1d_cnn")
    ap.add_argument("--controllers", default=",".join(CONTROLLERS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=None, help="override the task's cpu-preset steps")
    args = ap.parse_args()
    torch.set_num_threads(2)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.controllers.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, seeds {seeds}, cpu preset\n")
    print(
        "| task | controller | steps | final val acc (mean ± std) | wall time / run, median (s) | ms / step (min) | time / step vs constant | final LR (mean) | corr(uncertainty, error) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for task_name in args.tasks.split(","):
        task = tasks.build(task_name)
        steps = args.steps or task.steps
        runs: dict[str, list[train.History]] = {n: [] for n in names}
        for s in seeds:  # controllers interleaved within each seed, so drifting machine load hits all alike
            for name in names:
                runs[name].append(train.run(task, name, seed=s, steps=steps))
        # time per step: the fastest seed, the least disturbed by other processes on a shared machine
        per_step = {n: min(h.wall_time / len(h.lr) for h in hs) for n, hs in runs.items()}
        for name, hs in runs.items():
            acc = [h.final["val_accuracy"] for h in hs]
            ref = per_step.get("constant")
            overhead = f"{per_step[name] / ref:.2f}x" if ref else "n/a"
            corrs = [c for c in (uncertainty_error_corr(h) for h in hs) if np.isfinite(c)]
            corr = f"{statistics.mean(corrs):+.2f}" if corrs else "—"
            std = statistics.stdev(acc) if len(acc) > 1 else 0.0
            print(
                f"| {task_name} | {name} | {steps} | {statistics.mean(acc):.3f} ± {std:.3f} | {statistics.median(h.wall_time for h in hs):.1f} | "
                f"{1e3 * per_step[name]:.2f} | {overhead} | {statistics.mean(h.lr[-1] for h in hs):.2e} | {corr} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
