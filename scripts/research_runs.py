"""What the plain-loop research scripts share: run their jobs in worker processes, keep the records, print the table."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path
from typing import Any


def run_all(run_one: Callable[[Any], dict[str, Any]], todo: list[Any], workers: int, out: str, report: Callable[[list[dict[str, Any]]], str]) -> int:
    """`run_one` over `todo` in `workers` fresh (spawned) processes; the records to `out` (JSON), then `report(records)`."""
    start = time.perf_counter()
    with get_context("spawn").Pool(workers) as pool:
        rows = pool.map(run_one, todo, chunksize=1)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(rows, indent=1))
    print(report(rows))
    print(f"\n{len(rows)} runs in {time.perf_counter() - start:.0f} s; records: {out}")
    return 0
