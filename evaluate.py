"""Evaluate LR strategies on held-out tasks: strategies x tasks x seeds, in parallel, resumable.

    python evaluate.py --config configs/eval.yaml
    python evaluate.py --config configs/eval.yaml --controller checkpoints/my_meta.safetensors
    python evaluate.py --config configs/eval.yaml seeds=[0,1] workers=2 out_dir=results/quick
    python evaluate.py --config configs/eval_full.yaml --dry-run --timings results/eval   # plan + time estimate, trains nothing
    python evaluate.py --config configs/eval_full.yaml backend=ray ray_address=auto       # the same runs on a Ray cluster

configs/eval.yaml is the quick grid (`make run`); configs/eval_full.yaml is the published one.
Re-running with the same out_dir resumes: finished runs (runs/<id>.json) are reused.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from metalr.config import ConfigError, load_config
from metalr.evaluation import EvalConfig, evaluate
from metalr.evaluation.grid import RunSpec, build_specs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/eval.yaml", help="YAML config (EvalConfig fields)")
    p.add_argument("--controller", metavar="PATH", help="meta-controller checkpoint for the `meta` strategy (default: the shipped one)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="reuse finished runs in out_dir (the default)")
    group.add_argument("--fresh", action="store_true", help="redo every run even if out_dir holds it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true", help="print the plan (runs per task and group) and a time estimate; train nothing")
    p.add_argument(
        "--timings", metavar="DIR", action="append", default=[], help="--dry-run: estimate from the runs/*.json of these evaluations (default: out_dir's)"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. seeds=[0,1] workers=2")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    overrides = list(args.overrides)
    if args.controller:
        overrides.append(f"meta_checkpoint={args.controller}")
    if args.fresh or args.resume:
        overrides.append(f"resume={'false' if args.fresh else 'true'}")
    try:
        cfg = load_config(EvalConfig, args.config, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    specs = build_specs(cfg)
    tuned = f" + tuned {cfg.tuned.strategy} over {cfg.tuned.n_lrs} LRs" if cfg.tuned.n_lrs else ""
    sweep = cfg.sweep_strategies()
    if sweep:
        mults = ", ".join(f"x{m:.3g}" for m in cfg.sensitivity.multipliers)
        tuned += f" + LR sweep of {len(sweep)} strategies at {mults}"
    print(f"evaluating {len(cfg.strategies)} strategies x {len(cfg.tasks)} tasks x {len(cfg.seeds)} seeds{tuned}: {len(specs)} runs -> {cfg.out_dir}")
    if args.dry_run:
        return dry_run(cfg, specs, args.timings or [cfg.out_dir])
    signal.signal(signal.SIGTERM, _interrupt)  # a `kill` stops the workers cleanly too, like Ctrl-C
    source = {"config": _shown_path(args.config), "overrides": list(args.overrides)}
    try:
        results = evaluate(cfg, progress=not args.quiet, source=source)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are saved in {Path(cfg.out_dir) / 'runs'}; run the same command again to resume.", file=sys.stderr)
        return 130
    out = Path(cfg.out_dir)
    print()
    print((out / "results.md").read_text())
    c = results["counts"]
    print(f"done in {results['wall_time']:.0f} s with {results['workers']} workers ({c['executed']} runs trained, {c['reused']} reused, {c['errors']} failed).")
    print(f"  table:       {out / 'results.md'}")
    print(f"  all results: {out / 'results.json'}")
    if cfg.plots:
        print(f"  plots:       {out / 'plots'}/<task>.png, {out / 'plots' / 'profile.png'}")
        if sweep:
            print(f"  LR sweep:    {out / 'plots'}/sensitivity_<task>.png")
    if cfg.tensorboard:
        print(f"  TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    if c["errors"]:
        for r in results["runs"]:
            if r["status"] == "error":
                print(f"  FAILED {r['id']}: {r['error']}", file=sys.stderr)
        return 1
    return 0


def dry_run(cfg: EvalConfig, specs: list[RunSpec], timing_dirs: list[str]) -> int:
    """The plan, and an estimate of the wall time from the per-run wall times in `timing_dirs`."""
    from metalr import tasks
    from metalr.evaluation.grid import TimeLeft, default_workers, finished_elsewhere, format_duration, load_finished, load_timings

    distinct = {s.content_key(): s for s in specs}
    done = {s.content_key() for s in specs if load_finished(s, cfg.out_dir) is not None} if cfg.resume else set()
    print(f"{len(distinct)} distinct trainings ({len(specs) - len(distinct)} runs share one), {len(done)} already finished in {cfg.out_dir}")
    if cfg.resume and cfg.reuse_from:
        elsewhere = set(finished_elsewhere([s for s in distinct.values() if s.content_key() not in done], cfg.reuse_from)) - done
        print(f"  and {len(elsewhere)} more finished in {', '.join(cfg.reuse_from)} (reuse_from: copied, not trained)")
        done |= elsewhere
    steps: dict[str, int] = {}
    for task in cfg.tasks:
        mine = [s for s in specs if s.task == task]
        groups = {g: sum(s.group == g for s in mine) for g in ("main", "tuned", "sensitivity")}
        t = tasks.build(task, preset=cfg.preset)
        n = cfg.steps or int(cfg.task_overrides.get(task, {}).get("steps", t.steps))
        steps.update({s.run_id: n for s in mine})
        print(f"  {task}: {n} steps; " + ", ".join(f"{k} {v}" for k, v in groups.items() if v))
    workers = cfg.workers or default_workers()
    clock = TimeLeft(workers)
    records = [r for d in timing_dirs for r in load_timings(d)]
    for r in records:
        clock.observe(r)
    todo = [s for key, s in distinct.items() if key not in done]
    left = clock.seconds_left(todo, steps)
    if left is None:
        print(f"no timings in {', '.join(timing_dirs)}: pass --timings DIR (an earlier evaluation's out_dir) for an estimate")
    else:
        print(f"estimated wall time with {workers} worker(s): ~{format_duration(left)} (from {len(records)} timed runs; data loading not counted)")
    return 0


def _shown_path(path: str) -> str:
    """`path` relative to the repository root when inside it (as results.json records it)."""
    p = Path(path).resolve()
    root = Path(__file__).resolve().parent
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
