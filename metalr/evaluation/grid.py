"""The grid runner: strategies x tasks x seeds through `metalr.train.run`, in worker processes.

Each finished run is saved atomically as `runs/<task>__<label>__<seed>.json` (its
spec, metrics and history) by the worker that ran it, so killing the evaluation
loses at most the runs in flight; a second call with the same out dir reuses every
saved run whose spec is unchanged. Runs are seeded and independent, so a resumed
grid gives the same records as an uninterrupted one (wall time aside).

Workers are spawned (never forked: safe with torch threads and on every OS) and
each runs `torch.set_num_threads(1)` when there are several, so they don't fight
over cores. Everything a worker calls is a top-level function.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metalr.evaluation.config import EvalConfig
from metalr.io import atomic_write_json
from metalr.testing import pause_point

log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    """One cell of the grid. `lr_factor` scales the task's default LR (tuned-reference runs)."""

    task: str
    label: str
    controller: str
    seed: int
    controller_kwargs: dict[str, Any] = field(default_factory=dict)
    task_overrides: dict[str, Any] = field(default_factory=dict)
    lr_factor: float | None = None
    preset: str = "cpu"
    steps: int | None = None
    eval_every: int | None = None
    nan_recovery: bool = True
    group: str = "main"  # main | tuned

    @property
    def run_id(self) -> str:
        return f"{self.task}__{self.label}__{self.seed}"

    def content_key(self) -> str:
        """Everything that changes the training (not the label): equal keys train identically."""
        d = asdict(self)
        d.pop("label")
        d.pop("group")
        return json.dumps(d, sort_keys=True, default=str)


def build_specs(cfg: EvalConfig) -> list[RunSpec]:
    """The main grid (task x strategy x seed), then the tuned-reference LR grid."""
    common = dict(preset=cfg.preset, steps=cfg.steps, eval_every=cfg.eval_every, nan_recovery=cfg.nan_recovery)
    specs = []
    for task in cfg.tasks:
        overrides = dict(cfg.task_overrides.get(task, {}))
        for s in cfg.strategies:
            for seed in cfg.seeds:
                specs.append(RunSpec(task, s.label, s.name, seed, dict(s.controller_kwargs), overrides, **common))  # type: ignore[arg-type]
        for factor in cfg.tuned.lr_factors():
            label = tuned_label(cfg.tuned.strategy, factor)
            lr_factor = None if math.isclose(factor, 1.0) else factor
            for seed in cfg.seeds:
                specs.append(RunSpec(task, label, cfg.tuned.strategy, seed, dict(cfg.tuned.controller_kwargs), overrides, lr_factor, group="tuned", **common))  # type: ignore[arg-type]
    return specs


def tuned_label(strategy: str, factor: float) -> str:
    return f"{strategy}@lrx{factor:.3g}"


# ------------------------------------------------------------------ in the worker
_TASK_CACHE: dict[tuple[str, str], Any] = {}
_WRITTEN = [0]  # run records this process has written


def _init_worker(single_thread: bool) -> None:
    import torch

    if single_thread:
        torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


def _build_task(spec: RunSpec) -> Any:
    """The task, built once per worker process (data loading dominates small runs)."""
    from metalr import tasks

    key = (spec.task, spec.preset)
    if key not in _TASK_CACHE:
        _TASK_CACHE[key] = tasks.build(spec.task, preset=spec.preset)
    task = _TASK_CACHE[key]
    overrides = dict(spec.task_overrides)
    if spec.lr_factor is not None:
        overrides["lr"] = float(overrides.get("lr", task.lr)) * spec.lr_factor
    return dataclasses.replace(task, **overrides) if overrides else task


