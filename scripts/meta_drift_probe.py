"""Would a steady upward drift of the policy's output pass selection? (research; issue 13, session 18)

    python scripts/meta_drift_probe.py 0.0025 0.005 0.01 [--workers 2]

Meta-training on truncated unrolls favours LRs that are too low and decay too early (short-horizon bias, Wu et al.
2018), and on every task where the shipped controller trails a tuned cosine it runs below the best LR's level. The
question asked of the selection tasks: does adding a constant C to the policy's proposed log-LR change (C per
1/horizon of the run, so the LR drifts up by a factor exp(100 C) over a run, before the guard, ceiling and bounds)
do better?

A probe, not a rule setting: the frozen policy's numpy evaluation (`HostPolicy`) is patched in this process and the
selection's worker processes (which fork from it). Acceptance, declared before measuring: beat the shipped
checkpoint under `scripts/meta_select.py --rule v2`. Prints each C's cells beside the shipped checkpoint's.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import meta_select as ms  # noqa: E402

PATCHES = ms.Patches()


def patch(drift: float) -> None:
    """Make every frozen policy's proposal `drift` higher (log-LR change per 1/horizon of the run)."""
    PATCHES.policy(lambda own, features: own(features) + drift)


unpatch = PATCHES.undo

if __name__ == "__main__":
    ms.probe_main(__doc__, patch, unpatch, "drift {:g}")
