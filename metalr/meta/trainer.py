"""Meta-training: sample tasks, unroll inner training under the policy, step the policy.

One meta-step: every process draws its share of the meta-batch (task i of step s
is seeded by (seed, s, i), so the draw does not depend on the process count),
trains each task for its full trajectory as a chain of K-step truncations
(`metalr.meta.unroll`), and backpropagates each truncation's validation-loss
terms into the policy as it goes. With `truncation` at least the longest run
(`full_unroll`), every run is one truncation and the meta-gradient is the exact
derivative of the run's meta-loss; with `loss_from` that meta-loss is only the
end of the run (e.g. the last 20%), so an early decision is judged by where
training ends, not by the next few dozen steps (tried in configs/meta_train_full_unroll.yaml, not
shipped: docs/meta_training/README.md). Truncated
chains fight short-horizon bias (Wu et al. 2018; Metz et al. 2019) with:
- the meta-loss of a task covers its whole trajectory: the validation soft error
  (1 - mean probability of the true class, a differentiable stand-in for the error
  rate) relative to its value at init, every `val_every` steps, weighted from 1 at
  the start up to `end_weight` at the end: where training ends counts most, but
  every phase counts;
- `credit`: d(log LR)/d(policy) is carried forward across truncations (real-time
  recurrent learning for that one scalar), so a loss late in training is credited
  to every earlier decision that set its LR, not only to the last K steps'.
Run lengths follow a curriculum: the longest run drawn grows from
`3 * steps_range[0]` to `steps_range[1]` over the first `curriculum_meta_steps`.
With `lr_labels` (stage 5, `metalr.meta.labels`) tasks, run lengths included, come instead from a
pool swept beforehand with cosine at 7 peak LRs, each at a random base LR, and the meta-loss also
penalises log LR outside the band of near-best peak LRs (`label_weight`).
Gradients are averaged over the meta-batch (all-reduce when distributed),
clipped, and Adam takes one step. Processes take tasks from a shared queue,
most expensive first (`TaskQueue`), so tasks of unequal length keep both busy;
each task's gradient has its own row, summed in task order, so the update is the
same whatever process ran which task and however many there are.

Every `validate_every` meta-steps the current policy is run, frozen, through the
deployed path (`metalr.meta.validate.run_spec`: real optimizer, `SignalTracker`,
`MetaController`) on fixed validation tasks that are neither meta-training nor
evaluation tasks, each at base LR x0.1, x1 and x10; the policy with the best mean
final validation accuracy is the one exported.

Everything a meta-step depends on is (policy, meta-optimizer, step, seed), so a
checkpoint of those (plus RNG state, history and the best policy so far) taken
between meta-steps lets `--resume` reproduce an uninterrupted run exactly.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from metalr.meta.checkpoint import read_policy, save_policy
from metalr.meta.features import FORMAT_FEATURES
from metalr.meta.policy import MetaPolicy
from metalr.meta.rule import RuleConfig
from metalr.meta.tasks import (
    ALL_FAMILIES,
    DATA_FAMILIES,
    OPTIMIZERS,
    PRETRAINED_MODES,
    TASK_DATA,
    TaskSpec,
    materialise,
    sample_spec,
    task_seed,
    val_reading_every,
    with_pretraining,
)
from metalr.testing import pause_point

log = logging.getLogger(__name__)
TRAIN_STATE = "train_state.safetensors"
BEST_POLICY = "best_policy.safetensors"


@dataclass
class MetaTrainConfig:
    """Everything train_meta.py reads (configs/meta_train.yaml; `key=value` overrides)."""

    seed: int = 0
    meta_steps: int = 300  # meta-updates (0 with init_from: validate that policy and export it under this config's rule)
    meta_batch: int = 8  # tasks per meta-update (split across processes)
    meta_lr: float = 1e-3  # Adam on the policy
    grad_clip: float = 1.0  # meta-gradient norm clip
    task_grad_clip: float = 0.0  # clip each task's meta-gradient to this norm before the batch sum (0: off), so one chaotic unroll cannot steer the step
    truncation: int = 20  # K inner steps per differentiable truncation
    val_every: int = 5  # a meta-loss term every this many inner steps
    val_batch: int = 256
    objective: str = "soft_error"  # validation quantity of the meta-loss: soft_error | log_val_loss (metalr.meta.unroll.val_objective)
    end_weight: float = 4.0  # weight of the last meta-loss term relative to the first (linear in between)
    loss_from: float = 0.0  # meta-loss terms only from this fraction of each run on (0: the whole trajectory)
    credit: bool = True  # carry d(log LR)/d(policy) across truncations
    lookahead: int = 0  # score each truncation after this many more steps at the LR it started from (metalr.meta.unroll.truncation; 0: off)
    lr_labels: str = ""  # LR-label file (scripts/meta_label_tasks.py): tasks (and their run lengths) are drawn from it, each at a random base LR
    label_weight: float = 0.0  # weight of the band penalty (metalr.meta.labels.band_penalty), per step, relative to the val-loss meta-loss
    label_window: list[float] = field(default_factory=lambda: [0.1, 0.9])  # progress range over which the band penalty counts
    init_from: str = ""  # warm start: a policy file (same model_args); it is validated at meta-step 0 as a candidate
    data_families: list[str] = field(default_factory=lambda: list(DATA_FAMILIES))  # without lr_labels (with it, the label file's tasks are the draw)
    optimizers: list[str] = field(default_factory=lambda: list(OPTIMIZERS))
    pretrained_fraction: float = 0.0  # this fraction of tasks start from pretrained weights (metalr.meta.tasks.with_pretraining; no LR band)
    lr_decades: float = 1.5  # base LR = usual LR * 10**U(-lr_decades, lr_decades)
    steps_range: list[int] = field(default_factory=lambda: [100, 2000])  # inner run lengths, log-uniform
    curriculum_meta_steps: int = 150  # the longest run drawn grows to steps_range[1] over these meta-steps
    held_out: list[str] = field(default_factory=lambda: ["mnist1d_cnn", "fashion_mnist_mlp", "rt_bilstm", "twitter_ner_bilstm_crf"])
    max_log_step: float = 0.2  # |log LR change| per 1/horizon_steps of a run
    rule: dict[str, Any] = field(default_factory=dict)  # RuleConfig fields (bounds, horizon, guard); defaults if empty
    validate_every: int = 25  # meta-steps between validation runs (0: never; the last policy is exported)
    validation_tasks: int = 8  # generated validation tasks (plus wine and breast cancer), each at x0.1, x1, x10
    validation_large: int = 0  # more validation tasks from the opt-in teacher_large family (tasks still learning at the end)
    validation_text: int = 0  # more validation tasks over real text (doctext, GRU/LSTM; metalr.meta.tasks.validation_specs)
    validation_max_steps: int = 1000  # cap on a validation run's length
    val_feature: float = 0.0  # > 0: a format-4 policy (`val_rise`); a run has validation readings with this probability
    out_dir: str = "runs/meta"
    export_path: str = ""  # also write the selected frozen policy here (e.g. checkpoints/metalr_default.safetensors)
    checkpoint_every: int = 5  # meta-steps between (atomic) training checkpoints
    log_every: int = 1
    trajectory_every: int = 25  # log a sampled LR trajectory to TensorBoard every this many meta-steps
    num_threads: int = 1  # torch CPU threads per process (fixed for reproducibility)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.meta_steps < (0 if self.init_from else 1):
            raise ValueError(f"meta_steps must be >= 1 (or 0 with init_from: export that policy under this rule), got {self.meta_steps}")
        for key in ("meta_batch", "truncation", "val_every", "val_batch", "checkpoint_every", "log_every", "trajectory_every", "num_threads"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if (
            min(self.validate_every, self.validation_tasks, self.validation_large, self.validation_text, self.curriculum_meta_steps) < 0
            or self.validation_max_steps < 1
        ):
            raise ValueError(
                "validate_every, validation_tasks, validation_large, validation_text and curriculum_meta_steps must be >= 0, validation_max_steps >= 1"
            )
        if not 0.0 <= self.val_feature <= 1.0:
            raise ValueError(f"val_feature must be a probability in [0, 1] (0: a format-3 policy, no validation readings), got {self.val_feature}")
        if self.task_grad_clip < 0:
            raise ValueError(f"task_grad_clip must be >= 0, got {self.task_grad_clip}")
        if not (self.meta_lr > 0 and self.grad_clip > 0 and self.max_log_step > 0 and self.end_weight > 0 and self.lr_decades >= 0):
            raise ValueError("meta_lr, grad_clip, max_log_step and end_weight must be > 0, lr_decades >= 0")
        if not 0.0 <= self.pretrained_fraction <= 1.0:
            raise ValueError(f"pretrained_fraction must be in [0, 1], got {self.pretrained_fraction}")
        if not 0.0 <= self.loss_from < 1.0:
            raise ValueError(f"loss_from must be in [0, 1), got {self.loss_from}")
        if self.label_weight < 0 or (self.label_weight > 0 and not self.lr_labels):
            raise ValueError(f"label_weight must be >= 0, and > 0 only with an lr_labels file, got {self.label_weight} with lr_labels={self.lr_labels!r}")
        if len(self.label_window) != 2 or not 0.0 <= self.label_window[0] <= self.label_window[1] <= 1.0:
            raise ValueError(f"label_window must be [from, to] with 0 <= from <= to <= 1, got {self.label_window}")
        if self.lr_labels:  # refuses a missing or malformed file now, not at the first meta-step
            label_data = {e["spec"]["data"] for e in _labels(self.lr_labels)}
            leaked_labels = sorted(t for t in self.held_out if t in label_data or TASK_DATA.get(t) in label_data)
            if leaked_labels:
                raise ValueError(f"task(s) {leaked_labels} are held out but {self.lr_labels} has tasks on their data")
        self.rule_config()  # validates the rule's fields
        if self.objective not in ("soft_error", "log_val_loss"):
            raise ValueError(f"unknown objective {self.objective!r}; valid: soft_error, log_val_loss")
        if self.lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {self.lookahead}")
        if self.truncation % self.val_every:
            raise ValueError(f"truncation ({self.truncation}) must be a multiple of val_every ({self.val_every})")
        unknown = sorted(set(self.data_families) - set(ALL_FAMILIES))
        if unknown or not self.data_families:
            raise ValueError(f"unknown meta-training task(s) {unknown or '(none given)'}; valid: {', '.join(ALL_FAMILIES)}")
        leaked = sorted(t for t in self.held_out if t in self.data_families or TASK_DATA.get(t) in self.data_families)
        if leaked:
            raise ValueError(f"task(s) {leaked} are both meta-trained on and held out (their data is a meta-training family)")
        bad_opt = sorted(set(self.optimizers) - set(OPTIMIZERS))
        if bad_opt or not self.optimizers:
            raise ValueError(f"unknown optimizer(s) {bad_opt or '(none given)'}; valid: {', '.join(OPTIMIZERS)} (higher 0.2.1 has no AdamW)")
        lo, hi = (self.steps_range + [0, 0])[:2]
        if len(self.steps_range) != 2 or not 0 < lo <= hi or not (self.truncation <= lo or self.truncation >= hi):
            raise ValueError(
                f"steps_range must be [lo, hi] with truncation ({self.truncation}) <= lo <= hi (chains of truncations), "
                f"or lo <= hi <= truncation (every run unrolled whole), got {self.steps_range}"
            )

    @property
    def full_unroll(self) -> bool:
        """Every run is one truncation: the meta-gradient is exact for the whole run (no truncation bias)."""
        return self.truncation >= self.steps_range[1]

    @property
    def step_multiple(self) -> int:
        """Run lengths are drawn as multiples of this: the truncation, or `val_every` when runs are unrolled whole."""
        return self.val_every if self.full_unroll else self.truncation

    @property
    def n_features(self) -> int:
        """The policy's inputs: format 4 (with `val_rise`) when runs may have validation readings, else format 3."""
        return FORMAT_FEATURES[4 if self.val_feature > 0 else 3]

    def rule_config(self) -> RuleConfig:
        try:
            return RuleConfig(**self.rule)
        except (TypeError, ValueError) as e:
            raise ValueError(f"rule: {e}") from None

    def max_steps_at(self, meta_step: int) -> int:
        """The curriculum: the longest inner run drawn at `meta_step`."""
        lo, hi = self.steps_range
        if not self.curriculum_meta_steps:
            return hi
        start = min(hi, 3 * lo)
        return int(start + (hi - start) * min(1.0, meta_step / self.curriculum_meta_steps))


