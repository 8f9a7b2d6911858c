"""Uncertainty and resource readings: the one place those signals are computed.

A controller that reads `signals.uncertainty` or `signals.resources` declares
what it needs as data (`UncertaintyRequest`, `BatchUncertaintyRequest`,
`ResourceRequest`, returned by its `Controller.signal_sources()`); `build_source`
turns a request into a source (`UncertaintySource`, `BatchUncertaintySource`,
`ResourceSource`) that the `SignalTracker` owns, schedules (`due`) and reads
(`read(step, epoch, logits, targets)`: the step's own outputs, for sources that
reuse them). Data flows one way: source -> tracker -> `Signals` -> controller.
Tests call the estimators directly or inject readings (`ResourceRequest.reader`).

Uncertainty is measured on a *fixed probe batch* (drawn once, seeded, from the
training set by default), so successive estimates are comparable and each
estimate also yields the probe's error rate and mean confidence, kept as
records for uncertainty-error correlation and calibration.

- `MCDropoutEstimator` (Gal & Ghahramani, 2016). Default `mode="head"`: one
  deterministic forward in eval mode captures the input of the model's *last*
  `nn.Linear` (the classifier head), then `passes` dropout masks at rate `p`
  are applied to that input and the head re-evaluated. This is exact MC Dropout
  for a network with a single dropout layer before its head, works on models
  with no `nn.Dropout` at all, costs one forward plus `passes` small matmuls,
  and draws masks from its own generator (training randomness is untouched).
  `mode="full"` instead runs `passes` full forwards with the model's own active
  `nn.Dropout` layers (at their own rates) in train mode.
- `EnsembleEstimator`: the members of a `metalr.ensemble.DeepEnsemble`, each
  evaluated on the probe batch; disagreement = mutual information.
- On the *training batch* instead (`BatchUncertaintyRequest`), reusing the
  step's forward, no probe forward at all: `BatchHeadDropout` (the head-mode
  MC Dropout above, on the input the head received in the step's training
  forward) and `BatchEnsembleDisagreement` (from the logits every member's head
  produced). A forward hook keeps references to those tensors; each estimate
  checks that the head's output is the step's logits. Noisier (the batch
  changes every step) and measured on data being fitted, but nearly free.
- `ResourceMonitor`: GPU utilisation and memory where CUDA is present, CPU
  utilisation and process memory otherwise (psutil).

Measures (all per example, averaged over the probe batch, in [0, 1]):
  entropy       H(p_mean) / log K                       (predictive entropy)
  variance      sum_k Var_s(p_sk) / (1 - 1/K)           (spread of the samples)
  disagreement  (H(p_mean) - mean_s H(p_s)) / log K     (mutual information, BALD)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from metalr.ensemble import DeepEnsemble, average_log_probs
from metalr.tasks.base import to_device

MEASURES = ("entropy", "variance", "disagreement")
PROBES = ("train", "val")


def predictive_uncertainty(probs: torch.Tensor, measure: str = "entropy") -> torch.Tensor:
    """Per-example uncertainty in [0, 1] from sampled class probabilities `probs[S, N, K]`."""
    if measure not in MEASURES:
        raise ValueError(f"unknown uncertainty measure {measure!r}; valid: {', '.join(MEASURES)}")
    if probs.dim() != 3:
        raise ValueError(f"probs must be [samples, examples, classes], got shape {tuple(probs.shape)}")
    k = probs.shape[-1]
    if k < 2:
        return torch.zeros(probs.shape[1], dtype=probs.dtype, device=probs.device)
    mean = probs.mean(0)
    entropy = -(mean * mean.clamp_min(1e-12).log()).sum(-1)
    if measure == "entropy":
        value = entropy / math.log(k)
    elif measure == "variance":
        value = probs.var(0, unbiased=False).sum(-1) / (1.0 - 1.0 / k)
    else:
        member_entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean(0)
        value = (entropy - member_entropy) / math.log(k)
    return value.clamp(0.0, 1.0)


def probe_batch(task: Any, size: int = 256, source: str = "train", seed: int = 0, device: torch.device | str = "cpu") -> Any:
    """A fixed, seeded batch of `size` examples from the task's train (or val) data."""
    if source not in PROBES:
        raise ValueError(f"unknown probe source {source!r}; valid: {', '.join(PROBES)}")
    data = task.train_data if source == "train" else task.val_data
    loader = DataLoader(data, batch_size=min(size, len(data)), shuffle=True, generator=torch.Generator().manual_seed(seed), collate_fn=task.collate_fn)
    return to_device(next(iter(loader)), torch.device(device))


