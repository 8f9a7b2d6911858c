"""Does the weights' path efficiency tell a too-low LR from a good one? (a look; issue 13, session 20)

    python scripts/meta_efficiency_look.py [--tasks 8] [--workers 2]

E = |x_t - x_(t-K)| / sum_j |x_j - x_(j-1)| over the last K = 8 decision steps, x the update-size sample of the
weights (`metalr.gradstats.UpdateSize`, taken on the shipped controller's decision steps): 1 when the weights drift in
a straight line, about 1/sqrt(K) for a random walk. Prodigy and D-Adaptation find the LR's level from how far the
weights travel; this asks whether E could tell the level here. Runs the shipped controller on meta-training tasks
only (`metalr.meta.tasks.sample_spec`, seeds 101..), each at x0.1 / x1 / x10 of its optimizer's usual LR, and prints
E's mean over each quarter of the run. A look, not a selection: nothing is chosen from it.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from multiprocessing import Pool
from typing import Any

import numpy as np
import torch

import metalr.gradstats as gs
from metalr import controllers
from metalr.meta.tasks import USUAL_LR, sample_spec
from metalr.meta.validate import run_spec

K = 8
SAMPLES: list[np.ndarray] = []  # this process's run: the sample of every decision step
_call = gs.UpdateSize.__call__


def _recording(self: Any, params: Any, host: bool = True) -> Any:
    out = _call(self, params, host)
    SAMPLES.append(np.array(self.prev, dtype=np.float64))  # a copy: the sample's memory is reused
    return out


def _job(job: tuple[int, float]) -> str:
    seed, mult = job
    torch.set_num_threads(1)
    gs.UpdateSize.__call__ = _recording  # type: ignore[method-assign]
    spec = sample_spec(seed)
    spec = replace(spec, lr=USUAL_LR[spec.optimizer] * mult)
    SAMPLES.clear()
    out = run_spec(spec, lambda o, t: controllers.build("meta", o, total_steps=t))
    xs = list(SAMPLES)
    eff = []
    for i in range(K, len(xs)):
        path = sum(float(np.linalg.norm(xs[j] - xs[j - 1])) for j in range(i - K + 1, i + 1))
        eff.append(float(np.linalg.norm(xs[i] - xs[i - K])) / path if path > 0 else math.nan)
    quarters = [float(np.nanmean(q)) if len(q) else math.nan for q in np.array_split(np.array(eff), 4)] if len(eff) >= 4 else [math.nan] * 4
    head = f"{seed} x{mult:<4g} {spec.data:10s} {spec.model:8s} {spec.optimizer:5s} {spec.steps:5d} steps"
    return f"{head}  val acc {out['val_accuracy']:.3f}  E by quarter " + " ".join(f"{v:.2f}" for v in quarters)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    jobs = [(seed, m) for seed in range(101, 101 + args.tasks) for m in (0.1, 1.0, 10.0)]
    with Pool(args.workers) as pool:
        for line in pool.imap(_job, jobs):
            print(line, flush=True)


if __name__ == "__main__":
    main()
