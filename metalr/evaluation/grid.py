"""The grid runner: strategies x tasks x seeds through `metalr.train.run`, in worker processes.

Each finished run is saved atomically as `runs/<task>__<label>__<seed>.json` (its
spec, metrics and history) by the worker that ran it, so killing the evaluation
loses at most the runs in flight; a second call with the same out dir reuses every
saved run whose spec is unchanged. Runs are seeded and independent, so a resumed
grid gives the same records as an uninterrupted one (wall time aside).

Workers are spawned (never forked: safe with torch threads and on every OS).
Every run trains with one torch intra-op thread (`RUN_THREADS`), in a worker, in this
process (`workers=1`, the thread count restored afterwards) and on Ray alike: runs
don't fight over cores, and a run's numbers do not depend on how many workers ran the
grid (more threads split a kernel's float sums differently, and near divergence that
rounding decides the outcome). Each record says what it ran on (`env`: threads, torch,
CPU). Everything a worker calls is a top-level function.

`reuse_from` (other evaluations' out dirs): a run that trains exactly like one finished
there (same content key) is copied in instead of trained, e.g. the held-out grid of
`configs/meta_heldout.yaml` reusing the runs it shares with `configs/eval_full.yaml`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import shutil
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metalr.evaluation.config import EvalConfig
from metalr.io import atomic_write_json
from metalr.testing import pause_point

log = logging.getLogger(__name__)

#: torch intra-op threads of every evaluation run, whatever the number of workers (see the module docstring).
RUN_THREADS = 1


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
    weights_sha256: str | None = None  # learned controllers (`meta`): the checkpoint's hash, so resume redoes runs of other weights

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
    """The main grid (task x strategy x seed), the tuned-reference LR grid, then the LR-sensitivity sweep.

    Multiplier 1 is stored as `lr_factor=None`, so the sweep's x1 runs and the tuned grid's
    x1 run have the main run's content key and are trained once (see `run_grid`).
    """
    sens = cfg.sensitivity
    specs = []

    def spec(task: str, label: str, name: str, seed: int, kwargs: dict[str, Any], lr_factor: float | None = None, group: str = "main") -> RunSpec:
        overrides = dict(cfg.task_overrides.get(task, {}))
        weights = checkpoint_sha256(kwargs) if name == "meta" else None
        return RunSpec(task, label, name, seed, dict(kwargs), overrides, lr_factor, cfg.preset, cfg.steps, cfg.eval_every, cfg.nan_recovery, group, weights)

    for task in cfg.tasks:
        for s in cfg.strategies:
            if task not in s.exclude_tasks:
                specs += [spec(task, s.label, s.name, seed, s.controller_kwargs) for seed in cfg.seeds]
        for factor in cfg.tuned.lr_factors():
            label = tuned_label(cfg.tuned.strategy, factor)
            specs += [spec(task, label, cfg.tuned.strategy, seed, cfg.tuned.controller_kwargs, _factor(factor), "tuned") for seed in cfg.seeds]
        if sens.tasks is not None and task not in sens.tasks:
            continue
        for s in cfg.sweep_strategies():
            if task in s.exclude_tasks:
                continue
            for m in sens.multipliers:
                seeds = cfg.seeds if sens.seeds is None else sens.seeds
                specs += [spec(task, sweep_label(s.label, m), s.name, seed, s.controller_kwargs, _factor(m), "sensitivity") for seed in seeds]
    return specs


def checkpoint_path(controller_kwargs: dict[str, Any]) -> Path:
    """The policy file a `meta` strategy loads (its `checkpoint` argument, else the shipped one)."""
    from metalr.meta.checkpoint import DEFAULT_PATH

    return Path(controller_kwargs.get("checkpoint") or DEFAULT_PATH).expanduser().resolve()


def checkpoint_sha256(controller_kwargs: dict[str, Any]) -> str:
    return sha256_file(checkpoint_path(controller_kwargs))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _factor(m: float) -> float | None:
    return None if math.isclose(m, 1.0) else m


def tuned_label(strategy: str, factor: float) -> str:
    return f"{strategy}@lrx{factor:.3g}"


def sweep_label(label: str, multiplier: float) -> str:
    return f"{label}@x{multiplier:.3g}"


# ------------------------------------------------------------------ in the worker
_TASK_CACHE: dict[tuple[str, str], Any] = {}
_WRITTEN = [0]  # run records this process has written


def _init_worker() -> None:
    import torch

    torch.set_num_threads(RUN_THREADS)
    logging.basicConfig(level=logging.WARNING)


def run_environment() -> dict[str, Any]:
    """What a run trained on, for its record: torch's intra-op threads at that moment, versions, the CPU."""
    import torch

    return {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": default_workers(),
    }


