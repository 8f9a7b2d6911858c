"""The LR-sensitivity sweep: its runs, its scores (hand-computed), its report; and the time-left estimate."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from metalr.config import ConfigError, from_dict  # noqa: E402
from metalr.evaluation import EvalConfig, evaluate, report  # noqa: E402
from metalr.evaluation.grid import RunSpec, TimeLeft, build_specs, execute, interleave_tasks  # noqa: E402

TINY = {"tasks": ["digits_mlp"], "strategies": ["constant", "cosine"], "seeds": [0], "steps": 30, "eval_every": 10, "workers": 1, "tensorboard": False}


def _cfg(tmp: Path, **kw: Any) -> EvalConfig:
    return from_dict(EvalConfig, {**TINY, "out_dir": str(tmp), **kw})


def test_sweep_specs_share_runs_with_the_grid_and_the_tuned_reference(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, seeds=[0, 1], tuned={"n_lrs": 3}, sensitivity={"enabled": True, "multipliers": [0.1, 1, 10], "seeds": [0]})
    specs = build_specs(cfg)
    sweep = [s for s in specs if s.group == "sensitivity"]
    assert [s.label for s in sweep] == ["constant@x0.1", "constant@x1", "constant@x10", "cosine@x0.1", "cosine@x1", "cosine@x10"]
    assert [s.lr_factor for s in sweep[:3]] == [0.1, None, 10.0] and {s.seed for s in sweep} == {0}
    # x1 trains like the main run; cosine's x0.1 / x10 like the tuned grid's: 4 main + 4 tuned (x1 shared) + 2 new
    assert len({s.content_key() for s in specs}) == 4 + 4 + 2
    assert sweep[4].content_key() == next(s for s in specs if s.label == "cosine" and s.seed == 0).content_key()


def test_sweep_is_off_by_default_and_validated(tmp_path: Path) -> None:
    assert all(s.group != "sensitivity" for s in build_specs(_cfg(tmp_path)))
    for sens, message in [
        ({"enabled": True, "strategies": ["nope"]}, "sensitivity.strategies: ['nope'] not in the grid"),
        ({"enabled": True, "multipliers": [0.0, 1.0]}, "must be positive"),
        ({"enabled": True, "multipliers": [1, 1.0]}, "twice"),
        ({"enabled": True, "seeds": [7]}, "sensitivity.seeds"),
        ({"enabled": True, "multipliers": []}, "empty"),
    ]:
        with pytest.raises(ConfigError) as err:
            _cfg(tmp_path, sensitivity=sens)
        assert message in str(err.value)


def test_a_strategy_that_owns_its_optimizer_is_swept_over_its_own_lr(tmp_path: Path) -> None:
    """Prodigy ignores the task's LR (its own lr multiplies the estimated step, default 1.0): x0.1 means lr=0.1."""
    rec = execute(RunSpec("digits_mlp", "prodigy@x0.1", "prodigy", 0, lr_factor=0.1, steps=5, eval_every=5), str(tmp_path), tensorboard=False)
    assert rec["status"] == "ok" and rec["lr_arg"] == "optimizer" and rec["lr"] == pytest.approx(0.1)
    plain = execute(RunSpec("digits_mlp", "constant@x0.1", "constant", 0, lr_factor=0.1, steps=5, eval_every=5), str(tmp_path), tensorboard=False)
    assert plain["lr_arg"] == "task" and plain["lr"] == pytest.approx(1e-4)  # digits_mlp: Adam 1e-3


def _rec(label: str, m: float, acc: float | None, status: str = "ok", seed: int = 0, group: str = "sensitivity") -> dict[str, Any]:
    spec = {"task": "t", "label": label, "controller": label.split("@")[0], "seed": seed, "lr_factor": None if m == 1 else m, "group": group}
    return {"spec": spec, "status": status, "lr": m, "lr_arg": "task", "metrics": {"final_val_accuracy": acc}}


def test_scores_and_robustness_by_hand() -> None:
    mults = [0.1, 1.0, 10.0, 100.0]
    records = [
        # "flat": 0.80, 0.90, 0.895, 0.70 -> within 1% of its best (0.90) at x1 and x10: width log10(10/1) = 1 decade
        *[_rec(f"flat@x{m:g}", m, a) for m, a in zip(mults, [0.80, 0.90, 0.895, 0.70])],
        # "fragile": two seeds; at x100 one diverges (counts as 0): (0.9 + 0) / 2 = 0.45
        *[_rec(f"fragile@x{m:g}", m, a, seed=0) for m, a in zip(mults, [0.5, 0.92, 0.6, 0.9])],
        *[_rec(f"fragile@x{m:g}", m, a, seed=1) for m, a in zip(mults[:3], [0.5, 0.92, 0.6])],
        _rec("fragile@x100", 100.0, None, status="diverged", seed=1),
    ]
    tuned = {"t": {"metric": "val_accuracy", "best_label": "cosine@lrx1", "grid": [{"label": "cosine@lrx1", "score": 0.9}], "mean": 0.9}}
    sens = report.sensitivity(records, tuned, {"t": "val_accuracy"}, reference_tol=0.02, best_tol=0.01)
    flat, fragile = sens["tasks"]["t"]["strategies"]["flat"], sens["tasks"]["t"]["strategies"]["fragile"]
    assert flat["multipliers"] == mults and flat["scores"] == pytest.approx([0.80, 0.90, 0.895, 0.70])
    assert flat["within_reference"] == [False, True, True, False]  # 0.9 * 0.98 = 0.882
    assert flat["width_decades"] == pytest.approx(1.0) and not flat["width_open_ended"]
    assert fragile["scores"] == pytest.approx([0.5, 0.92, 0.6, 0.45]) and fragile["n_diverged"] == [0, 0, 0, 1]
    assert fragile["within_reference"] == [False, True, False, False] and fragile["width_decades"] == 0.0
    rob = sens["robustness"]
    assert rob["flat"]["within_ref_frac"] == pytest.approx(0.5) and rob["fragile"]["within_ref_frac"] == pytest.approx(0.25)
    md = "\n".join(report.sensitivity_markdown(sens))
    assert "| fragile | 0.5000 | **0.9200** | 0.6000 | 0.4500 (1 div) | 1/4 | 0.00 |" in md
    assert "| flat | task LR | 0.50 | 1.00 |" in md


