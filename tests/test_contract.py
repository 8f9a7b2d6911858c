"""The shared contract every registered controller must keep (one test for all).

Driven by hypothesis with arbitrary signal sequences, including NaN, inf, huge,
zero and negative values, in every field some controller reads (every
`requires` name, every resource reading): the LR written into the optimizer is
always finite, non-negative and inside [min_lr, max_lr]; and a state_dict
round-trip gives the same state and the same future LRs. A new controller is
covered by registering it; one that needs constructor arguments gets a line in
`metalr.testing` (the table every test and the overhead benchmark share).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metalr import controllers, tasks
from metalr.controllers.base import Controller
from metalr.controllers.resource_aware import READINGS
from metalr.signals import MINIMIZING_SIGNALS, SIGNAL_NAMES, Signals
from metalr.testing import smoke_kwargs
from metalr.train import setup

NAMES = controllers.available()
TASK_INFO = {"num_classes": 3, "num_features": 13, "batch_size": 32, "train_size": 100}
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
                loss=draw(WILD),
                accuracy=draw(UNIT),
                grad_norm=draw(WILD),
                grad_cos=draw(UNIT),
                grad_align=draw(UNIT),
                hypergrad=draw(WILD),
                hypergrad_cos=draw(UNIT),
                val_loss=draw(WILD),
                val_accuracy=draw(UNIT),
                uncertainty=draw(UNIT),
                batch_size=32,
                resources=draw(st.one_of(st.none(), st.fixed_dictionaries({}, optional={k: UNIT for k in READINGS}))),
                task_info=TASK_INFO,
            )
        )
    return out


_TASK = tasks.build("wine_mlp", steps=50)


def make(name: str, seed: int = 0) -> Controller:
    return setup(name, task=_TASK, total_steps=50, controller_kwargs=smoke_kwargs(name), seed=seed).controller


def realistic_run(n: int = 40) -> list[Signals]:
    """Finite, plausible signals in every field a rule reads: losses that fall then stall, evaluations every
    5 steps, uncertainty and every resource reading that change from epoch to epoch (epochs of 5 steps)."""
    out = []
    for i in range(n):
        t, e = i + 1, i // 5
        out.append(
            Signals(
                step=t,
                epoch=e,
                progress=t / n,
                loss=max(0.3, 2.0 / t**0.5) + 0.05 * (-1) ** i,
                accuracy=min(0.95, 0.1 + 0.03 * t),
                grad_norm=1.0 + [0.1, 0.8][e % 2] * (-1) ** i,
                grad_cos=0.8 * (-1) ** (i // 3),
                grad_align=0.6 * (-1) ** (i // 4),
                hypergrad=0.1 * (-1) ** i,
                hypergrad_cos=0.5 * (-1) ** (i // 2),
                update_size=[1e-3, 3e-2][(i // 4) % 2],
                val_loss=(max(0.5, 1.5 - 0.2 * e) if t % 5 == 0 else None),
                val_accuracy=(0.5 + 0.02 * e if t % 5 == 0 else None),
                uncertainty=[0.05, 0.4][e % 2],
                batch_size=32,
                task_info=TASK_INFO,
                resources={k: [0.2, 0.9][e % 2] for k in READINGS},
            )  # fmt: skip
        )
    return out


def test_the_realistic_run_feeds_every_signal_a_controller_may_read() -> None:
    seq = realistic_run()
    required = set().union(*(controllers.get(n).requires for n in NAMES))
    assert required <= SIGNAL_NAMES
    assert all(any(getattr(s, name) is not None for s in seq) for name in required)
    assert all(set(s.resources or {}) == set(READINGS) for s in seq)  # the keys resource_aware reads


#: Controllers whose LR does not depend on these signals (their LR moves with the optimizer's own steps, or never).
SIGNAL_FREE = {"constant", "dadaptation", "prodigy", "schedulefree_adamw", "schedulefree_sgd"}


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_mid_run_gives_the_same_state_and_future_lrs(name: str) -> None:
    seq = realistic_run()
    a = make(name)
    for s in seq[:17]:
        a.step(s)
    b = make(name, seed=1)
    b.load_state_dict(a.state_dict())
    assert b.get_last_lr() == a.get_last_lr() and _same(b.state_dict(), a.state_dict())
    fa, fb = [a.step(s)[0] for s in seq[17:]], [b.step(s)[0] for s in seq[17:]]
    assert fa == fb
    assert (len(set(fa)) > 1) == (name not in SIGNAL_FREE), f"{name}: LRs {fa}"  # the rule's inputs do reach it


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y))
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and torch.equal(x, y)
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x):
        return math.isnan(y)
    return bool(x == y)


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

    h = train.run(tasks.build("digits_mlp", steps=40, eval_every=20), name, controller_kwargs=smoke_kwargs(name), seed=0)
    assert not h.diverged and len(h.lr) == 40 and all(math.isfinite(x) for x in h.lr)
    assert h.final["val_accuracy"] > 0.2  # well above the 0.1 of chance after 40 steps


def _bare(name: str, **kwargs: Any) -> Controller:
    p = torch.nn.Parameter(torch.zeros(2))
    opt = controllers.get(name).make_optimizer([p], lr=0.1) if name == "dadaptation" else torch.optim.SGD([p], lr=0.1, momentum=0.9)
    return controllers.build(name, opt, **kwargs)


PLANNED = [("cosine", {}), ("onecycle", {}), ("meta", {}), ("dadaptation", {"anneal": "cosine"})]  # an LR that depends on the run's length


@pytest.mark.parametrize(("name", "kwargs"), PLANNED)
def test_a_step_past_total_steps_is_logged_once(name: str, kwargs: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """A `total_steps` set too low (epochs for steps, one epoch's batches) changes the LR silently otherwise."""
    ctrl = _bare(name, total_steps=12, **kwargs)
    past = lambda: [r for r in caplog.records if "past total_steps=12" in r.getMessage()]  # noqa: E731
    with caplog.at_level("WARNING"):
        for i in range(12):
            ctrl.step(Signals(step=i + 1, loss=1.0))
        assert past() == []  # a 12-step run steps its controller 12 times
        ctrl.step(Signals(step=13, loss=1.0))
        assert len(past()) == 1 and name in past()[0].getMessage() and "step 13" in past()[0].getMessage()
        for i in range(13, 20):
            ctrl.step(Signals(step=i + 1, loss=1.0))
        assert len(past()) == 1
        plain = _bare("dadaptation", total_steps=12)  # without annealing its LR does not depend on the run's length
        for i in range(20):
            plain.step(Signals(step=i + 1, loss=1.0))
        assert len(past()) == 1


@pytest.mark.parametrize(("name", "kwargs"), PLANNED)
def test_a_missing_total_steps_is_assumed_and_logged(name: str, kwargs: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        ctrl = _bare(name, **kwargs)
        assert [r.getMessage() for r in caplog.records if "total_steps not given" in r.getMessage()] != []
        caplog.clear()
        _bare(name, total_steps=50, **kwargs)
        assert not [r for r in caplog.records if "total_steps not given" in r.getMessage()]
    assert ctrl.total_steps == 1000


@pytest.mark.parametrize(("name", "kwargs"), PLANNED)
def test_a_fractional_total_steps_is_refused_and_a_whole_float_is_taken(name: str, kwargs: dict[str, Any]) -> None:
    """`epochs * len(loader) / accumulation` is a float: a whole one is a run length, a fractional one a mistake that
    truncating would hide (every schedule would end a step early)."""
    for bad in (937.5, float("nan"), "100", True):
        with pytest.raises(ValueError, match="whole number of optimizer steps"):
            _bare(name, total_steps=bad, **kwargs)
    a, b = _bare(name, total_steps=30.0, **kwargs), _bare(name, total_steps=30, **kwargs)
    assert a.total_steps == 30 and type(a.total_steps) is int
    assert [a.step(Signals(step=i + 1, loss=1.0)) for i in range(31)] == [b.step(Signals(step=i + 1, loss=1.0)) for i in range(31)]


@pytest.mark.parametrize(("name", "kwargs"), PLANNED)
def test_a_state_keeps_its_run_length_and_a_resume_into_another_length_is_logged(name: str, kwargs: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """A Trainer resumed with more epochs (or another `max_steps`) builds the controller for the new length, then loads
    the saved state: the resumed controller goes on with the saved run's length, as torch's schedulers restore their
    `T_max` (before, the meta-controller did and the schedules took the new length, a silent jump of the LR), and says so."""
    saved = _bare(name, total_steps=30, **kwargs)
    for i in range(20):
        saved.step(Signals(step=i + 1, loss=1.0))
    state = saved.state_dict()
    other = lambda r: "planned for a 30-step run" in r.getMessage()  # noqa: E731
    with caplog.at_level("WARNING"):
        resumed = _bare(name, total_steps=50, **kwargs)
        resumed.load_state_dict(state)
        messages = [r.getMessage() for r in caplog.records if other(r)]
        assert len(messages) == 1 and name in messages[0] and "built for 50 steps" in messages[0]
        assert resumed.total_steps == 30
        later = [Signals(step=i + 1, loss=1.0) for i in range(20, 40)]  # past the end too
        assert [resumed.step(s) for s in later] == [saved.step(s) for s in later]
        caplog.clear()
        again = _bare(name, total_steps=30, **kwargs)
        again.load_state_dict(state)  # the same length: nothing to say
        assert not [r for r in caplog.records if other(r)]
    if name != "meta":  # a state saved before run lengths were (the meta-controller's always held its own): the built length
        del state["total_steps"]
        old = _bare(name, total_steps=50, **kwargs)
        old.load_state_dict(state)
        assert old.total_steps == 50


def test_a_tracker_state_keeps_its_run_length_as_the_controllers_does() -> None:
    """The `progress` signal of a resumed run is that of the run length the controller goes on with (the saved one):
    before, the tracker took the new length, so a controller reading `progress` saw another fraction than its own."""
    from metalr.signals import SignalTracker

    p = torch.nn.Parameter(torch.zeros(3))
    saved = SignalTracker([p], torch.optim.SGD([p], lr=0.1), requires=["loss"], total_steps=30)
    for _ in range(20):
        saved.collect(loss=1.0)
    state = saved.state_dict()
    resumed = SignalTracker([p], torch.optim.SGD([p], lr=0.1), requires=["loss"], total_steps=50)
    resumed.load_state_dict(state)
    assert resumed.total_steps == 30
    assert resumed.collect(loss=1.0).progress == saved.collect(loss=1.0).progress == 21 / 30
    del state["total_steps"]  # a state saved before run lengths were: the built length
    old = SignalTracker([p], torch.optim.SGD([p], lr=0.1), requires=["loss"], total_steps=50)
    old.load_state_dict(state)
    assert old.collect(loss=1.0).progress == 21 / 50


def test_an_optimizer_lr_outside_the_controllers_range_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The resource-aware rule's absolute range is the plan's [1e-6, 1e-2]: on SGD at 0.1 it cut the LR 10x at its first
    step without a word (a stranger's plain loop). Any controller whose bounds leave out the optimizer's LR now says so."""
    outside = lambda: [r.getMessage() for r in caplog.records if "outside the controller's LR range" in r.getMessage()]  # noqa: E731
    with caplog.at_level("WARNING", logger="metalr.controllers.base"):
        ctrl = _bare("resource_aware")  # SGD at 0.1
        assert len(outside()) == 1 and "group 0: 0.1 not in [1e-06, 0.01]" in outside()[0] and "ResourceAware" in outside()[0]
        assert ctrl.step(Signals(step=1, resources={"cpu_util": 0.0, "mem_util": 0.0})) == [0.01]  # what it warned of
        caplog.clear()
        _bare("resource_aware", max_lr=1.0)
        p = torch.nn.Parameter(torch.zeros(2))
        controllers.build("resource_aware", torch.optim.Adam([p], lr=1e-3))
        controllers.build("cosine", torch.optim.SGD([{"params": [p], "lr": 0.0}, {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=0.1), total_steps=10)
        assert outside() == []  # inside the range; a group at 0 stays at 0 by design
        _bare("cosine", total_steps=10, max_lr=0.05)
        assert len(outside()) == 1 and "Cosine" in outside()[0]


#: Controllers that drive the optimizer they are given (not their own) and need no task.
DRIVE_GIVEN = [n for n in NAMES if not controllers.get(n).owns_optimizer and not n.startswith("uncertainty") and n != "resource_aware"]


@pytest.mark.parametrize("name", DRIVE_GIVEN)
def test_a_maximizing_optimizer_is_refused_by_controllers_that_read_a_signed_signal(name: str) -> None:
    """Under `maximize=True` the hypergradient's sign and the loss's direction read backwards: measured before this
    refusal (plain loop, SGD momentum 0.01, 200 steps), `hypergradient` took the LR to 1.9e-4 where the same run
    minimizing rose to 0.1, and the shipped meta-controller to its floor (1e-5). Schedules read no signal and work."""
    cls = controllers.get(name)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, maximize=True)
    kwargs = smoke_kwargs(name)
    kwargs.pop("total_steps", None)
    signed = cls.requires & MINIMIZING_SIGNALS
    if name == "hypergradient" or name == "meta":
        assert signed  # (the two the measurement above is about)
    if signed:
        with pytest.raises(ValueError, match=r"maximize=True.*loss = -objective"):
            controllers.build(name, opt, **kwargs)
        minimizing = torch.optim.SGD([p], lr=0.1, momentum=0.9)
        controllers.build(name, minimizing, **kwargs)  # the same, minimizing: built
    else:
        controllers.build(name, opt, **kwargs).step(Signals(step=1, loss=1.0))


@pytest.mark.parametrize("name", DRIVE_GIVEN)
def test_a_tensor_lr_stays_the_same_tensor_and_follows_the_controller(name: str) -> None:
    """As torch's schedulers do (`_update_param_group_val`): `capturable` optimizers and CUDA graphs hold the LR tensor itself."""
    seq = realistic_run()

    def run(lr: Any) -> tuple[torch.optim.Optimizer, list[float]]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=lr, momentum=0.9)
        ctrl = controllers.build(name, opt, **({"total_steps": 40} if name in ("cosine", "onecycle", "meta") else {}), **smoke_kwargs(name))
        return opt, [ctrl.step(s)[0] for s in seq]

    lr = torch.tensor(0.05, dtype=torch.float64)
    opt, lrs = run(lr)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == lrs[-1]  # filled in place, never replaced
    assert float(opt.param_groups[0]["initial_lr"]) == 0.05 and opt.param_groups[0]["initial_lr"] is not lr  # a copy, as torch's
    assert lrs == run(0.05)[1]  # the same LRs as with a float LR


@pytest.mark.parametrize("name", DRIVE_GIVEN)
def test_a_param_group_added_after_the_controller_is_named_in_the_error(name: str) -> None:
    """Progressive unfreezing with `optimizer.add_param_group` after the controller was built: the error says so."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.05, momentum=0.9)
    ctrl = controllers.build(name, opt, **({"total_steps": 40} if name in ("cosine", "onecycle", "meta") else {}), **smoke_kwargs(name))
    ctrl.step(realistic_run()[0])
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.01})
    with pytest.raises(ValueError, match="added or removed after it was built"):
        ctrl.step(realistic_run()[1])


@pytest.mark.parametrize("name", ["meta", "hypergradient", "grad_variability", "resource_aware", "cosine"])
def test_each_param_group_keeps_its_own_lr_range_and_a_group_at_zero_stays_at_zero(name: str) -> None:
    """A backbone at 1e-5 beside a head at 1e-3 (a fine-tune's usual set-up): the relative default bounds are each group's
    own, so neither LR is clamped into the other's range at construction, and a group at lr 0 is never lifted (not even by
    resource_aware's absolute bounds). Every group at lr 0 leaves an LR rule nothing to start from: refused."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    kwargs: dict[str, Any] = {"total_steps": 200} if name in ("meta", "cosine") else {}
    groups = [{"params": model[0].parameters(), "lr": 1e-5}, {"params": model[1].parameters(), "lr": 1e-3}, {"params": model[2].parameters(), "lr": 0.0}]
    ctrl = controllers.build(name, torch.optim.SGD(groups, lr=0.1), **kwargs)
    first = ctrl.get_last_lr()
    assert first[2] == 0.0 and first[1] / first[0] == pytest.approx(100.0)  # (meta's first step is its warmup's: both x the same)
    for _ in range(30):  # rules that move the LR: every group keeps the 1:100 ratio, the group at 0 stays at 0
        lrs = ctrl.step(Signals(step=ctrl.last_step + 1, loss=1.0, grad_norm=1.0, grad_cos=0.9, grad_align=0.9, update_size=1e-4, hypergrad_cos=0.9))
        assert lrs[2] == 0.0 and lrs[1] / lrs[0] == pytest.approx(100.0)
    assert ctrl.min_lrs[2] == ctrl.max_lrs[2] == 0.0
    state = ctrl.state_dict()
    again = controllers.build(name, torch.optim.SGD([{**g, "params": list(g["params"])} for g in ctrl.optimizer.param_groups]), **kwargs)
    again.load_state_dict(state)
    assert (again.min_lrs, again.max_lrs, again.get_last_lr()) == (ctrl.min_lrs, ctrl.max_lrs, ctrl.get_last_lr())
    with pytest.raises(ValueError, match="every param group has lr=0"):
        controllers.build(name, torch.optim.SGD(model.parameters(), lr=0.0), **kwargs)


@pytest.mark.parametrize("name", ["pretrained", "grad_variability", "hypergradient"])
def test_a_group_at_lr_0_leaves_the_lrs_of_the_same_run_with_those_weights_frozen(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """A backbone frozen by putting its param group at lr 0 trains exactly as one frozen with requires_grad=False: its
    weights are left out of the gradient statistics (a still backbone deflated the meta-controller's update size, which
    then took the head's LR to its ceiling, x1000 against x638; its gradients entered the norms and the alignment)."""
    import metalr
    from metalr.testing import plain_loop_lrs

    def run(frozen_by: str) -> list[float]:
        torch.manual_seed(0)
        x, y = torch.randn(256, 10), torch.randint(0, 2, (256,))
        model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
        body, head = list(model[0].parameters()), list(model[2].parameters())
        if frozen_by == "lr0":
            opt = torch.optim.Adam([{"params": body, "lr": 0.0}, {"params": head, "lr": 1e-3}])
        else:
            for p in body:
                p.requires_grad_(False)
            opt = torch.optim.Adam([{"params": head, "lr": 1e-3}])
        return [lrs[-1] for lrs in plain_loop_lrs(metalr.hook(name, opt, total_steps=120), opt, model, x, y, 120)]

    with caplog.at_level("INFO", logger="metalr.train"):
        at_zero = run("lr0")
    assert "2 of 4 parameter tensors are in param groups at lr 0" in caplog.text
    frozen = run("requires_grad")
    assert at_zero == pytest.approx(frozen, rel=1e-6)
    assert max(frozen) != min(frozen)  # the LR moved


@pytest.mark.parametrize("bound", [1e-4, np.float32(1e-4), torch.tensor(1e-4), [1e-4, 1e-4]])
def test_an_lr_bound_is_one_number_of_any_kind_or_one_per_group(bound: Any) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    groups = [{"params": model[0].parameters(), "lr": 1e-3}, {"params": model[1].parameters(), "lr": 1e-2}]
    ctrl = controllers.build("grad_variability", torch.optim.SGD(groups, lr=0.1), min_lr=bound)
    assert ctrl.min_lrs == pytest.approx([1e-4, 1e-4]) and ctrl.max_lrs == pytest.approx([1e-2, 1e-1])
    with pytest.raises(ValueError, match="3 values for 2 param groups"):
        controllers.build("grad_variability", torch.optim.SGD(groups, lr=0.1), min_lr=[1e-4] * 3)
    with pytest.raises(TypeError, match="one LR per param group"):
        controllers.build("grad_variability", torch.optim.SGD(groups, lr=0.1), min_lr=True)
