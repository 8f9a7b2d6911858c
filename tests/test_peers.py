"""Peer strategies (schedule-free, Prodigy, D-Adaptation, 1cycle) through the harness.

Each trains an offline task to a plausible accuracy; the LR the harness logs is
the effective LR each step applied (d * lr growing from d0 for Prodigy/D-Adapt,
warmup then constant for schedule-free); schedule-free evaluates the averaged
weights x; `onecycle` reproduces torch's OneCycleLR step for step.
"""

from __future__ import annotations

import math

import pytest
import torch

from metalr import controllers, tasks, train
from metalr.controllers.schedulefree import ScheduleFreeController

PEERS = ["schedulefree_adamw", "schedulefree_sgd", "prodigy", "dadaptation", "onecycle"]
STEPS = 300


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small models on a shared machine: threads only contend
    yield
    torch.set_num_threads(n)


def digits(steps: int = STEPS) -> tasks.Task:
    return tasks.build("digits_mlp", steps=steps, eval_every=100)


@pytest.mark.parametrize("name", PEERS)
def test_peer_trains_digits(name: str) -> None:
    h = train.run(digits(), name, seed=0)
    assert not h.diverged and h.recoveries == 0 and len(h.lr) == STEPS
    assert all(math.isfinite(x) and x > 0 for x in h.lr)
    assert h.final["val_accuracy"] > 0.85, f"{name}: {h.final['val_accuracy']:.3f}"  # chance is 0.1; constant Adam gets ~0.96


@pytest.mark.parametrize("name", ["prodigy", "dadaptation"])
def test_logged_lr_is_d_times_lr_growing_from_d0(name: str) -> None:
    h = train.run(digits(), name, seed=0)
    assert h.lr[0] == pytest.approx(1e-6)  # d0 * lr with the authors' lr = 1.0
    assert max(h.lr) > 1e3 * h.lr[0]  # d adapted upwards by orders of magnitude
    d_after_step = h.extras["d"]  # d after step t is what step t+1 applies
    assert h.lr[1:] == pytest.approx(d_after_step[:-1], rel=1e-12)


def test_prodigy_cosine_anneal_scales_the_multiplier() -> None:
    h = train.run(digits(100), "prodigy", controller_kwargs={"anneal": "cosine"}, seed=0)
    d = h.extras["d"]
    ratio = [lr / dd for lr, dd in zip(h.lr[1:], d[:-1])]  # the lr multiplier each step applied
    assert ratio[0] == pytest.approx((1 + math.cos(math.pi * 1 / 100)) / 2) and ratio[-1] < 0.01


def test_schedulefree_logs_warmup_then_constant_lr() -> None:
    task = digits()
    h = train.run(task, "schedulefree_adamw", seed=0)
    base, warmup = 3.0 * task.lr, int(0.05 * STEPS)
    assert h.lr[:warmup] == pytest.approx([base * (k + 1) / warmup for k in range(warmup)])
    assert h.lr[warmup:] == pytest.approx([base] * (STEPS - warmup))


def test_schedulefree_evaluates_the_averaged_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ScheduleFreeController] = []
    models: list[torch.nn.Module] = []
    task = digits(120)
    make_model = task.model_fn
    task.model_fn = lambda: models.append(make_model()) or models[-1]  # type: ignore[func-returns-value]
    on_eval_end = ScheduleFreeController.on_eval_end
    monkeypatch.setattr(ScheduleFreeController, "on_eval_end", lambda self: (seen.append(self), on_eval_end(self))[1])
    h = train.run(task, "schedulefree_adamw", seed=0)
    ctrl, model = seen[-1], models[-1].eval()
    assert ctrl.optimizer.param_groups[0]["train_mode"]  # the harness left it ready to train
    train_weights = task.evaluate(model)
    ctrl.on_eval_start()  # optimizer.eval(): model now holds x
    eval_weights = task.evaluate(model)
    assert eval_weights["val_loss"] == pytest.approx(h.final["val_loss"], rel=1e-6)
    assert eval_weights["val_accuracy"] == h.final["val_accuracy"]
    assert train_weights["val_loss"] != pytest.approx(h.final["val_loss"], rel=1e-3)


def test_schedulefree_survives_divergence_recovery() -> None:
    """A NaN loss restores the snapshot (taken in train mode) and halves the LR; training goes on."""
    task = digits(200)
    forward, calls = task.forward, [0]

    def poisoned(model, batch):  # type: ignore[no-untyped-def]
        calls[0] += 1
        out = forward(model, batch)
        if calls[0] == 150:
            out.loss = out.loss * float("nan")
        return out

    task.forward = poisoned  # type: ignore[method-assign]
    h = train.run(task, "schedulefree_adamw", seed=0)
    assert h.recoveries == 1 and not h.diverged and len(h.lr) == 200
    assert h.lr[-1] == pytest.approx(0.5 * 3.0 * task.lr)
    assert h.final["val_accuracy"] > 0.85


def test_owning_strategy_refuses_a_plain_optimizer() -> None:
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    for name in ["prodigy", "dadaptation", "schedulefree_adamw", "schedulefree_sgd"]:
        assert controllers.get(name).owns_optimizer
        with pytest.raises(TypeError, match="make_optimizer"):
            controllers.build(name, opt)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("kw", [{}, {"anneal_strategy": "linear"}, {"three_phase": True}, {"pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0}])
def test_onecycle_matches_torch(opt_name: str, kw: dict) -> None:  # type: ignore[type-arg]
    def make() -> torch.optim.Optimizer:
        p = torch.nn.Linear(2, 2).parameters()
        return torch.optim.SGD(p, lr=0.1, momentum=0.9) if opt_name == "sgd" else torch.optim.Adam(p, lr=0.1)

    t_opt, m_opt, total = make(), make(), 37
    ref = torch.optim.lr_scheduler.OneCycleLR(t_opt, max_lr=0.3, total_steps=total, **kw)
    ctrl = controllers.build("onecycle", m_opt, total_steps=total, peak_lr=0.3, **kw)
    key = "betas" if opt_name == "adam" else "momentum"
    for _ in range(total):
        assert ctrl.get_last_lr() == ref.get_last_lr()  # exact, same arithmetic
        assert m_opt.param_groups[0][key] == t_opt.param_groups[0][key]  # momentum cycles too
        t_opt.step()
        ref.step()
        ctrl.step()
    final = ctrl.get_last_lr()
    ctrl.step()
    assert ctrl.get_last_lr() == final and final[0] == pytest.approx(0.3 / ctrl.div_factor / ctrl.final_div_factor)  # holds, never negative


def test_onecycle_in_harness_defaults_peak_to_task_lr() -> None:
    task = digits(100)
    h = train.run(task, "onecycle", seed=0)
    opt = torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=task.lr, total_steps=100)
    expected = []
    for _ in range(100):
        expected.append(ref.get_last_lr()[0])
        opt.step()
        ref.step()
    assert h.lr == pytest.approx(expected, rel=1e-12)
    assert max(h.lr) == pytest.approx(task.lr, rel=1e-3)
