"""Meta-training throughput: inner tasks per second with 1 and with N processes.

    python benchmarks/meta_train_throughput.py [--meta-steps 3] [--nproc 2]

Runs the real `train_meta.py` (configs/meta_train.yaml: its task distribution and
meta-batch, 1 torch thread per process; no warm start and no validation, so only
meta-training is timed) once as a single process and once under
`torchrun --nproc_per_node=N`, and prints inner tasks per second (meta-batch x
meta-steps / wall time, start-up included). Processes take tasks from a shared
queue, longest first (`metalr.meta.trainer.TaskQueue`), so unequal run lengths
do not leave one process idle. On a 2-core machine the speed-up is bounded by 2.
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
        "init_from=",
        "validate_every=0",
    ]
    cmd = [sys.executable, *args] if nproc == 1 else ["torchrun", "--standalone", f"--nproc_per_node={nproc}", *args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meta-steps", type=int, default=3)
    ap.add_argument("--nproc", type=int, default=2)
    args = ap.parse_args()
    import yaml

    batch = int(yaml.safe_load((ROOT / "configs/meta_train.yaml").read_text())["meta_batch"])
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, meta-batch {batch} (global), {args.meta_steps} meta-steps")
    print("| processes | wall time (s, incl. start-up) | tasks/s | speed-up |")
    print("|---|---|---|---|")
    base = None
    for n in (1, args.nproc):
        with tempfile.TemporaryDirectory() as d:
            wall = run(n, args.meta_steps, Path(d))
        tasks = batch * args.meta_steps
        rate = tasks / wall
        base = base or rate
        print(f"| {n} | {wall:.1f} | {rate:.2f} | {rate / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
