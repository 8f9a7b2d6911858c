"""Differentiable inner training: the only module that imports `higher`.

One call runs one truncation of K inner steps. The LR comes from
`metalr.meta.rule.lr_rule` (the function the deployed controller calls too) as
a tensor that depends on the policy's weights; `higher` steps the model with
`override={'lr': [lr]}`, so validation losses measured along the unroll are
differentiable with respect to the policy. Model weights, optimizer state and
the rule's state are carried (detached) from one truncation to the next, so a
full-length trajectory is a chain of truncations: the policy is trained on what
happens late in training too, not only on the first K steps.

Credit across truncations. Detaching the model at a truncation boundary hides
from the gradient that an LR decision persists: the LR level a policy set 500
steps ago is still the LR now. `truncation` therefore also returns the LR state
at its start as a leaf tensor and at its end as a function of the policy, so the
trainer can carry d(log LR)/d(policy) forward across truncations (real-time
recurrent learning for the one scalar the policy controls, `metalr.meta.trainer`)
and credit each loss to every earlier decision that set its LR. Only the
model's dependence on earlier LRs stays truncated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import higher
import torch

from metalr.gradstats import GradAlign, UpdateSize
from metalr.meta.labels import band_penalty, in_window
from metalr.meta.policy import MetaPolicy
from metalr.meta.rule import RuleConfig, RuleState, lr_rule, warmup_factor
from metalr.meta.tasks import InnerTask, batch_stream, val_batch_loss, val_subset


@dataclass
class Trajectory:
    """What a task's inner training carries between truncations (all detached)."""

    task: InnerTask
    optimizer: torch.optim.Optimizer
    batches: torch.Tensor  # (steps, batch) indices
    val_idx: torch.Tensor  # fixed validation batch for the meta-loss
    val0: float  # the validation objective of the initial model (the meta-loss's unit)
    objective: str = "soft_error"
    step: int = 0
    log_rel: float = 0.0  # log(LR / base LR)
    rule: RuleState = field(default_factory=RuleState)
    align: GradAlign = field(default_factory=GradAlign)
    update: UpdateSize = field(default_factory=UpdateSize)
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    diverged: bool = False
    val_reading: int = 0  # a validation loss for the policy after every this many steps (0: none; `metalr.meta.tasks.val_reading_every`)
    val_pending: float | None = None  # the last reading, for the next step's rule call (as `SignalTracker.record_eval`)

    @property
    def total(self) -> int:
        return self.task.spec.steps

    @property
    def done(self) -> bool:
        return self.diverged or self.step >= self.total


OBJECTIVES = ("soft_error", "log_val_loss")


def val_objective(logits: torch.Tensor, y: torch.Tensor, objective: str) -> torch.Tensor:
    """The validation quantity the meta-loss tracks.

    `soft_error`: 1 - mean predicted probability of the true class, the expected 0-1 error under the
    model's own predictive distribution: a differentiable stand-in for the error rate that, unlike
    cross-entropy, does not blow up on a few over-confident mistakes (with cross-entropy the policy
    learned to cut the LR early to curb over-confidence, which costs accuracy on longer runs).
    `log_val_loss`: cross-entropy (the meta-loss term is then log(val / val0)).
    """
    if objective == "soft_error":
        return 1.0 - torch.softmax(logits, -1).gather(-1, y.unsqueeze(-1)).mean()
    if objective == "log_val_loss":
        return torch.nn.functional.cross_entropy(logits, y)
    raise ValueError(f"unknown meta objective {objective!r}; valid: {', '.join(OBJECTIVES)}")


def start(task: InnerTask, val_batch: int, objective: str = "soft_error", val_reading: int = 0) -> Trajectory:
    """A trajectory at step 0. `val_reading` = E > 0: after every E-th step the model's loss on the run's validation
    batch is measured (no gradient) and folded into the policy's features at the next step, as a deployed controller
    gets an evaluation's loss (`metalr.meta.validate.run_spec` does the same)."""
    val_idx = val_subset(task, val_batch)
    with torch.no_grad():
        task.model.eval()
        val0 = float(val_objective(task.model(task.x_val[val_idx]), task.y_val[val_idx], objective))
        task.model.train()
    return Trajectory(task, task.make_optimizer(), batch_stream(task), val_idx, max(val0, 1e-8), objective, val_reading=int(val_reading))