# ------------------------------------------------------------------ one meta-step
def _labels(path: str) -> tuple[dict[str, Any], ...]:
    """The labelled tasks of `path`, read once per version of the file (its size and modification time)."""
    try:
        st = os.stat(path)
        version = (st.st_size, st.st_mtime_ns)
    except OSError:
        version = (-1, -1)  # read_labels says what is wrong
    return _read_labels_cached(path, version)


@functools.cache
def _read_labels_cached(path: str, version: tuple[int, int]) -> tuple[dict[str, Any], ...]:
    from metalr.meta.labels import read_labels

    entries = read_labels(path)
    if not entries:
        raise ValueError(f"{path}: no labelled tasks")
    return tuple(entries)


def draw_task(cfg: MetaTrainConfig, step: int, index: int) -> tuple[TaskSpec, tuple[float, float] | None]:
    """Task `index` of meta-step `step` and its LR band (None without `lr_labels`).

    With `lr_labels`, a labelled task is picked and given a base LR of usual * 10**U(-lr_decades, lr_decades),
    both drawn from the task's seed, so the draw does not depend on the process count either.
    With `pretrained_fraction` > 0, a draw of its own stream (the task's seed, stream 1: every other draw is
    unchanged) makes that fraction of tasks pretrained ones, half `continue`, half `new_head`; their
    band is None (the labels were swept from a random initialisation).
    """
    seed = task_seed(cfg.seed, step, index)
    band: tuple[float, float] | None = None
    if cfg.lr_labels:
        from metalr.meta.labels import labelled_spec

        entries = _labels(cfg.lr_labels)
        rng = np.random.default_rng(seed)
        entry = entries[int(rng.integers(len(entries)))]
        spec, band = labelled_spec(entry, float(rng.uniform(-cfg.lr_decades, cfg.lr_decades)))
    else:
        spec = sample_spec(
            seed, tuple(cfg.data_families), tuple(cfg.optimizers), cfg.lr_decades, (cfg.steps_range[0], cfg.max_steps_at(step)), cfg.step_multiple
        )
    if cfg.pretrained_fraction > 0:
        u, mode = np.random.default_rng([seed, 1]).uniform(size=2)
        if u < cfg.pretrained_fraction:
            return with_pretraining(spec, PRETRAINED_MODES[int(mode < 0.5)]), None
    return spec, band


