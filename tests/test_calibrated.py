"""The calibrated heuristics (`*_relative`): their rules on synthetic signals, scale invariance, state, bad input, estimators."""

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
from metalr.controllers.loss_patterns import classify
from metalr.controllers.loss_patterns_relative import classify_relative
from metalr.controllers.relative import RelativeLevel
from metalr.signals import Signals
from metalr.testing import smoke_kwargs

UNCERTAINTY = ["uncertainty_relative", "uncertainty_ensemble_relative"]
VARIANTS = [*UNCERTAINTY, "grad_variability_relative", "loss_patterns_relative"]
#: The plan rule each variant calibrates.
PLAN = {
    "uncertainty_relative": "uncertainty",
    "uncertainty_ensemble_relative": "uncertainty_ensemble",
    "grad_variability_relative": "grad_variability",
    "loss_patterns_relative": "loss_patterns",
}


def opt(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=lr)


def lr_of(ctrl: controllers.Controller) -> float:
    return ctrl.get_last_lr()[0]


def noisy_trend(n: int, seed: int = 0, noise: float = 0.1) -> list[float]:
    """A positive signal that falls, then rises, then falls, with multiplicative noise."""
    rng = np.random.default_rng(seed)
    trend = np.concatenate([np.geomspace(1.0, 0.2, n // 3), np.geomspace(0.2, 0.6, n // 3), np.geomspace(0.6, 0.3, n - 2 * (n // 3))])
    return [float(x) for x in trend * np.exp(noise * rng.standard_normal(n))]


def signals_for(name: str, values: list[float | None]) -> list[Signals]:
    """One `Signals` per value, in the field the variant reads (every step a reading)."""
    if name in UNCERTAINTY:
        return [Signals(step=i + 1, uncertainty=v) for i, v in enumerate(values)]
    if name == "grad_variability_relative":
        return [Signals(step=i + 1, grad_norm=v) for i, v in enumerate(values)]
    return [Signals(step=i + 1, loss=v) for i, v in enumerate(values)]


#: Noise of the synthetic sequences: loss windows need a smooth loss to show a steady decline.
NOISE = {"loss_patterns_relative": 0.01}


def moves(lrs: list[float]) -> set[str]:
    return {"up" if b > a else "down" for a, b in zip(lrs[:-1], lrs[1:]) if a != b}


#: Settings that let a short synthetic sequence reach many decisions (a reading per decision).
FAST = {
    "uncertainty_relative": {},
    "uncertainty_ensemble_relative": {},
    "grad_variability_relative": {"window": 2, "interval": 1},
    "loss_patterns_relative": {"interval_steps": 1},
}


# ------------------------------------------------------------------ the shared relative rule
class Level(RelativeLevel):
    def __init__(self, band: float = 0.1, history: int = 3, confirm: int = 1) -> None:
        self._init_level(band, history, confirm)


def test_relative_level_watches_then_compares_with_the_median_and_a_log_symmetric_band() -> None:
    lvl = Level(band=0.1, history=3)
    assert [lvl._level_side(x) for x in (1.0, 2.0, 4.0)] == [0, 0, 0]  # warming up: 3 readings needed
    assert lvl.level_reference == 2.0  # median, not mean (7/3)
    assert lvl._level_side(2.19) == 0  # 2.19 / 2 = 1.095 < 1.1: inside the band
    assert lvl.level_reference == 2.19  # median of [2, 4, 2.19]
    assert lvl._level_side(2.19 * 1.11) == 1
    ref = lvl.level_reference
    assert lvl._level_side(ref / 1.11) == -1  # below 1 / (1 + band), not 1 - band
    ref = lvl.level_reference
    assert lvl._level_side(ref / 1.09) == 0


def test_relative_level_confirm_needs_a_run_on_one_side() -> None:
    lvl = Level(band=0.1, history=9, confirm=2)
    for _ in range(9):
        lvl._level_side(1.0)
    # with nine readings held, the median stays 1.0 through this sequence
    assert [lvl._level_side(x) for x in (2.0, 2.0, 2.0, 1.0, 0.5, 2.0, 0.5, 0.5)] == [0, 1, 1, 0, 0, 0, 0, -1]


def test_relative_level_ignores_non_finite_and_negative_readings_and_a_zero_reference() -> None:
    lvl = Level(history=2)
    for x in (None, math.nan, math.inf, -math.inf, -1.0):
        assert lvl._level_side(x) == 0
    assert lvl.level_readings == [] and lvl.level_streak == 0
    lvl._level_side(0.0)
    lvl._level_side(0.0)
    assert lvl._level_side(5.0) == 0  # reference 0: no ratio, no decision
    with pytest.raises(ValueError):
        Level(band=-0.1)
    with pytest.raises(ValueError):
        Level(history=0)


# ------------------------------------------------------------------ uncertainty variants
@pytest.mark.parametrize("name", UNCERTAINTY)
def test_uncertainty_relative_rule_direction_and_size(name: str) -> None:
    ctrl = controllers.build(name, opt(0.1))
    for _ in range(5):  # history: the first five estimates only set the reference
        assert ctrl.step(Signals(uncertainty=0.5))[0] == pytest.approx(0.1)
    assert ctrl.step(Signals(uncertainty=0.52))[0] == pytest.approx(0.1)  # inside the band
    assert ctrl.step(Signals(uncertainty=0.4))[0] == pytest.approx(0.12)  # clearly more confident: x1.2
    assert ctrl.step(Signals())[0] == pytest.approx(0.12)  # no estimate this step: kept
    assert ctrl.step(Signals(uncertainty=0.7))[0] == pytest.approx(0.096)  # clearly less confident: x0.8
    assert ctrl.extra_logs()["uncertainty_factor"] == pytest.approx(0.8)
    assert ctrl.extra_logs()["uncertainty_reference"] == pytest.approx(0.5)
    # The plan's absolute threshold would have cut the LR at every one of these estimates (all >= 0.1).
    plan = controllers.build(PLAN[name], opt(0.1))
    for u in [0.5] * 5 + [0.52, 0.4, 0.7]:
        plan.step(Signals(uncertainty=u))
    assert lr_of(plan) == pytest.approx(0.1 * 0.8**8)


@pytest.mark.parametrize("name", UNCERTAINTY)
def test_uncertainty_relative_settles_when_the_signal_is_flat(name: str) -> None:
    ctrl = controllers.build(name, opt(0.1))
    rng = np.random.default_rng(0)
    lrs = [ctrl.step(Signals(uncertainty=0.8 * (1 + 0.03 * rng.standard_normal())))[0] for _ in range(60)]
    assert lrs == [pytest.approx(0.1)] * 60  # 3 % noise never leaves a 10 % band


# ------------------------------------------------------------------ grad variability variant
def _grad_windows(ctrl: controllers.Controller, windows: list[list[float]]) -> list[float]:
    """Feed whole windows of gradient norms; the LR after each window (one decision per window)."""
    out = []
    for w in windows:
        for g in w:
            ctrl.step(Signals(grad_norm=g))
        out.append(lr_of(ctrl))
    return out


def test_grad_variability_relative_direction_size_and_confirmation() -> None:
    ctrl = controllers.build("grad_variability_relative", opt(0.1))
    calm, noisy, steady = [1.0, 1.2, 1.0, 1.2, 1.0], [1.0, 1.5, 0.8, 1.6, 0.9], [1.0, 1.1, 1.0, 1.1, 1.0]
    lrs = _grad_windows(ctrl, [calm] * 5)
    assert lrs == [pytest.approx(0.1)] * 5  # history
    lrs = _grad_windows(ctrl, [noisy, noisy, calm, steady, steady])
    # noisier once: confirm=2 waits; twice: x0.9; back to the median: kept; steadier once: waits; twice: x1.1
    assert lrs == pytest.approx([0.1, 0.09, 0.09, 0.09, 0.099])
    assert ctrl.extra_logs()["grad_variability_factor"] == pytest.approx(1.1)


def test_grad_variability_relative_does_not_random_walk_on_pure_noise() -> None:
    """Gradient norms i.i.d.: the plan's rule random-walks, the variant stays close to its base LR."""
    rng = np.random.default_rng(0)
    norms = list(1.0 + 0.3 * np.abs(rng.standard_normal(2000)))
    plan, rel = controllers.build("grad_variability", opt(0.1)), controllers.build("grad_variability_relative", opt(0.1))
    changes = {"plan": 0, "rel": 0}
    for g in norms:
        for key, ctrl in (("plan", plan), ("rel", rel)):
            before = lr_of(ctrl)
            if ctrl.step(Signals(grad_norm=float(g)))[0] != before:
                changes[key] += 1
    assert changes["plan"] > 300  # nearly every one of the 400 decisions moves the LR
    assert changes["rel"] < changes["plan"] / 4


# ------------------------------------------------------------------ loss patterns variant
@pytest.mark.parametrize(
    "window,pattern",
    [
        ([23.0, 22.9, 22.8, 22.7, 22.6], "plateau"),  # plan: var 0.02 > 1e-3 -> "steady decline" (x1.2)
        ([1.0, 0.9, 0.905, 0.8, 0.805], "steady_decline"),  # plan: three sub-1 % bumps -> "oscillation" (x0.8)
        ([1.0, 1.2, 0.9, 1.2, 1.0], "oscillation"),
        ([1.0, 1.0, 1.0, 1.0, 0.7], "sharp_drop"),
        ([1.0, 1.05, 1.1, 1.15, 1.2], "rise"),
        ([1.0, 1.1, 1.1, 1.0, 1.0], "none"),
    ],
)
def test_classify_relative(window: list[float], pattern: str) -> None:
    assert classify_relative(window) == pattern


def test_classify_relative_is_scale_free_and_the_plan_is_not() -> None:
    rng = np.random.default_rng(0)
    plan_flips = 0
    for _ in range(300):
        w = list(np.exp(rng.normal(0.0, 0.05, 5)) * np.geomspace(1.0, rng.uniform(0.7, 1.1), 5))
        for c in (1e-3, 0.37, 10.0, 1e4):
            assert classify_relative([c * x for x in w]) == classify_relative(w)
            plan_flips += classify([c * x for x in w]) != classify(w)
    assert plan_flips > 0


def test_classify_relative_survives_huge_finite_losses() -> None:
    assert classify_relative([1e308, -1e308, 1.0]) in {"none", "oscillation", "sharp_drop", "rise", "steady_decline", "plateau"}
    assert classify_relative([1.0, 2.0, -1e308, 1e308, 5.0]) == classify_relative([1e-300, 2e-300, -1e8, 1e8, 5e-300])
    assert classify_relative([math.inf, 1.0, 1.0]) == "none"


def test_loss_patterns_relative_direction_and_size_per_period() -> None:
    ctrl = controllers.build("loss_patterns_relative", opt(0.1), interval_steps=1)
    lrs = [ctrl.step(Signals(loss=x))[0] for x in [2.0, 1.8, 1.6, 1.4, 1.2]]
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.12])  # steady decline after a full window: x1.2
    assert ctrl.extra_logs()["loss_pattern"] == 4.0
    lrs = [ctrl.step(Signals(loss=x))[0] for x in [1.5, 1.1, 1.4, 1.15]]
    assert lrs[-1] == pytest.approx(lrs[-2] * 0.8) and ctrl.extra_logs()["loss_pattern"] == 3.0  # oscillation: x0.8


def test_loss_patterns_relative_keeps_the_plans_per_epoch_period() -> None:
    ctrl = controllers.build("loss_patterns_relative", opt(0.1))
    lrs = []
    for epoch, loss in enumerate([2.0, 1.8, 1.6, 1.4, 1.2, 1.0]):
        for _ in range(3):
            lrs.append(ctrl.step(Signals(epoch=epoch, loss=loss))[0])
    # the 5-epoch window is complete when epoch 5 starts: one x1.2 on its first step, then kept
    assert lrs[:15] == [pytest.approx(0.1)] * 15 and lrs[15:] == pytest.approx([0.12] * 3)


# ------------------------------------------------------------------ every variant
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("scale", [1e-3, 0.37, 8.0, 1e4])
def test_scaling_the_signal_changes_no_decision(name: str, scale: float) -> None:
    values = noisy_trend(150, noise=NOISE.get(name, 0.1))
    a, b = controllers.build(name, opt(), **FAST[name]), controllers.build(name, opt(), **FAST[name])
    lrs_a = [a.step(s)[0] for s in signals_for(name, values)]
    lrs_b = [b.step(s)[0] for s in signals_for(name, [scale * v for v in values])]
    assert lrs_a == lrs_b
    assert moves(lrs_a) == {"up", "down"}  # the sequence moves the LR both ways, so this could fail


@pytest.mark.parametrize("name", VARIANTS)
def test_non_finite_readings_keep_the_lr_and_change_no_later_decision(name: str) -> None:
    values = noisy_trend(120, seed=1, noise=NOISE.get(name, 0.1))
    bad: list[float | None] = [math.nan, math.inf, -math.inf, None]
    with_bad: list[float | None] = []
    for i, v in enumerate(values):
        with_bad.append(v)
        if i % 7 == 3:
            with_bad.append(bad[i % 4])
    a, b = controllers.build(name, opt(), **FAST[name]), controllers.build(name, opt(), **FAST[name])
    lrs_a = [a.step(s)[0] for s in signals_for(name, values)]
    lrs_b = []
    for s in signals_for(name, with_bad):
        before = lr_of(b)
        lr = b.step(s)[0]
        value = s.uncertainty if name in UNCERTAINTY else s.grad_norm if name == "grad_variability_relative" else s.loss
        if value is None or not math.isfinite(value):
            assert lr == before
            continue
        lrs_b.append(lr)
    assert lrs_b == lrs_a
    assert moves(lrs_a)  # decisions happened, so a reading that leaked into the state would show


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("cut", [3, 40, 90])
def test_state_round_trip_gives_the_same_future(name: str, cut: int) -> None:
    seq = signals_for(name, noisy_trend(120, seed=2, noise=NOISE.get(name, 0.1)))
    a = controllers.build(name, opt(), **FAST[name])
    for s in seq[:cut]:
        a.step(s)
    b = controllers.build(name, opt(), **FAST[name])
    b.load_state_dict(a.state_dict())
    assert b.get_last_lr() == a.get_last_lr()
    assert [a.step(s)[0] for s in seq[cut:]] == [b.step(s)[0] for s in seq[cut:]]
    other = controllers.build(PLAN[name], opt())
    with pytest.raises(ValueError, match="saved by controller"):
        other.load_state_dict(a.state_dict())


@pytest.mark.parametrize("name", VARIANTS)
def test_variants_keep_the_plans_multipliers_and_intervals(name: str) -> None:
    plan, rel = controllers.build(PLAN[name], opt()), controllers.build(name, opt())
    for key in ("increase", "decrease", "adjustment", "interval", "interval_steps", "window", "min_lr", "max_lr"):
        if hasattr(plan, key):
            assert getattr(rel, key) == getattr(plan, key), key


# ------------------------------------------------------------------ estimates that reuse the step's forward
def _train_forward(task: tasks.Task, model: nn.Module, batch: object) -> tasks.base.StepOutput:
    model.train()
    return task.forward(model, batch)


def test_variants_declare_training_batch_sources_and_the_plans_probe_sources() -> None:
    for name in UNCERTAINTY:
        (req,) = controllers.build(name, opt(), **smoke_kwargs(name)).signal_sources()
        (plan,) = controllers.build(PLAN[name], opt(), **smoke_kwargs(PLAN[name])).signal_sources()
        assert isinstance(req, estimators.BatchUncertaintyRequest) and isinstance(plan, estimators.UncertaintyRequest)
        assert req.estimator == plan.estimator and req.interval == plan.interval and req.measure == plan.measure


def test_batch_head_dropout_is_the_probe_estimator_applied_to_the_training_batch() -> None:
    """Same masks, same head: on the batch the step trained on it gives exactly what MCDropoutEstimator gives on that batch."""
    task = tasks.build("digits_mlp")
    torch.manual_seed(0)
    model = task.model_fn()  # no dropout or batch norm: train- and eval-mode forwards agree
    batch = next(iter(task.train_loader(0)))
    source = estimators.build_source(estimators.BatchUncertaintyRequest("mc_dropout", passes=20, seed=3), model=model)
    out = _train_forward(task, model, batch)
    record = dict(zip(["u"], [source.read(1, 0, out.logits, out.targets)]))
    reference = estimators.MCDropoutEstimator(model, task.forward, batch, passes=20, p=0.5, seed=3).estimate(1)
    assert record["u"] == pytest.approx(reference["uncertainty"], rel=1e-6)
    assert source.records[-1] == pytest.approx(reference, rel=1e-6)  # error rate and confidence of the same batch
    assert 0.0 < reference["error_rate"] < 1.0


def test_batch_sources_refuse_stale_or_foreign_logits_and_evaluation_forwards() -> None:
    task = tasks.build("digits_mlp")
    model = task.model_fn()
    loader = iter(task.train_loader(0))
    a, b = next(loader), next(loader)
    source = estimators.build_source(estimators.BatchUncertaintyRequest("mc_dropout", passes=4), model=model)
    model.eval()
    with torch.no_grad():
        ev = task.forward(model, a)
    with pytest.raises(ValueError, match="no training forward"):
        source.read(1, 0, ev.logits, ev.targets)  # an evaluation forward is never captured
    _train_forward(task, model, a)
    other = _train_forward(task, task.model_fn(), b)
    with pytest.raises(ValueError, match="did not produce this step's logits"):
        source.read(1, 0, other.logits, other.targets)  # a capture that is not this step's
    with pytest.raises(ValueError, match="needs the step's logits"):
        source.read(1, 0, None, None)
    source.close()
    model.train()
    fresh = _train_forward(task, model, b)
    assert source.estimator.capture.output is not None and not torch.equal(source.estimator.capture.output, fresh.logits.detach())  # type: ignore[union-attr]


def test_batch_head_dropout_refuses_a_model_whose_last_linear_is_not_the_head() -> None:
    task = tasks.build("digits_mlp")

    class Odd(nn.Module):
        def __init__(self, use_extra: bool) -> None:
            super().__init__()
            self.head, self.extra, self.use_extra = nn.Linear(64, 10), nn.Linear(10, 3), use_extra

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.head(x)
            if self.use_extra:
                self.extra(y)  # runs last, but is not what the task trains on
            return y

    batch = next(iter(task.train_loader(0)))
    for use_extra, message in ((True, "last nn.Linear did not produce"), (False, "no training forward through the model's last nn.Linear")):
        model = Odd(use_extra)
        source = estimators.build_source(estimators.BatchUncertaintyRequest("mc_dropout", passes=4), model=model)
        out = _train_forward(task, model, batch)
        with pytest.raises(ValueError, match=message):
            source.read(1, 0, out.logits, out.targets)
    with pytest.raises(ValueError, match="no nn.Linear"):
        estimators.build_source(estimators.BatchUncertaintyRequest("mc_dropout"), model=nn.Sequential(nn.ReLU()))


def test_batch_ensemble_disagreement_is_the_probe_estimator_applied_to_the_training_batch() -> None:
    task = ensemble.ensemble_task(tasks.build("digits_mlp"), 3)
    torch.manual_seed(0)
    model = task.model_fn()
    batch = next(iter(task.train_loader(0)))
    request = estimators.BatchUncertaintyRequest("ensemble", measure="disagreement", n_members=3)
    source = estimators.build_source(request, model=model)
    out = _train_forward(task, model, batch)
    u = source.read(1, 0, out.logits, out.targets)
    reference = estimators.EnsembleEstimator(model.members, task.forward, batch).estimate(1)
    assert u == pytest.approx(reference["uncertainty"], rel=1e-5) and u > 0.0
    assert source.records[-1] == pytest.approx(reference, rel=1e-5)
    with pytest.raises(ValueError, match="3-member DeepEnsemble"):
        estimators.build_source(request, model=tasks.build("digits_mlp").model_fn())
    with pytest.raises(ValueError, match="needs the model"):
        estimators.build_source(request, model=None)


@pytest.mark.parametrize("name", [*UNCERTAINTY, *(PLAN[n] for n in UNCERTAINTY)])
def test_forward_passes_per_estimate(name: str) -> None:
    """By design: the variants' estimates run no forward pass; the plans' run one (MC Dropout) or one per member (ensemble)."""
    ctrl_cls = controllers.get(name)
    kwargs = smoke_kwargs(name, interval=1)
    task = ctrl_cls.prepare_task(tasks.build("digits_mlp"), **kwargs)
    model = task.model_fn()
    ctrl = controllers.build(name, torch.optim.Adam(model.parameters(), lr=1e-3), **kwargs)
    tracker = train.build_tracker(ctrl, model.parameters(), total_steps=10, model=model, task=task)
    forwards = [0]
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:] if "ensemble" not in name else [list(m.modules())[-1] for m in model.members]
    for h in heads:
        h.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    for batch in list(task.train_loader(0))[:3]:
        out = _train_forward(task, model, batch)
        out.loss.backward()
        before = forwards[0]
        s = tracker.collect(loss=out.loss, logits=out.logits, targets=out.targets)
        assert s.uncertainty is not None and 0.0 <= s.uncertainty <= 1.0
        extra = (forwards[0] - before) / len(heads)  # forwards through the whole model (each member's head runs once per forward)
        assert extra == (0 if name in UNCERTAINTY else 1), f"{name}: {extra} forward(s) per estimate"


