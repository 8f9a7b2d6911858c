"""Constant LR vs cosine on the offline text / NER / QA tasks, 3 seeds: final metrics and wall time.

    nice -n 10 python scripts/task_suite_table.py [--tasks rt_bilstm,...] [--seeds 0,1,2] [--threads 1]

Every run goes through `metalr.train.run` with the task's cpu preset. Prints Markdown:
the family's main metric (accuracy + macro F1, entity F1, or SQuAD v2 EM / F1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from metalr import tasks, train

OFFLINE_TEXT = ["rt_bilstm", "rt_bert_small", "rt_minilm", "twitter_ner_bilstm_crf", "synthetic_qa"]
METRICS = {  # family -> (metric, metric) shown
    "classification": ("val_accuracy", "val_macro_f1"),
    "ner": ("val_accuracy", "val_entity_f1"),
    "qa": ("val_exact_match", "val_f1"),
}


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", default=",".join(OFFLINE_TEXT))
    ap.add_argument("--controllers", default="constant,cosine")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for small LSTMs on a shared 2-core machine)")
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), seeds {seeds}, cpu presets\n")
    print("| task | data | controller | steps | metric A (mean ± std) | metric B (mean ± std) | final val loss | wall time / run (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.tasks.split(","):
        t0 = time.perf_counter()
        task = tasks.build(name)
        build_s = time.perf_counter() - t0
        a, b = METRICS[task.family]
        for ctrl in args.controllers.split(","):
            hs = [train.run(task, ctrl, seed=s) for s in seeds]
            ma, mb = [h.final[a] for h in hs], [h.final[b] for h in hs]
            loss, wall = [h.final["val_loss"] for h in hs], [h.wall_time for h in hs]
            print(
                f"| {name} | {task.data_kind} | {ctrl} | {task.steps} | {a[4:]} {mean_std(ma)} | {b[4:]} {mean_std(mb)} | "
                f"{statistics.mean(loss):.3f} | {statistics.mean(wall):.1f} (+{build_s:.0f} build) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
