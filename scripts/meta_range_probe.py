"""Would an LR range test at the start of the run find the LR's level? (research; issue 13, session 18)

    python scripts/meta_range_probe.py 0.08,100,1.2,4 0.08,10,1.1,2 [--workers 2]
    python scripts/meta_range_probe.py 0.08,100,1.2,4 0.08,10,1.1,2 --rollback --rule v3     # session 24, round 1
    python scripts/meta_range_probe.py 0.08,100,1.2,4,0.5 0.04,100,1.2,4,0.5 --rollback --rule v3     # round 2

Where the shipped controller falls short of a tuned cosine, it is the LR's level (a base LR 3-10x too low),
which one run's early signals reveal only to about a factor of 4 (docs/meta_training/README.md, "Session 15").
An LR range test (Smith 2017) measures it directly: raise the LR until the loss turns up, and take a fraction of
the LR where it was lowest. Here it runs inside the run, before the policy takes over. Each setting is
FRAC,RMAX,BLOW,DIV: over the first T = FRAC x run steps (at least 24) the LR rises exponentially from 0.1x to
RMAX x the base LR; a loss average (EMA 0.7) is kept, and the ramp stops at T or as soon as the average exceeds
BLOW x its lowest value (or a loss is not finite). The LR level is then set to (the multiplier at the lowest
average) / DIV, the rule's state starts afresh (features and guard reference) and the shipped rule goes on from
that level (its warmup, which the ramp replaces, is off).

`--rollback` (session 24): session 18's range test lost on every cell but one, and its reading was that the steps
near the top of the ramp do damage the rest of the run does not repair. With `--rollback` the test is followed by
a restart: at the test's end the model's weights and the optimizer's state are put back as they were before the
first step (a copy taken when the controller is built), and the rest of the run (its length less the test's) starts
afresh from the level the test found, under the shipped rule, warmup included, with its features, guard and
progress new (the rule reads a run of T_run - T steps). T is rounded up to a multiple of 8 (the rule's decision
interval, so that the gradient statistics stay on the policy's steps). The test's steps are spent: the restarted run
has fewer. Same acceptance, under `--rule v3`: beat the shipped checkpoint.

Round 1 (0.08,100,1.2,4 and 0.08,10,1.1,2 with `--rollback`) failed, by far less than without the restart: mean
differences -0.0006 and -0.0017 under v3 (-0.0221 and -0.0101 under v2 in session 18), gaining from high LRs (val,
lab+1.5, rnn31.6, txt31.6) and losing at and below the usual LR (dev1, dev10, txt1, lab-1.5). Round 2, declared after
round 1 and before measuring, with the same acceptance: an optional fifth field DEAD (decades, default 0) keeps the
restarted run at the base LR unless the test's level is more than DEAD decades away from it (a read near the base LR
is mostly noise: session 15 put one run's early read at about 0.6 decades rms); DEAD = 0.5 with the test over 8 % and
over 4 % of the run (0.08,100,1.2,4,0.5 and 0.04,100,1.2,4,0.5). Then the probe stops, pass or fail.

A probe, not a rule setting: each run's `MetaController` is patched (in this process and the selection's worker
processes, which fork from it). Acceptance, declared before measuring: beat the shipped checkpoint under
`scripts/meta_select.py --rule v2`. Prints each setting's cells beside the shipped checkpoint's.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import meta_select as ms  # noqa: E402

from metalr.controllers.meta import MetaController  # noqa: E402
from metalr.meta.rule import RuleState, warmup_factor, warmup_steps  # noqa: E402

START = 0.1  # the ramp's first multiplier (it also serves as the warmup)


def patch(frac: float, rmax: float, blow: float, div: float, dead: float = 0.0, rollback: bool = False) -> None:
    """Make every `MetaController` run the range test described above before its rule (and, with `rollback`, restart)."""
    init, compute = MetaController.__init__, MetaController._compute_lrs

    @functools.wraps(init)  # the registry checks keyword arguments against the signature
    def __init__(self: Any, optimizer: Any, **kwargs: Any) -> None:
        init(self, optimizer, **kwargs)
        steps = max(24, round(frac * self.total_steps))
        self._ramp = {"T": 8 * math.ceil(steps / 8) if rollback else steps, "on": True, "m": START, "avg": None, "best": math.inf, "best_m": START, "n": 0}
        if rollback:  # the weights and the optimizer's state before the first step
            self._ramp["start"] = ms.StartingPoint(optimizer)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * START
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _compute_lrs(self: Any, signals: Any) -> list[float]:
        r = self._ramp
        if not r["on"]:
            return compute(self, signals)
        loss = None if signals.loss is None else float(signals.loss)
        stop = bool(r.get("held")) or loss is None or not math.isfinite(loss)
        if not stop:
            assert loss is not None  # (stop is true when it is None)
            r["avg"] = loss if r["avg"] is None else 0.7 * r["avg"] + 0.3 * loss
            r["n"] += 1
            if r["avg"] < r["best"]:
                r["best"], r["best_m"] = r["avg"], r["m"]
            stop = r["n"] >= 5 and r["avg"] > blow * r["best"]
        if rollback and stop and self.last_step % 8:  # the restart waits for the decision phase, the ramp's LR held until then
            r["held"] = True
            return list(self._last_lr)
        if stop or self.last_step >= r["T"]:
            r["on"] = False
            lo, hi = self.rule.log_bounds
            level = math.log(r["best_m"] / div)
            self._log_rel = min(hi, max(lo, level if abs(level) > dead * math.log(10) else 0.0))
            self._rule_state = RuleState()
            if not rollback:
                self._warmup_steps = 0
                return [b * math.exp(self._log_rel) for b in self.base_lrs]
            r.pop("start").put_back(self.optimizer)
            self.total_steps = max(1, self.total_steps - self.last_step)  # the restarted run: the rest of the budget
            self.last_step = 0
            self._warmup_steps = warmup_steps(self.rule, self.total_steps)
            return [b * math.exp(self._log_rel) * warmup_factor(self.rule, 1, self.total_steps) for b in self.base_lrs]
        r["m"] = START * (rmax / START) ** (self.last_step / r["T"])
        return [b * r["m"] for b in self.base_lrs]

    MetaController.__init__, MetaController._compute_lrs = __init__, _compute_lrs  # type: ignore[method-assign]
    MetaController._ramp_original = (init, compute)  # type: ignore[attr-defined]


def unpatch() -> None:
    MetaController.__init__, MetaController._compute_lrs = MetaController._ramp_original  # type: ignore[attr-defined,method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("settings", nargs="+", help="FRAC,RMAX,BLOW,DIV[,DEAD]")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rollback", action="store_true", help="restart from the initial weights after the test (session 24)")
    ap.add_argument("--rule", default="v2", choices=sorted(ms.RULES))
    args = ap.parse_args()
    name = "range test + restart" if args.rollback else "range test"
    settings = {f"{name} {s}": tuple(float(v) for v in s.split(",")) for s in args.settings}
    if any(len(s) not in (4, 5) for s in settings.values()):
        ap.error("each setting is FRAC,RMAX,BLOW,DIV[,DEAD], e.g. 0.08,100,1.2,4")
    ms.probe_patched(
        settings, lambda s: patch(s[0], s[1], s[2], s[3], dead=s[4] if len(s) > 4 else 0.0, rollback=args.rollback), unpatch, args.workers, rule=args.rule
    )


if __name__ == "__main__":
    main()
