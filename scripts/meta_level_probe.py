"""Do the meta-controller's features tell an LR's level? A probe on the labelled tasks (research, not a test).

    python scripts/meta_level_probe.py --workers 2                       # probes + fits (~7 min on 2 cores)
    python scripts/meta_level_probe.py --regret checkpoints/metalr_default.safetensors --regret-n 80

Every labelled task of `configs/meta_labels.json` (an LR sweep with cosine decay per task,
`metalr.meta.labels`) is trained at constant LR, the usual LR x 10**d for d in `DECADES`, for its
first `--frac` of the run (at least 30 steps). At the end of that probe the script records the
policy's input features (`FeatureState`, the deployed path) and two candidate statistics that the
policy does not see: the cosine between the next batch's gradient and the last update (a
hypergradient) and the ratio of the loss's actual to its first-order predicted decrease.

It then asks, with gradient-boosted trees cross-validated by task (5 folds, a task's probes in one
fold), how well each set of statistics predicts where the LR sits relative to the sweep's band
(`dist`: 0 inside, else decades outside; `center`: decades from the band's centre), and what a
controller that knew that prediction would lose: cosine decay at the predicted level, its accuracy
read off the task's sweep (interpolated), minus the sweep's best. That is an optimistic bound for
any controller that only watches the run at one LR (it ignores the probe's cost and the label's
single-seed noise cuts both ways). `--regret CKPT`: the same regret for a meta-controller run whole
on the first `--regret-n` labelled tasks at d = -1.5, 0, 1.5.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metalr.meta.features import FEATURE_NAMES, FeatureState  # noqa: E402
from metalr.meta.labels import read_labels  # noqa: E402
from metalr.meta.tasks import TaskSpec, batch_stream, materialise  # noqa: E402
from metalr.signals import SignalTracker  # noqa: E402

DECADES = (-1.5, -0.75, 0.0, 0.75, 1.5)
REGRET_DECADES = (-1.5, 0.0, 1.5)
FOLDS = 5  # cross-validation folds, by task
OBSERVED = FEATURE_NAMES[2:]  # progress and lr_rel are the same for every probe: not informative here


def _flat(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in ts])


def probe(entry: dict[str, Any], d: float, frac: float) -> dict[str, Any]:
    """Constant LR at usual x 10**d for the first `frac` of the run; the statistics at its end."""
    torch.set_num_threads(1)
    spec = TaskSpec(**entry["spec"])
    spec = replace(spec, lr=spec.lr * 10**d)
    n = max(30, int(frac * spec.steps))
    task = materialise(spec)
    params = list(task.model.parameters())
    opt = task.make_optimizer()
    tracker = SignalTracker(params, opt, requires=("loss", "grad_align", "update_size"), total_steps=spec.steps)
    feats = FeatureState()
    hyper = actual = predicted = None
    prev: tuple[float, float, torch.Tensor] | None = None  # (loss, predicted decrease, update) of the last step
    diverged = False
    for idx in batch_stream(task)[:n]:
        opt.zero_grad(set_to_none=True)
        loss = task.loss(task.model(task.x_train[idx]), task.y_train[idx])
        value = float(loss.detach())
        if not math.isfinite(value):
            diverged = True
            break
        loss.backward()
        g = _flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
        if prev is not None:
            denom = float(g.norm()) * float(prev[2].norm())
            cos = -float(g @ prev[2]) / denom if denom > 0 else 0.0  # > 0: the next batch still descends along the last step
            hyper = cos if hyper is None else 0.9 * hyper + 0.1 * cos
            actual = prev[0] - value if actual is None else 0.9 * actual + 0.1 * (prev[0] - value)
            predicted = prev[1] if predicted is None else 0.9 * predicted + 0.1 * prev[1]
        s = tracker.collect(loss=loss)
        feats.update(s.loss, s.grad_norm, s.grad_align, s.update_size)
        before = _flat(params)  # torch.cat: already a copy
        opt.step()
        step = _flat(params) - before
        prev = (value, -float(g @ step), step)
    trust = actual / predicted if actual is not None and predicted and predicted > 0 else math.nan
    return {
        "index": entry["index"], "d": d, "band": entry["band"], "diverged": diverged, "steps": n,
        "features": feats.features(min(1.0, n / spec.steps), 0.0)[2:], "hypergrad_cos": hyper, "trust_ratio": trust,
    }  # fmt: skip


def _run_policy(args: tuple[dict[str, Any], float, str]) -> dict[str, Any]:
    from metalr import controllers
    from metalr.meta.validate import run_spec

    torch.set_num_threads(1)
    entry, d, ckpt = args
    spec = TaskSpec(**entry["spec"])
    r = run_spec(replace(spec, lr=spec.lr * 10**d), lambda o, t: controllers.build("meta", o, checkpoint=ckpt, total_steps=t))
    return {"index": entry["index"], "d": d, "acc": 0.0 if r["diverged"] else r["val_accuracy"]}


def acc_at(entry: dict[str, Any], d: float) -> float:
    """The sweep's accuracy at peak LR usual x 10**d (linear in d between grid points, flat beyond the grid)."""
    grid = np.asarray(entry["grid"])
    return float(np.interp(min(grid[-1], max(grid[0], d)), grid, np.asarray(entry["acc"])))


