"""Is a supervised read of the LR's level worth adding to the meta-controller's rule? (research, not a test)

    python scripts/meta_level_read.py --workers 2          # ~17 min on 2 cores

The question. From a base LR far from the good one the shipped policy moves the LR too slowly
(README, "Held-out results"). `scripts/meta_level_probe.py` showed that the policy's features place an
LR against a task's good band with an error of about 0.6 decades (constant-LR probes). Would a rule
that reads the features once, early, predicts the LR's place against the band with a regression fitted
on labelled tasks, and moves the LR there in one jump, then lets the policy go on, do better?

1. probe: the shipped controller runs every task of `--train-labels` (meta-training's labelled tasks:
   generated tasks swept with cosine at 7 peak LRs, `metalr.meta.labels`) at usual LR x 10**d,
   d in DECADES, for the first 16 % of its run; at the decision steps nearest 4, 8, 12 and 16 % the
   script records the features the policy reads and where the LR then sits against the band
   (decades from the band's centre). That is the read's input and target *under the policy*, where
   the read would run, not under a constant LR.
2. fit: gradient-boosted trees, cross-validated by task, predict that place from the 11 features.
   Two richer reads, compared with it: the features plus what a controller could know about the task
   without watching it (optimizer, parameter count, run length, weight decay), and the features plus an
   active probe (`--dither`: a second probe run whose optimizer LR is the controller's x2 and /2 in
   alternating 8-step blocks, recording how the loss, the gradient alignment and the update size
   respond: the loss's response to the controller's own LR changes).
3. sim: the controller run whole on `--check-labels` (80 labelled tasks no policy or read was fitted
   on) at usual x 10**d, d in (-1.5, 0, 1.5): alone; with the read at 4 % (or 8 %) of the run, which
   moves the LR to within `margin` decades of the predicted centre; and with an *oracle* read that
   knows the true place (the label): what perfect knowledge of the level would be worth to this policy.
   Regret = final validation accuracy minus the sweep's best.

Every controller here is the deployed one (`controllers.build("meta")`); the read is applied from
outside by moving the controller's `log_rel` after its decision step, so the policy reads the moved LR
from then on, exactly as a rule setting would make it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metalr import controllers  # noqa: E402
from metalr.controllers.meta import MetaController  # noqa: E402
from metalr.io import atomic_write_json  # noqa: E402
from metalr.meta.labels import read_labels  # noqa: E402
from metalr.meta.tasks import TaskSpec, batch_stream, materialise  # noqa: E402
from metalr.signals import SignalTracker  # noqa: E402

DECADES = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
SIM_DECADES = (-1.5, 0.0, 1.5)
FRACS = (0.04, 0.08, 0.12, 0.16)  # where the probe reads (share of the run)
FOLDS = 5
DITHER_BLOCK = 8  # steps per block of the dither (the shipped rule's decision interval)
LN10 = math.log(10.0)

_READER: dict[float, Any] = {}  # frac -> fitted regressor (set in the parent before the pool forks)


def read_steps(total: int, every: int) -> list[int]:
    """The decision steps nearest each of FRACS (at least the 3rd decision)."""
    return [max(3 * every, int(round(f * total / every)) * every) for f in FRACS]


def _centre(entry: dict[str, Any]) -> float:
    return 0.5 * (entry["band"][0] + entry["band"][1])


def _dither_stats(losses: list[float], aligns: dict[int, float], sizes: dict[int, float], t: int) -> list[float]:
    """What a dither shows by step t: in 8-step blocks alternating LR x AMP (odd blocks) and / AMP (even),
    the log change of the block's mean loss after high blocks minus after low blocks, its mean over all
    blocks, and the gradient alignment and update size of high blocks minus low ones."""
    nb = t // DITHER_BLOCK
    means = np.array([np.mean(losses[DITHER_BLOCK * b : DITHER_BLOCK * (b + 1)]) for b in range(nb)])
    with np.errstate(divide="ignore", invalid="ignore"):
        dl = np.diff(np.log(np.maximum(means, 1e-12)))  # block b-1 -> b, for b = 1 .. nb-1

    def contrast(v: dict[int, float] | np.ndarray, blocks: range) -> float:
        hi = [v[b] for b in blocks if b % 2 == 1 and (not isinstance(v, dict) or b in v)]
        lo = [v[b] for b in blocks if b % 2 == 0 and b > 0 and (not isinstance(v, dict) or b in v)]
        return float(np.mean(hi) - np.mean(lo)) if hi and lo else 0.0

    stats = [contrast(np.concatenate([[0.0], dl]), range(1, nb)), float(np.mean(dl)), contrast(aligns, range(nb)), contrast(sizes, range(nb))]
    return [max(-5.0, min(5.0, v)) if math.isfinite(v) else 0.0 for v in stats]


def _run(entry: dict[str, Any], d: float, ckpt: str, probe: bool = False, read: tuple[str, float, float] | None = None, dither: float = 0.0) -> dict[str, Any]:
    """The deployed controller on one labelled task at usual x 10**d.

    probe: record the reads at `read_steps` and stop after the last. read = (kind, frac, margin): at
    the read step, move the LR to within `margin` decades of the centre predicted by the fitted reader
    (kind "fit") or of the true centre (kind "oracle"). dither > 0 (with probe): the optimizer's LR is the
    controller's times `dither` or its inverse in alternating 8-step blocks after the first, and the reads
    also record `_dither_stats` (an active probe: the loss's response to the controller's own LR changes)."""
    torch.set_num_threads(1)
    spec = TaskSpec(**entry["spec"])
    spec = replace(spec, lr=spec.lr * 10**d)
    task = materialise(spec)
    model, opt = task.model, task.make_optimizer()
    ctrl = controllers.build("meta", opt, checkpoint=ckpt, total_steps=spec.steps)
    assert isinstance(ctrl, MetaController)
    tracker = SignalTracker(model.parameters(), opt, requires=ctrl.requires, total_steps=spec.steps, every=ctrl.signal_every)
    probes = read_steps(spec.steps, ctrl.signal_every)
    stop_after = probes[-1] if probe else None
    read_at = None if read is None else probes[FRACS.index(read[1])]
    reads: list[dict[str, Any]] = []
    losses: list[float] = []
    aligns: dict[int, float] = {}
    sizes: dict[int, float] = {}
    jump = 0.0
    diverged = False
    model.train()
    for idx in batch_stream(task):
        block = ctrl.last_step // DITHER_BLOCK
        if dither:
            factor = 1.0 if block == 0 else dither if block % 2 else 1.0 / dither
            for g, base in zip(opt.param_groups, ctrl.base_lrs):
                g["lr"] = base * math.exp(ctrl.log_rel) * factor
        opt.zero_grad(set_to_none=True)
        loss = task.loss(model(task.x_train[idx]), task.y_train[idx])
        value = float(loss.detach())
        if not math.isfinite(value):
            diverged = True
            break
        losses.append(value)
        loss.backward()
        s = tracker.collect(loss=loss)
        opt.step()
        ctrl.step(s)
        if s.grad_align is not None:
            aligns[block] = s.grad_align
        if s.update_size is not None:
            sizes[block] = s.update_size
        t = ctrl.last_step
        level = d + ctrl.log_rel / LN10  # decades above the usual LR
        if stop_after is not None and t in probes:
            reads.append({"frac": FRACS[probes.index(t)], "step": t, "features": ctrl.policy_features(), "place": level - _centre(entry)})
            if dither:
                reads[-1]["dither"] = _dither_stats(losses, aligns, sizes, t)
        if read is not None and t == read_at:
            kind, frac, margin = read
            place = level - _centre(entry) if kind == "oracle" else float(_READER[frac].predict(np.array([ctrl.policy_features()]))[0])
            jump = -math.copysign(max(0.0, abs(place) - margin), place)
            lo, hi = ctrl.rule.log_bounds
            ctrl.log_rel = min(hi, max(lo, ctrl.log_rel + jump * LN10))
            for g, base in zip(opt.param_groups, ctrl.base_lrs):  # the next step runs at the moved LR
                g["lr"] = base * math.exp(ctrl.log_rel)
        if stop_after is not None and t >= stop_after:
            break
    out: dict[str, Any] = {"index": entry["index"], "d": d, "diverged": diverged}
    if stop_after is not None:
        return {**out, "reads": reads}
    model.eval()
    with torch.no_grad():
        logits = model(task.x_val)
        acc = float((logits.argmax(-1) == task.y_val).float().mean())
        finite = math.isfinite(float(task.loss(logits, task.y_val)))
    acc = acc if finite and not diverged else 0.0
    return {**out, "acc": acc, "regret": acc - max(entry["acc"]), "jump": jump}


def _probe(args: tuple[dict[str, Any], float, str, float]) -> dict[str, Any]:
    entry, d, ckpt, dither = args
    return _run(entry, d, ckpt, probe=True, dither=dither)


def _sim(args: tuple[dict[str, Any], float, str, tuple[str, float, float] | None]) -> dict[str, Any]:
    entry, d, ckpt, read = args
    return _run(entry, d, ckpt, read=read)


def _rows(records: list[dict[str, Any]], frac: float, extra: Callable[[dict[str, Any], dict[str, Any]], list[float]] | None = None) -> tuple[np.ndarray, ...]:
    """(features, place, task index, d[, extra columns]) of the reads at `frac` (a run too short for
    distinct read points reads once, at its first)."""
    x, y, g, dd, ex = [], [], [], [], []
    for r in records:
        hit = [q for q in r["reads"] if q["frac"] == frac]
        if r["diverged"] or not hit:
            continue
        x.append(hit[0]["features"])
        y.append(hit[0]["place"])
        g.append(r["index"])
        dd.append(r["d"])
        if extra is not None:
            ex.append(extra(r, hit[0]))
    out = (np.array(x), np.array(y), np.array(g), np.array(dd))
    return out if extra is None else (*out, np.array(ex, dtype=float))


def _cv(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Predictions of y, cross-validated by task (a task's probes in one fold)."""
    fold_of = {t: i % FOLDS for i, t in enumerate(np.random.default_rng(0).permutation(np.unique(g)))}
    fold = np.array([fold_of[t] for t in g])
    pred = np.zeros_like(y)
    for k in range(FOLDS):
        pred[fold == k] = _regressor().fit(x[fold != k], y[fold != k]).predict(x[fold == k])
    return pred