@functools.cache
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _build_task(spec: RunSpec) -> Any:
    """The task, built once per worker process (data loading dominates small runs); `lr_factor` applied."""
    from metalr import tasks

    key = (spec.task, spec.preset)
    if key not in _TASK_CACHE:
        _TASK_CACHE[key] = tasks.build(spec.task, preset=spec.preset)
        _warm_up(_TASK_CACHE[key])
    task = _TASK_CACHE[key]
    overrides = dict(spec.task_overrides)
    if spec.lr_factor is not None and not owns_optimizer(spec.controller):
        overrides["lr"] = float(overrides.get("lr", task.lr)) * spec.lr_factor
    return dataclasses.replace(task, **overrides) if overrides else task


def _warm_up(task: Any) -> None:
    """Two steps and an evaluation of constant LR, untimed and unrecorded, when a worker first meets a task: what a
    process does once (imports, kernel and allocator caches, the evaluation's first buffers) is then not measured as
    the wall time and peak memory of whichever run came first (it read 66 MB of growth where the later runs read 13)."""
    import tempfile

    from metalr import train

    try:
        with tempfile.TemporaryDirectory() as tb:  # (its TensorBoard writer too)
            train.run(task, "constant", seed=0, steps=2, eval_every=2, log_dir=tb)
    except Exception:  # noqa: BLE001 - the real run reports any problem with the task
        log.debug("warm-up of %s failed", task.name, exc_info=True)


def owns_optimizer(controller: str) -> bool:
    """Whether `controller` builds its own optimizer (Prodigy, D-Adaptation, schedule-free): its LR
    is its own `lr` argument, not the task's, so an LR multiplier scales that argument instead."""
    from metalr import controllers

    try:
        return bool(controllers.get(controller).owns_optimizer)
    except KeyError:
        return False  # an unknown name fails in `train.run` with the registry's message


def _controller_kwargs(spec: RunSpec, task: Any) -> tuple[dict[str, Any], float]:
    """The run's controller kwargs and its base LR: the task's LR, or for a strategy that owns its
    optimizer, its own default LR argument (read from an optimizer built on a dummy parameter)
    times `lr_factor`, passed as `optimizer_kwargs.lr`."""
    import torch

    from metalr import controllers

    kwargs = dict(spec.controller_kwargs)
    if not owns_optimizer(spec.controller):
        return kwargs, float(task.lr)
    opt_kwargs = dict(kwargs.get("optimizer_kwargs") or {})
    steps = spec.steps or task.steps
    probe = controllers.get(spec.controller).make_optimizer([torch.zeros(1, requires_grad=True)], task=task, total_steps=steps, **opt_kwargs)  # type: ignore[attr-defined]
    base = float(probe.param_groups[0]["lr"])
    if spec.lr_factor is None:
        return kwargs, base
    kwargs["optimizer_kwargs"] = {**opt_kwargs, "lr": base * spec.lr_factor}
    return kwargs, base * spec.lr_factor


