"""Publish the MiniLM / Rotten Tomatoes HF Trainer comparison: its results.json, a table and the LR curves.

    python examples/hf_minilm_rotten_tomatoes.py --out_dir runs/minilm_rotten_tomatoes
    python scripts/minilm_report.py runs/minilm_rotten_tomatoes docs/integrations/minilm_rotten_tomatoes

Everything comes from the example's results.json (nothing is trained here).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def table(runs: list[dict[str, Any]]) -> list[str]:
    by: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by.setdefault(run["schedule"], []).append(run)
    lines = ["| schedule | seeds | final eval accuracy (mean ± std) | per seed | eval loss (mean) | wall s / run (mean) |", "|---|---|---|---|---|---|"]
    for schedule, rs in by.items():
        acc = [r["eval_accuracy"] for r in rs]
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        per_seed = " / ".join(f"{a:.4f}" for a in acc)
        loss = statistics.mean(r["eval_loss"] for r in rs)
        wall = statistics.mean(r["wall_time_s"] for r in rs)
        lines.append(f"| {schedule} | {len(rs)} | {statistics.mean(acc):.4f} ± {std:.4f} | {per_seed} | {loss:.4f} | {wall:.0f} |")
    return lines


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for run in runs:
        lrs = run["applied_lrs"] or run["logged_lrs"]  # the callback's applied LRs; the Trainer's logged ones for linear
        steps = list(range(1, len(lrs) + 1)) if run["applied_lrs"] else [round((i + 1) * run["steps"] / len(lrs)) for i in range(len(lrs))]
        color = "C0" if run["schedule"] == "linear" else "C1"
        ax.plot(steps, lrs, color=color, alpha=0.7, label=run["schedule"] if run["seed"] == 0 else None)
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="MiniLM / Rotten Tomatoes: LR per step (3 seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    results = json.loads((src / "results.json").read_text())
    shutil.copy(src / "results.json", dst / "results.json")
    lines = table(results["runs"])
    head = "# MiniLM on Rotten Tomatoes, HF Trainer (examples/hf_minilm_rotten_tomatoes.py)\n\n"
    note = "\n\nEvery run was stopped after its first Trainer checkpoint and resumed with `resume_from_checkpoint`. LR curves: lr.png.\n"
    (dst / "results.md").write_text(head + f"Config: `{json.dumps(results['config'])}`\n\n" + "\n".join(lines) + note)
    plot(results["runs"], dst / "lr.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