def _rmse(pred: np.ndarray, y: np.ndarray) -> float:
    return math.sqrt(float(((pred - y) ** 2).mean()))


def compare(records: list[dict[str, Any]], what: str, extra: Callable[[dict[str, Any], dict[str, Any]], list[float]], fracs: Sequence[float]) -> None:
    """rmse of the read from the 11 features, from the features and `what`, and from `what` alone."""
    print(f"\n{what}: rmse of the read (decades), cross-validated by task")
    print(f"{'read at':>8s} {'probes':>6s} {'rms place':>9s} {'features':>9s} {'+ ' + what:>24s} {what + ' alone':>24s}")
    for frac in fracs:
        x, y, g, _, ex = _rows(records, frac, extra)
        cells = [_rmse(_cv(v, y, g), y) for v in (x, np.hstack([x, ex]), ex)]
        print(f"{frac:8.2f} {len(y):6d} {math.sqrt(float((y**2).mean())):9.3f} {cells[0]:9.3f} {cells[1]:24.3f} {cells[2]:24.3f}")


def task_metadata(entries: Sequence[dict[str, Any]]) -> dict[int, list[float]]:
    """What a controller could know about a task without watching it: the optimizer, log10 of the
    parameter count and of the run length, and whether there is weight decay."""
    out = {}
    for e in entries:
        spec = TaskSpec(**e["spec"])
        n = sum(p.numel() for p in materialise(spec).model.parameters())
        opt = spec.optimizer
        out[e["index"]] = [float(opt == "sgd"), float(opt == "sgdm"), float(opt == "adam"), math.log10(n), math.log10(spec.steps), float(spec.weight_decay > 0)]
    return out