def test_width_at_the_end_of_the_sweep_is_flagged_open_ended() -> None:
    width, open_ended = report._width_decades([0.1, 1.0, 10.0], [0.9, 0.9, 0.5], 0.01, lower=False)
    assert width == pytest.approx(1.0) and open_ended
    width, open_ended = report._width_decades([0.1, 1.0, 10.0], [math.inf, 0.3, 0.31], 0.05, lower=True)  # losses: lower is better
    assert width == pytest.approx(1.0) and open_ended


def test_tiny_sweep_end_to_end_writes_table_and_plot(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, strategies=["constant", "prodigy"], tuned={"n_lrs": 2, "factor": 10.0}, sensitivity={"enabled": True, "multipliers": [0.1, 1.0, 10.0]})
    results = evaluate(cfg, progress=False)
    t = results["sensitivity"]["tasks"]["digits_mlp"]
    assert set(t["strategies"]) == {"constant", "prodigy"} and t["strategies"]["prodigy"]["lr_arg"] == "optimizer"
    assert t["strategies"]["constant"]["lr"] == pytest.approx([1e-4, 1e-3, 1e-2])
    md = (tmp_path / "results.md").read_text()
    assert "## LR sensitivity" in md and "| prodigy ᵒ |" in md and "### Robustness to the base LR" in md
    assert (tmp_path / "plots" / "sensitivity_digits_mlp.png").stat().st_size > 1000
    # the sweep's runs stay out of the main tables and the performance profile
    assert set(results["delta_vs_tuned_pct"]["digits_mlp"]) == {"constant", "prodigy", "cosine@lrx0.1", "cosine@lrx10"}
    assert not any("@x" in label for p in results["profile"].values() for label in p["score"])


def _timed(task: str, ctrl: str, wall: float, steps: int = 100) -> dict[str, Any]:
    return {"spec": {"task": task, "controller": ctrl}, "status": "ok", "metrics": {"wall_time": wall, "steps_run": steps}}


def test_time_left_from_finished_runs_by_hand() -> None:
    clock = TimeLeft(workers=2)
    assert clock.seconds_left([RunSpec("a", "x", "x", 0)]) is None  # nothing finished yet
    for rec in (_timed("a", "x", 1.0), _timed("a", "y", 3.0), _timed("b", "x", 10.0)):
        clock.observe(rec)
    assert clock.estimate(RunSpec("a", "y", "y", 1)) == pytest.approx(3.0)  # same task and controller
    # b/y unseen: b's mean rate (0.1 s/step) x y's ratio to its task's mean on a (0.03 / 0.02 = 1.5) x 100 steps
    assert clock.estimate(RunSpec("b", "y", "y", 0)) == pytest.approx(15.0)
    assert clock.estimate(RunSpec("b", "y", "y", 0), steps=50) == pytest.approx(7.5)
    assert clock.seconds_left([RunSpec("a", "y", "y", 1), RunSpec("b", "y", "y", 0)]) == pytest.approx((3.0 + 15.0) / 2)


def test_runs_are_interleaved_across_tasks() -> None:
    specs = [RunSpec(t, s, "constant", 0) for t in ("a", "b") for s in ("1", "2", "3")]
    assert [(s.task, s.label) for s in interleave_tasks(specs)] == [("a", "1"), ("b", "1"), ("a", "2"), ("b", "2"), ("a", "3"), ("b", "3")]


def test_adding_a_sweep_to_a_finished_grid_reuses_its_runs(tmp_path: Path) -> None:
    first = evaluate(_cfg(tmp_path, plots=False, tuned={"n_lrs": 0}), progress=False)
    assert first["counts"] == {"reused": 0, "executed": 2, "errors": 0}
    swept = evaluate(_cfg(tmp_path, plots=False, tuned={"n_lrs": 0}, sensitivity={"enabled": True, "multipliers": [0.1, 1.0]}), progress=False)
    # the x1 runs are copies of the grid's finished runs: only x0.1 trains
    assert swept["counts"] == {"reused": 4, "executed": 2, "errors": 0}
    by_id = {r["id"]: r for r in swept["runs"]}
    assert by_id["digits_mlp__constant@x1__0"]["same_training_as"] == "digits_mlp__constant__0"
    assert by_id["digits_mlp__constant@x1__0"]["metrics"] == by_id["digits_mlp__constant__0"]["metrics"]
