"""The meta-learned LR policy: features -> a bounded log-LR change.

Linear(n, 64) -> ReLU -> Linear(64, 32) -> ReLU -> Linear(32, 1), then
`max_log_step * tanh(.)`: the LR can change by at most a factor
exp(±max_log_step) per step, whatever the weights. The last layer starts near
zero, so an untrained policy is (almost) a constant LR: meta-training starts from
the safe baseline instead of from noise.
"""

from __future__ import annotations

import torch
from torch import nn

from metalr.meta.features import N_FEATURES, SCALE, SHIFT


class MetaPolicy(nn.Module):
    def __init__(self, n_features: int = N_FEATURES, max_log_step: float = 0.03) -> None:
        super().__init__()
        if not max_log_step > 0:
            raise ValueError(f"max_log_step must be > 0, got {max_log_step}")
        self.max_log_step = float(max_log_step)
        self.net = nn.Sequential(nn.Linear(n_features, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))
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
        return self.max_log_step * torch.tanh(self.net(x).squeeze(-1))


def horizon_scale(horizon_steps: int, total_steps: int | None) -> float:
    """Factor on the per-step log-LR change that makes the policy horizon-invariant.

    The policy's output is read as the change per step of a `horizon_steps`-long
    run; a run of T steps takes steps `horizon_steps / T` times as large (capped
    at 4), so the same policy bends the LR by the same amount over a run of 100
    or 10,000 steps, with `progress` telling it where it is. Without this, a
    policy meta-trained on short runs compounds its per-step change over a long
    run and drives the LR into its bounds (a form of short-horizon bias).
    `horizon_steps == 0` (older checkpoints) or an unknown T gives 1.
    """
    if not horizon_steps or not total_steps:
        return 1.0
    return min(4.0, horizon_steps / total_steps)
