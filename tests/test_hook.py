"""The one-line plain loop (`metalr.hook`) and checkpointable controller state.

- Every controller a loop can drive applies exactly the LRs of the long form
  (SignalTracker + collect between backward and step + step(signals)) when hooked on
  the optimizer and stepped with `ctrl.step(loss, logits=, targets=)`.
- Every registered controller's `state_dict()` holds only tensors, numbers, strings,
  lists and dicts; it survives `torch.save` + `torch.load(weights_only=True)` and gives
  the same future LRs. The same for a hooked controller's state (tracker included).
"""

from __future__ import annotations

import io
import logging
import math
from typing import Any

import pytest
import torch
from test_contract import make

import metalr
from metalr import controllers
from metalr.integrations.base import build_controller
from metalr.signals import Signals, SignalTracker
from metalr.testing import plain_loop_lrs, smoke_kwargs

NAMES = controllers.available()
LOOP_NAMES = [n for n in NAMES if "uncertainty" not in controllers.get(n).requires]
STEPS = 30
READING = {"cpu_util": 0.5, "mem_util": 0.2}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _kwargs(name: str) -> dict[str, Any]:
    kwargs = {k: v for k, v in smoke_kwargs(name).items() if k != "total_steps"}
    if name == "resource_aware":
        kwargs["reader"] = lambda: dict(READING)  # injected: machine load must not change the LRs
    return kwargs


def _setup(name: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    cls = controllers.get(name)
    opt = cls.make_optimizer(model.parameters(), total_steps=STEPS) if cls.owns_optimizer else torch.optim.Adam(model.parameters(), lr=1e-2)  # type: ignore[attr-defined]
    return model, opt, x, y


def _train(name: str, hooked: bool) -> list[list[float]]:
    """STEPS steps on a fixed batch; an 'evaluation' every 10 steps. Returns the LRs each step applied."""
    model, opt, x, y = _setup(name)
    info = {"num_classes": 2, "num_features": 10, "batch_size": 64}
    if hooked:
        ctrl: Any = metalr.hook(name, opt, total_steps=STEPS, task_info=info, **_kwargs(name))
    else:  # the long form, as the README documents it
        ctrl = build_controller(name, opt, STEPS, **_kwargs(name))
        tracker = SignalTracker(model.parameters(), opt, requires=ctrl.requires, total_steps=STEPS, task_info=info)
        if hasattr(ctrl, "attach"):
            ctrl.attach(model=model, task=None, tracker=tracker)
    applied = []
    for step in range(1, STEPS + 1):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        if not hooked:
            signals = tracker.collect(loss=loss, logits=logits, targets=y)
        applied.append(ctrl.get_last_lr())
        opt.step()
        ctrl.step(loss, logits=logits, targets=y) if hooked else ctrl.step(signals)
        if step % 10 == 0:
            with torch.no_grad():
                val = float(torch.nn.functional.cross_entropy(model(x + 0.1), y))
            (ctrl if hooked else tracker).record_eval(val, 0.5)
    return applied


@pytest.mark.parametrize("name", LOOP_NAMES)
def test_hooked_controller_applies_the_long_forms_lrs(name: str) -> None:
    long_form, hooked = _train(name, hooked=False), _train(name, hooked=True)
    assert hooked == long_form  # exactly: same statistics, read at the same moment
    assert all(math.isfinite(lr) for step in hooked for lr in step)


def test_hook_reads_gradients_before_the_update() -> None:
    """Hypergradient needs g_t and the parameters *before* step t: reading them after the step would differ."""
    lrs = _train("hypergradient", hooked=True)
    assert len({step[0] for step in lrs}) > 5  # the LR moved with the measured hypergradient


@pytest.mark.parametrize("name", ["uncertainty", "uncertainty_ensemble"])
def test_hook_refuses_controllers_that_need_a_task(name: str) -> None:
    model, opt, _, _ = _setup("constant")
    with pytest.raises(ValueError, match="long form"):
        metalr.hook(name, opt)


def test_step_without_optimizer_step_still_steps_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    """GradScaler skips optimizer.step() on overflow: the controller still advances, and it is logged once."""
    model, opt, x, y = _setup("cosine")
    ctrl = metalr.hook("cosine", opt, total_steps=STEPS)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    with caplog.at_level(logging.WARNING):
        ctrl.step(loss)
        ctrl.step(loss)
    assert ctrl.last_step == 2 and ctrl.tracker.step == 2
    assert sum("without optimizer.step()" in r.message for r in caplog.records) == 1


def test_a_group_added_mid_run_is_refused_before_the_optimizer_steps_it(caplog: pytest.LogCaptureFixture) -> None:
    """Progressive unfreezing with `add_param_group` after `metalr.hook`: the step pre-hook refuses it, so no step is
    taken with a group whose LR nobody set (the error came after one such step, from the controller's own step, and
    after a warning that the LR was being restored, which it was not for the new group)."""
    model, opt, x, y = _setup("cosine")
    ctrl = metalr.hook("cosine", opt, total_steps=STEPS)
    extra = torch.nn.Parameter(torch.ones(3))
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(x), y) + extra.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ctrl.step(loss)
    opt.add_param_group({"params": [extra], "lr": 0.5})
    loss = torch.nn.functional.cross_entropy(model(x), y) + extra.sum()
    opt.zero_grad()
    loss.backward()
    before = [p.detach().clone() for p in model.parameters()]
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="added or removed after it was built"):
        opt.step()
    assert torch.equal(extra.detach(), torch.ones(3)) and all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    assert not any("changed outside the controller" in r.message for r in caplog.records)


