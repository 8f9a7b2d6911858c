"""Regenerate the published results and the README tables built from them.

    python scripts/publish_results.py --run             # make results: evaluate every published config, publish, rewrite READMEs
    python scripts/publish_results.py --run heuristics  # just one (its evaluation resumes from results/heuristics)
    python scripts/publish_results.py --run eval_full   # after a new meta checkpoint: only the meta runs are trained
    python scripts/publish_results.py                   # only rewrite the README tables from docs/results/
    python scripts/publish_results.py --check           # exit 1 if a README table differs from docs/results/
    python scripts/publish_results.py --stash eval_full # an unfinished --run: save its finished runs to commit

Published configs: metalr.evaluation.publish.PUBLISHED (configs/<name>.yaml -> docs/results/<name>/).
`--run` first copies the published run records (docs/results/<name>/runs.jsonl.gz) into the config's
out_dir where it has none (and, first, those of an unfinished regeneration that `--stash` saved as
docs/results/<name>/pending.jsonl.gz), so the evaluation trains only runs whose spec changed since they were
published (a new meta checkpoint: the meta runs); `--no-seed` trains everything the out_dir lacks.
`--eval-arg KEY=VALUE` goes to every evaluate.py call (how it runs only: --eval-arg workers=8 --eval-arg backend=ray).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metalr.evaluation import publish  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help=f"published configs (default: all of {', '.join(publish.PUBLISHED)})")
    p.add_argument("--run", action="store_true", help="run evaluate.py on each config first (resuming), then publish it")
    p.add_argument("--publish", action="store_true", help="publish each config's existing out_dir (no training), then rewrite the READMEs")
    p.add_argument("--check", action="store_true", help="only check that the README tables match docs/results/")
    p.add_argument("--stash", action="store_true", help="save each config's finished runs in docs/results/<name>/pending.jsonl.gz (to commit)")
    p.add_argument("--no-seed", action="store_true", help="with --run: do not reuse the published run records")
    p.add_argument("--eval-arg", action="append", default=[], metavar="KEY=VALUE", help="passed to evaluate.py (how it runs: workers=8, backend=ray ...)")
    args = p.parse_args(argv)
    names = args.names or list(publish.PUBLISHED)
    unknown = sorted(set(names) - set(publish.PUBLISHED))
    if unknown:
        print(f"unknown published config(s) {unknown}; valid: {', '.join(publish.PUBLISHED)}", file=sys.stderr)
        return 2
    if args.check:
        stale = {f: publish.stale_blocks((ROOT / f).read_text()) for f in publish.READMES}
        stale = {f: b for f, b in stale.items() if b}
        for f, blocks in stale.items():
            for b in blocks:
                print(f"{f}: {b} differs from docs/results; run `python scripts/publish_results.py`", file=sys.stderr)
        return 1 if stale else 0
    if args.stash:
        if not args.names:
            p.error("--stash needs the config(s) whose unfinished evaluation to save, e.g. --stash eval_full")
        for name in names:
            print(f"{name}: {publish.stash_runs(name)} finished run record(s) in docs/results/{name}/{publish.PENDING_FILE}")
        return 0
    for name in names if (args.run or args.publish) else []:
        if args.run:
            seeded = 0 if args.no_seed else publish.seed_out_dir(name)
            if seeded:
                print(f"{name}: {seeded} published run record(s) copied into its out_dir; runs whose spec changed are trained again", flush=True)
            cmd = [sys.executable, str(ROOT / "evaluate.py"), "--config", f"configs/{name}.yaml", *args.eval_arg]
            print("$", " ".join(cmd[1:]), flush=True)
            rc = subprocess.call(cmd, cwd=ROOT)
            if rc:
                print(f"{name}: evaluate.py exited with {rc}; not published", file=sys.stderr)
                return rc
        try:
            dest = publish.publish(name)
        except publish.PublishError as e:
            print(f"not published: {e}", file=sys.stderr)
            return 1
        print(f"published {dest.relative_to(ROOT)}")
    for f in publish.READMES:
        path = ROOT / f
        text = path.read_text()
        new = publish.update_text(text)
        if new != text:
            path.write_text(new)
            print(f"updated the result tables in {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