def meta_weight(progress: float, end_weight: float, loss_from: float = 0.0) -> float:
    """Weight of a validation-loss term taken at `progress`: 1 at the start rising linearly to `end_weight` at the end;
    0 before `loss_from` (a fraction of the run: only the end of training counts)."""
    if progress < loss_from:
        return 0.0
    return 1.0 + (end_weight - 1.0) * progress


@dataclass
class TruncationResult:
    loss: torch.Tensor  # sum of weighted meta-loss terms (0-d; has a graph unless nothing ran)
    weight: float  # sum of the terms' weights (the trajectory's normaliser accumulates these)
    log_rel_start: torch.Tensor  # leaf: the LR state this truncation started from
    log_rel_end: torch.Tensor  # the LR state it ends in, a function of the policy and log_rel_start
    band_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # sum of `band_penalty` terms (0-d)
    band_terms: int = 0  # how many


def truncation(
    traj: Trajectory,
    policy: MetaPolicy,
    cfg: RuleConfig,
    k: int,
    val_every: int,
    end_weight: float = 1.0,
    track_higher_grads: bool = True,
    loss_from: float = 0.0,
    band: tuple[float, float] | None = None,
    band_window: tuple[float, float] = (0.1, 0.9),
    lookahead: int = 0,
) -> TruncationResult:
    """Run up to `k` inner steps under the rule; a meta-loss term every `val_every` steps (from `loss_from` of the run on).

    `lookahead` = M > 0 (against short-horizon bias): the terms of a truncation that does not end the run are not
    taken where they fall; instead, after the truncation (its weights and state already carried on), the model
    trains M more steps (at most to the run's end) on the run's next batches at a reference LR, the LR the
    truncation started from (held, detached), and one term with their summed weight is taken there. A policy
    that cuts the LR inside a truncation no longer scores the quieter weights that a lower LR gives at once
    (the noise comes back under the reference LR), only the progress the weights made. The run's last term is
    taken where it falls (there the lower noise is real).

    The term is val/val0 (soft error) or log(val/val0) (cross-entropy), see `val_objective`.
    With a `band` (the task's LR label, `metalr.meta.labels`), every step whose progress lies in
    `band_window` also adds `band_penalty` of the LR it sets to `band_loss` (kept apart: the trainer weighs it).

    A non-finite inner loss ends the trajectory (`traj.diverged`); what was gathered is returned.
    With `track_higher_grads=False` this is a plain (non-differentiable) run of the same rule:
    the parity test compares it with the deployed controller.
    """
    task = traj.task
    start_leaf = torch.tensor(traj.log_rel, dtype=torch.float64, requires_grad=track_higher_grads)
    log_rel = start_leaf
    terms: list[torch.Tensor] = []
    band_terms: list[torch.Tensor] = []
    weight = deferred = 0.0
    with higher.innerloop_ctx(task.model, traj.optimizer, copy_initial_weights=True, track_higher_grads=track_higher_grads) as (fmodel, diffopt):
        for _ in range(k):
            if traj.done:
                break
            idx = traj.batches[traj.step]
            loss = task.loss(fmodel(task.x_train[idx]), task.y_train[idx])
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                traj.diverged = True
                break
            seen: dict[str, float | None] = {}
            # The step being taken is traj.step + 1 (1-based, as SignalTracker counts): its gradient statistics are
            # read only on the policy's steps, and primed on the step before (as SignalTracker(every=k) does).
            every = cfg.decide_every
            decide = (traj.step + 1) % every == 0
            prime = every > 1 and (traj.step + 1) % every == every - 1

            def observe(grads: tuple[torch.Tensor | None, ...], seen: dict[str, float | None] = seen, decide: bool = decide) -> tuple[torch.Tensor | None, ...]:
                states = [diffopt.state[0].get(i) if isinstance(diffopt.state[0], dict) else diffopt.state[0][i] for i in range(len(grads))]
                if decide:
                    seen["norm"], seen["align"] = traj.align(grads, states)  # Python numbers, as on the deployed CPU path
                else:
                    traj.align.prime(grads, states)
                return grads

            params = list(fmodel.parameters())
            size = None
            if decide:
                size = traj.update(params)  # the previous update's relative size, as SignalTracker.collect reads it
            elif prime:
                traj.update.prime(params)
            lr = task.spec.lr * torch.exp(log_rel) * warmup_factor(cfg, traj.step + 1, traj.total)  # float64, exactly as MetaController
            traj.lrs.append(float(lr.detach()))
            traj.losses.append(loss_value)
            diffopt.step(loss, override={"lr": [lr]}, grad_callback=observe if decide or prime else None)
            traj.step += 1
            val, traj.val_pending = traj.val_pending, None
            log_rel = lr_rule(policy, cfg, traj.rule, log_rel, loss_value, seen.get("norm"), seen.get("align"), traj.step, traj.total, size, val)
            if traj.val_reading and traj.step % traj.val_reading == 0 and traj.step < traj.total:
                traj.val_pending = val_batch_loss(traj.task, fmodel, traj.val_idx)  # what an evaluation hands a deployed controller
            if band is not None and in_window(traj.step, traj.total, band_window):
                band_terms.append(band_penalty(log_rel, band, traj.step, traj.total))
            w = meta_weight(traj.step / traj.total, end_weight, loss_from) if traj.step % val_every == 0 or traj.step == traj.total else 0.0
            if w > 0 and lookahead and traj.step < traj.total:
                deferred += w  # scored after the look-ahead below
                w = 0.0
            if w > 0:
                term = _val_term(traj, fmodel)
                if term is not None:
                    terms.append(w * term)
                    weight += w
        _carry(traj, fmodel, diffopt)
        if deferred > 0 and not traj.diverged:
            term = _lookahead(traj, fmodel, diffopt, float(start_leaf.detach()), lookahead)
            if term is not None:
                terms.append(deferred * term)
                weight += deferred
    traj.log_rel = float(log_rel.detach())
    total = torch.stack(terms).sum() if terms else torch.zeros(())
    band_total = torch.stack(band_terms).sum() if band_terms else torch.zeros(())
    return TruncationResult(total, weight, start_leaf, log_rel, band_total, len(band_terms))


