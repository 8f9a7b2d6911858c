"""Per-step cost of every registered controller relative to constant LR.

    python benchmarks/controller_overhead.py [--tasks digits_mlp mnist1d_cnn] [--steps 100] [--repeats 7]

A step is what the harness does: forward, backward, the signals the controller
requires (`SignalTracker.collect`), `optimizer.step()`, `controller.step()`.
Batches are pre-fetched so data loading is not timed. Every timing of a
controller is paired with a timing of constant LR right before it (constant A
constant B ...), repeated `--repeats` times, so slow drift of a shared machine
hits both sides of each ratio alike; the figure is the median over repeats of
time(controller) / time(paired constant). Strategies that own the
optimizer (Prodigy, D-Adaptation, schedule-free) include their optimizer's own
cost, which is the honest comparison for a user choosing between them.
One intra-op thread: these models are tiny and threads only add noise.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from typing import Any

import torch

from metalr import controllers, tasks
from metalr.tasks.base import to_device
from metalr.testing import smoke_kwargs
from metalr.train import setup


def time_steps(task: tasks.Task, name: str, batches: list[Any], warmup: int = 5) -> float:
    """Seconds per training step under controller `name` (after `warmup` untimed steps)."""
    s = setup(name, task=task, total_steps=len(batches) + warmup, controller_kwargs=smoke_kwargs(name, quick=False), seed=0)
    assert s.task is not None
    task, model, optimizer, ctrl, tracker = s.task, s.model, s.optimizer, s.controller, s.tracker
    model.train()

    def step(batch: Any) -> None:
        optimizer.zero_grad(set_to_none=True)
        out = task.forward(model, batch)
        out.loss.backward()
        signals = tracker.collect(loss=out.loss, logits=out.logits, targets=out.targets, batch_size=out.batch_size)
        optimizer.step()
        ctrl.step(signals)

    for b in batches[:warmup]:
        step(b)
    start = time.perf_counter()
    for b in batches:
        step(b)
    return (time.perf_counter() - start) / len(batches)


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["digits_mlp", "mnist1d_cnn"])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--controllers", nargs="*", default=None, help="default: every registered controller")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = args.controllers or controllers.available()
    if "constant" not in names:
        names = ["constant", *names]
    print(f"# machine: {machine()}")
    print(
        f"# {args.steps} timed steps x {args.repeats} repeats; ratio = median over repeats of t(controller) / t(constant timed just before it); the constant row is the noise floor"
    )
    for task_name in args.tasks:
        task = tasks.build(task_name)
        loader = task.train_loader(0)
        batches: list[Any] = []
        while len(batches) < args.steps + 5:
            batches.extend(to_device(b, torch.device("cpu")) for b in loader)
        batches = batches[: args.steps + 5]
        times: dict[str, list[float]] = {n: [] for n in names}
        failed: dict[str, str] = {}
        paired: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.repeats):
            for n in names:
                if n in failed:
                    continue
                t_const = time_steps(task, "constant", batches)
                try:
                    times[n].append(time_steps(task, n, batches))
                    paired[n].append(t_const)
                except Exception as e:  # report, do not hide: a controller that cannot run here is listed
                    failed[n] = f"{type(e).__name__}: {e}"[:120]
        print(f"\n## {task_name} (constant: {1e3 * statistics.median(times['constant']):.3f} ms/step)")
        print(f"{'controller':<22} {'ms/step':>8} {'ratio':>7} {'overhead':>9}")
        for n in names:
            if n in failed:
                print(f"{n:<22} {'-':>8} {'-':>7} {'-':>9}  failed: {failed[n]}")
                continue
            ratio = statistics.median(t / b for t, b in zip(times[n], paired[n]))
            flag = "  > 5%" if ratio > 1.05 else ""
            print(f"{n:<22} {1e3 * statistics.median(times[n]):8.3f} {ratio:7.3f} {100 * (ratio - 1):+8.1f}%{flag}")
        assert all(math.isfinite(x) for v in times.values() for x in v)


if __name__ == "__main__":
    main()
