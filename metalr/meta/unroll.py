"""Differentiable inner training: the only module that imports `higher`.

One call runs one truncation of K inner steps. The controller's LR is a tensor
that depends on the policy's weights; `higher` steps the model with
`override={'lr': [lr]}`, so the validation losses measured along the unroll are
differentiable with respect to the policy. Model weights, optimizer state, the
LR and the feature statistics are carried (detached) from one truncation to the
next, so a full-length trajectory is a chain of truncations: the policy is
trained on what happens late in training too, not only on the first K steps
(the short-horizon bias of single short unrolls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import higher
import torch
import torch.nn.functional as F

from metalr.meta.features import FeatureState
from metalr.meta.policy import MetaPolicy
from metalr.meta.tasks import InnerTask


@dataclass
class Trajectory:
    """What a task's inner training carries between truncations (all detached)."""

    task: InnerTask
    optimizer: torch.optim.Optimizer
    batches: torch.Tensor  # (steps, batch) indices
    val_idx: torch.Tensor  # fixed validation batch for the meta-loss
    val0: float  # validation loss of the initial model (the meta-loss's unit)
    step: int = 0
    log_rel: float = 0.0  # log(LR / base LR)
    features: FeatureState = field(default_factory=FeatureState)
    prev_grad: torch.Tensor | None = None
    lrs: list[float] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.step >= self.task.spec.steps


def start(task: InnerTask, val_batch: int) -> Trajectory:
    g = torch.Generator().manual_seed(task.spec.seed + 4)
    val_idx = torch.randperm(len(task.y_val), generator=g)[:val_batch]
    with torch.no_grad():
        val0 = float(F.cross_entropy(task.model(task.x_val[val_idx]), task.y_val[val_idx]))
    from metalr.meta.tasks import batch_stream

    return Trajectory(task, task.make_optimizer(), batch_stream(task), val_idx, max(val0, 1e-8))


def truncation(
    traj: Trajectory, policy: MetaPolicy, k: int, val_every: int, log_bounds: tuple[float, float], horizon_scale: float = 1.0
) -> tuple[torch.Tensor, int]:
    """Run up to `k` inner steps; return (sum of meta-loss terms, number of terms).

    A meta-loss term is log(val_loss / val_loss_at_init) every `val_every` inner
    steps. `horizon_scale` multiplies the policy's log-LR change (see
    `metalr.meta.policy.horizon_scale`). A non-finite inner loss ends the trajectory (returns what was gathered).
    """
    task, spec = traj.task, traj.task.spec
    lo, hi = log_bounds
    log_rel = torch.tensor(traj.log_rel)
    terms: list[torch.Tensor] = []
    with higher.innerloop_ctx(task.model, traj.optimizer, copy_initial_weights=True, track_higher_grads=True) as (fmodel, diffopt):
        for _ in range(k):
            if traj.done:
                break
            idx = traj.batches[traj.step]
            x, y = task.x_train[idx], task.y_train[idx]
            logits = fmodel(x)
            loss = F.cross_entropy(logits, y)
            if not math.isfinite(float(loss.detach())):
                traj.step = spec.steps  # diverged: end this trajectory
                break
            seen: dict[str, float | None] = {}

            def observe(grads: tuple[torch.Tensor | None, ...], seen: dict[str, float | None] = seen) -> tuple[torch.Tensor | None, ...]:
                flat = torch.cat([g.detach().reshape(-1) for g in grads if g is not None]).double()
                seen["norm"] = float(flat.norm())
                prev = traj.prev_grad
                denom = float(flat.norm() * prev.norm()) if prev is not None else 0.0
                seen["cos"] = float(flat @ prev) / denom if prev is not None and denom > 0 else (0.0 if prev is not None else None)
                traj.prev_grad = flat
                return grads

            lr = spec.lr * torch.exp(log_rel)
            traj.lrs.append(float(lr.detach()))
            diffopt.step(loss, override={"lr": [lr]}, grad_callback=observe)
            traj.step += 1
            acc = float((logits.detach().argmax(-1) == y).float().mean())
            traj.features.update(float(loss.detach()), acc, seen.get("norm"), seen.get("cos"))
            feats = torch.tensor(traj.features.features(traj.step / spec.steps, float(log_rel.detach())), dtype=torch.float32)
            log_rel = torch.clamp(log_rel + horizon_scale * policy(feats), lo, hi)
            if traj.step % val_every == 0 or traj.done:
                val = F.cross_entropy(fmodel(task.x_val[traj.val_idx]), task.y_val[traj.val_idx])
                if math.isfinite(float(val.detach())):
                    terms.append(torch.log(val.clamp_min(1e-8) / traj.val0))
        _carry(traj, fmodel, diffopt)
    traj.log_rel = float(log_rel.detach())
    total = torch.stack(terms).sum() if terms else torch.zeros(())
    return total, len(terms)


def _carry(traj: Trajectory, fmodel: torch.nn.Module, diffopt: higher.optim.DifferentiableOptimizer) -> None:
    """Write the fast weights and optimizer state back, detached, for the next truncation."""
    with torch.no_grad():
        for p, fp in zip(traj.task.model.parameters(), fmodel.parameters()):
            p.copy_(fp.detach())
    opt = traj.optimizer
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            st = diffopt.state[gi].get(pi)
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
