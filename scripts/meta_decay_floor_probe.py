"""Would a floor on the meta-controller's decay pass selection? (research; issue 13, session 16)

    python scripts/meta_decay_floor_probe.py 0.5 0.25 [--workers 2]

The shipped controller decays its LR in the second half of every run to about 0.05-0.1 of its peak, as a
cosine does. On the held-out NER task decay is what hurts (constant LR at the default LR: entity F1 0.277;
cosine 0.03-0.06; `meta` 0.211), so the question is whether keeping the LR above F x its highest value so far
(the peak resets to the current value whenever the divergence guard fires, so the guard's cuts stay) would
help on the selection tasks, which are neither meta-training nor held-out tasks.

A probe, not a rule setting: each run's `MetaController` is patched (in this process and the selection's
worker processes, which fork from it) to apply the floor to the LR it writes; the policy does not see it.
Acceptance, declared before measuring: beat the shipped checkpoint under `scripts/meta_select.py --rule v2`.
Prints each F's cells beside the shipped checkpoint's (measured afresh here when runs/meta_select has no cache).
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import meta_select as ms  # noqa: E402

from metalr.controllers.meta import MetaController  # noqa: E402

PATCHES = ms.Patches()


def patch(floor: float) -> None:
    """Make every `MetaController` keep its LR multiplier at or above `floor` x its peak since the last guard firing."""
    init, compute = MetaController.__init__, MetaController._compute_lrs

    @functools.wraps(init)  # the registry checks keyword arguments against the signature
    def __init__(self: Any, optimizer: Any, **kwargs: Any) -> None:
        init(self, optimizer, **kwargs)
        self._floor_peak, self._floor_fired = 0.0, 0

    def _compute_lrs(self: Any, signals: Any) -> list[float]:
        lrs = compute(self, signals)
        factor = math.exp(float(self._log_rel))
        fired = int(self._rule_state.guard_fired)
        if fired != self._floor_fired:  # the guard cut: its cut stays, the peak starts again from here
            self._floor_fired, self._floor_peak = fired, factor
        self._floor_peak = max(self._floor_peak, factor)
        lowest = floor * self._floor_peak
        return [lr * lowest / factor for lr in lrs] if factor < lowest else lrs

    PATCHES.set(MetaController, "__init__", __init__)
    PATCHES.set(MetaController, "_compute_lrs", _compute_lrs)


unpatch = PATCHES.undo

if __name__ == "__main__":
    ms.probe_main(__doc__, patch, unpatch, "floor {:g}")
