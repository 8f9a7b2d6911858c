"""One evaluation, end to end: grid -> records -> results.json, Markdown, plots.

    from metalr.evaluation import EvalConfig, evaluate
    results = evaluate(EvalConfig(tasks=["digits_mlp"], strategies=["constant", "cosine"], seeds=[0, 1]))

Layout of `out_dir`:

    results.json            every run (spec, status, metrics), aggregates, tuned reference,
                            performance profiles, the resolved config, library versions
    results.md              the tables (mean ± std over seeds, best in bold)
    plots/<task>.png        val loss and LR against step, one line per strategy
    plots/profile.png       performance profile of time to target across tasks
    plots/sensitivity_<task>.png   final metric against the LR multiplier (when `sensitivity.enabled`)
    runs/<id>.json          one finished run each (with its history); what resume reuses
    tensorboard/<id>/       the LR, training loss and eval curves of every run
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from metalr.config import to_dict
from metalr.evaluation import report
from metalr.evaluation.config import EvalConfig
from metalr.evaluation.grid import build_specs, checkpoint_path, clean, default_workers, run_grid, sha256_file
from metalr.io import atomic_write_json, atomic_write_text, versions

log = logging.getLogger(__name__)

PROFILE_MEASURES = {"steps": "steps_to_target", "wall time": "time_to_target"}


def evaluate(cfg: EvalConfig, progress: bool = True, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) the grid in `cfg`, write every output, return the results dict.

    `source` ({"config": path, "overrides": [...]}, as evaluate.py passes it) is recorded in
    results.json, so a published result says which committed config produced it.
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    specs = build_specs(cfg)
    warn_not_held_out(cfg)
    workers = cfg.workers or default_workers()
    records, counts = run_grid(
        specs,
        out,
        workers=workers,
        resume=cfg.resume,
        tensorboard=cfg.tensorboard,
        progress=progress,
        backend=cfg.backend,
        ray_address=cfg.ray_address,
        reuse_from=cfg.reuse_from,
    )
    results = summarise(cfg, records, counts)
    results["source"] = source
    results["wall_time"] = time.perf_counter() - start
    results["workers"] = workers
    write(results, out, cfg)
    return results


def meta_checkpoints(cfg: EvalConfig) -> dict[str, dict[str, Any]]:
    """{label: {path, sha256[, not_held_out]}} of the checkpoint each `meta` strategy loads: the stamp that ties
    results to the exact controller weights (the shipped file's path is given relative to the repo), and the tasks of
    the grid that are not held out for it (`not_held_out`)."""
    from metalr.meta.checkpoint import DEFAULT_PATH

    out: dict[str, dict[str, Any]] = {}
    for s in cfg.strategies:
        if s.name != "meta":
            continue
        path = checkpoint_path(s.controller_kwargs)
        root = DEFAULT_PATH.resolve().parents[1]
        shown = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        out[s.label] = {"path": shown, "sha256": sha256_file(path)}
        seen = not_held_out(cfg.tasks, path)
        if seen:
            out[s.label]["not_held_out"] = seen
    return out


def not_held_out(tasks: list[str], checkpoint: str | Path) -> dict[str, str]:
    """{task: why} for the tasks built on data that the policy in `checkpoint` was meta-trained or selected on
    (`metalr.meta.checkpoint.data_seen`): its figures there are not those of a task it never saw."""
    from metalr.meta.checkpoint import data_seen
    from metalr.meta.tasks import TASK_DATA

    seen = data_seen(checkpoint)
    return {t: f"built on {TASK_DATA[t]}, which the checkpoint was {seen[TASK_DATA[t]]}" for t in tasks if TASK_DATA.get(t) in seen}


def warn_not_held_out(cfg: EvalConfig) -> None:
    """Log, before anything trains, each task of the grid that a `meta` strategy's checkpoint is not held out from."""
    for s in cfg.strategies:
        if s.name == "meta":
            for task, why in not_held_out(cfg.tasks, checkpoint_path(s.controller_kwargs)).items():
                log.warning(
                    "%s on %s is not a held-out evaluation: the task is %s; its figures there do not say how the controller does on tasks it never saw",
                    s.label, task, why,
                )  # fmt: skip


def summarise(cfg: EvalConfig, records: list[dict[str, Any]], counts: dict[str, int]) -> dict[str, Any]:
    """Everything reported, computed from the run records alone (histories left in runs/)."""
    agg = report.aggregate(records)
    tuned = report.tuned_reference(records, agg, cfg.tuned.metric, cfg.tuned.task_metrics) if cfg.tuned.n_lrs else {}
    sens = {}
    if cfg.sensitivity.enabled:
        metrics = {t: cfg.tuned.metric_for(t) for t in cfg.tasks}
        sens = report.sensitivity(records, tuned, metrics, cfg.sensitivity.reference_tol, cfg.sensitivity.best_tol)
    profiles = {}
    for name, key in PROFILE_MEASURES.items():
        profiles[name] = report.performance_profile(report.times_to_target(records, key, tuned), cfg.profile_tau_max)
    runs = [{k: v for k, v in r.items() if k != "history"} for r in records]
    return clean(
        {
            "config": to_dict(cfg),
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "counts": counts,
            # summed over runs (reused ones included): what the grid costs, however often it was resumed
            "training_seconds": sum(float((r.get("metrics") or {}).get("wall_time") or 0.0) for r in records),
            "runs": runs,
            "aggregate": agg,
            "tuned_reference": tuned,
            "delta_vs_tuned_pct": report.delta_vs_tuned(agg, tuned),
            "profile": profiles,
            "sensitivity": sens,
            "meta_checkpoints": meta_checkpoints(cfg),
        }
    )


def write(results: dict[str, Any], out: Path, cfg: EvalConfig) -> None:
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", report.markdown(results))
    if not cfg.plots:
        return
    (out / "plots").mkdir(exist_ok=True)
    records = [_load_history(out, r) for r in results["runs"] if r["spec"]["group"] != "sensitivity"]
    for task in cfg.tasks:
        report.plot_task(task, records, results["tuned_reference"].get(task), str(out / "plots" / f"{task}.png"))
    report.plot_profile(results["profile"], str(out / "plots" / "profile.png"))
    for task, t in (results.get("sensitivity") or {}).get("tasks", {}).items():
        report.plot_sensitivity(task, t, str(out / "plots" / f"sensitivity_{task}.png"), cfg.sensitivity.reference_tol)


def _load_history(out: Path, run: dict[str, Any]) -> dict[str, Any]:
    import json

    if run["status"] == "error":
        return run
    return json.loads((out / "runs" / f"{run['id']}.json").read_text())
