"""Does a meta-controller hurt a run that starts from trained weights? (research, not a test)

    python scripts/meta_continue_probe.py [--n 16] [--workers 2] [--candidates NAME|PATH ...]

A fine-tune or a second training stage starts with a loss that is already low and noisy, unlike every
meta-training run (random initialisation). A divergence guard that compares the loss with the first
one (`guard_ratio`, `metalr.meta.rule`) may then read batch noise as a blow-up and cut the LR. Each of N
generated tasks (its own seed stream, 888000 + i; every family) is first trained at constant LR (the
optimizer's usual one) for its run length; then a fresh optimizer trains the result again for the same
length, with constant LR and with each candidate, in two ways:
- `continue`: the trained weights as they are (a second stage: the first loss is near the final one);
- `new_head`: the last linear layer re-initialised (a fine-tune with a new classifier head);
each at the usual LR x1 and x0.1. Prints per mode and base LR the mean final validation accuracy, the mean
number of guard firings and the mean final LR / base LR, and the pretrained model's accuracy.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metalr.meta.tasks import ALL_FAMILIES, USUAL_LR, TaskSpec, materialise, reset_head, sample_spec  # noqa: E402
from metalr.meta.validate import run_spec  # noqa: E402

CANDIDATES = {
    "stage6": "checkpoints/stages/meta_stage6.safetensors",
    "stage6_x1000": "checkpoints/stages/meta_stage6_x1000.safetensors",
    "stage9_step0": "checkpoints/stages/meta_stage6_x1000_guard12_pull05.safetensors",
    "shipped": "checkpoints/metalr_default.safetensors",
}
MODES = ("continue", "new_head")
MULTS = (1.0, 0.1)


def specs(n: int) -> list[TaskSpec]:
    out = []
    for i in range(n):
        s = sample_spec(888_000 + i, ALL_FAMILIES, steps_range=(200, 1000))
        out.append(replace(s, lr=USUAL_LR[s.optimizer]))
    return out


def _controller(name: str) -> Any:
    from metalr.controllers.meta import MetaController
    from metalr.meta.checkpoint import cached_policy

    if name == "constant":
        return None
    frozen = cached_policy(ROOT / CANDIDATES.get(name, name))  # a name of CANDIDATES, or a checkpoint's path
    return lambda opt, total: MetaController(opt, checkpoint=frozen, total_steps=total)


def _new_head(spec: TaskSpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with the model's last linear layer re-initialised (seeded by the task)."""
    model = materialise(spec).model
    model.load_state_dict(state)
    reset_head(model, spec.seed + 1)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _task(args: tuple[int, TaskSpec, list[str]]) -> list[tuple[int, str, float, str, float, float, float]]:
    """Pretrain task i, then every (mode, multiplier, controller) run from it: (i, mode, mult, name, acc, fired, final factor).
    The pretrained model's own accuracy comes as mode "pretrained"."""
    torch.set_num_threads(1)
    i, spec, names = args
    pre = run_spec(spec, None, keep_state=True)
    out = [(i, "pretrained", 1.0, "constant", pre["val_accuracy"], 0.0, 1.0)]
    for mode in MODES:
        init = pre["state"] if mode == "continue" else _new_head(spec, pre["state"])
        for m in MULTS:
            s = replace(spec, lr=spec.lr * m)
            for name in names:
                r = run_spec(s, _controller(name), init_state=init)
                logs = r["controller_logs"]
                final = (r["lrs"][-1] / s.lr) if r["lrs"] else math.nan
                out.append((i, mode, m, name, r["val_accuracy"], float(logs.get("meta_guard_fired", 0.0)), final))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--candidates", nargs="+", default=["stage6", "stage6_x1000", "stage9_step0"], help=f"names ({', '.join(CANDIDATES)}) or checkpoint paths")
    args = ap.parse_args()
    names = ["constant", *args.candidates]
    tasks = specs(args.n)
    with Pool(args.workers) as pool:
        rows = [r for rs in pool.imap_unordered(_task, [(i, s, names) for i, s in enumerate(tasks)], chunksize=1) for r in rs]
    pre = [r[4] for r in rows if r[1] == "pretrained"]
    print(f"{args.n} tasks; pretrained (constant, usual LR): mean val accuracy {sum(pre) / len(pre):.4f}")
    print("| mode | base LR | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for mode in MODES:
        for m in MULTS:
            cells = []
            for name in names:
                sel = [r for r in rows if r[1] == mode and r[2] == m and r[3] == name]
                acc = sum(r[4] for r in sel) / len(sel)
                if name == "constant":
                    cells.append(f"{acc:.4f}")
                else:
                    fired = sum(r[5] for r in sel) / len(sel)
                    factor = math.exp(sum(math.log(r[6]) for r in sel if r[6] > 0) / max(1, sum(r[6] > 0 for r in sel)))
                    cells.append(f"{acc:.4f} (guard {fired:.1f}, end x{factor:.2g})")
            print(f"| {mode} | x{m:g} | " + " | ".join(cells) + " |")
    print("\nper task (mode, base LR: accuracies in the order above; guard firings of the candidates):")
    for i, s in enumerate(tasks):
        print(f"task {i} {s.data}/{s.model}/{s.optimizer}/{s.steps}:")
        for mode in MODES:
            for m in MULTS:
                sel = {r[3]: r for r in rows if r[0] == i and r[1] == mode and r[2] == m}
                accs = " ".join(f"{sel[n][4]:.3f}" for n in names)
                fired = " ".join(f"{sel[n][5]:.0f}" for n in names[1:])
                print(f"  {mode} x{m:g}: {accs}   guard {fired}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