def _lookahead(traj: Trajectory, fmodel: torch.nn.Module, diffopt: higher.optim.DifferentiableOptimizer, log_rel: float, m: int) -> torch.Tensor | None:
    """M more differentiable steps from the truncation's end at base LR x exp(`log_rel`) (held), then the meta-loss term
    (as `truncation` takes it), or None if a loss is not finite. Nothing of it is carried: the trajectory goes on from
    the truncation's end."""
    task = traj.task
    lr = torch.tensor(task.spec.lr * math.exp(log_rel), dtype=torch.float64)
    for j in range(min(m, traj.total - traj.step)):
        idx = traj.batches[traj.step + j]
        loss = task.loss(fmodel(task.x_train[idx]), task.y_train[idx])
        if not math.isfinite(float(loss.detach())):
            return None
        diffopt.step(loss, override={"lr": [lr]})
    return _val_term(traj, fmodel)


def _val_term(traj: Trajectory, fmodel: torch.nn.Module) -> torch.Tensor | None:
    """The meta-loss term of the fast weights now: val/val0 (soft error) or log(val/val0) on the run's validation
    batch, or None if the validation objective is not finite."""
    task = traj.task
    fmodel.eval()
    val = val_objective(fmodel(task.x_val[traj.val_idx]), task.y_val[traj.val_idx], traj.objective)
    fmodel.train()
    if not math.isfinite(float(val.detach())):
        return None
    ratio = val.clamp_min(1e-8) / traj.val0
    return ratio if traj.objective == "soft_error" else torch.log(ratio)


def _carry(traj: Trajectory, fmodel: torch.nn.Module, diffopt: higher.optim.DifferentiableOptimizer) -> None:
    """Write the fast weights, buffers and optimizer state back, detached, for the next truncation."""
    with torch.no_grad():
        for p, fp in zip(traj.task.model.parameters(), fmodel.parameters()):
            p.copy_(fp.detach())
        for b, fb in zip(traj.task.model.buffers(), fmodel.buffers()):
            b.copy_(fb.detach())
    opt = traj.optimizer
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            st = diffopt.state[gi].get(pi) if isinstance(diffopt.state[gi], dict) else diffopt.state[gi][pi]
            if not st:
                continue
            new = {}
            for key, v in st.items():
                if key == "step":
                    new[key] = torch.tensor(float(v))
                elif isinstance(v, torch.Tensor):
                    new[key] = v.detach().clone()
                else:
                    new[key] = v
            opt.state[p] = new
