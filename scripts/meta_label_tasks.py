"""LR labels for meta-training tasks: each task trained with cosine at 7 LRs, the band of LRs that come within
`tol` of the best final validation accuracy (`configs/meta_train_stage5.yaml` reads the file: `lr_labels`).

    python scripts/meta_label_tasks.py --n 240 --out runs/meta_labels/labels.json [--workers 2]
    python scripts/meta_label_tasks.py --include configs/meta_labels.json --start 1000 --n 96 --families zipf_tokens doctext --out configs/meta_labels_text.json

Tasks are drawn from their own seed stream (560000 + i: neither meta-training draws, validation,
development nor evaluation tasks) with `metalr.meta.tasks.sample_spec`. The grid is the optimizer's usual
LR times 10**(-1.5 .. 1.5) in half-decade steps: the range meta-training draws base LRs from. Finished
tasks are kept in the output file (written atomically after each task), so an interrupted run resumes.
`--include FILE` starts a new output file with FILE's labelled tasks (their indices must not overlap the
new range): one file holding an earlier label set and new tasks, made by one command.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metalr.meta.labels import label_task, read_labels, write_labels  # noqa: E402
from metalr.meta.tasks import ALL_FAMILIES  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=240, help="tasks to label")
    ap.add_argument("--start", type=int, default=0, help="first index of the label stream (a later range gives tasks meta-training never saw)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "meta_labels" / "labels.json"))
    ap.add_argument("--families", nargs="+", default=list(ALL_FAMILIES), help="data families drawn (default: every one, teacher_large included)")
    ap.add_argument("--steps", type=int, nargs=2, default=[100, 2000], help="run lengths, log-uniform")
    ap.add_argument("--step-multiple", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--include", default="", help="a label file whose tasks a new output file starts with")
    args = ap.parse_args()
    if args.start < 0 or args.n < 1:
        ap.error(f"need --start >= 0 and --n >= 1, got {args.start} and {args.n}")
    out = Path(args.out)
    done = read_labels(out) if out.is_file() else []
    if args.include:
        included = read_labels(args.include)
        clash = sorted({e["index"] for e in included} & set(range(args.start, args.start + args.n)))
        if clash:
            ap.error(f"--include {args.include} has task indices {clash[:5]}... inside --start/--n's range: pick another --start")
        have_now = {e["index"] for e in done}
        missing = [e for e in included if e["index"] not in have_now]
        if done and missing:
            ap.error(f"{out} exists without {len(missing)} of {args.include}'s tasks: it was not started from that file")
        if not done:
            done = list(included)
            write_labels(out, sorted(done, key=lambda d: d["index"]))
    have = {d["index"] for d in done}
    todo = [(i, tuple(args.families), tuple(args.steps), args.step_multiple) for i in range(args.start, args.start + args.n) if i not in have]
    print(f"{len(have)} labelled already, {len(todo)} to go", flush=True)
    t0 = time.perf_counter()
    with Pool(args.workers) as pool:
        for k, entry in enumerate(pool.imap_unordered(label_task, todo), 1):
            done.append(entry)
            write_labels(out, sorted(done, key=lambda d: d["index"]))
            s = entry["spec"]
            print(
                f"[{k}/{len(todo)}] {s['data']}/{s['model']}/{s['optimizer']}/{s['steps']}: band 10^[{entry['band'][0]:.2f}, {entry['band'][1]:.2f}] "
                f"x usual, best acc {max(entry['acc']):.3f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
