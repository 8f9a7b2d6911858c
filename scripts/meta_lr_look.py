"""Where policies put the LR on the meta-trainer's validation runs (research; issue 13; a look, chooses nothing).

    python scripts/meta_lr_look.py checkpoints/metalr_default.safetensors runs/meta_stage24/policy.safetensors

Each checkpoint, under its own rule, drives the runs `train_meta.py` validates on (`metalr.meta.tasks.validation_specs`:
8 generated tasks, 4 large ones, wine and breast cancer, each at x0.1, x1 and x10 of its usual LR; the deployed path,
`metalr.meta.validate.run_spec`; `--text N` adds the real-text runs of `validation_text: N`), and the script prints
per run the final validation accuracy, the peak LR and the mean LR over the last 20 % of the run (both as log10 of the
multiple of the run's base LR), then the means per checkpoint, over all runs and per base-LR multiple. The mean
accuracy is the trainer's validation score. With `--text N` the means are also given for the earlier runs and the
text runs apart. `--selection-text N` runs instead the selection script's real-text tasks (`scripts/meta_select.py`'s
txt cells: `meta_rnn_probe.specs(N, "doctext")` at x1, x10 and x31.6), to see where a policy puts the LR there.
Sessions 29-31 (stages 24-27, docs/meta_training/README.md) used it to see which way whole-run meta-gradients moved
the policy.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from metalr.controllers.meta import MetaController
from metalr.meta.checkpoint import FrozenPolicy, read_policy
from metalr.meta.tasks import TaskSpec, val_reading_every, validation_specs
from metalr.meta.validate import run_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
import meta_rnn_probe as rnn  # noqa: E402  (the selection script's recurrent tasks)

TAIL = 0.2  # the last fraction of the run whose mean log LR is reported


def look_one(frozen: FrozenPolicy, spec: TaskSpec, val_readings: float = 0.0) -> dict[str, Any]:
    """One run of `spec` under the policy `frozen`: accuracy, log10 peak and tail LR multiples of the base LR.
    `val_readings`: the probability that the run has validation readings (`metalr.meta.tasks.val_reading_every`)."""
    readings = val_reading_every(spec, val_readings)
    r = run_spec(spec, lambda opt, total: MetaController(opt, checkpoint=frozen, total_steps=total), val_reading=readings)
    logs = [math.log10(v / spec.lr) for v in r["lrs"]]
    start = int((1 - TAIL) * len(logs))
    return {"acc": r["val_accuracy"], "peak": max(logs), "tail": sum(logs[start:]) / max(1, len(logs) - start), "diverged": r["diverged"]}


def look(paths: list[str], specs: list[TaskSpec], val_readings: float = 0.0) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {p: [] for p in paths}
    policies = {p: read_policy(p) for p in paths}  # each file read once
    for spec in specs:
        line = f"{spec.data:>13} {spec.model:>6} {spec.optimizer:>5} lr {spec.lr:<9.3g} {spec.steps:>5} steps"
        for p in paths:
            r = look_one(policies[p], spec, val_readings)
            rows[p].append(r)
            line += f" | acc {r['acc']:.3f} peak {r['peak']:+.2f} tail {r['tail']:+.2f}"
        print(line, flush=True)
    return rows


FACTORS = (0.1, 1.0, 10.0)  # the base-LR multiples of each validation task, as the trainer validates


def means(rs: list[dict[str, Any]]) -> str:
    """Mean accuracy, peak and tail LR (log10 x base LR) of some runs, and how many diverged."""
    n = len(rs)
    return (
        f"mean acc {sum(r['acc'] for r in rs) / n:.4f}, mean peak {sum(r['peak'] for r in rs) / n:+.3f}, "
        f"mean tail {sum(r['tail'] for r in rs) / n:+.3f} (log10 x base LR), diverged {sum(r['diverged'] for r in rs)}/{n}"
    )


def report(p: str, rs: list[dict[str, Any]], factors: tuple[float, ...], label: str = "") -> None:
    """The means of some runs (tasks in turn, each at every factor), over all and per base-LR multiple."""
    print(f"{p}{label}: {means(rs)}")
    for i, f in enumerate(factors):
        print(f"  from x{f:g}: {means(rs[i :: len(factors)])}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--tasks", type=int, default=8, help="generated validation tasks (the trainer's validation_tasks)")
    ap.add_argument("--large", type=int, default=4, help="large generated tasks (the trainer's validation_large)")
    ap.add_argument("--text", type=int, default=0, help="real-text recurrent tasks (the trainer's validation_text)")
    ap.add_argument("--selection-text", type=int, default=0, help="instead: the selection script's first N real-text tasks")
    ap.add_argument("--val-readings", type=float, default=0.0, help="probability that a run gives the policy validation losses (format 4)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.selection_text:
        factors = rnn.MULTS
        specs = [replace(s, lr=s.lr * m) for s in rnn.specs(args.selection_text, "doctext") for m in factors]
    else:
        factors = FACTORS
        specs = validation_specs(args.tasks, lr_factors=factors, n_large=args.large, n_text=args.text)
    rows = look(args.checkpoints, specs, args.val_readings)
    n_text = args.text * len(factors)  # (validation_specs lists the text runs last)
    for p, rs in rows.items():
        report(p, rs, factors)
        if n_text and not args.selection_text:
            report(p, rs[:-n_text], factors, " (without the text runs)")
            report(p, rs[-n_text:], factors, " (the text runs)")


if __name__ == "__main__":
    main()
