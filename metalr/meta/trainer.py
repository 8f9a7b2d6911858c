"""Meta-training: sample tasks, unroll inner training under the policy, step the policy.

One meta-step: every process draws its share of the meta-batch (task i of step s
is seeded by (seed, s, i), so the draw does not depend on the process count),
trains each task for its full trajectory as a chain of K-step truncations
(`metalr.meta.unroll`), backpropagates each truncation's validation-loss terms
into the policy as it goes, averages over the whole meta-batch (all-reduce when
distributed), clips and takes one Adam step. The meta-loss of a task is the mean
over its whole trajectory of log(val_loss / val_loss_at_init): every phase of
training counts, not only the first K steps.

Everything a meta-step depends on is (policy, meta-optimizer, step, seed), so a
checkpoint of those (plus RNG states and the loss history) taken between
meta-steps lets `--resume` reproduce an uninterrupted run exactly.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from metalr.meta.checkpoint import save_policy
from metalr.meta.policy import MetaPolicy, horizon_scale
from metalr.meta.tasks import SUPPORTED, materialise, sample_spec, task_seed
from metalr.testing import pause_point

log = logging.getLogger(__name__)
TRAIN_STATE = "train_state.safetensors"


@dataclass
class MetaTrainConfig:
    """Everything train_meta.py reads (configs/meta_train.yaml; `key=value` overrides)."""

    seed: int = 0
    meta_steps: int = 200  # meta-updates
    meta_batch: int = 4  # tasks per meta-update (split across processes)
    meta_lr: float = 1e-3  # Adam on the policy
    grad_clip: float = 1.0  # meta-gradient norm clip
    truncation: int = 20  # K inner steps per differentiable truncation
    val_every: int = 5  # a meta-loss term every this many inner steps
    val_batch: int = 256
    tasks: list[str] = field(default_factory=lambda: ["digits_mlp", "digits_cnn", "wine_mlp", "breast_cancer_mlp", "synthetic_blobs"])
    held_out: list[str] = field(default_factory=lambda: ["mnist1d_cnn", "fashion_mnist_mlp"])  # never meta-trained on
    optimizers: list[str] = field(default_factory=lambda: ["sgd", "adam"])
    base_lrs: dict[str, float] = field(default_factory=lambda: {"sgd": 0.05, "adam": 0.001})
    lr_factor_range: list[float] = field(default_factory=lambda: [0.3, 3.0])  # base LR x log-uniform factor
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    steps: list[int] = field(default_factory=lambda: [100, 200, 300])  # inner trajectory lengths
    train_fraction_range: list[float] = field(default_factory=lambda: [0.5, 1.0])
    max_log_step: float = 0.03  # |log LR change| per step of a `horizon_steps`-long run
    horizon_steps: int = 100  # a T-step run scales each change by horizon_steps / T (0: no scaling)
    min_factor: float = 0.01  # LR >= min_factor * base LR
    max_factor: float = 5.0  # LR <= max_factor * base LR
    out_dir: str = "runs/meta"
    export_path: str = ""  # also write the final frozen policy here (e.g. checkpoints/metalr_default.safetensors)
    checkpoint_every: int = 10  # meta-steps between (atomic) training checkpoints
    log_every: int = 1
    trajectory_every: int = 25  # log a sampled LR trajectory to TensorBoard every this many meta-steps
    num_threads: int = 1  # torch CPU threads per process (fixed for reproducibility)
    progress: bool = True

    def __post_init__(self) -> None:
        for key in ("meta_steps", "meta_batch", "truncation", "val_every", "val_batch", "checkpoint_every", "log_every", "trajectory_every", "num_threads"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not (self.meta_lr > 0 and self.grad_clip > 0 and self.max_log_step > 0):
            raise ValueError("meta_lr, grad_clip and max_log_step must be > 0")
        if not 0 < self.min_factor < 1 < self.max_factor:
            raise ValueError(f"need 0 < min_factor < 1 < max_factor, got {self.min_factor}, {self.max_factor}")
        if self.truncation % self.val_every:
            raise ValueError(f"truncation ({self.truncation}) must be a multiple of val_every ({self.val_every})")
        unknown = sorted(set(self.tasks) - set(SUPPORTED))
        if unknown or not self.tasks:
            raise ValueError(f"unknown meta-training task(s) {unknown or '(none given)'}; valid: {', '.join(SUPPORTED)}")
        leaked = sorted(set(self.tasks) & set(self.held_out))
        if leaked:
            raise ValueError(f"task(s) {leaked} are both meta-trained on and held out")
        bad_opt = sorted(set(self.optimizers) - {"sgd", "adam"})
        if bad_opt or not self.optimizers:
            raise ValueError(f"unknown optimizer(s) {bad_opt or '(none given)'}; valid: sgd, adam (higher 0.2.1 has no AdamW)")
        missing = sorted(set(self.optimizers) - set(self.base_lrs))
        if missing or any(not v > 0 for v in self.base_lrs.values()):
            raise ValueError(f"base_lrs needs a positive LR for every optimizer; missing {missing}")
        for key in ("lr_factor_range", "train_fraction_range"):
            r = getattr(self, key)
            if len(r) != 2 or not 0 < r[0] <= r[1]:
                raise ValueError(f"{key} must be [lo, hi] with 0 < lo <= hi, got {r}")
        if self.train_fraction_range[1] > 1:
            raise ValueError("train_fraction_range must lie in (0, 1]")
        for s in self.steps:
            if s < 1 or s % self.truncation:
                raise ValueError(f"every inner length in steps must be a positive multiple of truncation ({self.truncation}), got {s}")
        if not self.widths or min(self.widths) < 4:
            raise ValueError(f"widths must be >= 4, got {self.widths}")

    @property
    def log_bounds(self) -> tuple[float, float]:
        return math.log(self.min_factor), math.log(self.max_factor)


# ------------------------------------------------------------------ one meta-step
def meta_step(policy: MetaPolicy, meta_opt: torch.optim.Optimizer, cfg: MetaTrainConfig, step: int, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """One meta-update over the meta-batch; this process handles its share of the tasks."""
    from metalr.meta.unroll import start, truncation

    if cfg.meta_batch % world:
        raise ValueError(f"meta_batch ({cfg.meta_batch}) must be divisible by the number of processes ({world})")
    per = cfg.meta_batch // world
    meta_opt.zero_grad(set_to_none=False)
    for p in policy.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    loss_sum, diverged, lrs0 = 0.0, 0, []
    for j in range(per):
        index = rank * per + j
        spec = sample_spec(
            task_seed(cfg.seed, step, index), cfg.tasks, cfg.optimizers, cfg.base_lrs, tuple(cfg.lr_factor_range),  # type: ignore[arg-type]
            cfg.widths, cfg.steps, tuple(cfg.train_fraction_range),  # type: ignore[arg-type]
        )  # fmt: skip
        traj = start(materialise(spec), cfg.val_batch)
        n_terms = spec.steps // cfg.val_every
        while not traj.done:
            total, _ = truncation(traj, policy, cfg.truncation, cfg.val_every, cfg.log_bounds, horizon_scale(cfg.horizon_steps, spec.steps))
            if total.requires_grad:
                (total / (n_terms * cfg.meta_batch)).backward()
            loss_sum += float(total.detach()) / n_terms
        diverged += int(len(traj.lrs) < spec.steps)
        if j == 0:
            lrs0 = [lr / spec.lr for lr in traj.lrs]
    stats = torch.tensor([loss_sum, float(diverged)], dtype=torch.float64)
    if world > 1:
        for p in policy.parameters():
            dist.all_reduce(p.grad)  # type: ignore[arg-type]
        dist.all_reduce(stats)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip))
    if math.isfinite(grad_norm):
        meta_opt.step()
    return {"meta_loss": float(stats[0]) / cfg.meta_batch, "diverged": float(stats[1]), "grad_norm": grad_norm, "lr_trajectory": lrs0}


# ------------------------------------------------------------------- checkpoints
def save_train_state(path: Path, policy: MetaPolicy, meta_opt: torch.optim.Optimizer, cfg: MetaTrainConfig, step: int, history: list[dict[str, float]]) -> None:
    """Policy, meta-optimizer, RNG, counters and history in one atomically written safetensors file."""
    import json

    from safetensors.torch import save

    from metalr.io import atomic_write_bytes, versions

    tensors = {f"policy.{k}": v.detach().clone().contiguous() for k, v in policy.state_dict().items()}
    sd = meta_opt.state_dict()
    for i, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).clone().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"step": step, "config": asdict(cfg), "param_groups": sd["param_groups"], "history": history, "versions": versions()}
    atomic_write_bytes(path, save(tensors, metadata={"metalr_train": json.dumps(meta)}))


def load_train_state(path: Path, policy: MetaPolicy, meta_opt: torch.optim.Optimizer) -> tuple[int, list[dict[str, float]], dict[str, Any]]:
    import json

    from safetensors.torch import load

    data = path.read_bytes()
    try:
        tensors = load(data)
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["metalr_train"])
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
    return int(meta["step"]), list(meta["history"]), meta["config"]


# ---------------------------------------------------------------------- the loop
def train(cfg: MetaTrainConfig, resume: bool = False) -> MetaPolicy:
    """Meta-train per `cfg`; distributed when launched by torchrun (WORLD_SIZE > 1)."""
    torch.set_num_threads(cfg.num_threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    out = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)
    policy = MetaPolicy(max_log_step=cfg.max_log_step)
    meta_opt = torch.optim.Adam(policy.parameters(), lr=cfg.meta_lr)
    step, history = 0, []  # type: ignore[var-annotated]
    ckpt = out / TRAIN_STATE
    if resume and ckpt.is_file():
        step, history, saved_cfg = load_train_state(ckpt, policy, meta_opt)
        changed = sorted(k for k, v in asdict(cfg).items() if saved_cfg.get(k) != v and k not in ("meta_steps", "progress", "export_path", "out_dir"))
        if changed:
            raise ValueError(f"--resume with a different config would not reproduce the run; changed keys: {changed}")
        log.info("resumed from %s at meta-step %d", ckpt, step)
    elif resume:
        log.warning("--resume: no checkpoint at %s; starting fresh", ckpt)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))
    bar = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.meta_steps, initial=step, desc="meta-train")
    t0 = time.perf_counter()
    while step < cfg.meta_steps:
        stats = meta_step(policy, meta_opt, cfg, step, rank, world)
        step += 1
        history.append({"step": step, "meta_loss": stats["meta_loss"], "grad_norm": stats["grad_norm"], "diverged": stats["diverged"]})
        if writer is not None:
            if step % cfg.log_every == 0:
                writer.add_scalar("losses/meta_loss", stats["meta_loss"], step)
                writer.add_scalar("charts/meta_grad_norm", stats["grad_norm"], step)
                writer.add_scalar("charts/diverged_tasks", stats["diverged"], step)
            if step % cfg.trajectory_every == 0 or step == 1:
                for i, r in enumerate(stats["lr_trajectory"]):
                    writer.add_scalar(f"lr_trajectory/meta_step_{step:05d}", r, i)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(meta_loss=f"{stats['meta_loss']:.4f}")
        if rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.meta_steps):
            save_train_state(ckpt, policy, meta_opt, cfg, step, history)
            pause_point("meta_checkpoint", step)  # tests: kill at a known point (metalr.testing)
            log.info("meta-step %d: meta_loss %.4f (%.0fs)", step, stats["meta_loss"], time.perf_counter() - t0)
    if bar is not None:
        bar.close()
    if rank == 0:
        extra = {
            "meta_steps": step,
            "horizon_steps": cfg.horizon_steps,
            "meta_loss_first": history[0]["meta_loss"] if history else None,
            "meta_loss_last": history[-1]["meta_loss"] if history else None,
        }
        save_policy(out / "policy.safetensors", policy, min_factor=cfg.min_factor, max_factor=cfg.max_factor, config=asdict(cfg), extra=extra)
        if cfg.export_path:
            save_policy(cfg.export_path, policy, min_factor=cfg.min_factor, max_factor=cfg.max_factor, config=asdict(cfg), extra=extra)
        from metalr.io import atomic_write_json

        atomic_write_json(out / "history.json", history)
    if writer is not None:
        writer.close()
    if world > 1 and dist.is_initialized():
        dist.barrier()  # rank 0 may still be writing; no rank tears gloo down under another
        dist.destroy_process_group()
    return policy
