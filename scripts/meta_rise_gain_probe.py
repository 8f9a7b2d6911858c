"""Is the meta-controller too slow to raise a too-low LR? (research; issue 13, session 21)

    python scripts/meta_rise_gain_probe.py 1.5 2 [--workers 2]
    python scripts/meta_rise_gain_probe.py -3 -2.5 --small-steps [--gain 2] [--workers 2]
    python scripts/meta_rise_gain_probe.py --continue-check -3 [--n 16] [--workers 2]

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

`--small-steps` (the second probe, declared after the first was measured): G x1.5 and x2 gained from too-low LRs and
lost more from too-high ones, where the policy also rises early. The one input that sees the LR's level itself is the
relative size of the last update (`update_size`, log10 |dtheta| / |theta|, about -2.5 at a usual LR: the feature's
centre; a too-high LR meets the update-size ceiling at -1.5). With `--small-steps` the values are thresholds U, and
rises are doubled only while the `update_size` feature is below U (the weights move less than 10**U of their norm per
step: an LR that is likely too low); U = -3 and -2.5, fixed before measuring.

`--gain G` (session 22, declared before measuring; with `--small-steps`): the rise's factor below U (default 2). The
small-step rise at x2 left the too-high cells untouched to the fourth decimal and gained from too-low LRs (lab-1.5
+0.4 points), so a larger factor may gain more there at no cost above: G = 3 and 4 at U = -3, fixed before measuring,
same acceptance. Session 22: +0.0020 / +0.0022 (x4 passes v2; as `configs/meta_train_stage22.yaml` it fails the
confirmation under rule v3, +0.0002: docs/meta_training/README.md, "Session 22").

`--continue-check U`: the shipped controller with the small-step rise at U on `scripts/meta_continue_probe.py`'s
runs that start from trained weights (a second stage, a new head: small updates at a sound LR, where a faster rise
could do harm), printed like that script (compare with `python scripts/meta_continue_probe.py --candidates shipped`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import meta_select as ms  # noqa: E402

from metalr.meta.features import FEATURE_NAMES  # noqa: E402

PATCHES = ms.Patches()


UPDATE_SIZE = FEATURE_NAMES.index("update_size")
SMALL_STEP_GAIN = 2.0


def patch(gain: float) -> None:
    """Make every frozen policy's positive proposals `gain` times larger."""

    def faster(own: Any, features: list[float]) -> float:
        out = own(features)
        return gain * out if out > 0 else out

    PATCHES.policy(faster)


def patch_small_steps(threshold: float, gain: float | None = None) -> None:
    """Make every frozen policy's positive proposals `gain` (default SMALL_STEP_GAIN) times larger while the
    `update_size` feature < threshold."""
    g = SMALL_STEP_GAIN if gain is None else gain

    def faster(own: Any, features: list[float]) -> float:
        out = own(features)
        return g * out if out > 0 and features[UPDATE_SIZE] < threshold else out

    PATCHES.policy(faster)


unpatch = PATCHES.undo

if __name__ == "__main__":
    if "--continue-check" in sys.argv:
        at = sys.argv.index("--continue-check")
        patch_small_steps(float(sys.argv[at + 1]))
        del sys.argv[at : at + 2]
        import meta_continue_probe

        sys.argv += ["--candidates", "shipped"]
        meta_continue_probe.main()
    elif "--small-steps" in sys.argv:
        sys.argv.remove("--small-steps")
        gain = SMALL_STEP_GAIN
        if "--gain" in sys.argv:
            at = sys.argv.index("--gain")
            gain = float(sys.argv[at + 1])
            del sys.argv[at : at + 2]
        if not gain >= 1:
            raise SystemExit(f"--gain must be >= 1, got {gain}")
        ms.probe_main(__doc__, lambda u: patch_small_steps(u, gain), unpatch, f"rises x{gain:g} below update size {{:g}}")
    else:
        ms.probe_main(__doc__, patch, unpatch, "rises x{:g}")
