"""Does the meta-controller hold back because it sees how far it has moved from the base LR? (research; issue 13, session 21)

    python scripts/meta_anchor_probe.py 0 0.5 [--workers 2]

From a base LR 10x too low the shipped controller raises the LR to 3-6x and then turns to decay while the loss still
falls (held-out Rotten Tomatoes, the plain-loop GRU of session 18); from a good one it cuts the LR tenfold by the end
(held-out NER). One of its inputs, `lr_rel` = log(LR / base LR), tells it how far it has already moved from the LR the
user chose: a policy can learn to treat the user's choice as roughly right and stop moving away from it, an anchor
that is wrong exactly when the base LR is. Meta-training drew base LRs over three decades, which should have taught it
not to anchor; this probe asks the selection tasks whether it did. The policy reads S x `lr_rel` instead of `lr_rel`
(S = 0: blind to how far it has moved; S = 0.5: half of it), everything else unchanged (the bounds, the guard, the
update-size ceiling, the warmup). S = 0 and 0.5, fixed before any measurement; said plainly, the idea comes from the
held-out tables.

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

LR_REL = FEATURE_NAMES.index("lr_rel")


PATCHES = ms.Patches()


def patch(scale: float) -> None:
    """Make every frozen policy read `scale` x its `lr_rel` feature."""

    def scaled(own: Any, features: list[float]) -> float:
        seen = list(features)
        seen[LR_REL] = scale * seen[LR_REL]
        return own(seen)

    PATCHES.policy(scaled)


unpatch = PATCHES.undo

if __name__ == "__main__":
    ms.probe_main(__doc__, patch, unpatch, "lr_rel x{:g}")
