"""Meta-controller candidates on development tasks: generated tasks that are neither meta-training,
validation nor evaluation tasks, at base LR x0.1, x1 and x10 of the optimizer's usual LR.

    python scripts/meta_dev_tasks.py checkpoints/metalr_default.safetensors other.safetensors [--mults 1 10]
    python scripts/meta_dev_tasks.py checkpoints/stages/meta_stage2.safetensors:0,0 checkpoints/stages/meta_stage2.safetensors:-1.5,0.2

`path:C,P` runs the policy of `path` (widened to this metalr's features if it is of an earlier
format) under its rule with update_ceiling C and ceiling_pull P (written to runs/meta_dev/).

Each base task (20 generated from seed stream 555000 with the optimizer's usual LR, plus wine and
breast cancer at the validation settings; with `--long N` also N longer runs, 800-2000 steps drawn
(600 at most for the recurrent, attention and 2-D conv models, as in meta-training), from
seed stream 556000; `--generated 0 --long N` runs those alone) is also trained with constant LR and with cosine over
the 5-point grid x0.1 .. x10; "tuned" is the best cosine. Per checkpoint it prints the regret
(final validation accuracy minus tuned) per task and multiplier, and the mean and worst regret.
This is where the update-size ceiling of configs/meta_train.yaml was chosen (docs/meta_training).
Runs are cached in runs/meta_dev/cache.json (keyed by checkpoint sha256 and task).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metalr import controllers  # noqa: E402
from metalr.controllers.meta import MetaController  # noqa: E402
from metalr.meta.tasks import USUAL_LR, TaskSpec, sample_spec, validation_specs  # noqa: E402
from metalr.meta.validate import run_spec  # noqa: E402

GRID = (0.1, 0.316228, 1.0, 3.16228, 10.0)
DEV_SEED = 555_000
LONG_SEED = 556_000  # the longer set (--long): 800-2000 steps drawn, where an LR decayed too early shows


def dev_bases(n_generated: int = 20, n_long: int = 0) -> list[TaskSpec]:
    out = [sample_spec(DEV_SEED + i, steps_range=(200, 1000)) for i in range(n_generated)]
    out += [sample_spec(LONG_SEED + i, steps_range=(800, 2000)) for i in range(n_long)]
    out = [replace(s, lr=USUAL_LR[s.optimizer]) for s in out]
    return out + (validation_specs(0, lr_factors=(1.0,)) if n_generated else [])


def _at(spec: TaskSpec, f: float) -> TaskSpec:
    return replace(spec, lr=spec.lr * f)


def _job(args: tuple[str, str, TaskSpec]) -> tuple[str, TaskSpec, float]:
    name, path, spec = args
    torch.set_num_threads(1)
    if name == "constant":
        make = None
    elif name == "cosine":
        make = lambda o, t: controllers.build("cosine", o, total_steps=t)  # noqa: E731
    else:
        make = lambda o, t: MetaController(o, checkpoint=path, total_steps=t)  # noqa: E731
    return name, spec, run_spec(spec, make)["val_accuracy"]


def _with_rule(arg: str, out_dir: Path) -> str:
    """`path` as is, or for `path:C,P` a copy of its (widened) policy with update_ceiling C and ceiling_pull P."""
    if ":" not in arg:
        return arg
    from metalr.meta.checkpoint import read_policy, save_policy

    path, spec = arg.rsplit(":", 1)
    ceiling, pull = (float(x) for x in spec.split(","))
    fp = read_policy(path, expand_features=True)
    out = out_dir / f"{Path(path).stem}_ceiling{ceiling:g}_pull{pull:g}.safetensors"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_policy(out, fp.policy, rule=replace(fp.rule, update_ceiling=ceiling, ceiling_pull=pull), config={"source": path, **fp.metadata.get("config", {})})
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--mults", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    ap.add_argument("--generated", type=int, default=20, help="tasks of the first set (0: none, and no wine/breast cancer either)")
    ap.add_argument("--long", type=int, default=0, help="tasks of the longer set (seed stream 556000, 800-2000 steps)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default=str(ROOT / "runs" / "meta_dev" / "cache.json"))
    args = ap.parse_args()
    cache_path = Path(args.cache)
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    paths = [_with_rule(p, cache_path.parent) for p in args.checkpoints]
    names = {p: "meta@" + hashlib.sha256(Path(p).read_bytes()).hexdigest()[:12] for p in paths}
    args.checkpoints = paths

    def key(name: str, spec: TaskSpec) -> str:
        return name + "|" + json.dumps(spec.to_dict(), sort_keys=True)

    bases = dev_bases(args.generated, args.long)
    jobs = [("cosine", "", _at(b, f)) for b in bases for f in sorted({*GRID, *args.mults})]  # the grid, and the multipliers shown
    jobs += [("constant", "", _at(b, f)) for b in bases for f in args.mults]
    jobs += [(names[p], p, _at(b, f)) for p in args.checkpoints for b in bases for f in args.mults]
    jobs = [j for j in jobs if key(j[0], j[2]) not in cache]
    t0 = time.perf_counter()
    with Pool(args.workers) as pool:
        for name, spec, acc in pool.imap_unordered(_job, jobs):
            cache[key(name, spec)] = acc
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_text(json.dumps(cache))
    print(f"{len(jobs)} runs in {time.perf_counter() - t0:.0f} s")
    shown = ["constant", "cosine"] + [names[p] for p in args.checkpoints]
    print("| task | tuned cosine | " + " | ".join(f"{n} x{'/x'.join(f'{m:g}' for m in args.mults)}" for n in shown) + " |")
    print("|---" * (len(shown) + 2) + "|")
    regrets: dict[str, dict[float, list[float]]] = {n: {m: [] for m in args.mults} for n in shown}
    for b in bases:
        tuned = max(cache[key("cosine", _at(b, f))] for f in GRID)
        cells = []
        for n in shown:
            vals = []
            for m in args.mults:
                v = cache.get(key(n, _at(b, m)), math.nan)
                regrets[n][m].append(v - tuned)
                vals.append(f"{v - tuned:+.3f}")
            cells.append(" / ".join(vals))
        print(f"| {b.data}/{b.model}/{b.optimizer}/{b.steps} | {tuned:.3f} | " + " | ".join(cells) + " |")
    print()
    for n in shown:
        parts = [f"x{m:g}: mean {sum(r) / len(r):+.4f}, worst {min(r):+.3f}" for m, r in regrets[n].items()]
        label = next((p for p, v in names.items() if v == n), n)
        print(f"{n} ({label}): " + "; ".join(parts))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