def labels_digest(cfg: MetaTrainConfig) -> str:
    """sha256 of the `lr_labels` file ("" without one): a resumed run must draw from the same labels."""
    import hashlib

    return hashlib.sha256(Path(cfg.lr_labels).read_bytes()).hexdigest() if cfg.lr_labels else ""


def band_steps(steps: int, window: list[float] | tuple[float, float]) -> int:
    """How many of a `steps`-long run's steps have their progress in `window` (the band penalty's normaliser)."""
    from metalr.meta.labels import in_window

    return sum(1 for t in range(1, steps + 1) if in_window(t, steps, window))


def trajectory_weight(steps: int, val_every: int, end_weight: float, loss_from: float = 0.0) -> float:
    """Sum of the meta-loss weights of a full `steps`-long trajectory (the per-task normaliser)."""
    from metalr.meta.unroll import meta_weight

    points = [t for t in range(1, steps + 1) if t % val_every == 0 or t == steps]
    return sum(meta_weight(t / steps, end_weight, loss_from) for t in points)


def run_trajectory(
    traj: Any, policy: MetaPolicy, rule: RuleConfig, cfg: MetaTrainConfig, norm: float, band: tuple[float, float] | None = None, band_norm: float = 1.0
) -> tuple[float, list[torch.Tensor], float]:
    """Train one task to the end as a chain of truncations, adding d(meta-loss / norm)/d(policy) into `.grad`.

    With a `band` (the task's LR label), the meta-loss also has `cfg.label_weight` times the band penalty
    (`metalr.meta.labels.band_penalty`) summed over the run's steps in `cfg.label_window`, over `band_norm`.
    Returns (sum of the trajectory's weighted meta-loss terms, final credit d(log LR)/d(policy), sum of band penalties).
    With `cfg.credit`, each truncation's loss is also credited, through the LR state it started
    from, to every earlier policy output (exact for that state: the carried derivative equals
    what one long truncation would give; `tests/test_meta.py` checks it).
    """
    from metalr.meta.unroll import truncation

    params = list(policy.parameters())
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    credit = [torch.zeros_like(p) for p in params]  # d(log_rel at truncation start)/d(policy)
    task_loss = band_loss = 0.0
    window = (cfg.label_window[0], cfg.label_window[1])
    while not traj.done:
        res = truncation(
            traj, policy, rule, cfg.truncation, cfg.val_every, cfg.end_weight, loss_from=cfg.loss_from, band=band, band_window=window, lookahead=cfg.lookahead
        )
        task_loss += float(res.loss.detach())
        band_loss += float(res.band_loss.detach())
        objective = res.loss / norm
        if band is not None and cfg.label_weight and res.band_terms:
            objective = objective + (cfg.label_weight / band_norm) * res.band_loss
        wrt = [*params, res.log_rel_start]
        g_end: tuple[torch.Tensor | None, ...] = ()
        d_end = 0.0
        if cfg.credit and res.log_rel_end.requires_grad:
            g_end = torch.autograd.grad(res.log_rel_end, wrt, allow_unused=True, retain_graph=True)
            d_end = float(g_end[-1]) if g_end[-1] is not None else 0.0
        if objective.requires_grad:
            g_loss = torch.autograd.grad(objective, wrt, allow_unused=True)
            d_start = float(g_loss[-1]) if g_loss[-1] is not None else 0.0
            for p, g, c in zip(params, g_loss[:-1], credit):
                if g is not None:
                    p.grad.add_(g)  # type: ignore[union-attr]
                if cfg.credit and d_start:
                    p.grad.add_(c, alpha=d_start)  # type: ignore[union-attr]
        if g_end:
            credit = [c * d_end + (g if g is not None else torch.zeros_like(c)) for c, g in zip(credit, g_end[:-1])]
    return task_loss, credit, band_loss


