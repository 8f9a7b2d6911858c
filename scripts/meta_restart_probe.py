"""Would restarting from the initial weights when the divergence guard fires early pass selection? (research; issue 13, session 24)

    python scripts/meta_restart_probe.py 0.25,3 0.5,3 [--workers 2] [--rule v3]

From a base LR that is too high the shipped controller's divergence guard cuts the LR (x0.1 at once), but the steps
before the cut have already done damage that the rest of the run does not fully repair: from 10^1.5 x the usual LR
the labelled check tasks end 2.7 points below their cosine sweep's best (`lab+1.5`, rule v3), and the guard's pace
alone was worth 1.6 of those points (session 22). Session 24's range test with a restart (`scripts/meta_range_probe.py
--rollback`) gained about a point from too-high LRs, and lost as much at sound LRs, where it spent steps on a test
the run did not need. This probe restarts only when the guard says the LR was too high: when the guard fires within
the first WINDOW share of the run, the model's weights and the optimizer's state are put back as they were before
the first step (a copy taken when the controller is built, freed when the window closes or after MAX restarts),
on the next step of the rule's decision phase (a multiple of its decision interval, so that the gradient statistics
never compare weights from before and after the restart); the LR stays where the guard's cut put it, the rule's state
(features, guard reference) starts afresh, the warmup is not repeated, and the steps spent are not given back (the
run's length and progress go on). Where the guard does not fire (at and below the usual LR on every selection cell,
session 22) nothing changes.

A probe, not a rule setting: each run's `MetaController` is patched (in this process and the selection's worker
processes, which fork from it). Settings WINDOW,MAX. Acceptance, declared before measuring: beat the shipped
checkpoint under `scripts/meta_select.py --rule v3`; a setting that does is then checked on runs from trained weights
(`scripts/meta_continue_probe.py`: at least constant LR in every cell, since there the guard may fire on a noisy
first loss and a restart would throw away progress) before anything else.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import meta_select as ms  # noqa: E402

from metalr.controllers.meta import MetaController  # noqa: E402
from metalr.meta.rule import RuleState  # noqa: E402

PATCHES = ms.Patches()


def patch(window: float, max_restarts: int) -> None:
    """Make every `MetaController` restart from its initial weights when its guard fires in the first `window` of the run."""
    init, compute = MetaController.__init__, MetaController._compute_lrs

    @functools.wraps(init)  # the registry checks keyword arguments against the signature
    def __init__(self: Any, optimizer: Any, **kwargs: Any) -> None:
        init(self, optimizer, **kwargs)
        self._restart = {"start": ms.StartingPoint(optimizer), "fired": 0, "due": False, "n": 0}

    def _compute_lrs(self: Any, signals: Any) -> list[float]:
        lrs = compute(self, signals)
        r = self._restart
        if r["start"] is None:
            return lrs
        fired = int(self._rule_state.guard_fired)
        if fired != r["fired"]:
            r["fired"] = fired
            r["due"] = r["due"] or self.last_step <= window * self.total_steps
        if r["due"] and self.last_step % self.signal_every == 0:
            r["start"].put_back(self.optimizer)  # (the saved LR is overwritten by the step's, `lrs`)
            self._rule_state = RuleState()  # the LR stays at the guard's cut (`_log_rel`); features and guard start afresh
            r["due"], r["n"], r["fired"] = False, r["n"] + 1, 0
        if (self.last_step > window * self.total_steps and not r["due"]) or r["n"] >= max_restarts:
            r["start"] = None  # the window has closed: the copy is freed
        return lrs

    PATCHES.set(MetaController, "__init__", __init__)
    PATCHES.set(MetaController, "_compute_lrs", _compute_lrs)


unpatch = PATCHES.undo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("settings", nargs="+", help="WINDOW,MAX (e.g. 0.25,3)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rule", default="v3", choices=sorted(ms.RULES))
    args = ap.parse_args()
    settings = {}
    for s in args.settings:
        w, n = s.split(",")
        settings[f"restart {s}"] = (float(w), int(n))
    ms.probe_patched(settings, lambda s: patch(*s), unpatch, args.workers, rule=args.rule)


if __name__ == "__main__":
    main()
