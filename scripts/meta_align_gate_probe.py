"""Would holding off the meta-controller's cuts while successive gradients agree pass selection? (research; issue 13, session 21)

    python scripts/meta_align_gate_probe.py 0.3 0.5 [--workers 2]

Every "less decay" probe so far (a floor under the decay, session 16; a gate on the loss trend, session 20) lost on the
selection tasks: there a cut pays even while the loss still falls, because it lowers the gradient noise in the
weights. Where a cut costs (the held-out NER task at its default LR: constant LR 0.277, the controller 0.211 after
cutting its LR tenfold) the run is short of progress, not of quiet. The classical signal between those two regimes is
the one the hypergradient reads: do successive gradients agree? `grad_align`, the cosine between the gradient and the
optimizer's running average of past ones (read before the step, so the average does not contain the gradient), is
near 0 when the gradients are mostly noise and near 1 when they share a direction. This gate: at a decision step the
policy's proposal may not lower the LR while the slow alignment average (feature `align_slow`, EMA 0.95) exceeds A; a
run whose gradients are noise or fight each other (a too-high LR: negative alignment) cuts as before. Rises, the
update-size ceiling, the divergence guard and the bounds are unchanged. A = 0.3 and 0.5, fixed before any
measurement; said plainly, the idea comes from the held-out table.

A probe, not a rule setting: the frozen policy's numpy evaluation (`HostPolicy`, which reads the feature vector) is
patched in this process and the selection's worker processes (which fork from it). Acceptance, declared before
measuring: beat the shipped checkpoint under `scripts/meta_select.py --rule v2`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import meta_select as ms  # noqa: E402

from metalr.meta.features import FEATURE_NAMES  # noqa: E402

ALIGN_SLOW = FEATURE_NAMES.index("align_slow")


PATCHES = ms.Patches()


def patch(threshold: float) -> None:
    """Make every frozen policy's proposal at least 0 (no cut) while the raw `align_slow` feature exceeds threshold."""

    def gated(own: Any, features: list[float]) -> float:
        out = own(features)
        return max(out, 0.0) if features[ALIGN_SLOW] > threshold else out

    PATCHES.policy(gated)


unpatch = PATCHES.undo

if __name__ == "__main__":
    ms.probe_main(__doc__, patch, unpatch, "align gate {:g}")
