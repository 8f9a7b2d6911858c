"""Constant LR: the baseline every strategy is measured against (torch's ConstantLR with factor 1)."""

from __future__ import annotations

from metalr.controllers import register
from metalr.controllers.base import Controller
from metalr.signals import Signals


@register("constant")
class Constant(Controller):
    """Keeps every param group at its base LR."""

    def _compute_lrs(self, signals: Signals) -> list[float]:
        return list(self.base_lrs)
