"""Per-step cost of LR controllers relative to constant LR, and host-device synchronisations.

    python benchmarks/controller_overhead.py [--tasks digits_mlp mnist1d_cnn rt_bilstm rt_minilm] [--repeats 7] [--all]
    python benchmarks/controller_overhead.py --controllers meta meta:checkpoints/stages/meta_stage5.safetensors   # two checkpoints

A step is what the harness does: forward, backward, the signals the controller
requires (`SignalTracker.collect`), `optimizer.step()`, `controller.step()`.
Batches are pre-fetched so data loading is not timed. Every timing of a
controller is paired with a timing of constant LR right before it (constant A
constant B ...), repeated `--repeats` times, so slow drift of a shared machine
hits both sides of each ratio alike; the figure is the median over repeats of
time(controller) / time(paired constant). Strategies that own the
optimizer (Prodigy, D-Adaptation, schedule-free) include their optimizer's own
cost, which is the honest comparison for a user choosing between them.
One intra-op thread on CPU: these models are small and threads only add noise.

Four model sizes: digits_mlp (~0.7 ms/step on a 2-core CPU), mnist1d_cnn (~4 ms),
rt_bilstm (~70 ms), rt_minilm (a 22M-parameter transformer; needs the MiniLM
weights, `make install`). Default controllers: constant, the schedules and the
signal-reading ones with overhead targets; `--all` times every registered one.

Two figures per controller. `ratio` / `overhead`: the whole step against constant
LR. It also carries what the controller's LR does to the step's cost: a different
LR trajectory changes the numbers the model computes on (denormal floats on a CPU
are many times slower), so it is flushed to zero here (`torch.set_flush_denormal`;
`--keep-denormals` to keep them). `own us` / `own %`: the time spent in
`SignalTracker.collect` + `controller.step` themselves, per step, and as a
percentage of the paired constant step: the controller's cost, free of that effect.

On CUDA (`--device cuda`) each controller also gets an untimed pass with
`torch.cuda.set_sync_debug_mode("warn")` around `collect` + `controller.step`,
and the table's `syncs/step` column counts the synchronisations it reports
(the optimizer's own step and the forward/backward are not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import platform
import statistics
import time
from typing import Any

import torch
import yaml

from metalr import controllers, tasks
from metalr.tasks.base import to_device
from metalr.testing import count_cuda_syncs, smoke_kwargs
from metalr.train import setup

DEFAULT_TASKS = ("digits_mlp", "mnist1d_cnn", "rt_bilstm", "rt_minilm")
DEFAULT_STEPS = {"digits_mlp": 100, "mnist1d_cnn": 100, "rt_bilstm": 20, "rt_minilm": 8}
#: Issue 17's targets for the whole-step ratio of `meta`, `grad_variability` and `hypergradient` (+5 % on the smallest
#: model, +2 % on the others); a row above its task's target is flagged.
TARGETS = {"digits_mlp": 0.05}
DEFAULT_TARGET = 0.02
DEFAULT_CONTROLLERS = ("cosine", "step", "onecycle", "meta", "hypergradient", "grad_variability", "loss_patterns", "plateau")


def time_steps(task: tasks.Task, name: str, batches: list[Any], device: torch.device, warmup: int = 3, count_syncs: bool = False) -> tuple[float, float]:
    """(seconds per training step, of which in `collect` + `controller.step`) under controller `name`, after `warmup` untimed steps.

    With `count_syncs`: (host-device synchronisations per step, 0.0) instead.
    """
    name, extra = _spec(name)
    kwargs = {**smoke_kwargs(name, quick=False), **extra}
    s = setup(name, task=task, total_steps=len(batches) + warmup, controller_kwargs=kwargs, seed=0, device=device)
    assert s.task is not None
    task, model, optimizer, ctrl, tracker = s.task, s.model, s.optimizer, s.controller, s.tracker
    model.train()
    syncs = 0
    own = 0.0

    def step(batch: Any, watch: bool = False) -> None:
        nonlocal syncs, own
        optimizer.zero_grad(set_to_none=True)
        out = task.forward(model, batch)
        out.loss.backward()

        def watching() -> contextlib.AbstractContextManager[list[str]]:
            return count_cuda_syncs() if watch else contextlib.nullcontext([])

        with watching() as in_collect:
            t0 = time.perf_counter()
            signals = tracker.collect(loss=out.loss, logits=out.logits, targets=out.targets, batch_size=out.batch_size)
            t1 = time.perf_counter()
        optimizer.step()
        with watching() as in_step:
            t2 = time.perf_counter()
            ctrl.step(signals)
            own += time.perf_counter() - t2 + t1 - t0
        syncs += len(in_collect) + len(in_step)

    for b in batches[:warmup]:
        step(b)
    if count_syncs:
        for b in batches:
            step(b, watch=True)
        return syncs / len(batches), 0.0
    _sync(device)
    own = 0.0
    start = time.perf_counter()
    for b in batches:
        step(b)
    _sync(device)
    return (time.perf_counter() - start) / len(batches), own / len(batches)


def _spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`NAME[:CHECKPOINT][,KEY=VALUE...]` -> (controller name, extra keyword arguments); e.g. `meta,sync_every=8`."""
    head, *pairs = spec.split(",")
    name, _, checkpoint = head.partition(":")  # meta:PATH times the meta-controller with another checkpoint
    extra: dict[str, Any] = {"checkpoint": checkpoint} if checkpoint else {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"controller spec {spec!r}: expected NAME[:CHECKPOINT][,KEY=VALUE...]")
        extra[key] = yaml.safe_load(value)
    return name, extra