def task_cost(spec: TaskSpec) -> float:
    """A rough relative cost of a task's trajectory (inner steps x batch, x4 for recurrent/attention/2-d conv models)."""
    steps = spec.steps + 0.3 * spec.params.get("pretrain_steps", 0)  # a plain (pretraining) step counted as 0.3 unrolled ones: a rough guess, not measured
    return steps * (spec.batch_size + 32) * (4.0 if spec.model in ("gru", "lstm", "attention", "cnn2d") else 1.0)


class TaskQueue:
    """Hands out task indices to processes: most expensive first, each to whichever process asks next.

    Tasks of unequal length split evenly across processes leave one waiting for the other; a shared
    counter (the process group's key-value store) lets a process that finishes early take the next
    task. With one process, or without a store, a process walks its own static share of the same order.
    """

    def __init__(self, order: list[int], key: str, rank: int, world: int) -> None:
        self.order, self.key, self.rank, self.world = order, key, rank, world
        self.store = None
        if world > 1:
            try:
                self.store = dist.distributed_c10d._get_default_store()
            except Exception:  # noqa: BLE001 - no store reachable: static shares below
                log.warning("meta-training: no shared store for the task queue; splitting tasks statically")
        self._next = rank

    def __iter__(self) -> Any:
        while True:
            if self.store is not None:
                i = int(self.store.add(self.key, 1)) - 1
            else:
                i, self._next = self._next, self._next + self.world
            if i >= len(self.order):
                return
            yield self.order[i]


