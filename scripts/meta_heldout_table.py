"""The shipped meta-controller vs constant LR and cosine on held-out tasks.

    python scripts/meta_heldout_table.py [--tasks mnist1d_cnn fashion_mnist_mlp] [--seeds 0 1 2] [--steps N]

Every run goes through `metalr.train.run` (same harness, data order and init per
seed). Columns: final val loss / accuracy (mean ± std over seeds) and the first
evaluation step at which a run reaches the constant-LR run's final val loss
(same seed; '-' if never; mean over the seeds that reach it, n = how many).
"""

from __future__ import annotations

import argparse
import os
import statistics as st

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from metalr import tasks, train  # noqa: E402

CONTROLLERS = ("constant", "cosine", "meta")


def _ms(xs: list[float]) -> str:
    return f"{st.mean(xs):.4f} ± {st.stdev(xs) if len(xs) > 1 else 0.0:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["mnist1d_cnn", "fashion_mnist_mlp"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="override the task's default length")
    args = ap.parse_args()
    print("| task | controller | final val loss | final val acc | steps to constant's final val loss (n) |")
    print("|---|---|---|---|---|")
    for name in args.tasks:
        task = tasks.build(name, **({"steps": args.steps} if args.steps else {}))
        runs = {c: [train.run(task, c, seed=s) for s in args.seeds] for c in CONTROLLERS}
        targets = [h.final["val_loss"] for h in runs["constant"]]
        for c in CONTROLLERS:
            hs = runs[c]
            reach = [next((e["step"] for e in h.evals if e["val_loss"] <= t), None) for h, t in zip(hs, targets)]
            got = [r for r in reach if r is not None]
            steps = f"{st.mean(got):.0f} ({len(got)}/{len(hs)})" if got else f"- (0/{len(hs)})"
            loss = _ms([h.final["val_loss"] for h in hs])
            acc = _ms([h.final["val_accuracy"] for h in hs])
            print(f"| {name} ({task.steps} steps, {task.optimizer}) | {c} | {loss} | {acc} | {steps} |", flush=True)


if __name__ == "__main__":
    main()
