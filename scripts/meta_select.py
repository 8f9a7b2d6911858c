"""Choose between meta-controller checkpoints by one rule fixed in advance (research; issue 13).

    python scripts/meta_select.py CANDIDATE [CANDIDATE ...] [--reference checkpoints/metalr_default.safetensors] [--workers 2] [--rule v2]

Every checkpoint (the reference first) is measured on four selection sets, none of which holds a
meta-training task or a held-out evaluation task:

| cell | set | what (higher is better) |
|---|---|---|
| val | the meta-training validation set (8 generated + 4 `teacher_large` + wine + breast cancer, x0.1/x1/x10, <= 1000 steps) | mean final val accuracy |
| lab-1.5, lab0, lab+1.5 | 80 labelled tasks (`configs/meta_labels_check.json`) at usual LR x10^-1.5, x1, x10^1.5 | mean regret against the task's own cosine sweep |
| dev0.1, dev1, dev10 | 22 development tasks (`scripts/meta_dev_tasks.py`) at x0.1, x1, x10 | mean regret against the cosine tuned over x0.1 .. x10 |
| rnn10, rnn31.6 | 8 generated GRU/LSTM tasks (`scripts/meta_rnn_probe.py`) at x10, x31.6 of the usual LR | mean final val accuracy |
| txt1, txt10, txt31.6 (rule v2 only) | 8 real-text GRU/LSTM tasks (`meta_rnn_probe.py --family doctext`) at x1, x10, x31.6 | mean final val accuracy |

Rule v1 (fixed on 2026-11-24, before any candidate after `meta_stage6_x1000` was measured): the first 9
cells. Rule v2 (`--rule v2`, the default from session 12 on; fixed in session 12, before any checkpoint
meta-trained with real text was measured): v1's 9 cells and the three real-text cells, 12 in all. Said
plainly: stage 6 and `meta_stage6_x1000_guard12_pull05` had been run on those doctext tasks in session 11
(docs/meta_training/README.md). A candidate **beats** the reference when both hold:
1. the mean of its differences to the reference (candidate - reference, one per cell) is at least MIN_GAIN;
2. no cell is lower than the reference's by more than MAX_LOSS (the cells' noise: single-seed runs).
Among candidates that beat the reference, the one with the largest mean difference is chosen.

Rule v3 (`--rule v3`; fixed in session 22, after the small-step x4 probe passed v2 and before any checkpoint was
measured under it): v2's 12 cells, with the recurrent and real-text cells on 24 tasks each instead of 8
(`meta_rnn_probe.specs(24)`: the first 8 are v2's), and a per-cell tolerance of MAX_LOSS_SEQ = 0.01 on those five
cells. Why: six null copies of the shipped policy (`scripts/meta_select_noise.py`, session 21) moved those 8-task
cells by up to 1.5 points (sd 0.002-0.0055), so v2's 0.5-point veto there is noise, and a single unlucky cell of the
reference (its txt1, below all six nulls) lends every candidate about +0.07 points of mean difference. Three times
the tasks cut that sd by about sqrt(3); 0.01 is about three of the reduced sds. MIN_GAIN and the other cells as v2. The
held-out evaluation (`configs/eval_full.yaml`, `configs/meta_heldout.yaml`) plays no part.

Validation readings (`--val-readings P`, session 32): a format-4 policy also reads the loss of the run's evaluations
(`val_rise`). With P > 0 each checkpoint's run gets them as meta-training drew them (`metalr.meta.tasks.val_reading_every`:
with probability P, every steps/n steps, n in 4..20); P = 1 is a loop that evaluates (the harness, the HF and Lightning
callbacks), P = 0 (the default, and every look before session 32) a plain loop that never does. A format-3 policy
ignores them (its LRs are the same either way), but its runs are cached under their own key all the same.

Results are cached per checkpoint sha256, rule and P in runs/meta_select/ (delete to re-measure).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import meta_dev_tasks as dev  # noqa: E402
import meta_level_probe as lab  # noqa: E402
import meta_rnn_probe as rnn  # noqa: E402

from metalr.io import atomic_write_json  # noqa: E402
from metalr.meta.labels import read_labels  # noqa: E402
from metalr.meta.policy import HostPolicy  # noqa: E402
from metalr.meta.tasks import val_reading_every, validation_specs  # noqa: E402
from metalr.meta.validate import run_spec  # noqa: E402

MIN_GAIN = 0.002
MAX_LOSS = 0.005
MAX_LOSS_SEQ = 0.01  # rule v3: the tolerance on the recurrent and real-text cells (24 tasks each)
CELLS = ("val", "lab-1.5", "lab0", "lab+1.5", "dev0.1", "dev1", "dev10", "rnn10", "rnn31.6")  # rule v1
RULES = {"v1": CELLS, "v2": (*CELLS, "txt1", "txt10", "txt31.6"), "v3": (*CELLS, "txt1", "txt10", "txt31.6")}
SEQ_TASKS = {"v1": 8, "v2": 8, "v3": 24}  # tasks in each recurrent and real-text cell
SEQ_LOSS = {"v1": MAX_LOSS, "v2": MAX_LOSS, "v3": MAX_LOSS_SEQ}  # the tolerance on those cells
LABELS = ROOT / "configs" / "meta_labels_check.json"
VAL_TASKS, VAL_LARGE, VAL_MAX_STEPS = 8, 4, 1000  # configs/meta_train_stage6.yaml's validation set
RNN_MULTS = (10.0, 31.6)
TXT_MULTS = (1.0, 10.0, 31.6)  # rule v2: the real-text (doctext) recurrent tasks


def _job(job: tuple[str, str, Any, str, float]) -> tuple[str, str, float]:
    """One run, (cell, key, spec, controller, P) -> (cell, key, final val accuracy; 0 if it diverged).
    The controller is "cosine" (the development tasks' tuned reference) or a checkpoint's path; P the probability
    that the run has validation readings (`--val-readings`; never for the cosine)."""
    from metalr import controllers

    torch.set_num_threads(1)
    kind, key, spec, ctrl, present = job
    if ctrl == "cosine":
        make = lambda o, t: controllers.build("cosine", o, total_steps=t)  # noqa: E731
        return kind, key, run_spec(spec, make)["val_accuracy"]
    make = lambda o, t: controllers.build("meta", o, checkpoint=ctrl, total_steps=t)  # noqa: E731
    return kind, key, run_spec(spec, make, val_reading=val_reading_every(spec, present))["val_accuracy"]  # run_spec gives 0 for a diverged run


def _cosine_key(spec: Any) -> str:
    """The key of a development task's cosine run (scripts/meta_dev_tasks.py's cache uses the same)."""
    return "cosine|" + json.dumps(spec.to_dict(), sort_keys=True)


def measure(
    ckpt: str, workers: int, dev_cache: dict[str, float], cells: tuple[str, ...] = CELLS, n_seq: int = 8, val_readings: float = 0.0
) -> dict[str, float]:
    """The cells of one checkpoint (`cells`: a rule's, `RULES`; `n_seq`: tasks per recurrent / real-text cell; `val_readings`:
    the probability that a run of the checkpoint has validation readings)."""
    labels = read_labels(str(LABELS))[:80]
    best_of_sweep = {str(e["index"]): max(e["acc"]) for e in labels}
    bases = dev.dev_bases()
    jobs: list[tuple[str, str, Any, str]] = []  # (cell, key, spec, controller); P is added below
    for i, spec in enumerate(validation_specs(VAL_TASKS, n_large=VAL_LARGE)):
        jobs.append(("val", str(i), replace(spec, steps=min(spec.steps, VAL_MAX_STEPS)), ckpt))
    for e in labels:
        spec = lab.TaskSpec(**e["spec"])
        for d in lab.REGRET_DECADES:
            jobs.append((f"lab{d:+.1f}".replace("+0.0", "0"), str(e["index"]), replace(spec, lr=spec.lr * 10**d), ckpt))
    for i, b in enumerate(bases):
        for m in (0.1, 1.0, 10.0):
            jobs.append((f"dev{m:g}", str(i), dev._at(b, m), ckpt))
        for f in dev.GRID:  # the tuned cosine (cached across checkpoints)
            if _cosine_key(dev._at(b, f)) not in dev_cache:
                jobs.append(("cosine", _cosine_key(dev._at(b, f)), dev._at(b, f), "cosine"))
    for i, s in enumerate(rnn.specs(n_seq)):
        for m in RNN_MULTS:
            jobs.append((f"rnn{m:g}", str(i), replace(s, lr=s.lr * m), ckpt))
    if "txt1" in cells:
        for i, s in enumerate(rnn.specs(n_seq, "doctext")):
            for m in TXT_MULTS:
                jobs.append((f"txt{m:g}", str(i), replace(s, lr=s.lr * m), ckpt))
    accs: dict[str, list[tuple[str, float]]] = {c: [] for c in cells}
    with Pool(workers) as pool:
        for kind, key, acc in pool.imap_unordered(_job, [(*j, val_readings) for j in jobs], chunksize=1):
            if kind == "cosine":
                dev_cache[key] = acc
            else:
                accs[kind].append((key, acc))

    def tuned(i: str) -> float:  # a development task's best cosine over the grid
        return max(dev_cache[_cosine_key(dev._at(bases[int(i)], f))] for f in dev.GRID)

    out = {}
    for c, runs in accs.items():
        if c.startswith("lab"):
            vals = [acc - best_of_sweep[key] for key, acc in runs]
        elif c.startswith("dev"):
            vals = [acc - tuned(key) for key, acc in runs]
        else:
            vals = [acc for _, acc in runs]
        out[c] = sum(vals) / len(vals)
    return out


def rule_key(rule: str, val_readings: float = 0.0) -> str:
    """The cache files' key of a rule's cells and readings (`runs/meta_select/<sha256[:16]>_<key>.json`)."""
    cells = RULES[rule]
    key_parts: list[Any] = [cells, VAL_TASKS, VAL_LARGE, VAL_MAX_STEPS, RNN_MULTS, str(LABELS.name)]  # v1's key as before
    if "txt1" in cells:
        key_parts.append(TXT_MULTS)
    if SEQ_TASKS[rule] != 8:
        key_parts.append(SEQ_TASKS[rule])
    if val_readings:
        key_parts.append(f"val_readings={val_readings:g}")
    return hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:8]


def tolerances(cells: tuple[str, ...], seq_loss: float = MAX_LOSS) -> dict[str, float]:
    """How far each cell may fall below the reference's: `seq_loss` on the recurrent and real-text cells (a rule's:
    `SEQ_LOSS`), MAX_LOSS on the others."""
    return {c: seq_loss if c.startswith(("rnn", "txt")) else MAX_LOSS for c in cells}


def beats(cand: dict[str, float], ref: dict[str, float], cells: tuple[str, ...] = CELLS, seq_loss: float = MAX_LOSS) -> tuple[bool, float, str]:
    """The rule over `cells`: (beats the reference?, mean difference, the reason). `seq_loss`: the tolerance on the
    recurrent and real-text cells (rule v3: MAX_LOSS_SEQ; MAX_LOSS on every cell before it)."""
    diffs = {c: cand[c] - ref[c] for c in cells}
    mean = sum(diffs.values()) / len(diffs)
    tol = tolerances(cells, seq_loss)
    worst = min(diffs, key=lambda c: diffs[c] + tol[c])  # the cell furthest below its tolerance
    if diffs[worst] < -tol[worst]:
        return False, mean, f"{worst} lower by {-diffs[worst]:.4f} > {tol[worst]}"
    if mean < MIN_GAIN:
        return False, mean, f"mean gain {mean:+.4f} < {MIN_GAIN}"
    return True, mean, f"mean gain {mean:+.4f}, worst cell {worst} {diffs[worst]:+.4f}"


class Patches:
    """The attributes a probe replaces (a method of `MetaController` or `HostPolicy`), put back by `undo`."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def set(self, owner: Any, name: str, value: Any) -> Any:
        """`owner.name = value`; returns the original (which the replacement usually calls)."""
        original = getattr(owner, name)
        self._saved.append((owner, name, original))
        setattr(owner, name, value)
        return original

    def policy(self, wrap: Callable[[Callable[[Any], float], list[float]], float]) -> None:
        """Make every frozen policy's proposal (`HostPolicy.__call__`, its numpy evaluation, which reads the feature
        vector) `wrap(own, features)`, where `own(features)` is the policy's own proposal for any feature vector."""
        call = HostPolicy.__call__

        def __call__(host: Any, features: Any) -> float:
            return wrap(lambda f: call(host, f), features)

        self.set(HostPolicy, "__call__", __call__)

    def undo(self) -> None:
        while self._saved:
            owner, name, original = self._saved.pop()
            setattr(owner, name, original)