def _regressor() -> Any:
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(max_depth=3, n_estimators=200, learning_rate=0.05, random_state=0)


def fit(records: list[dict[str, Any]]) -> None:
    """Cross-validated (by task) prediction of the LR's place, per read point; then each reader fitted on all."""
    print("\nthe LR's place against the band (decades from its centre) under the shipped policy, and its prediction from the 11 features")
    print(f"{'read at':>8s} {'probes':>6s} {'rms place':>9s} {'R2':>6s} {'rmse':>6s}   by start d: rms place -> rmse of the read")
    for frac in FRACS:
        x, y, g, dd = _rows(records, frac)
        pred = _cv(x, y, g)
        r2 = 1 - float(((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())
        by_d = "  ".join(f"{d:+.1f}: {math.sqrt(float((y[dd == d] ** 2).mean())):.2f}->{_rmse(pred[dd == d], y[dd == d]):.2f}" for d in DECADES)
        print(f"{frac:8.2f} {len(y):6d} {math.sqrt(float((y**2).mean())):9.3f} {r2:6.3f} {_rmse(pred, y):6.3f}   {by_d}")
        _READER[frac] = _regressor().fit(x, y)


def _probes(entries: Sequence[dict[str, Any]], ckpt: str, dither: float, cache: Path, workers: int) -> list[dict[str, Any]]:
    """The probe records (from `cache` when it holds these)."""
    key = {"ckpt": ckpt, "tasks": [e["index"] for e in entries], "decades": list(DECADES), "fracs": list(FRACS), "dither": dither}
    cached = json.loads(cache.read_text()) if cache.exists() else None
    if cached is not None and cached.get("key") == key:
        print(f"probe records from {cache}")
        return list(cached["records"])
    t0 = time.time()
    with Pool(workers) as pool:
        records = pool.map(_probe, [(e, d, ckpt, dither) for e in entries for d in DECADES], chunksize=4)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cache, {"key": key, "records": records})
    print(f"{len(records)} probes of {len(entries)} tasks{f' (dither x{dither})' if dither else ''} in {time.time() - t0:.0f} s -> {cache}")
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="checkpoints/metalr_default.safetensors")
    ap.add_argument("--train-labels", default="configs/meta_labels_text.json")
    ap.add_argument("--check-labels", default="configs/meta_labels_check.json")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default="runs/level_read_probe.json", help="probe records, reused when they match --ckpt/--train-labels")
    ap.add_argument("--dither", type=float, default=2.0, help="the active probe's LR factor (0: no active probe)")
    ap.add_argument("--out", default="runs/level_read_sim.json")
    args = ap.parse_args()
    if args.workers < 1 or not (args.dither == 0 or args.dither > 1):
        ap.error("need --workers >= 1 and --dither 0 or > 1")
    train, check = read_labels(args.train_labels), read_labels(args.check_labels)
    if {e["index"] for e in train} & {e["index"] for e in check}:
        ap.error("--train-labels and --check-labels share tasks")
    records = _probes(train, args.ckpt, 0.0, Path(args.cache), args.workers)
    fit(records)
    meta = task_metadata(train)
    compare(records, "task metadata", lambda r, _: meta[r["index"]], FRACS[:2])
    if args.dither:
        dithered = _probes(train, args.ckpt, args.dither, Path(args.cache).with_suffix(".dither.json"), args.workers)
        compare(dithered, f"dither x{args.dither:g}", lambda _, q: q["dither"], FRACS[1:])

    variants: dict[str, tuple[str, float, float] | None] = {
        "policy alone": None,
        "read 4%, margin 0.5": ("fit", 0.04, 0.5),
        "read 4%, margin 0.3": ("fit", 0.04, 0.3),
        "read 8%, margin 0.5": ("fit", 0.08, 0.5),
        "oracle 4%, margin 0": ("oracle", 0.04, 0.0),
        "oracle 4%, margin 0.5": ("oracle", 0.04, 0.5),
    }
    print(f"\nrun whole on {len(check)} check tasks ({args.check_labels}): mean regret against the sweep's best (worst; mean jump in decades)")
    results: dict[str, Any] = {}
    for name, read in variants.items():
        t0 = time.time()
        with Pool(args.workers) as pool:  # forked after fit(): the workers inherit the readers
            res = pool.map(_sim, [(e, d, args.ckpt, read) for e in check for d in SIM_DECADES], chunksize=2)
        results[name] = res
        cells = []
        for d in SIM_DECADES:
            rs = [r for r in res if r["d"] == d]
            reg = [r["regret"] for r in rs]
            cells.append(f"x10^{d:+.1f}: {np.mean(reg):+.4f} ({min(reg):+.3f}; {np.mean([r['jump'] for r in rs]):+.2f})")
        print(f"{name:22s} " + "   ".join(cells) + f"   [{time.time() - t0:.0f} s]", flush=True)
    atomic_write_json(Path(args.out), {"ckpt": args.ckpt, "train_labels": args.train_labels, "check_labels": args.check_labels, "results": results})


if __name__ == "__main__":
    main()
