"""The evaluation's config: which strategies, tasks and seeds, and how to run them.

Validated when loaded (before any training): task and strategy names against the
registries, strategy keyword arguments against the controller's signature, and
every strategy is built once on a tiny probe model, so a missing checkpoint or
package fails here with a clear message rather than an hour into the grid.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from metalr.config import ConfigError

DEFAULT_TASKS = ["mnist1d_cnn", "fashion_mnist_mlp"]
DEFAULT_STRATEGIES: list[Any] = ["constant", "step", "exponential", "cosine", "plateau", "hypergradient"]
_LABEL = re.compile(r"^[A-Za-z0-9_.+@-]+$")
BACKENDS = ("local", "ray")


@dataclass
class Strategy:
    """One row of the grid: a registered controller, its kwargs, and the label shown in results."""

    name: str
    label: str = ""
    controller_kwargs: dict[str, Any] = field(default_factory=dict)
    exclude_tasks: list[str] = field(default_factory=list)  # tasks it cannot run on (e.g. a deep ensemble of a CRF tagger)

    def __post_init__(self) -> None:
        self.label = self.label or self.name
        if not _LABEL.match(self.label):
            raise ConfigError(f"strategy label {self.label!r} may only hold letters, digits and _ . + @ - (it names files)")


@dataclass
class TunedConfig:
    """Tuned reference: `strategy` over `n_lrs` LRs log-uniform in [lr/factor, lr*factor] around each task's default LR."""

    strategy: str = "cosine"
    n_lrs: int = 5  # 0 turns the tuned reference off
    factor: float = 10.0
    metric: str = "val_accuracy"  # best LR = best mean final value of this (val_loss when a task lacks it)
    task_metrics: dict[str, str] = field(default_factory=dict)  # per task: a metric other than `metric` (e.g. val_entity_f1 for NER)
    controller_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_lrs < 0 or self.n_lrs == 1:
            raise ValueError(f"tuned.n_lrs must be 0 (off) or >= 2, got {self.n_lrs}")
        if not self.factor > 1.0:
            raise ValueError(f"tuned.factor must be > 1, got {self.factor}")

    def lr_factors(self) -> list[float]:
        """Multipliers of the task's default LR: factor ** linspace(-1, 1, n_lrs), to 6 significant digits."""
        n = self.n_lrs
        return [canonical_factor(self.factor ** (-1.0 + 2.0 * i / (n - 1))) for i in range(n)] if n else []

    def metric_for(self, task: str) -> str:
        return self.task_metrics.get(task, self.metric)


def canonical_factor(x: float) -> float:
    """An LR multiplier rounded to 6 significant digits, so that 10**-0.5 from the tuned grid and
    0.316228 written in a config name the same run (equal specs train once)."""
    return float(f"{x:.6g}")


#: Half-decades from x0.1 to x10: the same points as the default tuned grid, so cosine's sweep runs are shared with it.
DEFAULT_MULTIPLIERS = [0.1, 0.316228, 1.0, 3.16228, 10.0]


@dataclass
class SensitivityConfig:
    """LR-sensitivity sweep: every swept strategy again at `multipliers` x its base LR.

    The base LR is the task's LR for strategies that use the task's optimizer, and the
    strategy's own LR argument for those that build their own (Prodigy, D-Adaptation:
    their d-multiplier, default 1.0; schedule-free: its LR); the report says which.
    """

    enabled: bool = False
    multipliers: list[float] = field(default_factory=lambda: list(DEFAULT_MULTIPLIERS))
    strategies: list[str] | None = None  # labels to sweep (null: every strategy of the grid)
    tasks: list[str] | None = None  # null: every task of the grid
    seeds: list[int] | None = None  # null: every seed of the grid
    reference_tol: float = 0.02  # robustness: a multiplier counts if within this fraction of the tuned reference
    best_tol: float = 0.01  # robustness: LR-range width (decades) within this fraction of the strategy's own best

    def __post_init__(self) -> None:
        if self.enabled and not self.multipliers:
            raise ValueError("sensitivity.multipliers is empty; give at least two (e.g. [0.1, 1, 10]) or set enabled: false")
        if any(not (m > 0 and math.isfinite(m)) for m in self.multipliers):
            raise ValueError(f"sensitivity.multipliers must be positive, got {self.multipliers}")
        self.multipliers = sorted(canonical_factor(m) for m in self.multipliers)
        if len(set(self.multipliers)) != len(self.multipliers):
            raise ValueError(f"sensitivity.multipliers lists a value twice: {self.multipliers}")
        for key in ("reference_tol", "best_tol"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"sensitivity.{key} must be in [0, 1), got {getattr(self, key)}")