def execute(spec: RunSpec, out_dir: str, tensorboard: bool = True, save: bool = True) -> dict[str, Any]:
    """Train one run, compute its metrics, save `runs/<id>.json` (unless `save=False`: the caller
    saves it, as the Ray backend does on the driver); never raises (errors become records)."""
    from metalr import train
    from metalr.evaluation import run_metrics

    record: dict[str, Any] = {"id": spec.run_id, "spec": asdict(spec)}
    try:
        task = _build_task(spec)
        kwargs, base_lr = _controller_kwargs(spec, task)
        log_dir = None
        if tensorboard:
            log_dir = Path(out_dir) / "tensorboard"
            shutil.rmtree(log_dir / spec.run_id, ignore_errors=True)  # a half-written run from an interrupted evaluation
        hist = train.run(
            task, spec.controller, controller_kwargs=kwargs, seed=spec.seed, steps=spec.steps,
            eval_every=spec.eval_every, log_dir=log_dir, nan_recovery=spec.nan_recovery, run_name=spec.label,
        )  # fmt: skip
        record.update(
            env={**run_environment(), "peak_memory": hist.peak_memory_scope},  # "run": the most it added; "process": the worker's peak so far
            status="diverged" if hist.diverged else "ok",
            lr=base_lr,
            lr_arg="optimizer" if owns_optimizer(spec.controller) else "task",
            metrics=clean(run_metrics.compute(hist, task.target)),
            history=clean(hist.to_dict()),
        )
        if save:
            atomic_write_json(Path(out_dir) / "runs" / f"{spec.run_id}.json", record)
            _WRITTEN[0] += 1
            pause_point("eval_run", _WRITTEN[0])  # tests: kill at a known point (metalr.testing)
    except Exception as e:  # noqa: BLE001 - one broken run must not sink the grid; it is reported
        record.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=8))
    return record


def _execute_payload(payload: tuple[dict[str, Any], str, bool]) -> dict[str, Any]:
    spec, out_dir, tensorboard = payload
    return execute(RunSpec(**spec), out_dir, tensorboard)


def _execute_remote(spec: dict[str, Any], out_dir: str, tensorboard: bool) -> dict[str, Any]:
    """A Ray task: one run on whichever node Ray picks; the record travels back and the driver saves it."""
    import torch

    torch.set_num_threads(RUN_THREADS)
    return execute(RunSpec(**spec), out_dir, tensorboard, save=False)


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
    saved = dict(record.get("spec") or {})
    saved.setdefault("weights_sha256", None)  # records from before the field: no learned weights, or stale ones (redone)
    if json.dumps(saved, sort_keys=True) != json.dumps(clean(asdict(spec)), sort_keys=True):
        log.warning("%s was made from a different spec; the run is redone", path)
        return None
    return record


