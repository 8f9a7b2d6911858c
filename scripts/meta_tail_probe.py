"""Would a cosine tail at the end of the run, on top of the meta-controller, pass selection? (research; issue 13, session 20)

    python scripts/meta_tail_probe.py 0.8 0.9 [--workers 2]

The shipped controller ends its runs at 0.05-0.1 of its peak LR, where a cosine schedule ends at 0, and at the
default LR it is 0.25 points below cosine on the held-out Fashion-MNIST task and 0.5 below constant LR on MNIST-1D
(the bar asks for at least the better of the two). The question asked of the selection tasks: does multiplying the
controller's LR over the last part of the run, from progress P on, by a cosine from 1 to 0
(0.5 (1 + cos(pi (p - P) / (1 - P)))) do better? The rule and the policy are unchanged before P; inside the tail the
policy still runs, on features that see the LR it would set without the tail (`lr_rel` is the rule's own).
P = 0.8 and 0.9, fixed before any measurement. Said plainly, the idea comes from the held-out table.

A probe, not a rule setting: each run's `MetaController` is patched (in this process and the selection's worker
processes, which fork from it). Acceptance, declared before measuring: beat the shipped checkpoint under
`scripts/meta_select.py --rule v2`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import meta_select as ms  # noqa: E402

from metalr.controllers.meta import MetaController  # noqa: E402

PATCHES = ms.Patches()


def patch(start: float) -> None:
    """Make every `MetaController` multiply the LR it sets after step t by the cosine tail at progress (t + 1) / T."""
    compute = MetaController._compute_lrs

    def _compute_lrs(self: Any, signals: Any) -> list[float]:
        lrs = compute(self, signals)
        p = (self.last_step + 1) / self.total_steps  # the progress of the step these LRs are for
        if p <= start:
            return lrs
        tail = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (p - start) / (1.0 - start))))
        return [lr * tail for lr in lrs]

    PATCHES.set(MetaController, "_compute_lrs", _compute_lrs)


unpatch = PATCHES.undo

if __name__ == "__main__":
    ms.probe_main(__doc__, patch, unpatch, "tail from {:g}")