class StartingPoint:
    """The weights an optimizer drives and its state, copied now, to be put back later (the restart probes:
    `meta_range_probe.py --rollback`, `meta_restart_probe.py`); the copy is kept, so it may be put back again."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.params = [p.detach().clone() for g in optimizer.param_groups for p in g["params"]]
        self.state = copy.deepcopy(optimizer.state_dict())

    def put_back(self, optimizer: torch.optim.Optimizer) -> None:
        """The weights and the optimizer's state (its LRs too, which the controller's step then overwrites) as copied."""
        with torch.no_grad():
            for p, saved in zip((p for g in optimizer.param_groups for p in g["params"]), self.params):
                p.copy_(saved)
        optimizer.load_state_dict(copy.deepcopy(self.state))


def probe_main(doc: str, patch: Callable[[Any], None], unpatch: Callable[[], None], label: str) -> dict[str, dict[str, float]]:
    """A probe's command line, `SCRIPT VALUE [VALUE ...] [--workers N]`: each VALUE (a number) measured by
    `probe_patched` under the name `label.format(VALUE)`."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("values", nargs="+", type=float)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    return probe_patched({label.format(v): v for v in args.values}, patch, unpatch, args.workers)


def probe_patched(
    settings: dict[str, Any], patch: Callable[[Any], None], unpatch: Callable[[], None], workers: int = 2, rule: str = "v2"
) -> dict[str, dict[str, float]]:
    """The research probes' measurement (scripts/meta_*_probe.py): the shipped checkpoint's cells under `rule`
    with the controller patched by each setting (`patch(setting)` ... `unpatch()`; worker processes fork from this
    one, so they run the patched code), printed beside the unpatched checkpoint's (its cached cells when
    runs/meta_select holds them). Returns {name: cells}."""
    cells, n_seq = RULES[rule], SEQ_TASKS[rule]
    cache = ROOT / "runs" / "meta_select"
    dev_path = cache / "dev_cosine.json"
    dev_cache = json.loads(dev_path.read_text()) if dev_path.exists() else {}
    shipped = ROOT / "checkpoints" / "metalr_default.safetensors"
    sha = hashlib.sha256(shipped.read_bytes()).hexdigest()
    cached = cache / f"{sha[:16]}_{rule_key(rule)}.json"
    ref = json.loads(cached.read_text())["cells"] if cached.exists() else measure(str(shipped), workers, dev_cache, cells, n_seq)
    rows = {}
    for name, setting in settings.items():
        t0 = time.perf_counter()
        patch(setting)
        try:
            rows[name] = measure(str(shipped), workers, dev_cache, cells, n_seq)
        finally:
            unpatch()
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print("| cell | shipped | " + " | ".join(rows) + " |")
    print("|---" * (len(rows) + 2) + "|")
    for c in cells:
        print(f"| {c} | {ref[c]:+.4f} | " + " | ".join(f"{row[c]:+.4f}" for row in rows.values()) + " |")
    for name, row in rows.items():
        print(f"{name}: beats the shipped checkpoint? {beats(row, ref, cells, SEQ_LOSS[rule])}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidates", nargs="+")
    ap.add_argument("--reference", default="checkpoints/metalr_default.safetensors")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default=str(ROOT / "runs" / "meta_select"))
    ap.add_argument("--rule", default="v2", choices=sorted(RULES), help="v1: the 9 cells of session 11; v2: and 3 real-text cells; v3: v2 on 24 sequence tasks")
    ap.add_argument("--val-readings", type=float, default=0.0, help="probability that a run gives the policy validation losses (format 4; 0: none)")
    args = ap.parse_args()
    if not 0.0 <= args.val_readings <= 1.0:
        ap.error(f"--val-readings must be a probability in [0, 1], got {args.val_readings}")
    cells, n_seq = RULES[args.rule], SEQ_TASKS[args.rule]
    seq_loss = SEQ_LOSS[args.rule]
    cache_dir = Path(args.cache)
    dev_cache_path = cache_dir / "dev_cosine.json"
    dev_cache = json.loads(dev_cache_path.read_text()) if dev_cache_path.exists() else {}
    dev_runs = ROOT / "runs" / "meta_dev" / "cache.json"  # scripts/meta_dev_tasks.py's runs: the same cosine runs, same keys
    if dev_runs.exists():
        dev_cache = {**{k: v for k, v in json.loads(dev_runs.read_text()).items() if k.startswith("cosine|")}, **dev_cache}
    key = rule_key(args.rule, args.val_readings)
    table: dict[str, dict[str, float]] = {}
    for path in [args.reference, *args.candidates]:
        sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        cached = cache_dir / f"{sha[:16]}_{key}.json"
        if cached.exists():
            table[path] = json.loads(cached.read_text())["cells"]
            continue
        t0 = time.perf_counter()
        table[path] = measure(path, args.workers, dev_cache, cells, n_seq, args.val_readings)
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(dev_cache_path, dev_cache)
        atomic_write_json(cached, {"checkpoint": path, "sha256": sha, "cells": table[path], "seconds": time.perf_counter() - t0})
        print(f"{path}: measured in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"rule {args.rule}" + (f", validation readings in a share {args.val_readings:g} of the runs" if args.val_readings else ""))
    print("| checkpoint | " + " | ".join(cells) + " | mean diff | beats the reference? |")
    print("|---" * (len(cells) + 3) + "|")
    ref = table[args.reference]
    best: tuple[float, str] | None = None
    for path, row in table.items():
        if path == args.reference:
            verdict, mean = "(reference)", 0.0
        else:
            ok, mean, why = beats(row, ref, cells, seq_loss)
            verdict = ("yes: " if ok else "no: ") + why
            if ok and (best is None or mean > best[0]):
                best = (mean, path)
        shown = [f"{row[c]:.4f}" if c.startswith(("val", "rnn", "txt")) else f"{row[c]:+.4f}" for c in cells]
        print(f"| {path} | " + " | ".join(shown) + f" | {mean:+.4f} | {verdict} |")
    print(f"\nchosen: {best[1] if best else args.reference + ' (the reference: no candidate beats it)'}")
    if any(math.isnan(v) for row in table.values() for v in row.values()):
        print("warning: a cell is NaN", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
