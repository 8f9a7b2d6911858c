"""What would reading a GPU's signals back only on the policy's own steps cost in quality? (issue 17, session 20)

    python scripts/meta_sync_probe.py [--workers 2]
    python scripts/meta_sync_probe.py --lag [--workers 2]

On a GPU the tracker hands `meta` its signals as device tensors, and every read-back is a host-device
synchronisation. `sync_every` = k reads them back once per k steps. With k = the rule's `decide_every` (8 for the
shipped checkpoint) the read-backs fall on the policy's own steps, so every policy decision takes effect on the same
step as on a CPU, the warmup follows the step as on a CPU, and only a divergence-guard cut between two decisions
waits for the next read-back (at most k-1 steps). The question was whether that could be the default on a GPU
(zero synchronisations on 7 steps in 8).

This measures it on the selection tasks (`scripts/meta_select.py --rule v2`, none a meta-training or held-out
task) on this CPU, with the tracker forced to hand over tensors as on a GPU: the shipped checkpoint with the
device path read back every step (`sync_every=1`, the exact rule, the default) and every 8th step. Acceptance,
declared before measuring: k = 8's cells against the exact rule's lose no more than the selection rule's noise
allows (mean difference >= -MIN_GAIN and no cell lower by more than MAX_LOSS). Session 20: it failed (lab+1.5
-0.0169, mean -0.0025); the default stays 1.

`--lag` (session 22): the other way to keep the host from waiting, `MetaController(read_lag=1)`: every step's
signals are copied to the host without waiting and read one step later, so the rule runs every step, one step late
(every decision and guard cut one step later, instead of up to 7). Measured the same way, on the device path, against
`sync_every` 1, under rule v3's cells (`scripts/meta_select.py`: the sequence cells on 24 tasks, since a change that
perturbs every run reads on the 8-task cells like the null copies, up to 1.5 points). Acceptance, declared before
measuring: mean difference >= -MIN_GAIN and no cell lower than its v3 tolerance allows (0.005; 0.01 on the sequence
cells). Session 22: it failed (lab+1.5 -0.0213, val -0.0083, mean -0.0013).
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
from metalr.signals import SignalTracker  # noqa: E402

PATCHES = ms.Patches()


def patch(setting: int | dict[str, int]) -> None:
    """Every tracker hands over tensors (as for parameters on a GPU); every `MetaController` reads them back every
    `setting` steps (an int: `sync_every`), or is built with the keyword arguments `setting` (a dict)."""
    extra = setting if isinstance(setting, dict) else {"sync_every": setting}
    tracker_init, meta_init = SignalTracker.__init__, MetaController.__init__

    @functools.wraps(tracker_init)
    def tracker(self: Any, *args: Any, **kwargs: Any) -> None:
        tracker_init(self, *args, **{**kwargs, "as_tensors": True})

    @functools.wraps(meta_init)  # the registry checks keyword arguments against the signature
    def meta(self: Any, optimizer: Any, **kwargs: Any) -> None:
        meta_init(self, optimizer, **{**kwargs, **extra})

    PATCHES.set(SignalTracker, "__init__", tracker)
    PATCHES.set(MetaController, "__init__", meta)


unpatch = PATCHES.undo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lag", action="store_true", help="read_lag=1 against sync_every=1, under rule v3's cells")
    args = ap.parse_args()
    if args.lag:
        rows = ms.probe_patched({"device, sync_every 1": 1, "device, read_lag 1": {"read_lag": 1}}, patch, unpatch, args.workers, rule="v3")
        exact, lag = rows["device, sync_every 1"], rows["device, read_lag 1"]
        diffs = {c: lag[c] - exact[c] for c in ms.RULES["v3"]}
        tol = ms.tolerances(ms.RULES["v3"], ms.SEQ_LOSS["v3"])
        ok = sum(diffs.values()) / len(diffs) >= -ms.MIN_GAIN and all(diffs[c] >= -tol[c] for c in diffs)
        worst = min(diffs, key=lambda c: diffs[c] + tol[c])
        print(
            f"read_lag 1 against sync_every 1: mean difference {sum(diffs.values()) / len(diffs):+.4f}, worst cell {worst} {diffs[worst]:+.4f}: {'passes' if ok else 'fails'}"
        )
        return
    rows = ms.probe_patched({"device, sync_every 1": 1, "device, sync_every 8": 8}, patch, unpatch, args.workers)
    exact, every8 = rows["device, sync_every 1"], rows["device, sync_every 8"]
    diffs = {c: every8[c] - exact[c] for c in ms.RULES["v2"]}
    mean, worst = sum(diffs.values()) / len(diffs), min(diffs, key=diffs.__getitem__)
    ok = mean >= -ms.MIN_GAIN and diffs[worst] >= -ms.MAX_LOSS
    print(f"sync_every 8 against sync_every 1: mean difference {mean:+.4f}, worst cell {worst} {diffs[worst]:+.4f}: {'passes' if ok else 'fails'}")


if __name__ == "__main__":
    main()
