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

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import meta_select as ms  # noqa: E402

from metalr.meta.policy import HostPolicy  # noqa: E402

SHIPPED = ROOT / "checkpoints" / "metalr_default.safetensors"


def patch(drift: float) -> None:
    """Make every frozen policy's proposal `drift` higher (log-LR change per 1/horizon of the run)."""
    call = HostPolicy.__call__

    def __call__(self: Any, features: Any) -> float:
        return call(self, features) + drift

    HostPolicy.__call__ = __call__  # type: ignore[method-assign]
    HostPolicy._drift_original = call  # type: ignore[attr-defined]


def unpatch() -> None:
    HostPolicy.__call__ = HostPolicy._drift_original  # type: ignore[attr-defined,method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("drifts", nargs="+", type=float)
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
    for f in args.drifts:
        t0 = time.perf_counter()
        patch(f)
        try:
            rows[f] = ms.measure(str(SHIPPED), args.workers, dev_cache, cells)
        finally:
            unpatch()
        print(f"drift {f:g}: {time.perf_counter() - t0:.0f} s", flush=True)
    print("| cell | shipped | " + " | ".join(f"drift {f:g}" for f in rows) + " |")
    print("|---" * (len(rows) + 2) + "|")
    for c in cells:
        print(f"| {c} | {ref[c]:+.4f} | " + " | ".join(f"{row[c]:+.4f}" for row in rows.values()) + " |")
    for f, row in rows.items():
        print(f"drift {f:g}: beats the shipped checkpoint? {ms.beats(row, ref, cells)}")


if __name__ == "__main__":
    main()
