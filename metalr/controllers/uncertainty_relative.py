"""Uncertainty-driven LR, calibrated: react to uncertainty relative to its own recent level.

The plan's rule (`uncertainty`) multiplies the LR by 1.2 when the MC-Dropout
entropy u is below 0.1 and by 0.8 otherwise. Whether 0.1 is "confident"
depends on the dropout rate, the number of classes and the model: at p = 0.5 a
10-class CNN's normalised entropy is almost never below it, so the LR is cut at
every estimate until it sits on its floor, although u tracks the error well.
This variant keeps the idea (more confident -> larger steps, less confident ->
smaller) and the plan's multipliers and interval, but compares u with its own
recent level (`metalr.controllers.relative`): every `interval` (10) steps, with
m the median of the previous `history` (5) estimates,

    u > m * (1 + band)   ->  LR *= decrease (0.8)   less confident than lately
    u < m / (1 + band)   ->  LR *= increase (1.2)   more confident than lately
    otherwise            ->  LR kept               (band = 0.1)

so multiplying u by any constant (another dropout rate, another K) changes no
decision. In practice it warms the LR up while the model is still becoming
more confident quickly, holds it once u changes slowly, and cuts it when u
rises (the LR is too large, or the data got harder).

The estimate reuses the step's own forward. Like `uncertainty`, it is MC Dropout
on the head only (dropout at rate p on the input of the model's last
`nn.Linear`, the head re-evaluated `passes` times), but on the training batch
the step has just computed: a forward hook keeps a reference to the head's
input from the step's training forward, so no probe forward is run. Each pass
draws one mask over the head's input features, shared by the batch's examples:
every example still gets `passes` independent masks (the same MC estimate of
its predictive distribution), the masks cost passes x H random numbers instead
of passes x N x H, and the head becomes one batched matmul. Caveats: the
training batch changes every step, so estimates are noisier than on a fixed
probe batch (the dead band absorbs most of it); in a model with its own dropout
before the head, the captured features already carry that dropout; token-level
outputs include padding positions. The error paired with each estimate (for the
uncertainty-error correlation) is 1 - the accuracy of the same training batch
(`signals.accuracy`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from metalr.controllers import register
from metalr.controllers.relative import RelativeLevel
from metalr.controllers.uncertainty import MAX_PASSES, MCDropoutUncertainty
from metalr.signals import Signals

#: Examples of the probe batch used once, at attach, to check that the head produces the task's logits.
CHECK_SIZE = 32


class TrainBatchHeadDropout:
    """MC Dropout on the head's input as computed by the latest training forward (see module docstring)."""

    def __init__(self, model: nn.Module, forward: Any, check_batch: Any, *, passes: int, p: float, measure: str, seed: int = 0) -> None:
        from metalr.estimators import _TrainModes

        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("uncertainty_relative needs a model whose last nn.Linear is its classifier head")
        self.head, self.passes, self.p, self.measure = linears[-1], int(passes), float(p), measure
        seen: dict[str, torch.Tensor] = {}
        handle = self.head.register_forward_hook(lambda m, i, o: seen.update(out=o))
        try:
            with torch.no_grad(), _TrainModes(model):
                out = forward(model, check_batch)
        finally:
            handle.remove()
        if out.logits is None or "out" not in seen or seen["out"].shape != out.logits.shape:
            raise ValueError("the model's last nn.Linear does not produce the task's logits; uncertainty_relative cannot estimate on its head")
        self.features: torch.Tensor | None = None
        self.generator = torch.Generator(device=self.head.weight.device).manual_seed(seed)
        self.handle = self.head.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if module.training:  # the training forward only, not evaluation
            self.features = inputs[0].detach()

    def close(self) -> None:
        """Remove the hook from the model."""
        self.handle.remove()

    @torch.no_grad()
    def estimate(self, step: int = 0) -> dict[str, float]:
        """One estimate on the latest training batch: step, uncertainty, confidence (error_rate: NaN, filled by the controller)."""
        from metalr.estimators import _record

        if self.features is None:
            return {"step": float(step), "uncertainty": math.nan, "confidence": math.nan, "error_rate": math.nan}
        h = self.features.reshape(-1, self.features.shape[-1]).float()
        weight = self.head.weight.float()
        keep = (torch.rand((self.passes, 1, weight.shape[1]), generator=self.generator, device=weight.device) >= self.p).float() / (1.0 - self.p)
        logits = torch.matmul(h, (weight * keep).transpose(1, 2))  # [S, N, K]: one matmul per mask on the masked weight
        if self.head.bias is not None:
            logits = logits + self.head.bias.float()
        return _record(step, logits.softmax(-1), None, self.measure)


@register("uncertainty_relative")
class UncertaintyRelative(RelativeLevel, MCDropoutUncertainty):
    """MC-Dropout uncertainty against its running median: clearly lower -> LR x1.2, clearly higher -> x0.8, else kept."""

    requires = frozenset({"uncertainty", "accuracy"})
    _state_keys = (*MCDropoutUncertainty._state_keys, *RelativeLevel.LEVEL_STATE_KEYS)  # type: ignore[assignment]  # the base inferred a fixed-length tuple

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        passes: int = 50,
        dropout_p: float = 0.5,
        measure: str = "entropy",
        increase: float = 1.2,
        decrease: float = 0.8,
        interval: int = 10,
        band: float = 0.1,
        history: int = 5,
        confirm: int = 1,
        seed: int = 0,
        min_lr: float | None = None,
        max_lr: float | None = None,
    ) -> None:
        if not 2 <= passes <= MAX_PASSES:
            raise ValueError(f"need 2 <= passes <= {MAX_PASSES}, got {passes}")
        self._init_level(band, history, confirm)
        super().__init__(
            optimizer, passes=passes, dropout_p=dropout_p, mode="head", increase=increase, decrease=decrease, interval=interval,
            measure=measure, probe_size=CHECK_SIZE, probe_seed=seed, min_lr=min_lr, max_lr=max_lr,
        )  # fmt: skip

    def _make_estimator(self, model: torch.nn.Module, task: Any, batch: Any) -> Any:
        return TrainBatchHeadDropout(model, task.forward, batch, passes=self.passes, p=self.dropout_p, measure=self.measure, seed=self.probe_seed)

    def _factor(self, signals: Signals) -> float:
        u = signals.uncertainty
        self.last_factor = 1.0
        if u is None:
            return 1.0
        self.last_uncertainty = float(u)
        _pair_with_batch_error(self.uncertainty_records, signals)
        side = self._level_side(u)
        self.last_factor = self.decrease if side > 0 else self.increase if side < 0 else 1.0
        return self.last_factor

    def extra_logs(self) -> dict[str, float]:
        return {**super().extra_logs(), "uncertainty_reference": self.level_reference}


def _pair_with_batch_error(records: list[dict[str, float]], signals: Signals) -> None:
    """Give this step's estimate the error of the same training batch (1 - signals.accuracy), if it has none."""
    if records and records[-1].get("step") == float(signals.step) and not math.isfinite(records[-1].get("error_rate", math.nan)):
        acc = signals.accuracy
        if acc is not None and math.isfinite(acc):
            records[-1]["error_rate"] = 1.0 - float(acc)