def test_tracker_state_rewinds_a_batch_source_and_the_same_batches_give_the_same_estimates() -> None:
    task = tasks.build("digits_mlp")
    torch.manual_seed(0)
    model = task.model_fn()
    ctrl = controllers.build("uncertainty_relative", torch.optim.SGD(model.parameters(), lr=0.1), **smoke_kwargs("uncertainty_relative"))
    tracker = train.build_tracker(ctrl, model.parameters(), total_steps=10, model=model, task=task)
    batches = list(task.train_loader(0))[:8]

    def step(batch: object) -> float | None:
        out = _train_forward(task, model, batch)
        ctrl.optimizer.zero_grad()
        out.loss.backward()
        return tracker.collect(loss=out.loss, logits=out.logits, targets=out.targets).uncertainty

    first = [step(b) for b in batches[:3]]
    assert [u is not None for u in first] == [True, False, True]  # interval 2: steps 1, 3
    state = tracker.state_dict()
    later = [step(b) for b in batches[3:]]
    tracker.load_state_dict(state)
    assert len(tracker.records("uncertainty")) == 2
    assert [step(b) for b in batches[3:]] == later  # the mask generator was rewound too (no optimizer step: the model is unchanged)


def test_variants_are_refused_where_they_cannot_run() -> None:
    import metalr

    model = nn.Linear(4, 3)
    for name in UNCERTAINTY:
        with pytest.raises(ValueError, match="cannot run under"):
            metalr.hook(name, torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_trains_through_the_harness_and_records_estimates(name: str) -> None:
    # the uncertainty variants with a narrow band: in 60 steps digits_mlp's head entropy only falls from 0.996 to about 0.95
    kwargs = smoke_kwargs(name, interval=10, band=0.002) if name in UNCERTAINTY else smoke_kwargs(name)
    h = train.run(tasks.build("digits_mlp", steps=60, eval_every=30), name, seed=0, controller_kwargs=kwargs)
    assert not h.diverged and len(h.lr) == 60 and all(math.isfinite(x) for x in h.lr)
    assert moves(h.lr), f"{name}: the LR never moved"
    if name in UNCERTAINTY:
        assert [r["step"] for r in h.uncertainty] == [1.0, 11.0, 21.0, 31.0, 41.0, 51.0]
        assert all(0.0 <= r["uncertainty"] <= 1.0 and 0.0 <= r["error_rate"] <= 1.0 for r in h.uncertainty)
