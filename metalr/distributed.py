"""Data-parallel runs: every rank's controller must set the same LR.

Under `DistributedDataParallel` each rank trains on its own batch, so its loss, its batch accuracy, an evaluation it
ran on its own shard, an uncertainty estimate on its own probe batch and its own machine's resource readings differ
from the other ranks'. The gradients, which DDP all-reduces, are the same on every rank, and so are the parameters,
the gradient statistics and the update size. A controller that reads the loss (the meta-controller, the loss and
plateau heuristics) would therefore set a different LR on each rank, and the replicas would drift apart without any
error. The tracker (`metalr.signals.SignalTracker`) averages those rank-local signals over the ranks of the default
process group at every `collect` (`RankMean`), so every rank's controller reads the same numbers and sets the same
LR; the signals it averages are `RANK_LOCAL` and the readings in `resources`.

- One all-reduce per step, only for trackers whose controller reads one of those signals (a schedule's tracker
  reads none and communicates nothing). A signal held as a device tensor (`SignalTracker(as_tensors=True)`, the
  meta-controller on a GPU) is averaged on its device and stays a tensor: no host read. Python numbers are
  averaged in one float64 tensor on the CPU (gloo) or, under an NCCL-only process group, on the current CUDA device.
- A signal only some ranks have (an evaluation run on rank 0 only) is the mean over the ranks that have it; every
  rank takes part in the all-reduce whatever it holds, so that no rank waits for another.
- Every rank must call `collect` on the same steps (a data-parallel loop does). Ranks that train separate models in
  one process group (metalr's own meta-training, whose processes run different tasks) must not average:
  `SignalTracker(sync_ranks=False)`.
- Sharded training (FSDP, ZeRO) is not covered: there each rank holds a shard of the gradients, and the gradient
  statistics a rank computes are its shard's.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

#: The `Signals` fields a rank computes from its own data (averaged over the ranks).
RANK_LOCAL: tuple[str, ...] = ("loss", "accuracy", "val_loss", "val_accuracy", "uncertainty")
#: The readings of `signals.resources` (`metalr.estimators.ResourceMonitor`), averaged as well.
RESOURCE_KEYS: tuple[str, ...] = ("cpu_util", "mem_util", "gpu_util", "gpu_mem")


def world_size() -> int:
    """The number of ranks in the default process group (1 when torch.distributed is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return int(dist.get_world_size())


def _host_device() -> torch.device:
    """Where Python numbers are all-reduced: the CPU, unless the default group's backend handles CUDA tensors only."""
    backend = str(dist.get_backend()).lower()
    if "nccl" in backend and not any(b in backend for b in ("gloo", "mpi", "cpu:")) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class RankMean:
    """Averages a step's rank-local signals over the ranks of the default process group, in place (see module docstring)."""

    def __init__(self, requires: frozenset[str]) -> None:
        self.fields = tuple(f for f in RANK_LOCAL if f in requires)
        self.resources = "resources" in requires
        self.world = world_size()
        self._device = _host_device()

    @classmethod
    def build(cls, requires: frozenset[str], sync_ranks: bool | None) -> RankMean | None:
        """A `RankMean` when the run is data-parallel (`sync_ranks` None: the default process group has more than one
        rank) and the controller reads a rank-local signal; else None (nothing to do)."""
        if sync_ranks is False or world_size() == 1:
            return None
        if not any(f in requires for f in RANK_LOCAL) and "resources" not in requires:
            return None
        mean = cls(requires)
        log.info(
            "signals: averaging %s over the %d ranks of the default process group at every step, so that every rank's "
            "controller sets the same LR (pass sync_ranks=False when the ranks train separate models)",
            ", ".join(mean.fields + (("resources",) if mean.resources else ())), mean.world,
        )  # fmt: skip
        return mean

    def __call__(self, s: Any) -> None:
        tensors = [f for f in self.fields if isinstance(getattr(s, f), torch.Tensor)]
        if tensors:  # device-resident signals (as_tensors): averaged where they are, never read here
            values = [getattr(s, f) for f in tensors]
            buf = torch.stack([v.detach().reshape(()).to(torch.float64) for v in values])
            dist.all_reduce(buf)
            for i, f in enumerate(tensors):
                setattr(s, f, buf[i] / self.world)
        numbers = [f for f in self.fields if f not in tensors]
        resources = getattr(s, "resources", None) if self.resources else None
        if not numbers and not self.resources:
            return
        vals: list[float] = []  # this rank's value, 0 where it has none
        present: list[float] = []  # 1 where it has one (a NaN it computed counts: every rank then sees the NaN)
        entries = [getattr(s, f) for f in numbers]
        if self.resources:
            entries += [None if resources is None else resources.get(k) for k in RESOURCE_KEYS]
        for v in entries:
            vals.append(0.0 if v is None else float(v))
            present.append(0.0 if v is None else 1.0)
        buf = torch.tensor(vals + present, dtype=torch.float64, device=self._device)
        dist.all_reduce(buf)
        out = buf.tolist()
        n = len(vals)
        means = [out[i] / out[n + i] if out[n + i] > 0 else None for i in range(n)]
        for i, f in enumerate(numbers):
            setattr(s, f, means[i])
        if self.resources:
            got = {k: m for k, m in zip(RESOURCE_KEYS, means[len(numbers) :]) if m is not None}
            other = {k: v for k, v in (resources or {}).items() if k not in RESOURCE_KEYS}  # readings of its own: this rank's
            s.resources = {**other, **got} if got or other or resources is not None else None