def meta_step(policy: MetaPolicy, meta_opt: torch.optim.Optimizer, cfg: MetaTrainConfig, step: int, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """One meta-update over the meta-batch; processes share the tasks through a `TaskQueue`.

    Each task's meta-gradient is kept in its own row and the rows are summed in task order after the
    all-reduce, so the update does not depend on which process ran which task, or on how many there are.
    """
    from metalr.meta.unroll import start

    rule = cfg.rule_config()
    params = list(policy.parameters())
    n = sum(p.numel() for p in params)
    draws = [draw_task(cfg, step, index) for index in range(cfg.meta_batch)]
    specs = [spec for spec, _ in draws]
    order = sorted(range(cfg.meta_batch), key=lambda i: -task_cost(specs[i]))
    grads = torch.zeros(cfg.meta_batch, n, dtype=torch.float32)
    stats = torch.zeros(cfg.meta_batch, 5, dtype=torch.float64)  # loss, diverged, guard fired, inner steps, mean band penalty
    lrs0 = torch.zeros(specs[0].steps + 1, dtype=torch.float64)  # task 0's LR trajectory (for the logs), length first
    for index in TaskQueue(order, f"meta_step/{step}", rank, world):
        spec = specs[index]
        for p in params:
            p.grad = torch.zeros_like(p)
        traj = start(materialise(spec), cfg.val_batch, cfg.objective, val_reading_every(spec, cfg.val_feature))
        norm = trajectory_weight(spec.steps, cfg.val_every, cfg.end_weight, cfg.loss_from) * cfg.meta_batch
        n_band = max(1, band_steps(spec.steps, cfg.label_window))
        task_loss, _, band_loss = run_trajectory(traj, policy, rule, cfg, norm, draws[index][1], n_band * cfg.meta_batch)
        grads[index] = torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]
        if cfg.task_grad_clip:
            row_norm = float(grads[index].norm())
            if row_norm > cfg.task_grad_clip:
                grads[index] *= cfg.task_grad_clip / row_norm
        stats[index] = torch.tensor(
            [task_loss * cfg.meta_batch / norm, float(traj.diverged), float(traj.rule.guard_fired), float(traj.step), band_loss / n_band]
        )
        if index == 0:
            lrs0[0] = len(traj.lrs)
            lrs0[1 : 1 + len(traj.lrs)] = torch.tensor([lr / spec.lr for lr in traj.lrs], dtype=torch.float64)
    if world > 1:
        for t in (grads, stats, lrs0):
            dist.all_reduce(t)  # every row is filled by exactly one process: the sum is exact
    total = grads.sum(0)
    offset = 0
    for p in params:
        p.grad = total[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    if math.isfinite(grad_norm):
        meta_opt.step()
    sums = stats.sum(0)
    return {
        "meta_loss": float(sums[0]) / cfg.meta_batch,
        "diverged": float(sums[1]),
        "guard_fired": float(sums[2]),
        "inner_steps": float(sums[3]),
        "band_penalty": float(sums[4]) / cfg.meta_batch,
        "grad_norm": grad_norm,
        "lr_trajectory": lrs0[1 : 1 + int(lrs0[0])].tolist(),
    }


# ------------------------------------------------------------------ validation
def validation_score(policy: MetaPolicy, cfg: MetaTrainConfig, rank: int = 0, world: int = 1, key: str = "validation") -> dict[str, float]:
    """Mean final validation accuracy of the frozen policy, deployed, on the fixed validation tasks.

    With `world` > 1 every process must call it (the same `key`, new for each call: the task queue's counter): the runs
    are shared through a `TaskQueue` (most expensive first) and their results summed across processes. Each run is
    the same wherever it runs (its data, model and batches come from its spec's seed), and each result is filled in by
    one process only, so the score is the single process's, bit for bit (`tests/test_meta.py`)."""
    from metalr.controllers.meta import MetaController
    from metalr.meta.checkpoint import FrozenPolicy
    from metalr.meta.tasks import validation_specs
    from metalr.meta.validate import run_spec

    frozen_policy = MetaPolicy(**{**policy.model_args, "hidden": tuple(policy.model_args["hidden"])})
    frozen_policy.load_state_dict(policy.state_dict())
    frozen_policy.eval()
    frozen = FrozenPolicy(frozen_policy, {}, "", cfg.rule_config())
    specs = [
        replace(spec, steps=min(spec.steps, cfg.validation_max_steps))
        for spec in validation_specs(cfg.validation_tasks, n_large=cfg.validation_large, n_text=cfg.validation_text)
    ]
    results = torch.zeros(len(specs), 2, dtype=torch.float64)  # final accuracy, diverged
    order = sorted(range(len(specs)), key=lambda i: -task_cost(specs[i]))
    for i in TaskQueue(order, key, rank, world):
        spec = specs[i]
        readings = val_reading_every(spec, cfg.val_feature)  # (the capped run's; none for a format-3 policy)
        r = run_spec(spec, lambda opt, total: MetaController(opt, checkpoint=frozen, total_steps=total), val_reading=readings, val_batch=cfg.val_batch)
        results[i, 0], results[i, 1] = r["val_accuracy"], float(r["diverged"])
    if world > 1:
        dist.all_reduce(results)  # every row is filled by exactly one process: the sum is exact
    accs = results[:, 0].tolist()
    return {"val_score": sum(accs) / max(1, len(accs)), "val_diverged": float(results[:, 1].sum())}


# ------------------------------------------------------------------- checkpoints
def save_train_state(
    path: Path, policy: MetaPolicy, meta_opt: torch.optim.Optimizer, cfg: MetaTrainConfig, step: int, history: list[dict[str, Any]], best: dict[str, Any]
) -> None:
    """Policy, meta-optimizer, RNG, counters, history and best-so-far in one atomically written safetensors file."""
    import json

    from safetensors.torch import save

    from metalr.io import atomic_write_bytes, versions

    tensors = {f"policy.{k}": v.detach().clone().contiguous() for k, v in policy.state_dict().items()}
    sd = meta_opt.state_dict()
    for i, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).clone().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    config = {**asdict(cfg), "lr_labels_sha256": labels_digest(cfg)}
    meta = {"step": step, "config": config, "param_groups": sd["param_groups"], "history": history, "best": best, "versions": versions()}
    atomic_write_bytes(path, save(tensors, metadata={"metalr_train": json.dumps(meta)}))