def _clean(v: float | None, lim: float = 5.0) -> float:
    return 0.0 if v is None or not math.isfinite(v) else max(-lim, min(lim, v))


def fit(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Cross-validated predictions; returns the probes kept and the centre predicted from the policy's features."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.model_selection import GroupKFold, cross_val_predict

    rs = [r for r in records if not r["diverged"]]
    print(f"{len(rs)} probes ({len(records) - len(rs)} diverged within the probe, left out), {len({r['index'] for r in rs})} tasks")
    observed = np.array([r["features"] for r in rs])
    candidates = np.array([[_clean(r["hypergrad_cos"]), _clean(r["trust_ratio"])] for r in rs])
    targets = {
        "dist": np.array([r["d"] - min(r["band"][1], max(r["band"][0], r["d"])) for r in rs]),
        "center": np.array([r["d"] - 0.5 * (r["band"][0] + r["band"][1]) for r in rs]),
    }
    groups = np.array([r["index"] for r in rs])
    sets = {
        "update_size": observed[:, [OBSERVED.index("update_size")]],
        "the policy's 9": observed,
        "2 candidates": candidates,
        "9 + 2 candidates": np.hstack([observed, candidates]),
    }

    def predict(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        model = GradientBoostingRegressor(max_depth=3, n_estimators=200, learning_rate=0.05, random_state=0)
        return cross_val_predict(model, x, y, cv=GroupKFold(FOLDS), groups=groups)

    print("\nprediction of the LR's place against the band (decades), 5-fold by task:")
    print(f"{'statistics':18s} {'target':7s} {'R2':>6s} {'rmse':>6s} {'sd':>6s}")
    centre_pred = None
    for name, x in sets.items():
        for tname, y in targets.items():
            p = predict(x, y)
            r2 = 1 - float(((p - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())
            print(f"{name:18s} {tname:7s} {r2:6.3f} {math.sqrt(float(((p - y) ** 2).mean())):6.3f} {float(y.std()):6.3f}")
            if name == "the policy's 9" and tname == "center":
                centre_pred = p
    assert centre_pred is not None
    return rs, centre_pred


def level_bound(rs: list[dict[str, Any]], pred: np.ndarray, labels: dict[int, dict[str, Any]], title: str) -> None:
    """Mean regret of cosine at the base LR and at the predicted level, per multiplier, over the tasks in `labels`."""
    print(f"\nmean regret against the sweep's best (final val accuracy), {title}:")
    for d in DECADES:
        pairs = [(r, p) for r, p in zip(rs, pred) if r["d"] == d and r["index"] in labels]
        base = [acc_at(labels[r["index"]], d) - max(labels[r["index"]]["acc"]) for r, _ in pairs]
        level = [acc_at(labels[r["index"]], d - p) - max(labels[r["index"]]["acc"]) for r, p in pairs]
        print(
            f"  usual x 10^{d:+.2f}: cosine at base {np.mean(base):+.4f}, at the predicted level {np.mean(level):+.4f} (worst {min(level):+.3f}; n={len(pairs)})"
        )


def regret(
    ckpts: list[str], sub: list[dict[str, Any]], labels: dict[int, dict[str, Any]], workers: int, probed: tuple[list[dict[str, Any]], np.ndarray] | None = None
) -> None:
    """Each checkpoint's meta-controller run whole on `sub` at usual x 10**d, d in REGRET_DECADES: regret against the sweep's best."""
    if probed is not None and ckpts:
        level_bound(*probed, {e["index"]: e for e in sub}, f"the first {len(sub)} tasks (those of --regret)")
    for ckpt in ckpts:
        t0 = time.time()
        with Pool(workers) as pool:
            res = pool.map(_run_policy, [(e, d, ckpt) for e in sub for d in REGRET_DECADES], chunksize=2)
        print(f"\n{ckpt}, run whole on {len(sub)} labelled tasks ({time.time() - t0:.0f} s):")
        for d in REGRET_DECADES:
            reg = [r["acc"] - max(labels[r["index"]]["acc"]) for r in res if r["d"] == d]
            base = [acc_at(labels[r["index"]], d) - max(labels[r["index"]]["acc"]) for r in res if r["d"] == d]
            print(f"  usual x 10^{d:+.1f}: regret {np.mean(reg):+.4f} (worst {min(reg):+.3f}); cosine at base {np.mean(base):+.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", default="configs/meta_labels.json")
    ap.add_argument("--n", type=int, default=None, help="only the first N labelled tasks (default: all)")
    ap.add_argument("--frac", type=float, default=0.15, help="the probe's share of the run (default 0.15)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--cache", default="runs/level_probe.json", help="probe records, reused when they match --labels/--n/--frac")
    ap.add_argument("--regret", nargs="*", default=[], metavar="CKPT", help="meta-controller checkpoints to run whole on labelled tasks")
    ap.add_argument("--regret-n", type=int, default=80)
    ap.add_argument("--skip-probe", action="store_true", help="only --regret (no probes, no fits)")
    args = ap.parse_args()
    if not 0 < args.frac <= 1:
        ap.error(f"--frac must be in (0, 1], got {args.frac}")
    if (args.n is not None and args.n < (1 if args.skip_probe else FOLDS)) or args.regret_n < 1 or args.workers < 1:
        ap.error(f"need --n >= {FOLDS} (the fits are {FOLDS}-fold by task), --regret-n >= 1 and --workers >= 1")
    entries = read_labels(args.labels)[: args.n]
    labels = {e["index"]: e for e in entries}
    key = {"labels": str(args.labels), "n": len(entries), "frac": args.frac, "decades": list(DECADES)}
    cache = Path(args.cache)
    if args.skip_probe:
        regret(args.regret, entries[: args.regret_n], labels, args.workers)
        return
    cached = json.loads(cache.read_text()) if cache.exists() else None
    if cached is not None and cached.get("key") == key:
        records = cached["records"]
        print(f"probe records from {cache}")
    else:
        t0 = time.time()
        with Pool(args.workers) as pool:
            records = pool.starmap(probe, [(e, d, args.frac) for e in entries for d in DECADES], chunksize=4)
        from metalr.io import atomic_write_json

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, {"key": key, "records": records})
        print(f"{len(records)} probes in {time.time() - t0:.0f} s with {args.workers} worker(s) -> {cache}")
    rs, pred = fit(records)
    level_bound(rs, pred, labels, f"all {len(labels)} tasks")
    regret(args.regret, entries[: args.regret_n], labels, args.workers, (rs, pred))


if __name__ == "__main__":
    main()
