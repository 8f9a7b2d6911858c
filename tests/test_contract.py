"""The shared contract every registered controller must keep (one test for all).

Driven by hypothesis with arbitrary signal sequences, including NaN, inf, huge,
zero and negative values: the LR written into the optimizer is always finite,
non-negative and inside [min_lr, max_lr]; and a state_dict round-trip gives the
same future LRs. A new controller is covered by registering it; one that needs
constructor arguments gets a line in KWARGS.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metalr import controllers, tasks
from metalr.controllers.base import Controller
from metalr.signals import Signals
from metalr.train import build_controller

#: Constructor arguments for controllers whose defaults need something (one line each).
KWARGS: dict[str, dict[str, Any]] = {
    "cosine": {"total_steps": 50, "warmup_steps": 5},
    "step": {"step_size": 3, "gamma": 0.5},
    "plateau": {"patience": 1, "factor": 0.5},
    "onecycle": {"total_steps": 50},
    # calibrated heuristics: short histories and windows, so 25 signals reach their decisions
    "uncertainty_relative": {"history": 2},
    "uncertainty_ensemble_relative": {"history": 2, "n_members": 2},
    "grad_variability_relative": {"window": 2, "interval": 1, "history": 2},
    "loss_patterns_relative": {"window": 3, "interval_steps": 2},
}

NAMES = controllers.available()
NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e308, -1e308, 1e-308, math.nan, math.inf, -math.inf]))
WILD = st.one_of(st.none(), NUMBER)
UNIT = st.one_of(st.none(), st.floats(min_value=-1.0, max_value=1.0), NUMBER)


@st.composite
def signal_sequences(draw: Any) -> list[Signals]:
    n = draw(st.integers(min_value=1, max_value=25))
    out = []
    for i in range(n):
        out.append(
            Signals(
                step=i + 1,
                epoch=i // 5,
                progress=min(1.0, (i + 1) / 25),
                lr=draw(st.sampled_from([0.1, 1e-3, 0.0, math.nan])),
                base_lr=0.1,
                loss=draw(WILD),
                accuracy=draw(UNIT),
                grad_norm=draw(WILD),
                grad_cos=draw(UNIT),
                hypergrad=draw(WILD),
                hypergrad_cos=draw(UNIT),
                val_loss=draw(WILD),
                val_accuracy=draw(UNIT),
                uncertainty=draw(UNIT),
                batch_size=32,
                resources=draw(st.one_of(st.none(), st.fixed_dictionaries({"cpu_percent": NUMBER, "memory_percent": NUMBER}))),
                task_info={"num_classes": 3, "num_features": 13, "batch_size": 32, "train_size": 100},
            )
        )
    return out


_TASK = tasks.build("wine_mlp", steps=50)


def make(name: str, seed: int = 0) -> Controller:
    torch.manual_seed(seed)
    model = _TASK.model_fn()
    _, ctrl = build_controller(name, _TASK, model, 50, dict(KWARGS.get(name, {})))
    return ctrl


def _check(ctrl: Controller, lrs: list[float]) -> None:
    for lr, group in zip(lrs, ctrl.optimizer.param_groups):
        assert math.isfinite(lr) and lr >= 0.0, f"{ctrl.name}: LR {lr}"
        assert ctrl.min_lr <= lr <= ctrl.max_lr, f"{ctrl.name}: LR {lr} outside [{ctrl.min_lr}, {ctrl.max_lr}]"
        assert math.isfinite(float(group["lr"])) and group["lr"] >= 0.0


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seq=signal_sequences())
def test_lr_always_finite_and_in_range(name: str, seq: list[Signals]) -> None:
    ctrl = make(name)
    _check(ctrl, ctrl.get_last_lr())
    for s in seq:
        _check(ctrl, ctrl.step(s))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=signal_sequences(), cut=st.integers(min_value=0, max_value=25))
def test_state_round_trip_gives_same_future(name: str, seq: list[Signals], cut: int) -> None:
    cut = min(cut, len(seq))
    a = make(name)
    for s in seq[:cut]:
        a.step(s)
    b = make(name, seed=1)
    b.load_state_dict(a.state_dict())
    assert b.get_last_lr() == a.get_last_lr()
    for s in seq[cut:]:
        assert a.step(s) == b.step(s)


@pytest.mark.parametrize("name", NAMES)
def test_every_controller_trains_a_task_through_the_harness(name: str) -> None:
    from metalr import train

    h = train.run(tasks.build("digits_mlp", steps=40, eval_every=20), name, controller_kwargs=dict(KWARGS.get(name, {})), seed=0)
    assert not h.diverged and len(h.lr) == 40 and all(math.isfinite(x) for x in h.lr)
    assert h.final["val_accuracy"] > 0.2  # well above the 0.1 of chance after 40 steps