@dataclass
class EvalConfig:
    """`python evaluate.py --config configs/eval.yaml [key=value ...]`."""

    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))  # held-out task names (metalr.tasks.available())
    strategies: list[Any] = field(default_factory=lambda: list(DEFAULT_STRATEGIES))  # names, or {name, label, controller_kwargs}
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    preset: str = "cpu"  # task size preset: cpu | full
    steps: int | None = None  # override every task's run length (None: each task's own)
    eval_every: int | None = None  # override every task's evaluation interval
    task_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per task: Task field -> value
    meta_checkpoint: str | None = None  # --controller PATH: checkpoint for every `meta` strategy
    workers: int = 0  # worker processes; 0 = the CPU cores available
    out_dir: str = "results/eval"
    resume: bool = True  # reuse runs/<id>.json whose spec matches; false redoes everything
    reuse_from: list[str] = field(default_factory=list)  # other out dirs: a run that trains exactly like one finished there is copied (with resume)
    nan_recovery: bool = True  # harness: restore + halve LR on a non-finite loss before declaring divergence
    tensorboard: bool = True
    plots: bool = True
    profile_tau_max: float = 4.0  # x-range of the performance profile
    tuned: TunedConfig = field(default_factory=TunedConfig)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    backend: str = "local"  # local: worker processes on this machine | ray: tasks on a Ray cluster (pip install "metalr[ray]")
    ray_address: str | None = None  # ray: cluster address (null: $RAY_ADDRESS, else a local Ray instance)
    validate_build: bool = True  # build each strategy once on a probe model at load time

    def __post_init__(self) -> None:
        from metalr import controllers, tasks
        from metalr.tasks.base import Task

        if not self.tasks:
            raise ValueError("tasks is empty; valid: " + ", ".join(tasks.available()))
        unknown = [t for t in self.tasks if t not in tasks.available()]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; valid: {', '.join(tasks.available())}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks lists a name twice: {self.tasks}")
        bad_overrides = sorted(set(self.task_overrides) - set(self.tasks))
        if bad_overrides:
            raise ValueError(f"task_overrides for task(s) not in the grid: {bad_overrides}; grid: {self.tasks}")
        task_fields = {f.name for f in dataclasses.fields(Task)}
        for task, fields_ in self.task_overrides.items():
            bad = sorted(set(fields_) - task_fields)
            if bad:
                raise ValueError(f"task_overrides.{task}: unknown Task field(s) {bad}; valid: {', '.join(sorted(task_fields))}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct ints, got {self.seeds}")
        if self.preset not in tasks.PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {', '.join(tasks.PRESETS)}")
        for key in ("steps", "eval_every"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1 or null, got {getattr(self, key)}")
        if isinstance(self.reuse_from, str) or not all(isinstance(d, str) and d for d in self.reuse_from):
            raise ValueError(f"reuse_from must be a list of out dirs, got {self.reuse_from!r}")
        if os.path.normpath(self.out_dir) in {os.path.normpath(d) for d in self.reuse_from}:
            raise ValueError(f"reuse_from lists out_dir itself ({self.out_dir}); it is reused anyway (resume)")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = CPU cores), got {self.workers}")
        if not self.profile_tau_max > 1.0:
            raise ValueError(f"profile_tau_max must be > 1, got {self.profile_tau_max}")
        if not self.strategies:
            raise ValueError("strategies is empty; valid: " + ", ".join(controllers.available()))
        self.strategies = [self._strategy(s) for s in self.strategies]
        if self.meta_checkpoint and not any(s.name == "meta" for s in self.strategies):
            raise ValueError("--controller / meta_checkpoint is set but no strategy is `meta`; add `- meta` to strategies")
        labels = [s.label for s in self.strategies]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"strategy label(s) {dup} used twice; give each entry a distinct `label`")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        bad_metric_tasks = sorted(set(self.tuned.task_metrics) - set(self.tasks))
        if bad_metric_tasks:
            raise ValueError(f"tuned.task_metrics for task(s) not in the grid: {bad_metric_tasks}; grid: {self.tasks}")
        self._check_sensitivity(labels)
        if self.tuned.n_lrs and self.tuned.strategy not in controllers.available():
            raise ValueError(f"tuned.strategy: unknown controller {self.tuned.strategy!r}; valid: {', '.join(controllers.available())}")
        if self.validate_build:
            for s in self.strategies:
                probe_build(s.name, s.controller_kwargs, s.label)
            if self.tuned.n_lrs:
                probe_build(self.tuned.strategy, self.tuned.controller_kwargs, "tuned")

    def _check_sensitivity(self, labels: list[str]) -> None:
        sens = self.sensitivity
        for key, grid in (("strategies", labels), ("tasks", self.tasks), ("seeds", self.seeds)):
            chosen = getattr(sens, key)
            if chosen is None:
                continue
            if not chosen:
                raise ValueError(f"sensitivity.{key} is empty; leave it out (null) to sweep every one of the grid")
            missing = [x for x in chosen if x not in grid]
            if missing:
                raise ValueError(f"sensitivity.{key}: {missing} not in the grid; valid: {', '.join(map(str, grid))}")

    def sweep_strategies(self) -> list[Strategy]:
        """The strategies the sensitivity sweep runs (empty when it is off)."""
        if not self.sensitivity.enabled:
            return []
        chosen = self.sensitivity.strategies
        return [s for s in self.strategies if chosen is None or s.label in chosen]

    def _strategy(self, entry: Any) -> Strategy:
        from metalr import controllers
        from metalr.registry import check_kwargs

        if isinstance(entry, Strategy):
            s = entry
        elif isinstance(entry, str):
            s = Strategy(entry)
        elif isinstance(entry, dict):
            extra = sorted(set(entry) - {"name", "label", "controller_kwargs", "exclude_tasks"})
            if "name" not in entry or extra:
                raise ValueError(f"strategy entry {entry!r} needs `name` and may hold only label, controller_kwargs, exclude_tasks")
            s = Strategy(str(entry["name"]), str(entry.get("label") or ""), dict(entry.get("controller_kwargs") or {}), list(entry.get("exclude_tasks") or []))
        else:
            raise ValueError(f"strategy entry must be a name or a mapping, got {entry!r}")
        if s.name not in controllers.available():
            raise ValueError(f"unknown strategy {s.name!r}; valid: {', '.join(controllers.available())}")
        if s.name == "meta" and self.meta_checkpoint:
            path = os.path.expanduser(self.meta_checkpoint)
            if not os.path.exists(path):
                raise ValueError(f"--controller / meta_checkpoint: no such file {path!r}")
            s.controller_kwargs = {**s.controller_kwargs, "checkpoint": path}
        check_kwargs("controller", s.name, controllers.get(s.name), {k: v for k, v in s.controller_kwargs.items() if k != "optimizer_kwargs"})
        return s


def probe_build(name: str, kwargs: dict[str, Any], label: str) -> None:
    """Build controller `name` once on a tiny model, the way the harness will; re-raise as a clear error."""
    import torch
    from torch.utils.data import TensorDataset

    from metalr.tasks.base import Task
    from metalr.train import setup

    x, y = torch.zeros(8, 4), torch.zeros(8, dtype=torch.long)
    probe = Task(
        name="probe",
        train_data=TensorDataset(x, y),
        val_data=TensorDataset(x, y),
        model_fn=lambda: torch.nn.Linear(4, 2),
        num_classes=2,
        num_features=4,
        steps=10_000,
    )
    try:
        setup(name, task=probe, total_steps=probe.steps, controller_kwargs=kwargs)
    except Exception as e:  # noqa: BLE001 - any failure here is a config problem to report
        raise ValueError(f"strategy {label!r} (controller {name!r}, kwargs {kwargs}) cannot be built: {type(e).__name__}: {e}") from None
