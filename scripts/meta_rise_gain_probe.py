"""Is the meta-controller too slow to raise a too-low LR? (research; issue 13, session 21)

    python scripts/meta_rise_gain_probe.py 1.5 2 [--workers 2]

From a base LR 10x too low the shipped controller raises the LR to 3-6x by a quarter of the run, then turns to decay
(held-out Rotten Tomatoes; the plain-loop GRU of session 18; the labelled tasks from 10^-1.5x are its worst cells after
10^1.5x). Its rises are learned and bounded (at most `max_log_step` = 0.2 per 1/100 of the run, and it proposes about
+0.19 while successive gradients agree). This probe multiplies every positive proposal by G (cuts, the update-size
ceiling, the guard, the warmup and the bounds unchanged): the same decisions to rise, taken G times faster. G = 1.5
and 2, fixed before any measurement. Said plainly, the idea comes from the held-out tables.

A probe, not a rule setting: the frozen policy's numpy evaluation (`HostPolicy`) is patched in this process and the
selection's worker processes (which fork from it). Acceptance, declared before measuring: beat the shipped checkpoint
under `scripts/meta_select.py --rule v2` (and, read beside the null copies of `scripts/meta_select_noise.py`, by more
than their spread).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import meta_select as ms  # noqa: E402

PATCHES = ms.Patches()


def patch(gain: float) -> None:
    """Make every frozen policy's positive proposals `gain` times larger."""

    def faster(own: Any, features: list[float]) -> float:
        out = own(features)
        return gain * out if out > 0 else out

    PATCHES.policy(faster)


unpatch = PATCHES.undo

if __name__ == "__main__":
    ms.probe_main(__doc__, patch, unpatch, "rises x{:g}")
