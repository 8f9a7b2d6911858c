"""Would holding off the meta-controller's cuts while the loss still falls fast pass selection? (research; issue 13, session 20)

    python scripts/meta_decay_gate_probe.py 0.05 0.15 [--workers 2]

The shipped controller turns to decay with the loss still falling fast (the plain-loop GRU of session 18: cuts at
almost every decision from 24 % of the run on, with the slow loss trend near -0.25), and on the held-out NER task
decay is what costs most. Session 16's floor under the decay lost on the selection tasks, mostly from high base LRs,
where the decay is also what brings a too-high LR down. This gate is narrower: at a decision step the policy's
proposal may not lower the LR while the slow loss trend (feature `trend_slow`, log(EMA_0.9 / EMA_0.99) of the loss)
is below -T, i.e. while the loss is still falling steeply; a run whose loss is stuck or noisy at a too-high LR reads
about 0 there and may cut as before. Rises, the update-size ceiling (applied after the gate: its pull down stays),
the divergence guard and the bounds are unchanged. Said plainly, the idea comes from a held-out task (NER) and from
the plain-loop check, which are never used to choose; the two values of T were fixed before any measurement.

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

TREND_SLOW = FEATURE_NAMES.index("trend_slow")


PATCHES = ms.Patches()


def patch(threshold: float) -> None:
    """Make every frozen policy's proposal at least 0 (no cut) while the raw `trend_slow` feature is below -threshold."""

    def gated(own: Any, features: list[float]) -> float:
        out = own(features)
        return max(out, 0.0) if features[TREND_SLOW] < -threshold else out

    PATCHES.policy(gated)


unpatch = PATCHES.undo

if __name__ == "__main__":
    ms.probe_main(__doc__, patch, unpatch, "gate {:g}")