def _weights_only_round_trip(state: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # type: ignore[no-any-return]


def _plain_types(value: Any, path: str = "state") -> None:
    """Only tensors, numbers, strings, lists and dicts (with string keys)."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str), f"{path}: key {k!r}"
            _plain_types(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain_types(v, f"{path}[{i}]")
    else:
        assert isinstance(value, (torch.Tensor, int, float, str)), f"{path}: {type(value).__name__}"


@pytest.mark.parametrize("name", NAMES)
def test_controller_state_is_plain_and_loads_with_weights_only(name: str) -> None:
    signals = [
        Signals(step=i, epoch=i // 4, progress=i / 12, loss=1.0 / i, accuracy=0.5 + i / 40, grad_norm=1.0 + i, grad_cos=0.3, hypergrad=0.1,
                hypergrad_cos=0.2, val_loss=1.0 / i if i % 3 == 0 else None, uncertainty=0.05 * i, batch_size=32, resources=dict(READING),
                task_info={"num_classes": 3, "num_features": 13, "batch_size": 32})
        for i in range(1, 13)
    ]  # fmt: skip
    a = make(name)
    for s in signals[:6]:
        a.step(s)
    state = a.state_dict()
    _plain_types(state)
    b = make(name, seed=1)
    b.load_state_dict(_weights_only_round_trip(state))
    assert b.get_last_lr() == a.get_last_lr()
    for s in signals[6:]:
        assert b.step(s) == a.step(s)


def test_hooked_state_round_trips_with_weights_only() -> None:
    """Controller + tracker (previous gradient, counters, a pending evaluation): a restored copy continues identically."""

    def run(resume_at: int | None) -> list[list[float]]:
        model, opt, x, y = _setup("meta")
        ctrl = metalr.hook("pretrained", opt, total_steps=STEPS)
        lrs, saved = [], None
        for step in range(1, STEPS + 1):
            if step == resume_at:  # a new process: fresh hook, then the saved states
                model.load_state_dict(saved["model"])
                opt = torch.optim.Adam(model.parameters(), lr=1e-2)
                opt.load_state_dict(saved["opt"])
                ctrl = metalr.hook("pretrained", opt, total_steps=STEPS)
                ctrl.load_state_dict(saved["ctrl"])
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            lrs.append(ctrl.step(loss, logits=logits, targets=y))
            if step == 10:
                ctrl.record_eval(float(loss.detach()), 0.5)  # pending across the save below
                state = {"model": model.state_dict(), "opt": opt.state_dict(), "ctrl": ctrl.state_dict()}
                saved = _weights_only_round_trip(state)
        return lrs

    assert run(resume_at=11) == run(resume_at=None)


@pytest.mark.parametrize("kwargs", [{}, {"max_factor": 3.0}, {"max_factor": None}])
def test_building_for_a_pretrained_model_leaves_the_random_stream_alone(kwargs: dict[str, Any]) -> None:
    """The callbacks' build path (`build_for_model`) on a model loaded from pretrained weights reads the checkpoint to
    choose the default cap; a first read builds a network, which must not draw from the run's random stream (a
    callback run would then differ from the same run with the cap written out)."""
    import types

    from metalr.integrations.base import build_for_model
    from metalr.meta import checkpoint

    model = torch.nn.Linear(3, 2)
    model.config = types.SimpleNamespace(_name_or_path="org/model")  # type: ignore[assignment]
    checkpoint._CACHE.clear()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    ctrl = build_for_model("pretrained", torch.optim.SGD(model.parameters(), lr=0.1), 100, model, "test", **kwargs)
    assert torch.equal(torch.get_rng_state(), before)
    expected = {(): 2.0, (3.0,): 3.0, (None,): checkpoint.cached_policy().rule.max_factor}[tuple(kwargs.values())]
    assert ctrl.rule.max_factor == expected  # type: ignore[attr-defined]


def test_hook_caps_the_meta_controller_on_a_pretrained_model_it_is_shown(caplog: pytest.LogCaptureFixture) -> None:
    """`metalr.hook(..., model=)` applies the callbacks' default cap when the model was loaded with `from_pretrained`
    (logged); without `model`, or with `max_factor` given, the controller is built as asked."""
    import types

    from metalr.integrations.base import PRETRAINED_MAX_FACTOR

    model = torch.nn.Linear(3, 2)
    model.config = types.SimpleNamespace(_name_or_path="org/model")  # type: ignore[assignment]
    whole = metalr.load_pretrained().rule.max_factor

    def opt() -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.1)

    with caplog.at_level("WARNING", logger="metalr.integrations.base"):
        capped = metalr.hook("pretrained", opt(), total_steps=50, model=model)
    assert capped.controller.rule.max_factor == PRETRAINED_MAX_FACTOR and "org/model" in caplog.text  # type: ignore[attr-defined]
    assert metalr.hook("pretrained", opt(), total_steps=50).controller.rule.max_factor == whole  # type: ignore[attr-defined]
    assert metalr.hook("meta", opt(), total_steps=50, model=model, max_factor=4.0).controller.rule.max_factor == 4.0  # type: ignore[attr-defined]
    assert metalr.hook("cosine", opt(), total_steps=50, model=model).controller.name == "cosine"
    with pytest.raises(TypeError, match="nor model"):
        metalr.hook(controllers.build("cosine", opt(), total_steps=50), model=model)


def test_a_step_without_the_loss_the_controller_reads_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """`ctrl.step()` with no loss under the meta-controller: it would act blind to the loss (its guard could not fire)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))

    def run(name: str, with_loss: bool) -> list[str]:
        caplog.clear()
        ctrl = metalr.hook(name, opt, total_steps=20)
        with caplog.at_level(logging.WARNING, logger="metalr.signals"):
            for _ in range(6):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                ctrl.step(loss if with_loss else None)
        ctrl.remove()
        return [r.getMessage() for r in caplog.records if "came without one" in r.getMessage()]

    assert len(run("pretrained", with_loss=False)) == 1
    assert run("pretrained", with_loss=True) == []
    assert run("cosine", with_loss=False) == []  # a schedule reads no loss


