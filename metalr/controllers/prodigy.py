"""Prodigy (Mishchenko & Defazio, 2024, "Prodigy: An Expeditiously Adaptive
Parameter-Free Learner"), from the `prodigyopt` package, as a controller.

Like D-Adaptation it estimates the distance d to the solution and steps with
d * lr, growing d from a tiny d0 (1e-6) within the first steps. The authors
recommend lr=1.0 and either no schedule or cosine annealing (`anneal="cosine"`).
The controller reports d * lr as its LR (see `DAdaptiveController`).
"""

from __future__ import annotations

import torch

from metalr.controllers import register
from metalr.controllers.dadaptation import DAdaptiveController


def _prodigy() -> type[torch.optim.Optimizer]:
    from prodigyopt import Prodigy

    return Prodigy


@register("prodigy")
class ProdigyController(DAdaptiveController):
    """Prodigy (Adam-like, decoupled weight decay) with lr multiplier 1.0."""

    optimizer_cls = _prodigy()
