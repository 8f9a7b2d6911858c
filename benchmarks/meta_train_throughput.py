"""Meta-training throughput: inner tasks per second with 1 and with N processes.

    python benchmarks/meta_train_throughput.py [--meta-steps 8] [--nproc 2]

Runs the real `train_meta.py` (configs/meta_train.yaml, 1 torch thread per
process) once as a single process and once under `torchrun --nproc_per_node=N`
with the same global meta-batch, and prints tasks/s (meta-batch x meta-steps /
wall time of the training loop, from summary.json). On a 2-core machine the
2-process speed-up is bounded by the cores; on more cores it scales with N.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(nproc: int, meta_steps: int, out: Path) -> float:
    args = [
        str(ROOT / "train_meta.py"),
        "--config",
        str(ROOT / "configs/meta_train.yaml"),
        f"meta_steps={meta_steps}",
        f"out_dir={out}",
        "export_path=",
        "progress=false",
        "checkpoint_every=1000",
    ]
    cmd = [sys.executable, *args] if nproc == 1 else ["torchrun", "--standalone", f"--nproc_per_node={nproc}", *args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meta-steps", type=int, default=8)
    ap.add_argument("--nproc", type=int, default=2)
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, meta-batch 4 (global), {args.meta_steps} meta-steps")
    print("| processes | wall time (s, incl. start-up) | tasks/s | speed-up |")
    print("|---|---|---|---|")
    base = None
    for n in (1, args.nproc):
        with tempfile.TemporaryDirectory() as d:
            wall = run(n, args.meta_steps, Path(d))
        tasks = 4 * args.meta_steps
        rate = tasks / wall
        base = base or rate
        print(f"| {n} | {wall:.1f} | {rate:.2f} | {rate / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
