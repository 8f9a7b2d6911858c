"""Does a meta-controller raise an LR that is already high on recurrent models? (research, not a test)

    python scripts/meta_rnn_probe.py [--n 8] [--workers 2] [--family tokens|zipf_tokens|doctext] [--candidates NAME ...]

Generated recurrent tasks (token sequences, GRU / LSTM, 300-600 steps; their own seed stream 777000:
neither meta-training, validation, development nor evaluation tasks), trained at the optimizer's usual
LR x1, x10 and x31.6 with constant LR and with each candidate. Prints the mean final validation
accuracy and the largest LR reached relative to the base LR, per multiplier and per task.
`stage6@1000` is stage 6's policy under a x1000 ceiling (stage 8's starting point). `--family` draws the
tasks from another token family (the large-vocabulary `zipf_tokens`, the real-text `doctext`; the same
seed stream); `--candidates` picks among CANDIDATES.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metalr.meta.tasks import TaskSpec, recurrent_spec  # noqa: E402
from metalr.meta.validate import run_spec  # noqa: E402

CANDIDATES = {
    "stage6": "checkpoints/stages/meta_stage6.safetensors",
    "stage8": "checkpoints/stages/meta_stage8.safetensors",
    "stage6@1000": "checkpoints/stages/meta_stage6.safetensors",
    "stage9_step0": "checkpoints/stages/meta_stage6_x1000_guard12_pull05.safetensors",
}
MULTS = (1.0, 10.0, 31.6)


def specs(n: int, family: str = "tokens") -> list[TaskSpec]:
    return [recurrent_spec(777_000 + i, i, family) for i in range(n)]


def _controller(name: str) -> Any:
    from metalr.controllers.meta import MetaController
    from metalr.meta.checkpoint import FrozenPolicy, cached_policy

    if name == "constant":
        return None
    frozen = cached_policy(ROOT / CANDIDATES[name])
    if "@" in name:
        frozen = FrozenPolicy(frozen.policy, frozen.metadata, "", replace(frozen.rule, max_factor=float(name.split("@")[1])))
    return lambda opt, total: MetaController(opt, checkpoint=frozen, total_steps=total)


def _job(args: tuple[int, TaskSpec, float, str]) -> tuple[int, float, str, float, float]:
    torch.set_num_threads(1)
    i, spec, mult, name = args
    base = spec.lr * mult
    r = run_spec(TaskSpec(**{**spec.to_dict(), "lr": base}), _controller(name))
    return i, mult, name, r["val_accuracy"], (max(r["lrs"]) / base if r["lrs"] else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--family", default="tokens", choices=["tokens", "zipf_tokens", "doctext"])
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES)[:3], choices=list(CANDIDATES))
    args = ap.parse_args()
    tasks = specs(args.n, args.family)
    names = ["constant", *args.candidates]
    with Pool(args.workers) as pool:
        res = pool.map(_job, [(i, s, m, c) for i, s in enumerate(tasks) for m in MULTS for c in names], chunksize=1)
    print("mean final val accuracy (largest LR / base LR over the tasks):")
    for m in MULTS:
        cells = [(sum(r[3] for r in res if r[1] == m and r[2] == c) / args.n, max(r[4] for r in res if r[1] == m and r[2] == c)) for c in names]
        print(f"  x{m:<5g}" + "  ".join(f"{c} {a:.3f} ({x:.2g}x)" for c, (a, x) in zip(names, cells)))
    print("per task, acc/largest LR factor for " + ", ".join(names) + ":")
    for i, s in enumerate(tasks):
        row = " | ".join(f"x{m:g}: " + " ".join(f"{r[3]:.2f}/{r[4]:.2g}" for r in res if r[0] == i and r[1] == m) for m in MULTS)
        print(f"  {i} {s.optimizer} {s.model} {s.steps} steps  {row}")


if __name__ == "__main__":
    main()
