"""Which of its inputs does the shipped meta-controller use? (research; issue 13, session 21)

    python scripts/meta_ablation_probe.py progress loss align gnorm update [--workers 2]

Each named group of features is replaced by its neutral value (the normalisation's shift, `SHIFT`: the input the
policy reads as 0) at every decision, everything else unchanged (the rule, the guard, the update-size ceiling, which
reads the state, not the policy's input), and the controller is measured on the selection tasks
(`scripts/meta_select.py --rule v2`'s cells) beside the shipped one. A group whose removal moves no cell beyond the
cells' own noise (`scripts/meta_select_noise.py`) is one the policy does not use there. `lr_rel` alone is
`scripts/meta_anchor_probe.py 0`. A study, not a candidate: nothing here is meant to be shipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import meta_select as ms  # noqa: E402

from metalr.meta.features import FEATURE_NAMES, SHIFT  # noqa: E402

GROUPS = {
    "progress": ("progress",),
    "loss": ("trend_fast", "trend_slow", "above_min", "vs_first", "minmax"),
    "align": ("align_fast", "align_slow"),
    "gnorm": ("gnorm_trend",),
    "update": ("update_size",),
    "validation": ("val_rise",),  # format 4 only (a format-3 policy reads the first 11 features: nothing to replace)
}

PATCHES = ms.Patches()


def patch(group: str) -> None:
    """Make every frozen policy read the neutral value in place of each feature of `group`."""
    idx = [FEATURE_NAMES.index(n) for n in GROUPS[group]]

    def neutral(own: Any, features: list[float]) -> float:
        seen = list(features)
        for i in idx:
            if i < len(seen):  # (the features the policy reads: its format's)
                seen[i] = SHIFT[i]
        return own(seen)

    PATCHES.policy(neutral)


unpatch = PATCHES.undo

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("groups", nargs="+", choices=sorted(GROUPS))
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    ms.probe_patched({f"without {g}": g for g in a.groups}, patch, unpatch, a.workers)