def load_train_state(path: Path, policy: MetaPolicy, meta_opt: torch.optim.Optimizer) -> tuple[int, list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Restore what `save_train_state` wrote; returns (step, history, best, saved config)."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["metalr_train"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"cannot resume from {path}: unreadable training checkpoint ({type(e).__name__}: {e})") from None
    policy.load_state_dict({k[len("policy.") :]: v for k, v in tensors.items() if k.startswith("policy.")}, strict=True)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    meta_opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["step"]), list(meta["history"]), dict(meta.get("best") or {}), meta["config"]


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Meta-loss (and validation score) against meta-step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [h["step"] for h in history if "meta_loss" in h]  # a warm start's step-0 record has only a validation score
    loss = [h["meta_loss"] for h in history if "meta_loss" in h]
    ax[0].plot(steps, loss, lw=0.6, alpha=0.5, label="meta-loss")
    if len(loss) >= 10:
        k = 10
        ax[0].plot(steps[k - 1 :], [sum(loss[i - k + 1 : i + 1]) / k for i in range(k - 1, len(loss))], lw=1.5, label="moving mean (10)")
    ax[0].set(xlabel="meta-step", ylabel="weighted mean val objective / initial", title="meta-training loss")
    ax[0].legend()
    vs = [(h["step"], h["val_score"]) for h in history if "val_score" in h]
    if vs:
        ax[1].plot(*zip(*vs), marker="o")
    ax[1].set(xlabel="meta-step", ylabel="mean final val accuracy", title="validation tasks (deployed, x0.1/x1/x10 LR)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _warm_start(policy: MetaPolicy, path: str) -> None:
    """Load the weights of the policy file `path` into `policy` (refused unless the architectures match).

    A file whose features are a prefix of this metalr's (an earlier format) is widened with zero
    input weights (`read_policy(expand_features=True)`): it computes what it did, and training
    starts from it.
    """
    from metalr.meta.checkpoint import read_policy

    src = read_policy(path, expand_features=policy.n_features).policy  # a policy of an earlier format starts with zero weights on the new features
    if dict(src.model_args) != dict(policy.model_args):
        raise ValueError(f"init_from {path}: model_args {src.model_args} differ from this run's {policy.model_args}")
    policy.load_state_dict(src.state_dict())


# ---------------------------------------------------------------------- the loop
#: Keys that choose the validation runs (the export's selection, not the training trajectory).
_VALIDATION_KEYS = ("validation_tasks", "validation_large", "validation_text", "validation_max_steps")
#: Keys that may differ on --resume: they do not change the policy's training trajectory.
_RESUMABLE_CHANGES = ("meta_steps", "progress", "export_path", "out_dir", "validate_every", *_VALIDATION_KEYS)


def _rescore_best(out: Path, best: dict[str, Any], cfg: MetaTrainConfig, changed: list[str], rule: RuleConfig, extra: dict[str, Any]) -> dict[str, Any]:
    """The best-so-far scored again on the validation runs of `cfg` (resumed with other validation runs: its score
    and the ones to come must be measured on the same runs, or the export would compare two sets of runs); its file's
    metadata follows."""
    policy = read_policy(out / BEST_POLICY).policy
    score = validation_score(policy, cfg)["val_score"]
    log.warning(
        "--resume with other validation runs (%s): the best so far (meta-step %s) scored again on them: %.4f (was %.4f on the old ones)",
        ", ".join(changed), best.get("step"), score, best["val_score"],
    )  # fmt: skip
    best = {**best, "val_score": score, "rescored_at": {k: getattr(cfg, k) for k in changed}}
    save_policy(out / BEST_POLICY, policy, rule=rule, config=asdict(cfg), extra={**extra, "meta_steps": best["step"], "selected_by": best})
    return best


def train(cfg: MetaTrainConfig, resume: bool = False) -> MetaPolicy:
    """Meta-train per `cfg`; distributed when launched by torchrun (WORLD_SIZE > 1)."""
    torch.set_num_threads(cfg.num_threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    out = Path(cfg.out_dir)
    rule = cfg.rule_config()
    if cfg.lr_labels and rank == 0:
        log.info(
            "lr_labels %s: every task is one of its labelled tasks, at the run length it was labelled at (data_families and the run-length curriculum are not used)",
            cfg.lr_labels,
        )
    torch.manual_seed(cfg.seed)
    policy = MetaPolicy(cfg.n_features, max_log_step=cfg.max_log_step)
    meta_opt = torch.optim.Adam(policy.parameters(), lr=cfg.meta_lr)
    step, history, best = 0, [], {}  # type: ignore[var-annotated]
    revalidate: list[str] = []
    ckpt = out / TRAIN_STATE
    if resume and ckpt.is_file():
        step, history, best, saved_cfg = load_train_state(ckpt, policy, meta_opt)
        defaults = asdict(MetaTrainConfig())  # a key newer than the checkpoint had its default then
        changed = sorted(k for k, v in asdict(cfg).items() if saved_cfg.get(k, defaults[k]) != v and k not in _RESUMABLE_CHANGES)
        if saved_cfg.get("lr_labels_sha256", "") != labels_digest(cfg):
            changed.append(f"the contents of lr_labels {cfg.lr_labels!r}")
        if changed:
            raise ValueError(f"--resume with a different config would not reproduce the run; changed keys: {changed}")
        log.info("resumed from %s at meta-step %d", ckpt, step)
        revalidate = [k for k in _VALIDATION_KEYS if saved_cfg.get(k, defaults[k]) != getattr(cfg, k)]
    elif resume:
        log.warning("--resume: no checkpoint at %s; starting fresh", ckpt)
    if cfg.init_from and step == 0:
        _warm_start(policy, cfg.init_from)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))
    bar = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.meta_steps, initial=step, desc="meta-train")
    extra = {"horizon_steps": rule.horizon_steps}
    if revalidate and rank == 0 and cfg.validate_every and best and (out / BEST_POLICY).is_file():
        best = _rescore_best(out, best, cfg, revalidate, rule, extra)
    if cfg.init_from and step == 0 and cfg.validate_every:
        # the warm start is itself a candidate: training must beat it on the validation tasks to replace it
        t0 = time.perf_counter()
        record0: dict[str, Any] = {"step": 0, "tasks_seen": 0, **validation_score(policy, cfg, rank, world, "validation/0")}
        record0["wall_s"] = time.perf_counter() - t0
        if rank == 0:
            best = {"val_score": record0["val_score"], "step": 0, "init_from": cfg.init_from}
            save_policy(out / BEST_POLICY, policy, rule=rule, config=asdict(cfg), extra={**extra, "meta_steps": 0, "selected_by": best})
            history.append(record0)
            log.info("warm start %s: val_score %.4f", cfg.init_from, record0["val_score"])
    t0 = time.perf_counter()
    while step < cfg.meta_steps:
        stats = meta_step(policy, meta_opt, cfg, step, rank, world)
        step += 1
        tasks_seen = (history[-1]["tasks_seen"] if history else 0) + cfg.meta_batch
        record: dict[str, Any] = {"step": step, "tasks_seen": tasks_seen, **{k: v for k, v in stats.items() if k != "lr_trajectory"}}
        record["wall_s"] = (history[-1]["wall_s"] if history else 0.0) + (time.perf_counter() - t0)
        t0 = time.perf_counter()
        validate = cfg.validate_every and (step % cfg.validate_every == 0 or step == cfg.meta_steps)  # every process runs some of the runs
        if validate:
            record.update(validation_score(policy, cfg, rank, world, f"validation/{step}"))
            if rank == 0 and record["val_score"] > best.get("val_score", -math.inf):
                best = {"val_score": record["val_score"], "step": step}
                save_policy(out / BEST_POLICY, policy, rule=rule, config=asdict(cfg), extra={**extra, "meta_steps": step, "selected_by": best})
            record["wall_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
        history.append(record)
        if writer is not None:
            if step % cfg.log_every == 0:
                writer.add_scalar("losses/meta_loss", stats["meta_loss"], step)
                writer.add_scalar("charts/meta_grad_norm", stats["grad_norm"], step)
                writer.add_scalar("charts/diverged_tasks", stats["diverged"], step)
                writer.add_scalar("charts/guard_fired", stats["guard_fired"], step)
                writer.add_scalar("charts/tasks_seen", tasks_seen, step)
                if cfg.lr_labels:
                    writer.add_scalar("losses/band_penalty", stats["band_penalty"], step)
            if validate:
                writer.add_scalar("charts/val_score", record["val_score"], step)
            if step % cfg.trajectory_every == 0 or step == 1:
                for i, r in enumerate(stats["lr_trajectory"]):
                    writer.add_scalar(f"lr_trajectory/meta_step_{step:05d}", r, i)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(meta_loss=f"{stats['meta_loss']:.4f}", best=f"{best.get('val_score', float('nan')):.4f}")
        if rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.meta_steps):
            save_train_state(ckpt, policy, meta_opt, cfg, step, history, best)
            pause_point("meta_checkpoint", step)  # tests: kill at a known point (metalr.testing)
            log.info("meta-step %d: meta_loss %.4f, %d tasks seen, %.0f s", step, stats["meta_loss"], tasks_seen, record["wall_s"])
    if bar is not None:
        bar.close()
    if rank == 0:
        summary = {
            **extra,
            "meta_steps": step,
            "tasks_seen": history[-1]["tasks_seen"] if history else 0,
            "wall_s": history[-1]["wall_s"] if history else 0.0,
            "meta_loss_first": next((h["meta_loss"] for h in history if "meta_loss" in h), None),
            "meta_loss_last": history[-1].get("meta_loss") if history else None,
        }
        save_policy(out / "policy.safetensors", policy, rule=rule, config=asdict(cfg), extra=summary)
        if cfg.export_path:
            chosen = read_policy(out / BEST_POLICY).policy if best and (out / BEST_POLICY).is_file() else policy
            save_policy(cfg.export_path, chosen, rule=rule, config=asdict(cfg), extra={**summary, "selected_by": best or {"step": step, "rule": "last"}})
        from metalr.io import atomic_write_json

        atomic_write_json(out / "history.json", history)
        plot_history(history, out / "meta_loss.png")
    if writer is not None:
        writer.close()
    if world > 1 and dist.is_initialized():
        dist.barrier()  # rank 0 may still be writing; no rank tears gloo down under another
        dist.destroy_process_group()
    return policy
