"""Where does the small-step rise fire, and what do the features read there? (research, not a test; session 24)

    python scripts/meta_rise_look.py --workers 2 --out runs/rise_look.json      # ~4 min on 2 cores

The shipped controller's decisions, logged (every feature the policy reads and its proposal) on: 2 seeds of the
pretrained-transformer cell (`scripts/meta_pretrained_probe.py`, the controller uncapped), the first 16 labelled check
tasks (`configs/meta_labels_check.json`) at x10^-1.5 and x1 of their usual LR, and 8 real-text recurrent tasks
(`meta_rnn_probe.specs(8, "doctext")`) at x1. Prints, per set, how often the rise fires (a positive proposal while
`update_size` < `small_step_below`) and the slow gradient-agreement average (`align_slow`) at those decisions, and the
pretrained runs' decisions one by one. A look, used to choose nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from metalr.meta.features import FEATURE_NAMES  # noqa: E402
from metalr.meta.policy import HostPolicy  # noqa: E402

CHECKPOINT = ROOT / "checkpoints" / "metalr_default.safetensors"
LOG: list[list[float]] = []


def _logged(original: Any) -> Any:
    def __call__(self: HostPolicy, x: Any) -> float:
        out = original(self, x)
        LOG.append([float(v) for v in x] + [float(out)])
        return out

    return __call__


def run_one(job: tuple[str, str, Any]) -> tuple[str, str, float, list[list[float]]]:
    """(set, key, final accuracy, the decisions: features + proposal) of one run."""
    kind, key, arg = job
    LOG.clear()
    torch.set_num_threads(1)
    if kind == "pretrained":
        import meta_pretrained_probe as probe

        acc = probe.run_one(("meta", arg))["accuracy"]
    else:
        from metalr import controllers
        from metalr.meta.validate import run_spec

        acc = run_spec(arg, lambda o, t: controllers.build("meta", o, checkpoint=str(CHECKPOINT), total_steps=t))["val_accuracy"]
    return kind, key, acc, list(LOG)


def jobs() -> list[tuple[str, str, Any]]:
    import meta_level_probe as lab
    import meta_rnn_probe as rnn

    from metalr.meta.labels import read_labels

    out: list[tuple[str, str, Any]] = [("pretrained", str(s), s) for s in (0, 1)]
    for e in read_labels(str(ROOT / "configs" / "meta_labels_check.json"))[:16]:
        spec = lab.TaskSpec(**e["spec"])
        out += [("lab-1.5", str(e["index"]), replace(spec, lr=spec.lr * 10**-1.5)), ("lab0", str(e["index"]), spec)]
    out += [("txt1", str(i), s) for i, s in enumerate(rnn.specs(8, "doctext"))]
    return out


def report(rows: list[tuple[str, str, float, list[list[float]]]], below: float) -> str:
    ix = {n: i for i, n in enumerate((*FEATURE_NAMES, "proposal"))}
    lines = []
    for _, key, acc, log in sorted(r for r in rows if r[0] == "pretrained"):
        lines.append(f"pretrained seed {key}: accuracy {acc:.4f}; decisions (progress, LR x base, update_size, align_slow, proposal):")
        lines += [
            f"  {d[ix['progress']]:.2f}  x{math.exp(d[ix['lr_rel']]):7.2f}  {d[ix['update_size']]:+.2f}  {d[ix['align_slow']]:+.2f}  {d[ix['proposal']]:+.3f}"
            for d in log
        ]
    lines.append("| set | runs | share of decisions where the rise fires | align_slow there: mean of runs (min / max) |")
    lines.append("|---|---|---|---|")
    for kind in ("pretrained", "lab-1.5", "lab0", "txt1"):
        fire, means = [], []
        for _, _, _, log in (r for r in rows if r[0] == kind):
            a = np.array(log)
            hit = (a[:, ix["update_size"]] < below) & (a[:, ix["proposal"]] > 0)
            fire.append(hit.mean())
            if hit.any():
                means.append(a[hit, ix["align_slow"]].mean())
        spread = f"{np.mean(means):.2f} ({min(means):.2f} / {max(means):.2f})" if means else "-"
        lines.append(f"| {kind} | {len(fire)} | {np.mean(fire):.2f} | {spread} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="runs/rise_look.json")
    args = ap.parse_args(argv)
    from metalr.meta.checkpoint import read_policy

    below = read_policy(str(CHECKPOINT)).rule.small_step_below  # (draws nothing from the workers' random streams)
    HostPolicy.__call__ = _logged(HostPolicy.__call__)  # type: ignore[method-assign]  # (the workers fork from here)
    with get_context("fork").Pool(args.workers) as pool:
        rows = list(pool.imap_unordered(run_one, jobs(), chunksize=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"names": [*FEATURE_NAMES, "proposal"], "runs": rows}))
    print(report(rows, below))
    return 0


if __name__ == "__main__":
    sys.exit(main())
