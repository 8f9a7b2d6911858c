"""Would a floor on the meta-controller's decay pass selection? (research; issue 13, session 16)

    python scripts/meta_decay_floor_probe.py 0.5 0.25 [--workers 2]

The shipped controller decays its LR in the second half of every run to about 0.05-0.1 of its peak, as a
cosine does. On the held-out NER task decay is what hurts (constant LR at the default LR: entity F1 0.277;
cosine 0.03-0.06; `meta` 0.211), so the question is whether keeping the LR above F x its highest value so far
(the peak resets to the current value whenever the divergence guard fires, so the guard's cuts stay) would
help on the selection tasks, which are neither meta-training nor held-out tasks.

A probe, not a rule setting: each run's `MetaController` is patched (in this process and the selection's
worker processes, which fork from it) to apply the floor to the LR it writes; the policy does not see it.
Acceptance, declared before measuring: beat the shipped checkpoint under `scripts/meta_select.py --rule v2`.
Prints each F's cells beside the shipped checkpoint's (measured afresh here when runs/meta_select has no cache).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import meta_select as ms  # noqa: E402

from metalr.controllers.meta import MetaController  # noqa: E402

SHIPPED = ROOT / "checkpoints" / "metalr_default.safetensors"


def patch(floor: float) -> None:
    """Make every `MetaController` keep its LR multiplier at or above `floor` x its peak since the last guard firing."""
    init, compute = MetaController.__init__, MetaController._compute_lrs

    @functools.wraps(init)  # the registry checks keyword arguments against the signature
    def __init__(self: Any, optimizer: Any, **kwargs: Any) -> None:
        init(self, optimizer, **kwargs)
        self._floor_peak, self._floor_fired = 0.0, 0

    def _compute_lrs(self: Any, signals: Any) -> list[float]:
        lrs = compute(self, signals)
        factor = math.exp(float(self._log_rel))
        fired = int(self._rule_state.guard_fired)
        if fired != self._floor_fired:  # the guard cut: its cut stays, the peak starts again from here
            self._floor_fired, self._floor_peak = fired, factor
        self._floor_peak = max(self._floor_peak, factor)
        lowest = floor * self._floor_peak
        return [lr * lowest / factor for lr in lrs] if factor < lowest else lrs

    MetaController.__init__, MetaController._compute_lrs = __init__, _compute_lrs  # type: ignore[method-assign]
    MetaController._floor_original = (init, compute)  # type: ignore[attr-defined]


def unpatch() -> None:
    MetaController.__init__, MetaController._compute_lrs = MetaController._floor_original  # type: ignore[attr-defined,method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("floors", nargs="+", type=float)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    cells = ms.RULES["v2"]
    cache = ROOT / "runs" / "meta_select"
    dev_path = cache / "dev_cosine.json"
    dev_cache = json.loads(dev_path.read_text()) if dev_path.exists() else {}
    sha = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    ref = next((json.loads(p.read_text())["cells"] for p in cache.glob(f"{sha[:16]}_*.json") if set(cells) <= set(json.loads(p.read_text())["cells"])), None)
    if ref is None:
        ref = ms.measure(str(SHIPPED), args.workers, dev_cache, cells)
    rows = {}
    for f in args.floors:
        t0 = time.perf_counter()
        patch(f)
        try:
            rows[f] = ms.measure(str(SHIPPED), args.workers, dev_cache, cells)
        finally:
            unpatch()
        print(f"floor {f:g}: {time.perf_counter() - t0:.0f} s", flush=True)
    print("| cell | shipped | " + " | ".join(f"floor {f:g}" for f in rows) + " |")
    print("|---" * (len(rows) + 2) + "|")
    for c in cells:
        print(f"| {c} | {ref[c]:+.4f} | " + " | ".join(f"{row[c]:+.4f}" for row in rows.values()) + " |")
    for f, row in rows.items():
        print(f"floor {f:g}: beats the shipped checkpoint? {ms.beats(row, ref, cells)}")


if __name__ == "__main__":
    main()
