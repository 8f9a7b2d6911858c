"""Constant LR vs cosine on every offline task, 3 seeds: final val accuracy and wall time.

    python scripts/baseline_table.py [--tasks digits_mlp,...] [--seeds 0,1,2]

A sanity table for the harness and tasks (issue 2); prints Markdown.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from metalr import tasks, train

OFFLINE = ["digits_mlp", "digits_cnn", "mnist1d_cnn", "wine_mlp", "breast_cancer_mlp", "fashion_mnist_mlp"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", default=",".join(OFFLINE))
    ap.add_argument("--controllers", default="constant,cosine")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    torch.set_num_threads(2)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, seeds {seeds}\n")
    print("| task | controller | steps | final val acc (mean ± std) | final val loss | wall time / run (s) |")
    print("|---|---|---|---|---|---|")
    for name in args.tasks.split(","):
        task = tasks.build(name)
        for ctrl in args.controllers.split(","):
            hs = [train.run(task, ctrl, seed=s) for s in seeds]
            acc = [h.final["val_accuracy"] for h in hs]
            loss = [h.final["val_loss"] for h in hs]
            wall = [h.wall_time for h in hs]
            print(
                f"| {name} | {ctrl} | {task.steps} | {statistics.mean(acc):.3f} ± {statistics.stdev(acc):.3f} | "
                f"{statistics.mean(loss):.3f} | {statistics.mean(wall):.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
