"""Evaluate LR strategies on held-out tasks: strategies x tasks x seeds, in parallel, resumable.

    python evaluate.py --config configs/eval.yaml
    python evaluate.py --config configs/eval.yaml --controller checkpoints/my_meta.safetensors
    python evaluate.py --config configs/eval.yaml seeds=[0,1] workers=2 out_dir=results/quick

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
from metalr.evaluation.grid import build_specs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/eval.yaml", help="YAML config (EvalConfig fields)")
    p.add_argument("--controller", metavar="PATH", help="meta-controller checkpoint for the `meta` strategy (default: the shipped one)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="reuse finished runs in out_dir (the default)")
    group.add_argument("--fresh", action="store_true", help="redo every run even if out_dir holds it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
    n_runs = len(build_specs(cfg))
    tuned = f" + tuned {cfg.tuned.strategy} over {cfg.tuned.n_lrs} LRs" if cfg.tuned.n_lrs else ""
    print(f"evaluating {len(cfg.strategies)} strategies x {len(cfg.tasks)} tasks x {len(cfg.seeds)} seeds{tuned}: {n_runs} runs -> {cfg.out_dir}")
    signal.signal(signal.SIGTERM, _interrupt)  # a `kill` stops the workers cleanly too, like Ctrl-C
    try:
        results = evaluate(cfg, progress=not args.quiet)
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
    if cfg.tensorboard:
        print(f"  TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    if c["errors"]:
        for r in results["runs"]:
            if r["status"] == "error":
                print(f"  FAILED {r['id']}: {r['error']}", file=sys.stderr)
        return 1
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