def execute(spec: RunSpec, out_dir: str, tensorboard: bool = True) -> dict[str, Any]:
    """Train one run, compute its metrics, save `runs/<id>.json`; never raises (errors become records)."""
    from metalr import train
    from metalr.evaluation import run_metrics

    record: dict[str, Any] = {"id": spec.run_id, "spec": asdict(spec)}
    try:
        task = _build_task(spec)
        log_dir = None
        if tensorboard:
            log_dir = Path(out_dir) / "tensorboard"
            shutil.rmtree(log_dir / spec.run_id, ignore_errors=True)  # a half-written run from an interrupted evaluation
        hist = train.run(
            task, spec.controller, controller_kwargs=dict(spec.controller_kwargs), seed=spec.seed, steps=spec.steps,
            eval_every=spec.eval_every, log_dir=log_dir, nan_recovery=spec.nan_recovery, run_name=spec.label,
        )  # fmt: skip
        record.update(
            status="diverged" if hist.diverged else "ok",
            lr=float(task.lr),
            metrics=clean(run_metrics.compute(hist, task.target)),
            history=clean(hist.to_dict()),
        )
        atomic_write_json(Path(out_dir) / "runs" / f"{spec.run_id}.json", record)
        _WRITTEN[0] += 1
        pause_point("eval_run", _WRITTEN[0])  # tests: kill at a known point (metalr.testing)
    except Exception as e:  # noqa: BLE001 - one broken run must not sink the grid; it is reported
        record.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=8))
    return record


def _execute_payload(payload: tuple[dict[str, Any], str, bool]) -> dict[str, Any]:
    spec, out_dir, tensorboard = payload
    return execute(RunSpec(**spec), out_dir, tensorboard)


# -------------------------------------------------------------------- in the main
def clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (strict JSON has no NaN/inf)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_finished(spec: RunSpec, out_dir: str | Path) -> dict[str, Any] | None:
    """The saved record of `spec` if it exists and was made from the same spec."""
    path = Path(out_dir) / "runs" / f"{spec.run_id}.json"
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("ignoring unreadable %s; the run is redone", path)
        return None
    if json.dumps(record.get("spec"), sort_keys=True) != json.dumps(clean(asdict(spec)), sort_keys=True):
        log.warning("%s was made from a different spec; the run is redone", path)
        return None
    return record


def run_grid(
    specs: list[RunSpec], out_dir: str | Path, *, workers: int = 0, resume: bool = True, tensorboard: bool = True, progress: bool = True
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Run (or reuse) every spec; returns the records in `specs` order and counts {reused, executed, errors}."""
    out_dir = str(out_dir)
    records: dict[str, dict[str, Any]] = {}
    if resume:
        for spec in specs:
            found = load_finished(spec, out_dir)
            if found is not None:
                records[spec.run_id] = found
    pending = [s for s in specs if s.run_id not in records]
    # Identical training under two labels (e.g. plain cosine and the tuned grid's lr x1) runs once.
    groups: dict[str, list[RunSpec]] = {}
    for s in pending:
        groups.setdefault(s.content_key(), []).append(s)
    todo = [g[0] for g in groups.values()]
    counts = {"reused": len(records), "executed": len(todo), "errors": 0}
    workers = min(workers or default_workers(), max(1, len(todo)))
    for rec in _execute_all(todo, out_dir, workers, tensorboard, progress):
        for twin in groups[RunSpec(**rec["spec"]).content_key()]:
            copy = _relabel(rec, twin, out_dir) if twin.run_id != rec["id"] else rec
            records[twin.run_id] = copy
        counts["errors"] += rec["status"] == "error"
    return [records[s.run_id] for s in specs], counts


def _relabel(record: dict[str, Any], spec: RunSpec, out_dir: str) -> dict[str, Any]:
    copy = {**record, "id": spec.run_id, "spec": asdict(spec), "same_training_as": record["id"]}
    if copy["status"] != "error":
        atomic_write_json(Path(out_dir) / "runs" / f"{spec.run_id}.json", copy)
    return copy


def _execute_all(todo: list[RunSpec], out_dir: str, workers: int, tensorboard: bool, progress: bool) -> Iterable[dict[str, Any]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not progress or not todo, dynamic_ncols=True)
    try:
        if workers <= 1:
            for spec in todo:
                rec = execute(spec, out_dir, tensorboard)
                bar.set_postfix_str(f"{rec['id']}: {rec['status']}")
                bar.update(1)
                yield rec
            return
        payloads = [(asdict(s), out_dir, tensorboard) for s in todo]
        with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(True,)) as pool:
            for rec in pool.imap_unordered(_execute_payload, payloads):
                bar.set_postfix_str(f"{rec['id']}: {rec['status']}")
                bar.update(1)
                yield rec
    finally:
        bar.close()
