"""The meta-learned LR policy: features -> a bounded log-LR change.

Linear(n, 64) -> ReLU -> Linear(64, 32) -> ReLU -> Linear(32, 1), then
`max_log_step * tanh(.)`: the LR can change by at most a factor
exp(±max_log_step) per `1/horizon_steps` of a run, whatever the weights
(`metalr.meta.rule` applies it). The last layer starts near zero, so an
untrained policy is (almost) a constant LR: meta-training starts from the safe
baseline instead of from noise. `model_args` are the constructor arguments a
checkpoint stores to rebuild it (nanoGPT's habit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from metalr.meta.features import FORMAT_FEATURES, N_FEATURES, SCALE, SHIFT


class MetaPolicy(nn.Module):
    def __init__(self, n_features: int = N_FEATURES, max_log_step: float = 0.2, hidden: tuple[int, int] = (64, 32)) -> None:
        super().__init__()
        if not max_log_step > 0:
            raise ValueError(f"max_log_step must be > 0, got {max_log_step}")
        if n_features not in FORMAT_FEATURES.values():
            raise ValueError(f"this metalr's policies read the first {sorted(FORMAT_FEATURES.values())} features, got n_features={n_features}")
        self.n_features = int(n_features)  # the policy reads the first n_features of FEATURE_NAMES
        self.max_log_step = float(max_log_step)
        self.model_args: dict[str, Any] = {"n_features": n_features, "max_log_step": self.max_log_step, "hidden": list(hidden)}
        h1, h2 = hidden
        self.net = nn.Sequential(nn.Linear(n_features, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 1))
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.weight.mul_(0.01)
            last.bias.zero_()
        # Normalisation travels with the weights (buffers are saved in checkpoints).
        self.register_buffer("feature_shift", torch.tensor(SHIFT[:n_features], dtype=torch.float32))
        self.register_buffer("feature_scale", torch.tensor(SCALE[:n_features], dtype=torch.float32))

    feature_shift: torch.Tensor
    feature_scale: torch.Tensor

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Log-LR change for a (..., n_features) input, in [-max_log_step, max_log_step]."""
        x = (features - self.feature_shift) / self.feature_scale
        l1, _, l2, _, l3 = self.net  # the layers called functionally: nn.Module.__call__ costs more than the arithmetic here
        h = F.relu(F.linear(x, l1.weight, l1.bias))  # type: ignore[arg-type]
        h = F.relu(F.linear(h, l2.weight, l2.bias))  # type: ignore[arg-type]
        return self.max_log_step * torch.tanh(F.linear(h, l3.weight, l3.bias).squeeze(-1))  # type: ignore[arg-type]


class HostPolicy:
    """A frozen `MetaPolicy` evaluated with numpy on a Python feature list: the same function, same float32 weights.

    On a CPU each torch call costs microseconds of dispatch, which for a 10-input network is
    the whole cost (about 60 us for the five layers); numpy does the same arithmetic in a few.
    The deployed controller uses it for signals that are Python numbers; meta-training and
    device-resident signals use the module itself (`tests/test_meta.py` checks they agree).
    """

    def __init__(self, policy: MetaPolicy) -> None:
        with torch.no_grad():
            linears = [m for m in policy.net if isinstance(m, nn.Linear)]
            self.dtype: Any = np.float64 if policy.feature_shift.dtype == torch.float64 else np.float32  # the policy's own precision
            arrays: list[Any] = [t.detach().cpu().numpy().astype(self.dtype).copy() for m in linears for t in (m.weight, m.bias)]
            self.w1, self.b1, self.w2, self.b2, self.w3, self.b3 = arrays
            self.shift: Any = policy.feature_shift.cpu().numpy().astype(self.dtype).copy()
            self.scale: Any = policy.feature_scale.cpu().numpy().astype(self.dtype).copy()
        self.max_log_step = self.dtype(policy.max_log_step)
        self.n_features = policy.n_features
        self.zero = self.dtype(0.0)

    def __call__(self, features: Sequence[float]) -> float:
        x = (np.asarray(features, dtype=self.dtype) - self.shift) / self.scale
        h = np.maximum(self.w1 @ x + self.b1, self.zero)
        h = np.maximum(self.w2 @ h + self.b2, self.zero)
        return float(self.max_log_step * np.tanh((self.w3 @ h + self.b3)[0]))
