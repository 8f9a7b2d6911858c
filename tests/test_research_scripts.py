"""Session 18's research scripts do what their docstrings say (on tiny stand-ins: no figure is checked here)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from metalr import controllers
from metalr.controllers.meta import MetaController
from metalr.meta.policy import HostPolicy
from metalr.signals import Signals

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (scripts are not a package)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


def _tiny_data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(64, 4, generator=g), torch.randn(32, 4, generator=g)
    return x, (x[:, 0] > 0).long(), xv, (xv[:, 0] > 0).long()


def test_outside_check_runs_plain_loops_and_reports_every_task() -> None:
    m = _script("meta_outside_check")
    m.TASKS = {"tiny": {"data": _tiny_data, "model": lambda: nn.Linear(4, 2), "opt": "adam", "lr": 1e-2, "steps": 24, "batch": 8}}
    m._DATA.clear()
    rows = [m.run_one(job) for job in m.jobs()]
    assert len(rows) == 3 * (5 + 6) and all(0.0 <= r["acc"] <= 1.0 and not r["diverged"] for r in rows)
    by = {(r["strategy"], r["mult"], r["seed"]): r for r in rows}
    assert by[("constant", 10.0, 0)]["lr_last_x"] == 1.0  # nothing touched the LR
    assert by[("cosine", 1.0, 0)]["lr_last_x"] < 1e-3  # CosineAnnealingLR ends at 0
    assert by[("meta", 1.0, 0)]["lr_last_x"] != 1.0  # the hooked controller set the LR
    table = m.report(rows)
    assert table.count("| tiny |") == 1 and "(x" in table


def test_range_probe_ramps_then_hands_the_level_to_the_rule_and_unpatches() -> None:
    probe = _script("meta_range_probe")
    original = (MetaController.__init__, MetaController._compute_lrs)
    probe.patch(0.1, 10.0, 1.2, 4.0)  # T = max(24, 10) = 24 steps, 0.1x -> 10x
    try:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.5)
        ctrl = controllers.build("meta", opt, total_steps=100)
        assert opt.param_groups[0]["lr"] == 0.5 * probe.START
        losses = [1.0 - 0.01 * i for i in range(10)] + [5.0] * 5  # falling, then blowing up
        mults = []
        for i, loss in enumerate(losses, start=1):
            ctrl.step(Signals(step=i, loss=loss))
            mults.append(opt.param_groups[0]["lr"] / 0.5)
            if not ctrl._ramp["on"]:
                break
        assert mults[0] == probe.START * (10.0 / probe.START) ** (1 / 24)  # the ramp's second step
        best_m = ctrl._ramp["best_m"]  # where the loss average was lowest: the 10th loss, before the blow-up
        assert best_m == probe.START * (10.0 / probe.START) ** (9 / 24)
        assert math.isclose(mults[-1], best_m / 4.0) and len(mults) == 11  # stopped on the first 5.0
        ctrl.step(Signals(step=len(mults) + 1, loss=1.0))  # the shipped rule from there on (fresh state)
        assert ctrl._rule_state.features.loss0 == 1.0
    finally:
        probe.unpatch()
    assert (MetaController.__init__, MetaController._compute_lrs) == original


def test_drift_probe_adds_its_constant_to_the_policy_and_unpatches() -> None:
    drift = _script("meta_drift_probe")
    policy = MetaController(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), total_steps=10)._host_policy
    features = [0.5, 0.0, 0.0, 0.0, 0.2, -1.0, 0.3, 0.0, 0.0, 0.0, -2.5]
    before, original = policy(features), HostPolicy.__call__
    drift.patch(0.01)
    try:
        assert policy(features) == before + 0.01
    finally:
        drift.unpatch()
    assert policy(features) == before and HostPolicy.__call__ is original


def test_gate_probe_stops_only_cuts_and_only_while_the_loss_falls_fast() -> None:
    gate = _script("meta_decay_gate_probe")
    policy = MetaController(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), total_steps=10)._host_policy
    original = HostPolicy.__call__
    calm = [0.5, 0.0, 0.0, 0.0, 0.2, -1.0, 0.3, 0.0, 0.0, 0.0, -2.5]
    falling = [*calm[:3], -0.3, *calm[4:]]  # trend_slow -0.3
    raw = {name: original(policy, f) for name, f in (("calm", calm), ("falling", falling))}
    gate.patch(0.1)
    try:
        assert policy(calm) == raw["calm"]  # trend above -T: the policy's own proposal, cut or rise
        assert policy(falling) == max(raw["falling"], 0.0)
    finally:
        gate.unpatch()
    assert HostPolicy.__call__ is original


def test_tail_probe_scales_only_the_tail_by_a_cosine_to_zero_and_unpatches() -> None:
    tail = _script("meta_tail_probe")
    original = MetaController._compute_lrs

    def lrs(patched: bool) -> list[float]:
        if patched:
            tail.patch(0.8)
        try:
            ctrl = controllers.build("meta", torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), total_steps=50)
            return [ctrl.step(Signals(step=t, loss=1.0 - 0.01 * t))[0] for t in range(1, 50)]
        finally:
            if patched:
                tail.unpatch()

    plain, tailed = lrs(False), lrs(True)
    assert tailed[:39] == plain[:39]  # up to progress 0.8 (the LR for step 40 of 50)
    for t in range(40, 50):  # the LR set after step t is for step t + 1, at progress (t + 1) / 50
        p = (t + 1) / 50
        assert math.isclose(tailed[t - 1], max(plain[t - 1] * 0.5 * (1 + math.cos(math.pi * (p - 0.8) / 0.2)), 0.1 * 1e-3 / 1), rel_tol=1e-9)
    assert MetaController._compute_lrs is original


def test_sync_probe_hands_tensors_and_sets_sync_every_then_unpatches() -> None:
    from metalr.signals import SignalTracker
    from metalr.train import build_tracker

    sync = _script("meta_sync_probe")
    originals = (SignalTracker.__init__, MetaController.__init__)
    sync.patch(8)
    try:
        ctrl = controllers.build("meta", torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1), total_steps=40)
        tracker = build_tracker(ctrl, ctrl.optimizer.param_groups[0]["params"], total_steps=40)
        assert ctrl.sync_every == 8 and tracker.as_tensors
    finally:
        sync.unpatch()
    assert (SignalTracker.__init__, MetaController.__init__) == originals


def test_decay_floor_probe_keeps_the_lr_at_its_floor_and_unpatches() -> None:
    floor = _script("meta_decay_floor_probe")
    originals = (MetaController.__init__, MetaController._compute_lrs)

    def lrs() -> list[float]:
        ctrl = controllers.build("meta", torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), total_steps=400)
        return [ctrl.step(Signals(step=t, loss=1.0 / t**0.5))[0] for t in range(1, 400)]

    plain = lrs()
    floor.patch(1.0)  # never below its peak: the LR can only rise (no guard firing here)
    try:
        held = lrs()
    finally:
        floor.unpatch()
    assert any(b < a for a, b in zip(plain, plain[1:]))  # the shipped controller decays on this run ...
    assert all(b >= a * (1 - 1e-12) for a, b in zip(held, held[1:]))  # ... the floored one does not
    assert (MetaController.__init__, MetaController._compute_lrs) == originals
