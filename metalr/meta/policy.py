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

from typing import Any

import torch
from torch import nn

from metalr.meta.features import N_FEATURES, SCALE, SHIFT


class MetaPolicy(nn.Module):
    def __init__(self, n_features: int = N_FEATURES, max_log_step: float = 0.2, hidden: tuple[int, int] = (64, 32)) -> None:
        super().__init__()
        if not max_log_step > 0:
            raise ValueError(f"max_log_step must be > 0, got {max_log_step}")
        if n_features != N_FEATURES:
            raise ValueError(f"this metalr's features have {N_FEATURES} entries, got n_features={n_features}")
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
        self.register_buffer("feature_shift", torch.tensor(SHIFT, dtype=torch.float32))
        self.register_buffer("feature_scale", torch.tensor(SCALE, dtype=torch.float32))

    feature_shift: torch.Tensor
    feature_scale: torch.Tensor

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Log-LR change for a (..., n_features) input, in [-max_log_step, max_log_step]."""
        x = (features - self.feature_shift) / self.feature_scale
        return self.max_log_step * torch.tanh(self.net(x).squeeze(-1))