def run_grid(
    specs: list[RunSpec],
    out_dir: str | Path,
    *,
    workers: int = 0,
    resume: bool = True,
    tensorboard: bool = True,
    progress: bool = True,
    backend: str = "local",
    ray_address: str | None = None,
    reuse_from: Sequence[str | Path] = (),
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Run (or reuse) every spec; returns the records in `specs` order and counts {reused, executed, errors}.

    With `resume`, a spec whose run is finished in `out_dir`, or trains exactly like one finished there or
    in one of the `reuse_from` out dirs (`finished_elsewhere`), is not trained again: the record is copied.

    `backend="local"` runs them in `workers` spawned processes on this machine; `backend="ray"`
    submits each as a Ray task (one CPU each) to the cluster at `ray_address` (or `$RAY_ADDRESS`,
    else a Ray instance started here). Either way the same `execute` trains the same specs, so
    the records are the same (wall times aside).
    """
    out_dir = str(out_dir)
    records: dict[str, dict[str, Any]] = {}
    if resume:
        for spec in specs:
            found = load_finished(spec, out_dir)
            if found is not None:
                records[spec.run_id] = found
        # A spec that trains exactly like a finished run under another label (adding a sweep to a
        # finished grid: its x1 runs are the grid's) is a copy of that run, not a new training.
        done = {RunSpec(**r["spec"]).content_key(): r for r in records.values()}
        for spec in specs:
            if spec.run_id not in records and spec.content_key() in done:
                records[spec.run_id] = _relabel(done[spec.content_key()], spec, out_dir)
        if reuse_from:
            elsewhere = finished_elsewhere([s for s in specs if s.run_id not in records], reuse_from)
            for spec in specs:
                if spec.run_id not in records and spec.content_key() in elsewhere:
                    records[spec.run_id] = _relabel(elsewhere[spec.content_key()], spec, out_dir)
    pending = [s for s in specs if s.run_id not in records]
    # Identical training under two labels (e.g. plain cosine and the tuned grid's lr x1) runs once.
    groups: dict[str, list[RunSpec]] = {}
    for s in pending:
        groups.setdefault(s.content_key(), []).append(s)
    todo = interleave_tasks([g[0] for g in groups.values()])
    counts = {"reused": len(records), "executed": len(todo), "errors": 0}
    workers = min(workers or default_workers(), max(1, len(todo)))
    clock = TimeLeft(workers)
    for rec in records.values():
        clock.observe(rec)
    if backend == "ray":
        finished = _execute_ray(todo, out_dir, tensorboard, ray_address)
    elif backend == "local":
        finished = _execute_local(todo, out_dir, workers, tensorboard)
    else:
        raise ValueError(f"unknown backend {backend!r}; valid: local, ray")
    for rec in _with_progress(finished, todo, clock, progress):
        for twin in groups[RunSpec(**rec["spec"]).content_key()]:
            copy = _relabel(rec, twin, out_dir) if twin.run_id != rec["id"] else rec
            records[twin.run_id] = copy
        counts["errors"] += rec["status"] == "error"
    return [records[s.run_id] for s in specs], counts


def interleave_tasks(specs: list[RunSpec]) -> list[RunSpec]:
    """Round-robin over tasks (a, b, c, a, b, c, ...): every task's runs start early, so the
    time-left estimate learns each task's cost within the first few runs, and no worker is
    left with a tail of the slowest task's runs. Order never changes a run's result."""
    by_task: dict[str, list[RunSpec]] = {}
    for s in specs:
        by_task.setdefault(s.task, []).append(s)
    queues = list(by_task.values())
    out: list[RunSpec] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


class TimeLeft:
    """Seconds left in a grid, from the wall times of finished runs (this call's, resumed ones, or
    another evaluation's `runs/*.json`).

    A run's cost is its number of steps times a seconds-per-step rate: the mean rate of finished
    runs with the same task and controller; failing that, the task's mean rate times the
    controller's mean ratio to its tasks' means elsewhere; failing that, the mean over everything.
    Steps default to the mean steps of the task's finished runs. The sum is divided by the
    number of workers. None until a first run has finished.
    """

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)
        self._rates: dict[tuple[str, str], list[float]] = {}
        self._steps: dict[str, list[int]] = {}

    def observe(self, record: dict[str, Any]) -> None:
        m = record.get("metrics") or {}
        wall, steps = m.get("wall_time"), m.get("steps_run")
        if record.get("status") == "error" or not isinstance(wall, (int, float)) or wall <= 0 or not steps:
            return
        task = record["spec"]["task"]
        self._rates.setdefault((task, record["spec"]["controller"]), []).append(float(wall) / steps)
        self._steps.setdefault(task, []).append(int(steps))

    def rate(self, task: str, controller: str) -> float | None:
        """Estimated seconds per step of `controller` on `task`."""
        if not self._rates:
            return None
        exact = self._rates.get((task, controller))
        if exact:
            return _mean(exact)
        task_rates = {tk: _mean([r for (t, _), rs in self._rates.items() if t == tk for r in rs]) for tk in {t for t, _ in self._rates}}
        ratios = [_mean(rs) / task_rates[t] for (t, c), rs in self._rates.items() if c == controller]
        ratio = _mean(ratios) if ratios else 1.0
        if task in task_rates:
            return task_rates[task] * ratio
        return _mean([r for rs in self._rates.values() for r in rs]) * ratio

    def estimate(self, spec: RunSpec, steps: int | None = None) -> float | None:
        """Seconds for one run of `spec` (of `steps` steps; default: as the task's finished runs)."""
        rate = self.rate(spec.task, spec.controller)
        if rate is None:
            return None
        if steps is None:
            seen = self._steps.get(spec.task) or [s for ss in self._steps.values() for s in ss]
            steps = round(_mean(seen))  # type: ignore[arg-type]
        return rate * steps

    def seconds_left(self, pending: Iterable[RunSpec], steps: dict[str, int] | None = None) -> float | None:
        total = 0.0
        for spec in pending:
            e = self.estimate(spec, (steps or {}).get(spec.run_id))
            if e is None:
                return None
            total += e
        return total / self.workers


def _mean(xs: list[float] | list[int]) -> float:
    return float(sum(xs)) / len(xs) if xs else 0.0


def finished_elsewhere(specs: Sequence[RunSpec], out_dirs: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """{content key: record} of the finished runs in other evaluations' `out_dirs` that train exactly like one of
    `specs` (same task, controller, kwargs, seed, steps, checkpoint ...; the label may differ); each record
    notes its file in `reused_from`. The first out dir that has one wins. A missing out dir holds nothing."""
    wanted = {s.content_key() for s in specs}
    prefixes = {(s.task, s.seed) for s in specs}
    found: dict[str, dict[str, Any]] = {}
    for out_dir in out_dirs:
        for path in sorted(Path(out_dir).glob("runs/*.json")):
            task, _, rest = path.stem.partition("__")
            seed = rest.rpartition("__")[2]
            if not seed.lstrip("-").isdigit() or (task, int(seed)) not in prefixes:
                continue  # (the file name says task and seed: skip reading what cannot match)
            try:
                record = json.loads(path.read_text())
                spec = dict(record["spec"])
                spec.setdefault("weights_sha256", None)  # as `load_finished` reads an older record
                key = RunSpec(**spec).content_key()
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable, or another version's spec: not reused
            if record.get("status") == "error" or key not in wanted or key in found:
                continue
            found[key] = {**record, "reused_from": str(path)}
    return found


def load_timings(out_dir: str | Path) -> list[dict[str, Any]]:
    """Finished run records (spec and metrics, no history) from another evaluation's `runs/`."""
    out = []
    for path in sorted(Path(out_dir).glob("runs/*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        out.append({k: rec.get(k) for k in ("id", "spec", "status", "metrics")})
    return out


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _relabel(record: dict[str, Any], spec: RunSpec, out_dir: str) -> dict[str, Any]:
    copy = {**record, "id": spec.run_id, "spec": asdict(spec), "same_training_as": record["id"]}
    if copy["status"] != "error":
        atomic_write_json(Path(out_dir) / "runs" / f"{spec.run_id}.json", copy)
    return copy


def _with_progress(finished: Iterable[dict[str, Any]], todo: list[RunSpec], clock: TimeLeft, progress: bool) -> Iterable[dict[str, Any]]:
    """Pass records through, with a progress bar that shows the estimated time left (`TimeLeft`)."""
    from tqdm.auto import tqdm

    pending = {s.run_id: s for s in todo}
    fmt = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} runs [{elapsed} elapsed{postfix}]"
    bar = tqdm(total=len(todo), desc="runs", bar_format=fmt, disable=not progress or not todo, dynamic_ncols=True)
    bar.set_postfix_str("time left: after the first run")
    try:
        for rec in finished:
            pending.pop(rec["id"], None)
            clock.observe(rec)
            left = clock.seconds_left(pending.values())
            eta = f"~{format_duration(left)} left" if left is not None else "time left: unknown"
            bar.set_postfix_str(f"{eta}; {rec['id']}: {rec['status']}", refresh=False)
            bar.update(1)
            yield rec
    finally:
        bar.close()


def _execute_local(todo: list[RunSpec], out_dir: str, workers: int, tensorboard: bool) -> Iterable[dict[str, Any]]:
    if workers <= 1:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(RUN_THREADS)  # as in a worker: the same numbers whatever `workers`
        try:
            for spec in todo:
                yield execute(spec, out_dir, tensorboard)
        finally:
            torch.set_num_threads(before)
        return
    payloads = [(asdict(s), out_dir, tensorboard) for s in todo]
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap_unordered(_execute_payload, payloads)


def _execute_ray(todo: list[RunSpec], out_dir: str, tensorboard: bool, address: str | None) -> Iterable[dict[str, Any]]:
    """Each run is a Ray task needing one CPU; records come back as they finish and are saved here,
    so the cluster's nodes need no shared filesystem for results (TensorBoard logs, if on, are
    written where each run ran: point `out_dir` at shared storage to collect them)."""
    try:
        import ray
    except ImportError:
        raise ImportError('backend: ray needs Ray: pip install "metalr[ray]" (or pip install ray)') from None
    if not todo:
        return
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False, logging_level=logging.WARNING)
    waiting: list[Any] = []
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_execute_remote)
        waiting = [remote.remote(asdict(s), out_dir, tensorboard) for s in todo]
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            rec = ray.get(done[0])
            if rec["status"] != "error":
                atomic_write_json(Path(out_dir) / "runs" / f"{rec['id']}.json", rec)
            yield rec
    finally:
        for ref in waiting:  # interrupted: do not leave the rest of the grid running on the cluster
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