class _Wrapped(torch.optim.Optimizer):
    """An optimizer wrapper as accelerate's `AcceleratedOptimizer` is: no `Optimizer.__init__` (so no step hooks of its
    own), the wrapped optimizer's param groups and state, and a `step` that calls the wrapped one's."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:  # noqa: D107  (no super().__init__, as accelerate)
        self.optimizer = optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        return self.optimizer.step(closure)


@pytest.mark.parametrize("wrap", ["fake", "accelerate"])
def test_a_wrapped_optimizer_is_hooked_where_the_wrapped_one_steps(wrap: str, caplog: pytest.LogCaptureFixture) -> None:
    """`accelerator.prepare(optimizer)` hands the loop a wrapper without step hooks of its own: the hook goes on the
    wrapped optimizer, and the controller applies the LRs it applies to the optimizer itself."""

    def run(wrapped: bool) -> list[float]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        if wrapped and wrap == "fake":
            opt = _Wrapped(opt)
        elif wrapped:
            accelerate = pytest.importorskip("accelerate")
            model, opt = accelerate.Accelerator(cpu=True).prepare(model, opt)
        ctrl = metalr.hook("pretrained", opt, total_steps=40)
        x = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
        y = (x[:, 0] > 0).long()
        return [lrs[0] for lrs in plain_loop_lrs(ctrl, opt, model, x, y, 40)]

    with caplog.at_level(logging.WARNING):
        got = run(True)
    assert got == run(False) and len(set(got)) > 3
    assert not [r for r in caplog.records if "without optimizer.step()" in r.getMessage()]  # the hook fired at every step


def test_a_second_hook_on_one_optimizer_detaches_the_first_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """A notebook cell run twice hooks a second controller on the same optimizer: the first is detached (logged), so its
    pre-hook no longer reads statistics nor puts its LR back before every step, and stepping it raises."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = metalr.hook("step", opt, total_steps=20, step_size=1, gamma=0.5)
    loss = model(torch.randn(4, 8)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    first.step(loss)  # the LR is now 0.05
    with caplog.at_level(logging.WARNING, logger="metalr.integrations.plain"):
        second = metalr.hook("constant", opt, total_steps=20)
    (msg,) = [r.getMessage() for r in caplog.records if "already had a controller hooked" in r.getMessage()]
    assert "(step, at step 1)" in msg and "(constant)" in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            loss = model(torch.randn(4, 8)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert second.step(loss) == [0.1]
    assert second.lrs == [0.1, 0.1, 0.1]  # the LR each step applied: the second controller's, never put back to 0.05
    assert first.binding.pending is None  # the first one's pre-hook no longer runs
    assert not [r for r in caplog.records if "changed outside the controller" in r.getMessage()]
    with pytest.raises(RuntimeError, match=r"replaced by a later metalr.hook\('constant'"):
        first.step(loss)
    third = metalr.hook("constant", torch.optim.SGD(model.parameters(), lr=0.1), total_steps=20)  # another optimizer: no effect
    assert third.binding.pending is None and second._attached
    second.remove()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="metalr.integrations.plain"):
        metalr.hook("constant", opt, total_steps=20)  # after an explicit remove(): nothing to detach, nothing said
    assert not caplog.records
