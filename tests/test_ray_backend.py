"""`backend: ray` runs the same runs as `backend: local`: a tiny grid on a local Ray instance (2 CPUs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ray = pytest.importorskip("ray")

from metalr.config import from_dict  # noqa: E402
from metalr.evaluation import EvalConfig, evaluate  # noqa: E402

TIMING = {"wall_time", "time_to_target", "peak_memory_mb", "ms_per_step"}
GRID = {
    "tasks": ["digits_mlp"],
    "strategies": ["constant", "cosine"],
    "seeds": [0, 1],
    "steps": 30,
    "eval_every": 10,
    "tuned": {"n_lrs": 0},
    "sensitivity": {"enabled": True, "multipliers": [0.1, 1.0], "strategies": ["constant"], "seeds": [0]},
    "tensorboard": False,
    "plots": False,
}


def test_ray_backend_matches_local_backend(tmp_path: Path) -> None:
    local = evaluate(from_dict(EvalConfig, {**GRID, "workers": 1, "out_dir": str(tmp_path / "local")}), progress=False)
    root = str(Path(__file__).resolve().parents[1])
    # workers import metalr from this checkout, as the driver does
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": root, "OMP_NUM_THREADS": "1"}})
    try:
        remote = evaluate(from_dict(EvalConfig, {**GRID, "backend": "ray", "out_dir": str(tmp_path / "ray")}), progress=False)
    finally:
        ray.shutdown()
    assert remote["counts"] == local["counts"] == {"reused": 0, "executed": 5, "errors": 0}
    assert [r["id"] for r in remote["runs"]] == [r["id"] for r in local["runs"]]
    for a, b in zip(local["runs"], remote["runs"]):
        ma = {k: v for k, v in a["metrics"].items() if k not in TIMING}
        mb = {k: v for k, v in b["metrics"].items() if k not in TIMING}
        assert a["status"] == b["status"] == "ok" and ma.keys() == mb.keys()
        for k in ma:  # both run one torch thread per run: equal up to float summation order
            assert ma[k] == (pytest.approx(mb[k], rel=1e-5) if isinstance(mb[k], float) else mb[k]), (a["id"], k)
    # the driver saved every record (with its history), so a rerun resumes from them
    saved = sorted(p.name for p in (tmp_path / "ray" / "runs").glob("*.json"))
    assert saved == sorted(f"{r['id']}.json" for r in local["runs"])
    assert json.loads((tmp_path / "ray" / "runs" / "digits_mlp__constant__0.json").read_text())["history"]["lr"]
    assert remote["sensitivity"]["tasks"]["digits_mlp"]["strategies"]["constant"]["scores"] == pytest.approx(
        local["sensitivity"]["tasks"]["digits_mlp"]["strategies"]["constant"]["scores"], rel=1e-5
    )
