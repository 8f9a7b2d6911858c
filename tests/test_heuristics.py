"""The four heuristic controllers: their rules on synthetic signals, safety, state, and the harness."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from torch import nn

from metalr import controllers, ensemble, estimators, tasks, train
from metalr.controllers.loss_patterns import PATTERNS, classify
from metalr.controllers.resource_aware import complexity_score
from metalr.signals import Signals, SignalTracker
from metalr.testing import smoke_kwargs

HEURISTICS = ["uncertainty", "uncertainty_ensemble", "grad_variability", "loss_patterns", "resource_aware"]
HEURISTICS += [f"{n}_relative" for n in HEURISTICS if n != "resource_aware"]  # the calibrated variants (tests/test_calibrated.py)
INFO = {"num_classes": 10, "num_features": 64, "batch_size": 64}


def opt(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=lr)


def lr_of(ctrl: controllers.Controller) -> float:
    return ctrl.get_last_lr()[0]


# ------------------------------------------------------------------ uncertainty
@pytest.mark.parametrize("name", ["uncertainty", "uncertainty_ensemble"])
def test_uncertainty_rule_below_threshold_raises_above_lowers(name: str) -> None:
    ctrl = controllers.build(name, opt(0.1))
    assert lr_of(ctrl) == pytest.approx(0.1)
    assert ctrl.step(Signals(uncertainty=0.05))[0] == pytest.approx(0.12)
    assert ctrl.step(Signals(uncertainty=0.5))[0] == pytest.approx(0.096)
    assert ctrl.step(Signals(uncertainty=0.1))[0] == pytest.approx(0.0768)  # at the threshold: not below
    assert ctrl.step(Signals())[0] == pytest.approx(0.0768)  # no estimate this step: LR kept
    assert ctrl.extra_logs()["uncertainty_factor"] == 1.0


def test_uncertainty_default_bounds_are_relative_to_base_lr() -> None:
    for base in (0.05, 1e-3):
        ctrl = controllers.build("uncertainty", opt(base))
        assert (ctrl.min_lr, ctrl.max_lr) == pytest.approx((base / 100, base * 10))
        for _ in range(60):
            ctrl.step(Signals(uncertainty=0.0))
        assert lr_of(ctrl) == pytest.approx(base * 10)
        for _ in range(60):
            ctrl.step(Signals(uncertainty=1.0))
        assert lr_of(ctrl) == pytest.approx(base / 100)


def test_bad_settings_raise_with_valid_choices() -> None:
    with pytest.raises(ValueError, match="entropy"):
        controllers.build("uncertainty", opt(), measure="nope")
    with pytest.raises(ValueError, match="norm_cv"):
        controllers.build("grad_variability", opt(), measure="nope")
    with pytest.raises(TypeError, match="valid:"):
        controllers.build("loss_patterns", opt(), windwo=5)
    with pytest.raises(ValueError):
        controllers.build("uncertainty", opt(), dropout_p=1.0)


# ------------------------------------------------------------- estimators
def test_predictive_uncertainty_measures_by_hand() -> None:
    uniform = torch.full((3, 4, 5), 0.2)
    assert estimators.predictive_uncertainty(uniform, "entropy") == pytest.approx(torch.ones(4))
    assert estimators.predictive_uncertainty(uniform, "disagreement") == pytest.approx(torch.zeros(4), abs=1e-6)
    certain = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    for m in estimators.MEASURES:
        assert float(estimators.predictive_uncertainty(certain, m)) == pytest.approx(0.0, abs=1e-6)
    split = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # two confident members that disagree
    for m in estimators.MEASURES:
        assert float(estimators.predictive_uncertainty(split, m)) == pytest.approx(1.0, abs=1e-6)


def _classification_task(n: int = 64, k: int = 3, model_fn=None) -> tasks.Task:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 4, generator=g), torch.randint(0, k, (n,), generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    return tasks.Task(
        name="toy",
        train_data=data,
        val_data=data,
        model_fn=model_fn or (lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, k))),
        num_classes=k,
        num_features=4,
        batch_size=16,
    )


def test_mc_dropout_head_mode_works_without_dropout_layers_and_leaves_rng_and_modes() -> None:
    task = _classification_task()
    torch.manual_seed(0)
    model = task.model_fn()
    model.train()
    batch = estimators.probe_batch(task, 32)
    est = estimators.MCDropoutEstimator(model, task.forward, batch, passes=50, p=0.5, seed=1)
    torch.manual_seed(123)
    rec = est.estimate(step=7)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))  # the estimate drew nothing from the global RNG
    assert model.training and all(m.training for m in model.modules())
    assert rec["step"] == 7 and 0.0 <= rec["uncertainty"] <= 1.0 and 0.0 <= rec["error_rate"] <= 1.0
    again = estimators.MCDropoutEstimator(model, task.forward, batch, passes=50, p=0.5, seed=1).estimate(step=7)
    assert again == rec  # same seed, same masks
    with pytest.raises(ValueError, match="mode='head'"):
        estimators.MCDropoutEstimator(model, task.forward, batch, mode="full")


def test_mc_dropout_is_low_for_a_confident_model_and_error_rate_is_right() -> None:
    task = _classification_task(k=3)
    head = nn.Linear(4, 3)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([50.0, 0.0, 0.0]))  # always class 0, with certainty
    model = nn.Sequential(head)
    batch = estimators.probe_batch(task, 64)
    rec = estimators.MCDropoutEstimator(model, task.forward, batch).estimate()
    assert rec["uncertainty"] < 1e-6 and rec["confidence"] == pytest.approx(1.0)
    assert rec["error_rate"] == pytest.approx(float((batch[1] != 0).float().mean()))


def test_mc_dropout_full_mode_uses_the_models_own_dropout() -> None:
    task = _classification_task(model_fn=lambda: nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3)))
    model = task.model_fn()
    model.eval()
    rec = estimators.MCDropoutEstimator(model, task.forward, estimators.probe_batch(task, 32), mode="full", passes=10, measure="variance").estimate()
    assert rec["uncertainty"] > 0.0 and not model.training


def test_resource_monitor_reads_cpu_fractions() -> None:
    r = estimators.ResourceMonitor("cpu").read()
    assert set(r) == {"cpu_util", "mem_util"} and all(0.0 <= v <= 1.0 for v in r.values())


# --------------------------------------------------------------- deep ensemble
def test_ensemble_members_each_get_their_own_gradient_and_eval_averages_probs() -> None:
    task = _classification_task(k=3)
    torch.manual_seed(0)
    etask = ensemble.ensemble_task(task, 3)
    model = etask.model_fn()
    assert isinstance(model, ensemble.DeepEnsemble) and len(model.members) == 3
    x, y = next(iter(task.train_loader(0)))
    model.train()
    out = etask.forward(model, (x, y))
    losses = [nn.functional.cross_entropy(m(x), y) for m in model.members]
    assert float(out.loss.detach()) == pytest.approx(float(sum(losses).detach()) / 3, rel=1e-5)
    out.loss.backward()
    for member in model.members:
        own = torch.autograd.grad(nn.functional.cross_entropy(member(x), y), list(member.parameters()))
        for p, g in zip(member.parameters(), own):
            assert torch.allclose(p.grad, g, atol=1e-6)
    model.eval()
    probs = torch.stack([m(x).softmax(-1) for m in model.members]).mean(0)
    ev = etask.forward(model, (x, y))
    assert torch.allclose(ev.logits.softmax(-1), probs, atol=1e-5)
    assert float(ev.loss.detach()) == pytest.approx(float(nn.functional.nll_loss(probs.log(), y).detach()), rel=1e-5)
    assert torch.allclose(model(x).softmax(-1), probs, atol=1e-5)  # the module alone predicts the average too


def test_ensemble_uncertainty_source_refuses_a_plain_model() -> None:
    task = _classification_task()
    (request,) = controllers.build("uncertainty_ensemble", opt()).signal_sources()
    with pytest.raises(ValueError, match="DeepEnsemble"):
        estimators.build_source(request, model=task.model_fn(), task=task)
    with pytest.raises(ValueError, match="Task"):
        estimators.build_source(request, model=task.model_fn(), task=None)  # e.g. under the HF Trainer: no probe data


def test_tracker_schedules_the_uncertainty_source_and_a_restore_rewinds_it() -> None:
    task = ensemble.ensemble_task(_classification_task(), 2)
    torch.manual_seed(0)
    model = task.model_fn()
    ctrl = controllers.build("uncertainty_ensemble", opt(), **smoke_kwargs("uncertainty_ensemble", interval=3))
    sources = [estimators.build_source(r, model=model, task=task) for r in ctrl.signal_sources()]
    tracker = SignalTracker(model.parameters(), ctrl.optimizer, requires=ctrl.requires, sources=sources)
    seen = [tracker.collect(loss=1.0).uncertainty for _ in range(4)]
    assert [u is not None for u in seen] == [True, False, False, True]  # steps 1 and 4
    assert [r["step"] for r in tracker.records("uncertainty")] == [1.0, 4.0]
    state = tracker.state_dict()
    for _ in range(3):
        tracker.collect(loss=1.0)
    tracker.load_state_dict(state)
    assert tracker.step == 4 and [r["step"] for r in tracker.records("uncertainty")] == [1.0, 4.0]
    assert [tracker.collect(loss=1.0).uncertainty is not None for _ in range(3)] == [False, False, True]
    with pytest.raises(ValueError, match="not required"):
        SignalTracker(model.parameters(), ctrl.optimizer, requires=(), sources=sources)


# --------------------------------------------------------- gradient variability
def test_grad_variability_rising_lowers_by_0_9_and_falling_raises_by_1_1() -> None:
    ctrl = controllers.build("grad_variability", opt(0.1))
    steady, noisy = [1.0, 1.0, 1.0, 1.0, 1.1], [1.0, 2.0, 1.0, 2.0, 1.0]
    lrs = [ctrl.step(Signals(grad_norm=g))[0] for g in steady]
    assert lrs == pytest.approx([0.1] * 5)  # first window: nothing to compare with
    cv_steady = float(np.std(steady) / np.mean(steady))
    assert ctrl.extra_logs()["grad_variability"] == pytest.approx(cv_steady)
    lrs = [ctrl.step(Signals(grad_norm=g))[0] for g in noisy]
    assert lrs == pytest.approx([0.1] * 4 + [0.09])  # variability rose
    assert ctrl.extra_logs() == pytest.approx({"grad_variability": float(np.std(noisy) / np.mean(noisy)), "grad_variability_factor": 0.9})
    lrs = [ctrl.step(Signals(grad_norm=g))[0] for g in [3.0] * 5]
    assert lrs == pytest.approx([0.09] * 4 + [0.099])  # variability fell to 0
    assert ctrl.step(Signals(grad_norm=3.0))[0] == pytest.approx(0.099)
    assert ctrl.extra_logs()["grad_variability_factor"] == 1.0


def test_grad_variability_direction_measure_reads_grad_cos() -> None:
    ctrl = controllers.build("grad_variability", opt(0.1), measure="direction", window=3, interval=3)
    assert "grad_cos" in ctrl.requires
    for c in [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]:
        ctrl.step(Signals(grad_cos=c, grad_norm=1.0))
    assert ctrl.extra_logs()["grad_variability"] == pytest.approx(0.5)
    assert lr_of(ctrl) == pytest.approx(0.09)


# ---------------------------------------------------------------- loss patterns
@pytest.mark.parametrize(
    "window, pattern",
    [
        ([1.0, 1.0001, 0.9999, 1.0, 1.0], "plateau"),
        ([1.0, 0.95, 0.9, 0.86, 0.82], "steady_decline"),
        ([1.0, 0.8, 1.0, 0.8, 1.0], "oscillation"),
        ([1.0, 0.95, 0.9, 0.85, 0.5], "sharp_drop"),
        ([1.0, 1.1, 1.2, 1.3, 1.4], "rise"),
        ([1.0, 0.9, 0.9, 0.9, 0.95], "none"),
    ],
)
def test_classify_loss_windows(window: list[float], pattern: str) -> None:
    assert classify(window) == pattern


@pytest.mark.parametrize(
    "losses, factor",
    [([1.0, 1.0001, 0.9999, 1.0, 1.0], 0.8), ([1.0, 0.95, 0.9, 0.86, 0.82], 1.2), ([1.0, 0.8, 1.0, 0.8, 1.0], 0.8), ([1.0, 0.95, 0.9, 0.85, 0.5], 1.0)],
)
def test_loss_patterns_every_step_multiplies_by_the_rule(losses: list[float], factor: float) -> None:
    ctrl = controllers.build("loss_patterns", opt(0.1), interval_steps=1)
    lrs = [ctrl.step(Signals(loss=v))[0] for v in losses]
    assert lrs == pytest.approx([0.1] * 4 + [0.1 * factor])


def test_loss_patterns_per_epoch_decides_at_epoch_boundaries_and_logs_the_code() -> None:
    ctrl = controllers.build("loss_patterns", opt(0.1))
    step_lrs = []
    for epoch, loss in enumerate([1.0, 0.95, 0.9, 0.86, 0.82]):
        for jitter in (0.01, -0.01, 0.0):  # epoch mean = loss
            step_lrs.append(ctrl.step(Signals(epoch=epoch, loss=loss + jitter))[0])
    assert step_lrs == pytest.approx([0.1] * 15)  # the 5th epoch is not closed yet
    assert ctrl.step(Signals(epoch=5, loss=0.8))[0] == pytest.approx(0.12)
    assert ctrl.extra_logs()["loss_pattern"] == PATTERNS["steady_decline"]
    assert ctrl.extra_logs()["loss_ma"] == pytest.approx(np.mean([1.0, 0.95, 0.9, 0.86, 0.82]))
    assert ctrl.step(Signals(epoch=5, loss=0.8))[0] == pytest.approx(0.12)  # mid-epoch: kept


# ---------------------------------------------------------------- resource-aware
def expected_resource_lr(base: float, k: int, f: int, pressure: float) -> float:
    c = 0.5 * math.log10(k) / 3 + 0.5 * math.log10(f) / 4  # log_1000 K, log_10000 F
    return base * (0.5 * (1.5 - c) + 0.5 * (1.5 - pressure))


def test_resource_aware_combines_complexity_and_cpu_readings() -> None:
    ctrl = controllers.build("resource_aware", opt(1e-3))
    s = Signals(epoch=0, batch_size=64, task_info=INFO, resources={"cpu_util": 0.4, "mem_util": 0.1})
    assert ctrl.step(s)[0] == pytest.approx(expected_resource_lr(1e-3, 10, 64, 0.4))
    assert complexity_score(10, 64) == pytest.approx(0.5 / 3 + 0.5 * math.log10(64) / 4)
    logs = ctrl.extra_logs()
    assert logs["resource_cpu_util"] == 0.4 and math.isnan(logs["resource_gpu_util"])
    busy = Signals(epoch=0, batch_size=64, task_info=INFO, resources={"cpu_util": 1.0, "mem_util": 0.1})
    assert ctrl.step(busy)[0] == pytest.approx(expected_resource_lr(1e-3, 10, 64, 0.4))  # same epoch: not re-read
    busy.epoch = 1
    assert ctrl.step(busy)[0] == pytest.approx(expected_resource_lr(1e-3, 10, 64, 1.0))


def test_resource_aware_prefers_gpu_readings_and_scales_with_batch() -> None:
    ctrl = controllers.build("resource_aware", opt(1e-3))
    s = Signals(batch_size=256, task_info=INFO, resources={"cpu_util": 0.9, "mem_util": 0.9, "gpu_util": 0.2, "gpu_mem": 0.3})
    assert ctrl.step(s)[0] == pytest.approx(expected_resource_lr(1e-3, 10, 64, 0.3) * 2.0)


def test_resource_aware_clamps_to_plan_bounds_and_is_neutral_without_readings() -> None:
    assert controllers.build("resource_aware", opt(0.05)).step(Signals(task_info=INFO))[0] == pytest.approx(1e-2)
    assert controllers.build("resource_aware", opt(1e-8)).step(Signals(task_info=INFO))[0] == pytest.approx(1e-6)
    ctrl = controllers.build("resource_aware", opt(1e-3))
    assert ctrl.step(Signals())[0] == pytest.approx(1e-3)  # nothing known: both factors 1
    assert (ctrl.complexity_factor, ctrl.resource_factor) == (1.0, 1.0)


def test_resource_aware_injected_reader_makes_harness_runs_reproducible() -> None:
    calls: list[int] = []

    def reader() -> dict[str, float]:
        calls.append(1)
        return {"cpu_util": 0.25, "mem_util": 0.05}

    task = tasks.build("wine_mlp", lr=1e-3)
    a = train.run(task, "resource_aware", controller_kwargs={"reader": reader, "interval_steps": 3}, steps=7, eval_every=7)
    b = train.run(task, "resource_aware", controller_kwargs={"reader": reader, "interval_steps": 3}, steps=7, eval_every=7)
    assert a.lr == b.lr and len(calls) == 6  # read on steps 1, 4, 7 only
    assert a.lr[1] == pytest.approx(expected_resource_lr(1e-3, 3, 13, 0.25))
    assert a.extras["resource_cpu_util"][0] == 0.25


# ------------------------------------------------------------ safety, all five
def _random_signals(rng: np.random.Generator, step: int) -> Signals:
    def value(lo: float, hi: float) -> float:
        if rng.random() < 0.4:
            return float(rng.choice([math.nan, math.inf, -math.inf]))
        return float(rng.uniform(lo, hi))

    return Signals(
        step=step, epoch=step // 4, loss=value(0.0, 3.0), grad_norm=value(0.0, 5.0), grad_cos=value(-1.0, 1.0), uncertainty=value(0.0, 0.3),
        batch_size=64, task_info=INFO, resources={"cpu_util": value(0.0, 1.0), "mem_util": value(0.0, 1.0)},
    )  # fmt: skip


@pytest.mark.parametrize("name", HEURISTICS)
def test_nan_and_inf_signals_never_give_a_non_finite_lr(name: str) -> None:
    rng = np.random.default_rng(0)
    ctrl = controllers.build(name, opt(1e-3), **smoke_kwargs(name))
    for t in range(1, 200):
        lr = ctrl.step(_random_signals(rng, t))[0]
        assert math.isfinite(lr) and ctrl.min_lr <= lr <= ctrl.max_lr
        assert all(isinstance(v, float) for v in ctrl.extra_logs().values())


# ---------------------------------------------------------------------- harness
OFFLINE = sorted(n for n in tasks.available() if tasks.REGISTRY.get(n).__module__ == "metalr.tasks.offline")


@pytest.mark.parametrize("task_name", OFFLINE)
def test_every_heuristic_trains_every_offline_task(task_name: str) -> None:
    try:
        task = tasks.build(task_name)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    for name in HEURISTICS:
        hist = train.run(task, name, controller_kwargs=smoke_kwargs(name), steps=4, eval_every=2)
        assert len(hist.lr) == 4 and len(hist.evals) == 2 and not hist.diverged, name
        assert all(math.isfinite(x) and x > 0 for x in hist.lr), name
        assert all(len(v) == 4 for v in hist.extras.values()) and hist.extras, name
        if name.startswith("uncertainty"):
            assert [r["step"] for r in hist.uncertainty] == [1.0, 3.0], name
            assert all(0.0 <= r["uncertainty"] <= 1.0 and 0.0 <= r["error_rate"] <= 1.0 for r in hist.uncertainty), name
