"""The LR sequences of the controllers that read training signals, on real runs: for checking that a change
meant to make a controller cheaper leaves every LR it sets as it was.

    python benchmarks/lr_sequences.py OUT.json                       # record, with the metalr on the path
    python benchmarks/lr_sequences.py --compare BEFORE.json AFTER.json

Record under each of two commits (e.g. worktrees imported in turn, as `overhead_ab.sh` does:
`PYTHONPATH=<worktree> python <worktree>/benchmarks/lr_sequences.py before.json`), then compare: every run's LR
sequence must be equal bit for bit. The runs: `meta` on digits_mlp, mnist1d_cnn and digits_cnn (also from base
LR x30 and x0.03, where its divergence guard and its LR floor act), `hypergradient` on digits_mlp and digits_cnn,
`grad_variability` on digits_mlp and mnist1d_cnn and with `measure="direction"` on digits_cnn, `grad_variability_relative`,
`loss_patterns` (per epoch and every 10 steps) and `loss_patterns_relative`; 300 steps each, seed
0, CPU, one thread, the harness's call order (backward, `collect`, `optimizer.step`, `controller.step`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

RUNS: tuple[tuple[str, str, dict[str, Any], float], ...] = (
    ("digits_mlp", "meta", {}, 1.0),
    ("mnist1d_cnn", "meta", {}, 1.0),
    ("digits_cnn", "meta", {}, 1.0),
    ("digits_mlp", "hypergradient", {}, 1.0),
    ("digits_cnn", "hypergradient", {}, 1.0),
    ("digits_mlp", "grad_variability", {}, 1.0),
    ("digits_cnn", "grad_variability", {"measure": "direction"}, 1.0),
    ("mnist1d_cnn", "grad_variability", {}, 1.0),
    ("digits_mlp", "meta", {}, 30.0),
    ("digits_cnn", "meta", {}, 0.03),
    ("digits_mlp", "grad_variability_relative", {}, 1.0),
    ("digits_mlp", "loss_patterns", {}, 1.0),  # a period per epoch
    ("mnist1d_cnn", "loss_patterns", {"interval_steps": 10}, 1.0),
    ("digits_cnn", "loss_patterns_relative", {"interval_steps": 10}, 1.0),
)
STEPS = 300


def record() -> dict[str, Any]:
    import torch

    import metalr
    from metalr import tasks
    from metalr.testing import smoke_kwargs
    from metalr.train import setup

    torch.set_num_threads(1)
    out: dict[str, Any] = {"metalr": metalr.__file__}
    for task_name, name, kwargs, scale in RUNS:
        task = tasks.build(task_name)
        task.lr = task.lr * scale
        loader = task.train_loader(0)
        s = setup(name, task=task, total_steps=STEPS, controller_kwargs={**smoke_kwargs(name, quick=False), **kwargs}, seed=0, device=torch.device("cpu"))
        model, opt, ctrl, tracker = s.model, s.optimizer, s.controller, s.tracker
        assert model is not None and ctrl is not None and tracker is not None
        model.train()
        lrs: list[float] = []
        while len(lrs) < STEPS:
            tracker.epoch = len(lrs) // len(loader)  # a new epoch at each pass over the loader
            for batch in loader:
                opt.zero_grad(set_to_none=True)
                o = task.forward(model, batch)
                o.loss.backward()
                signals = tracker.collect(loss=o.loss, logits=o.logits, targets=o.targets, batch_size=o.batch_size)
                opt.step()
                lrs.append(ctrl.step(signals)[0])
                if len(lrs) >= STEPS:
                    break
        key = f"{task_name}/{name}/{json.dumps(kwargs, sort_keys=True)}/x{scale:g}"
        out[key] = lrs
        print(f"{key}: LR {min(lrs):.3g} .. {max(lrs):.3g}", flush=True)
    return out


def compare(before: dict[str, Any], after: dict[str, Any]) -> bool:
    print(f"before: {before.get('metalr')}\nafter:  {after.get('metalr')}")  # which metalr each recording imported
    keys = [k for k in before if k != "metalr"]
    same = 0
    for k in keys:
        a, b = before[k], after.get(k)
        if a == b:
            same += 1
            print(f"{k}: identical ({len(a)} LRs)")
        elif b is None or len(a) != len(b):
            print(f"{k}: MISSING or of another length")
        else:
            worst = max(abs(x - y) / abs(x) if x else abs(y) for x, y in zip(a, b))
            first = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            print(f"{k}: DIFFERENT from step {first + 1} (largest relative difference {worst:.3g})")
    print(f"{same} of {len(keys)} runs identical")
    return same == len(keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", help="record the runs into this JSON file")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args()
    if args.compare:
        with open(args.compare[0]) as f, open(args.compare[1]) as g:
            sys.exit(0 if compare(json.load(f), json.load(g)) else 1)
    if not args.out:
        ap.error("give OUT.json to record, or --compare BEFORE AFTER")
    data = record()
    with open(args.out, "w") as f:
        json.dump(data, f)


if __name__ == "__main__":
    main()