def _label(name: str) -> str:
    """meta:PATH is shown as meta:<file stem> (and any ,KEY=VALUE after it)."""
    head, sep, rest = name.partition(",")
    base, _, path = head.partition(":")
    return (f"{base}:{path.rsplit('/', 1)[-1].removesuffix('.safetensors')}" if path else base) + sep + rest


def _quiet_transformers() -> None:
    """rt_minilm is built once per timing: keep transformers' per-load report and progress bar out of the table."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    ap.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    ap.add_argument("--steps", type=int, default=None, help=f"timed steps per measurement (default per task: {DEFAULT_STEPS})")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--controllers",
        nargs="*",
        default=None,
        help=f"default: {' '.join(DEFAULT_CONTROLLERS)}; meta:PATH = meta with checkpoint PATH; NAME,KEY=VALUE passes a keyword (meta,sync_every=8)",
    )
    ap.add_argument("--all", action="store_true", help="every registered controller")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--keep-denormals", action="store_true", help="do not flush denormal floats to zero (CPU)")
    args = ap.parse_args()
    if not args.keep_denormals:
        torch.set_flush_denormal(True)
    _quiet_transformers()
    # The timed runs are short on purpose (a few dozen steps): the meta-controller's warning about runs shorter than any it
    # was meta-trained on says nothing about the timing, once per run; it is dropped here.
    logging.getLogger("metalr.controllers.meta").addFilter(lambda r: "shorter than any the policy was meta-trained on" not in r.getMessage())
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    names = controllers.available() if args.all else (args.controllers or list(DEFAULT_CONTROLLERS))
    names = ["constant", *[n for n in names if n != "constant"]]
    print(f"# machine: {machine()}" + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    print(
        f"# {args.repeats} interleaved repeats; ratio = median over repeats of t(controller) / t(constant timed just before it); the constant row is the noise floor"
    )
    for task_name in args.tasks:
        try:
            task = tasks.build(task_name)
            loader = task.train_loader(0)
        except Exception as e:  # a task whose data or weights are missing here is reported, not hidden
            print(f"\n## {task_name}: skipped ({type(e).__name__}: {str(e)[:160]})")
            continue
        steps = args.steps or DEFAULT_STEPS.get(task_name, 50)
        batches: list[Any] = []
        while len(batches) < steps + 3:
            batches.extend(to_device(b, device) for b in loader)
        batches = batches[: steps + 3]
        times: dict[str, list[float]] = {n: [] for n in names}
        owns: dict[str, list[float]] = {n: [] for n in names}
        failed: dict[str, str] = {}
        paired: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.repeats):
            for n in names:
                if n in failed:
                    continue
                t_const, _ = time_steps(task, "constant", batches, device)
                try:
                    t, t_own = time_steps(task, n, batches, device)
                    times[n].append(t)
                    owns[n].append(t_own)
                    paired[n].append(t_const)
                except Exception as e:  # report, do not hide: a controller that cannot run here is listed
                    failed[n] = f"{type(e).__name__}: {e}"[:120]
        target = TARGETS.get(task_name, DEFAULT_TARGET)
        syncs = {n: time_steps(task, n, batches[:13], device, count_syncs=True)[0] for n in names if n not in failed} if device.type == "cuda" else {}
        print(f"\n## {task_name} ({steps} timed steps; constant: {1e3 * statistics.median(times['constant']):.3f} ms/step)")
        print(f"{'controller':<22} {'ms/step':>8} {'ratio':>7} {'overhead':>9} {'own us':>7} {'own %':>6}" + ("  syncs/step" if syncs else ""))
        for n in names:
            if n in failed:
                print(f"{_label(n):<22} {'-':>8} {'-':>7} {'-':>9}  failed: {failed[n]}")
                continue
            ratio = statistics.median(t / b for t, b in zip(times[n], paired[n]))
            flag = f"  > {100 * target:.0f}%" if ratio > 1 + target else ""
            sync = f"  {syncs[n]:10.2f}" if syncs else ""
            own_us = 1e6 * statistics.median(owns[n])
            own_pct = 100 * statistics.median(o / b for o, b in zip(owns[n], paired[n]))
            print(
                f"{_label(n):<22} {1e3 * statistics.median(times[n]):8.3f} {ratio:7.3f} {100 * (ratio - 1):+8.1f}% {own_us:7.1f} {own_pct:5.1f}%{sync}{flag}",
                flush=True,
            )
        assert all(math.isfinite(x) for v in times.values() for x in v)


if __name__ == "__main__":
    main()