def _record(step: int, probs: torch.Tensor, targets: torch.Tensor | None, measure: str) -> dict[str, float]:
    """One estimate: uncertainty, and the probe's error rate and confidence under the mean prediction."""
    u = predictive_uncertainty(probs, measure)
    mean = probs.mean(0)
    conf, pred = mean.max(-1)
    rec = {"step": float(step), "uncertainty": float(u.mean()), "confidence": float(conf.mean()), "error_rate": float("nan")}
    if targets is not None:
        t = targets.reshape(-1)
        keep = t != -100
        if bool(keep.any()):
            rec["error_rate"] = float((pred[keep] != t[keep]).float().mean())
            rec["uncertainty"], rec["confidence"] = float(u[keep].mean()), float(conf[keep].mean())
    return rec


def _flat_probs(logits: torch.Tensor) -> torch.Tensor:
    """[..., K] logits -> [N, K] probabilities (token tasks flatten their tokens)."""
    return logits.detach().float().reshape(-1, logits.shape[-1]).softmax(-1)


def head_dropout_probs(h: torch.Tensor, head: nn.Linear, passes: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Class probabilities [passes, N, K] of `head` re-evaluated on its input `h` [..., H] under `passes` dropout masks at rate `p`."""
    h = h.reshape(-1, h.shape[-1])
    keep = torch.bernoulli(torch.full((passes, *h.shape), 1.0 - p, device=h.device, dtype=h.dtype), generator=generator)
    logits = F.linear(h * keep / (1.0 - p), head.weight, head.bias)  # all passes in one matmul: [S, N, K]
    return logits.float().softmax(-1)


class _TrainModes:
    """Put a model in eval mode for an estimate and restore every module's mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes.items():
            m.training = mode


class MCDropoutEstimator:
    """MC Dropout uncertainty of `model` on a fixed probe batch (see module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        forward: Callable[[nn.Module, Any], Any],
        batch: Any,
        *,
        passes: int = 50,
        p: float = 0.5,
        measure: str = "entropy",
        mode: str = "head",
        seed: int = 0,
    ) -> None:
        if passes < 2:
            raise ValueError(f"MC Dropout needs passes >= 2, got {passes}")
        if not 0.0 < p < 1.0:
            raise ValueError(f"dropout rate p must be in (0, 1), got {p}")
        if mode not in ("head", "full"):
            raise ValueError(f"unknown MC Dropout mode {mode!r}; valid: head, full")
        if measure not in MEASURES:
            raise ValueError(f"unknown uncertainty measure {measure!r}; valid: {', '.join(MEASURES)}")
        self.model, self.forward, self.batch = model, forward, batch
        self.passes, self.p, self.measure, self.mode = int(passes), float(p), measure, mode
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if mode == "head" and not linears:
            raise ValueError("MC Dropout mode='head' needs an nn.Linear head; use mode='full' for models with their own Dropout layers")
        self.head = linears[-1] if linears else None
        if mode == "full" and not any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
            raise ValueError("MC Dropout mode='full' needs nn.Dropout layers with p > 0; use mode='head' (the default)")
        self.generator = torch.Generator(device=_device_of(model)).manual_seed(seed)

    @torch.no_grad()
    def estimate(self, step: int = 0) -> dict[str, float]:
        """One estimate as a record: step, uncertainty, error_rate, confidence."""
        with _TrainModes(self.model):
            probs, targets = self._head_samples() if self.mode == "head" else self._full_samples()
        return _record(step, probs, targets, self.measure)

    def _head_samples(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert self.head is not None
        seen: dict[str, torch.Tensor] = {}

        def capture(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen["h"], seen["out"] = inputs[0].detach(), output.detach()

        handle = self.head.register_forward_hook(capture)
        try:
            out = self.forward(self.model, self.batch)
        finally:
            handle.remove()
        if out.logits is None or "h" not in seen or seen["out"].shape != out.logits.shape:
            raise ValueError("the model's last nn.Linear does not produce the task's logits; use MC Dropout mode='full'")
        return head_dropout_probs(seen["h"], self.head, self.passes, self.p, self.generator), out.targets

    def _full_samples(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        for m in self.model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.train()
        devices = [self.generator.device] if self.generator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # keep the training RNG stream as it was
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator)))
            outs = [self.forward(self.model, self.batch) for _ in range(self.passes)]
        return torch.stack([_flat_probs(o.logits) for o in outs]), outs[0].targets


class EnsembleEstimator:
    """Disagreement of a `DeepEnsemble`'s members on a fixed probe batch."""

    def __init__(self, members: Any, forward: Callable[[nn.Module, Any], Any], batch: Any, *, measure: str = "disagreement") -> None:
        if measure not in MEASURES:
            raise ValueError(f"unknown uncertainty measure {measure!r}; valid: {', '.join(MEASURES)}")
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members, self.forward, self.batch, self.measure = list(members), forward, batch, measure

    @torch.no_grad()
    def estimate(self, step: int = 0) -> dict[str, float]:
        probs, targets = [], None
        for member in self.members:
            with _TrainModes(member):
                out = self.forward(member, self.batch)
            probs.append(_flat_probs(out.logits))
            targets = out.targets
        return _record(step, torch.stack(probs), targets, self.measure)


class _HeadCapture:
    """A forward hook on `head` (an nn.Linear) that keeps its latest *training-mode* input and output.

    References, no copies: the tensors the step computed anyway (detached). Evaluation
    forwards (eval mode) are not captured, so an estimate never reads validation data.
    """

    def __init__(self, head: nn.Linear) -> None:
        self.head = head
        self.input: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self.handle = head.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if module.training:
            self.input, self.output = inputs[0].detach(), output.detach()

    def remove(self) -> None:
        self.handle.remove()


def _last_linear(model: nn.Module, what: str) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{what} needs a model whose last nn.Linear is its classifier head; this one has no nn.Linear")
    return linears[-1]


def _same_logits(captured: torch.Tensor, logits: torch.Tensor | None, what: str) -> None:
    """Refuse an estimate unless the captured head outputs are the step's logits (wrong head, or a stale capture)."""
    if logits is None:
        raise ValueError(f"{what} reuses the training step's forward: the tracker needs the step's logits (tracker.collect(logits=..., targets=...))")
    ok = captured.shape == logits.shape and torch.allclose(captured.float(), logits.detach().float(), rtol=1e-3, atol=1e-4)
    if not ok:
        raise ValueError(
            f"{what}: the model's last nn.Linear did not produce this step's logits (another head, post-processed logits, or no training "
            "forward through it this step); use the probe-batch estimator (UncertaintyRequest) instead"
        )


class BatchHeadDropout:
    """MC Dropout on the head, on the step's own training batch: no forward pass of its own.

    The same estimate as `MCDropoutEstimator(mode="head")` (`head_dropout_probs`: `passes`
    masks at rate `p` on the input of the model's last nn.Linear, the head re-evaluated),
    but on the input that head received in the step's training forward, kept by a forward
    hook. Cost per estimate: `passes` head matmuls on the batch, nothing else.
    """

    def __init__(self, model: nn.Module, *, passes: int = 50, p: float = 0.5, measure: str = "entropy", seed: int = 0) -> None:
        if passes < 2 or not 0.0 < p < 1.0 or measure not in MEASURES:
            raise ValueError(f"need passes >= 2, 0 < p < 1 and measure in {MEASURES}; got {passes}, {p}, {measure!r}")
        self.passes, self.p, self.measure = int(passes), float(p), measure
        self.capture = _HeadCapture(_last_linear(model, "training-batch MC Dropout"))
        self.generator = torch.Generator(device=_device_of(model)).manual_seed(seed)

    @torch.no_grad()
    def estimate(self, step: int, logits: torch.Tensor | None, targets: torch.Tensor | None) -> dict[str, float]:
        """One estimate on the batch whose forward just ran (`logits`, `targets`: that forward's)."""
        h, out = self.capture.input, self.capture.output
        if h is None or out is None:
            raise ValueError("training-batch MC Dropout: no training forward through the model's last nn.Linear yet (is it the classifier head?)")
        _same_logits(out, logits, "training-batch MC Dropout")
        return _record(step, head_dropout_probs(h, self.capture.head, self.passes, self.p, self.generator), targets, self.measure)


class BatchEnsembleDisagreement:
    """A `DeepEnsemble`'s disagreement on the step's own training batch, from the logits each member's head produced in it.

    Cost per estimate: a softmax over members x batch x classes; no forward pass.
    """

    def __init__(self, ensemble: DeepEnsemble, *, measure: str = "disagreement") -> None:
        if measure not in MEASURES:
            raise ValueError(f"unknown uncertainty measure {measure!r}; valid: {', '.join(MEASURES)}")
        self.measure = measure
        self.captures = [_HeadCapture(_last_linear(m, "training-batch ensemble disagreement")) for m in ensemble.members]

    @torch.no_grad()
    def estimate(self, step: int, logits: torch.Tensor | None, targets: torch.Tensor | None) -> dict[str, float]:
        outs = [c.output for c in self.captures]
        if any(o is None for o in outs):
            raise ValueError("training-batch ensemble disagreement: no training forward through every member's last nn.Linear yet (is it the head?)")
        member_logits = torch.stack(outs)  # type: ignore[arg-type]
        _same_logits(average_log_probs(member_logits), logits, "training-batch ensemble disagreement")
        return _record(step, torch.stack([_flat_probs(m) for m in member_logits]), targets, self.measure)


class ResourceMonitor:
    """Resource readings as fractions in [0, 1].

    On CUDA: `gpu_util` (torch.cuda.utilization, needs pynvml; NaN without it) and
    `gpu_mem` (reserved / total). Always: `cpu_util` (system-wide, since the
    previous reading) and `mem_util` (this process's RSS / total RAM).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        import psutil

        self.device = torch.device(device)
        self.process = psutil.Process()
        self._psutil = psutil
        psutil.cpu_percent(interval=None)  # prime: the first call has no reference point

    def read(self) -> dict[str, float]:
        ps = self._psutil
        out = {
            "cpu_util": ps.cpu_percent(interval=None) / 100.0,
            "mem_util": self.process.memory_info().rss / ps.virtual_memory().total,
        }
        if self.device.type == "cuda" and torch.cuda.is_available():
            try:
                out["gpu_util"] = torch.cuda.utilization(self.device) / 100.0
            except Exception:  # pynvml missing or NVML unavailable
                out["gpu_util"] = float("nan")
            total = torch.cuda.get_device_properties(self.device).total_memory
            out["gpu_mem"] = torch.cuda.memory_reserved(self.device) / total
        return out


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# ---------------------------------------------------------------- signal sources
@dataclass(frozen=True)
class UncertaintyRequest:
    """An uncertainty estimate every `interval` steps (steps 1, 1 + interval, ...) on a fixed probe batch.

    estimator="mc_dropout" uses `passes`, `dropout_p` and `mode` (`MCDropoutEstimator`);
    estimator="ensemble" needs the model to be an `n_members` `DeepEnsemble` (`EnsembleEstimator`).
    """

    estimator: str = "mc_dropout"
    interval: int = 10
    measure: str = "entropy"
    probe: str = "train"
    probe_size: int = 256
    probe_seed: int = 0
    passes: int = 50
    dropout_p: float = 0.5
    mode: str = "head"
    n_members: int = 0


@dataclass(frozen=True)
class BatchUncertaintyRequest:
    """An uncertainty estimate every `interval` steps (steps 1, 1 + interval, ...) on the step's own training batch.

    It reuses the step's forward instead of running one: estimator="mc_dropout" applies
    `passes` masks at rate `dropout_p` to the input the model's last nn.Linear got
    (`BatchHeadDropout`); estimator="ensemble" takes the logits each member of an
    `n_members` `DeepEnsemble` produced (`BatchEnsembleDisagreement`). Noisier than a
    fixed probe batch (the batch changes every step), but no extra forward pass.
    """

    estimator: str = "mc_dropout"
    interval: int = 10
    measure: str = "entropy"
    passes: int = 50
    dropout_p: float = 0.5
    n_members: int = 0
    seed: int = 0


@dataclass(frozen=True)
class ResourceRequest:
    """Resource readings at the first step, then every `interval_steps` steps (None: at each new epoch).

    `reader` replaces `ResourceMonitor(device).read`, e.g. with fixed readings for reproducible runs.
    """

    interval_steps: int | None = None
    reader: Callable[[], dict[str, float]] | None = None


SourceRequest = UncertaintyRequest | BatchUncertaintyRequest | ResourceRequest


def _check_ensemble(model: nn.Module, n_members: int) -> DeepEnsemble:
    if not isinstance(model, DeepEnsemble) or len(model.members) != n_members:
        raise ValueError(
            f"ensemble uncertainty needs the model to be a {n_members}-member DeepEnsemble: run it through metalr.train "
            "(which calls the controller's prepare_task) or build the task with metalr.ensemble.ensemble_task"
        )
    return model


class _EstimateSource:
    """What both uncertainty sources share: an estimate every `interval` steps (1, 1 + interval, ...),
    every estimate kept in `records`, and state = how many records plus the estimator's RNG."""

    signal = "uncertainty"
    estimator: Any

    def __init__(self, interval: int) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.interval = int(interval)
        self.records: list[dict[str, float]] = []

    def due(self, step: int, epoch: int) -> bool:
        return (step - 1) % self.interval == 0

    def _keep(self, record: dict[str, float]) -> float:
        self.records.append(record)
        return record["uncertainty"]

    def state_dict(self) -> dict[str, Any]:
        generator = getattr(self.estimator, "generator", None)
        return {"n_records": len(self.records), "rng": None if generator is None else generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del self.records[int(state["n_records"]) :]
        generator = getattr(self.estimator, "generator", None)
        if generator is not None and state["rng"] is not None:
            generator.set_state(state["rng"])


class UncertaintySource(_EstimateSource):
    """Fills `signals.uncertainty` on estimation steps; keeps every estimate in `records`."""

    def __init__(self, request: UncertaintyRequest, model: nn.Module, task: Any, device: torch.device | str = "cpu") -> None:
        if task is None:
            raise ValueError("uncertainty estimates need a metalr Task (the probe batch is drawn from its data); run through metalr.train")
        super().__init__(request.interval)
        batch = probe_batch(task, request.probe_size, request.probe, request.probe_seed, device)
        self.estimator: MCDropoutEstimator | EnsembleEstimator
        if request.estimator == "ensemble":
            self.estimator = EnsembleEstimator(_check_ensemble(model, request.n_members).members, task.forward, batch, measure=request.measure)
        elif request.estimator == "mc_dropout":
            self.estimator = MCDropoutEstimator(
                model, task.forward, batch, passes=request.passes, p=request.dropout_p, measure=request.measure, mode=request.mode, seed=request.probe_seed
            )
        else:
            raise ValueError(f"unknown uncertainty estimator {request.estimator!r}; valid: mc_dropout, ensemble")

    def read(self, step: int, epoch: int, logits: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> float:
        return self._keep(self.estimator.estimate(step))


class BatchUncertaintySource(_EstimateSource):
    """Fills `signals.uncertainty` on estimation steps from the step's own forward (`BatchUncertaintyRequest`); keeps every estimate.

    Its forward hooks stay on the model's head(s) for the source's lifetime (`close()` removes
    them). Each record's error_rate and confidence are those of the training batch.
    """

    def __init__(self, request: BatchUncertaintyRequest, model: nn.Module) -> None:
        super().__init__(request.interval)
        self.estimator: BatchHeadDropout | BatchEnsembleDisagreement
        if request.estimator == "ensemble":
            self.estimator = BatchEnsembleDisagreement(_check_ensemble(model, request.n_members), measure=request.measure)
        elif request.estimator == "mc_dropout":
            self.estimator = BatchHeadDropout(model, passes=request.passes, p=request.dropout_p, measure=request.measure, seed=request.seed)
        else:
            raise ValueError(f"unknown uncertainty estimator {request.estimator!r}; valid: mc_dropout, ensemble")

    def read(self, step: int, epoch: int, logits: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> float:
        return self._keep(self.estimator.estimate(step, logits, targets))

    def close(self) -> None:
        """Remove the forward hooks from the model."""
        for c in self.estimator.captures if isinstance(self.estimator, BatchEnsembleDisagreement) else [self.estimator.capture]:
            c.remove()


class ResourceSource:
    """Fills `signals.resources` at the first step, then per epoch or every `interval_steps`."""

    signal = "resources"

    def __init__(self, request: ResourceRequest, device: torch.device | str = "cpu") -> None:
        self.reader = request.reader or ResourceMonitor(device).read
        self.interval_steps = request.interval_steps
        self.last_step, self.last_epoch = -1, -1
        self.records: list[dict[str, float]] = []

    def due(self, step: int, epoch: int) -> bool:
        if self.last_step < 0:
            return True
        if self.interval_steps is None:
            return epoch != self.last_epoch
        return step - self.last_step >= self.interval_steps

    def read(self, step: int, epoch: int, logits: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> dict[str, float]:
        self.last_step, self.last_epoch = step, epoch
        readings = dict(self.reader())
        self.records.append({"step": float(step), **readings})
        return readings

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "last_epoch": self.last_epoch, "n_records": len(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step, self.last_epoch = int(state["last_step"]), int(state["last_epoch"])
        del self.records[int(state["n_records"]) :]


def build_source(
    request: SourceRequest, *, model: nn.Module | None, task: Any = None, device: torch.device | str = "cpu"
) -> UncertaintySource | BatchUncertaintySource | ResourceSource:
    """The source that serves `request` for `model` (and `task`, for probe batches)."""
    if isinstance(request, UncertaintyRequest):
        if model is None:
            raise ValueError("an uncertainty source needs the model (and a task for its probe batch)")
        return UncertaintySource(request, model, task, device)
    if isinstance(request, BatchUncertaintyRequest):
        if model is None:
            raise ValueError("a training-batch uncertainty source needs the model (it reads the model's head in the step's forward)")
        return BatchUncertaintySource(request, model)
    if isinstance(request, ResourceRequest):
        return ResourceSource(request, device)
    raise TypeError(f"unknown signal source request {request!r}; valid: UncertaintyRequest, BatchUncertaintyRequest, ResourceRequest")
