"""Per-run metrics against values worked out by hand on small fixed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metalr import metrics
from metalr.evaluation import report, run_metrics
from metalr.train import History

# step:          10    20    30    40    50    60
ACC = [0.50, 0.70, 0.85, 0.90, 0.88, 0.92]
LOSS = [1.00, 0.80, 0.60, 0.50, 0.55, 0.45]


def _evals() -> list[dict[str, float]]:
    return [
        {"step": 10 * (i + 1), "wall_time": 1.5 * (i + 1), "val_accuracy": a, "val_loss": v, "val_macro_f1": a - 0.01, "val_exact_match": a / 2}
        for i, (a, v) in enumerate(zip(ACC, LOSS))
    ]


def test_convergence_steps_and_time_to_target() -> None:
    evals = _evals()
    hit = run_metrics.first_reaching(evals, {"val_accuracy": 0.85})
    assert hit is not None and hit["step"] == 30 and hit["wall_time"] == 4.5  # 0.85 >= 0.85 at the third eval
    assert run_metrics.first_reaching(evals, {"val_loss": 0.5})["step"] == 40  # type: ignore[index]  # losses: <=
    assert run_metrics.first_reaching(evals, {"val_accuracy": 0.85, "val_loss": 0.55})["step"] == 40  # type: ignore[index]  # all keys at once
    assert run_metrics.first_reaching(evals, {"val_accuracy": 0.95}) is None
    assert run_metrics.first_reaching(evals, {}) is None


def test_steps_to_95_percent_of_final_accuracy() -> None:
    # 0.95 * 0.92 = 0.874: 0.85 (step 30) misses it, 0.90 (step 40) is the first to reach it.
    assert run_metrics.steps_to_fraction_of_final(_evals()) == 40
    assert run_metrics.steps_to_fraction_of_final(_evals(), fraction=0.5) == 10
    assert run_metrics.steps_to_fraction_of_final([]) is None


def test_stability_is_population_std_of_last_five_val_losses() -> None:
    # last five: 0.8 0.6 0.5 0.55 0.45, mean 0.58; squared deviations .0484 .0004 .0064 .0009 .0169 -> sum .073
    assert run_metrics.stability(_evals()) == pytest.approx(math.sqrt(0.073 / 5))
    assert run_metrics.stability(_evals()[:1]) is None
    assert run_metrics.stability([{"val_loss": 1.0}, {"val_loss": float("nan")}]) == math.inf


def test_pearson_and_spearman_by_hand() -> None:
    # x = 1 2 3, y = 2 4 7: sum dxdy = 5, sxx = 2, syy = 114/9
    assert run_metrics.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 114 / 9))
    assert run_metrics.spearman([1, 2, 3], [2, 4, 7]) == pytest.approx(1.0)
    # ties: ranks x = 1 2.5 2.5 4, y = 1 3 2 4 -> sum dxdy 4.5, sxx 4.5, syy 5
    assert list(run_metrics.average_ranks([1, 2, 2, 3])) == [1.0, 2.5, 2.5, 4.0]
    assert run_metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert run_metrics.pearson([1, 2, 3], [5, 5, 5]) is None  # constant side
    assert run_metrics.pearson([1, 2], [1, 2]) is None  # too few pairs


def test_spearman_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)
    assert run_metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_ece_by_hand() -> None:
    # 15 bins of width 1/15; confidences .9 .62 .7 .82 fall in four different bins, correct = 1 0 1 0
    probs = np.array([[0.9, 0.1], [0.62, 0.38], [0.3, 0.7], [0.82, 0.18]])
    assert metrics.expected_calibration_error(probs, [0, 1, 1, 1]) == pytest.approx((0.1 + 0.62 + 0.3 + 0.82) / 4)
    # .9 and .91 share the bin (14/15 - 1/15, 14/15]: |acc 0.5 - conf 0.905| with weight 1
    assert metrics.expected_calibration_error(np.array([[0.9, 0.1], [0.91, 0.09]]), [0, 1]) == pytest.approx(0.405)


def test_macro_f1_by_hand() -> None:
    # class 0: tp1 fp1 -> 2/3; class 1: tp1 fn1 -> 2/3; class 2: 1
    assert metrics.macro_f1([0, 0, 1, 2], [0, 1, 1, 2], 3) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    sk = pytest.importorskip("sklearn.metrics")
    assert metrics.macro_f1([0, 0, 1, 2], [0, 1, 1, 2], 3) == pytest.approx(sk.f1_score([0, 1, 1, 2], [0, 0, 1, 2], average="macro"))


def test_compute_on_a_history_passes_task_keys_through() -> None:
    h = History(task="t", controller="c", seed=0, steps=list(range(1, 61)), loss=[1.0] * 60, lr=[0.1] * 60, evals=_evals(), wall_time=9.0, peak_memory_mb=100.0)
    m = run_metrics.compute(h, {"val_accuracy": 0.85})
    assert m["final_val_accuracy"] == 0.92 and m["best_val_accuracy"] == 0.92
    assert m["final_val_loss"] == 0.45 and m["best_val_loss"] == 0.45
    assert m["final_val_exact_match"] == 0.46  # whatever the task reports is passed through
    assert m["steps_to_target"] == 30 and m["time_to_target"] == 4.5 and m["reached_target"]
    assert m["steps_to_95pct_final_acc"] == 40
    assert m["wall_time"] == 9.0 and m["peak_memory_mb"] == 100.0 and m["steps_run"] == 60
    assert m["uncertainty_pearson"] is None and m["uncertainty_source"] == "none"


def test_diverged_run_never_reaches_target_and_has_no_final() -> None:
    h = History(task="t", controller="c", seed=0, evals=_evals()[:4], diverged=True, loss=[1.0, float("nan")])
    m = run_metrics.compute(h, {"val_accuracy": 0.5})
    assert m["diverged"] and not m["reached_target"] and m["steps_to_target"] is None
    assert m["final_val_accuracy"] is None and m["best_val_accuracy"] == 0.90


def test_uncertainty_correlation_from_history_records_and_fallback() -> None:
    h = {"uncertainty": [{"uncertainty": u, "error_rate": e} for u, e in [(0.1, 0.0), (0.5, 1.0), (0.9, 1.0), (0.2, 0.0)]]}
    est, err, source = run_metrics.uncertainty_pairs(h)
    assert source == "history" and est == [0.1, 0.5, 0.9, 0.2] and err == [0.0, 1.0, 1.0, 0.0]
    m = run_metrics.compute(h)
    assert m["uncertainty_pearson"] == pytest.approx(float(np.corrcoef(est, err)[0, 1]))
    fallback = {"extras": {"uncertainty": [0.1, 0.2, 0.3, float("nan")]}, "loss": [1.0, 2.0, 4.0, 5.0]}
    est, err, source = run_metrics.uncertainty_pairs(fallback)
    assert source == "extras_vs_loss" and est == [0.1, 0.2, 0.3] and err == [1.0, 2.0, 4.0]


def test_direction_of_metrics() -> None:
    assert run_metrics.lower_is_better("val_loss") and run_metrics.lower_is_better("val_ece") and run_metrics.lower_is_better("steps_to_target")
    assert not run_metrics.lower_is_better("val_accuracy") and not run_metrics.lower_is_better("val_entity_precision")


def test_performance_profile_by_hand() -> None:
    # t1: a 10, b 20 -> ratios 1, 2; t2: a never, b 30 -> ratios inf, 1
    prof = report.performance_profile({"t1": {"a": 10.0, "b": 20.0}, "t2": {"a": math.inf, "b": 30.0}}, tau_max=4.0, n_points=3)  # taus 1, 2, 4
    assert prof["taus"] == pytest.approx([1.0, 2.0, 4.0])
    assert prof["curves"]["a"] == [0.5, 0.5, 0.5]
    assert prof["curves"]["b"] == [0.5, 1.0, 1.0]
    assert prof["ratios"]["t1"]["b"] == 2.0 and prof["ratios"]["t2"]["a"] == math.inf


def _rec(task: str, label: str, seed: int, acc: float | None, group: str = "main", diverged: bool = False, factor: float | None = None) -> dict:
    spec = {"task": task, "label": label, "controller": "cosine", "seed": seed, "group": group, "lr_factor": factor}
    m = {"final_val_accuracy": acc, "diverged": diverged, "reached_target": False}
    return {"id": f"{task}__{label}__{seed}", "spec": spec, "status": "diverged" if diverged else "ok", "lr": 0.1 * (factor or 1.0), "metrics": m}


def test_aggregate_and_tuned_reference_count_diverged_seeds_as_worst() -> None:
    recs = [
        _rec("t", "a", 0, 0.8),
        _rec("t", "a", 1, 0.6),
        # lr x10: one lucky seed 0.95, one diverged -> score (0.95 + 0) / 2 = 0.475
        _rec("t", "cosine@lrx10", 0, 0.95, "tuned", factor=10.0),
        _rec("t", "cosine@lrx10", 1, None, "tuned", diverged=True, factor=10.0),
        _rec("t", "cosine@lrx1", 0, 0.7, "tuned"),
        _rec("t", "cosine@lrx1", 1, 0.7, "tuned"),
    ]
    agg = report.aggregate(recs)
    a = agg["t"]["a"]["metrics"]["final_val_accuracy"]
    assert a["mean"] == pytest.approx(0.7) and a["std"] == pytest.approx(math.sqrt(0.02)) and a["n"] == 2  # sample std
    assert agg["t"]["cosine@lrx10"]["n_diverged"] == 1 and agg["t"]["cosine@lrx10"]["metrics"]["final_val_accuracy"]["n"] == 1
    tuned = report.tuned_reference(recs, agg)
    assert tuned["t"]["best_label"] == "cosine@lrx1" and tuned["t"]["mean"] == pytest.approx(0.7)
    assert [r["score"] for r in tuned["t"]["grid"]] == pytest.approx([0.7, 0.475])
    assert report.delta_vs_tuned(agg, tuned)["t"]["a"] == pytest.approx(0.0)
