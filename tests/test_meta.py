"""The meta-learned controller: one LR rule (parity), meta-gradients, meta-training, checkpoints, resume, distributed."""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import metalr  # noqa: E402
from metalr import controllers, load_pretrained  # noqa: E402
from metalr.controllers.meta import MetaController  # noqa: E402
from metalr.gradstats import UpdateSize  # noqa: E402
from metalr.meta.checkpoint import CheckpointError, FrozenPolicy, read_policy, save_policy  # noqa: E402
from metalr.meta.features import FEATURE_NAMES, FORMAT_FEATURES, N_FEATURES, FeatureState  # noqa: E402
from metalr.meta.features import SCALE as FEATURE_SCALE  # noqa: E402
from metalr.meta.features import SHIFT as FEATURE_SHIFT  # noqa: E402
from metalr.meta.policy import MetaPolicy  # noqa: E402
from metalr.meta.rule import RuleConfig, RuleState, lr_rule  # noqa: E402
from metalr.meta.tasks import TaskSpec, materialise, sample_spec, validation_specs, with_pretraining  # noqa: E402
from metalr.meta.trainer import MetaTrainConfig, draw_task, meta_step, run_trajectory, trajectory_weight  # noqa: E402
from metalr.meta.unroll import start, truncation, val_objective  # noqa: E402
from metalr.meta.validate import run_spec  # noqa: E402
from metalr.signals import Signals  # noqa: E402
from metalr.testing import PAUSE_ENV, leave_process, wait_until_paused  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(meta_batch=2, truncation=10, val_every=5, val_batch=64, data_families=["blobs"], steps_range=[20, 20], progress=False, validate_every=0)
MLP = dict(dim=12, classes=3, n=600, noise=0.05, depth=1, width=16, layers=1, act="tanh", norm="none")


def tiny_cfg(**kw: object) -> MetaTrainConfig:
    return MetaTrainConfig(**{**TINY, **kw})  # type: ignore[arg-type]


def teacher_spec(optimizer: str = "sgdm", lr: float = 0.1, steps: int = 40, seed: int = 3, **params: object) -> TaskSpec:
    return TaskSpec("teacher", "mlp", optimizer, lr, 0.0, 32, steps, seed, {**MLP, **params})


def lively_policy(seed: int = 0, std: float = 0.3, n_features: int = N_FEATURES) -> MetaPolicy:
    """A policy whose output visibly moves the LR (a fresh one is ~constant by design)."""
    torch.manual_seed(seed)
    pol = MetaPolicy(n_features)
    torch.nn.init.normal_(pol.net[-1].weight, std=std)
    return pol


# ------------------------------------------------------------- one rule, two callers
@pytest.mark.parametrize(
    ("optimizer", "lr", "steps", "every", "warmup"),
    [
        ("sgd", 0.5, 100, 1, 0.0), ("sgdm", 0.3, 100, 1, 0.0), ("adam", 0.02, 30, 1, 0.0), ("sgd", 0.5, 100, 4, 0.0),
        ("sgdm", 0.3, 100, 7, 0.0), ("adam", 0.02, 30, 3, 0.0), ("sgdm", 0.3, 100, 8, 0.1), ("adam", 0.02, 30, 3, 0.2),
    ],
)  # fmt: skip
def test_unroll_and_deployed_controller_give_the_same_lrs(optimizer: str, lr: float, steps: int, every: int, warmup: float) -> None:
    """Same data, model and seed: the unroll (track_higher_grads=False) and MetaController via SignalTracker.

    Run in float64 (data, model and policy) so that the two code paths' rounding cannot drift apart: the
    deployed CPU path evaluates the policy with numpy (`HostPolicy`), the unroll with torch. Adam with eps
    1e-12 because `higher`'s Adam adds eps before the bias correction and torch's after (they agree as eps -> 0).
    `every` > 1: the policy decides every k-th step (`decide_every`), with truncations of 20 steps that cut
    through the k-step blocks, and the deployed tracker computes the statistics only on those steps.
    `warmup` > 0: the rule's warmup envelope, which both callers apply when they turn log_rel into an LR.
    """
    pol = lively_policy().double()
    spec = teacher_spec(optimizer, lr, steps, adam_eps=1e-12)
    rule = RuleConfig(decide_every=every, warmup=warmup)
    traj = start(materialise(spec, torch.float64), 64)
    while not traj.done:
        truncation(traj, pol, rule, 20, 10, track_higher_grads=False)
    frozen = FrozenPolicy(pol, {}, "", rule)
    deployed = run_spec(spec, lambda opt, total: MetaController(opt, checkpoint=frozen, total_steps=total), torch.float64)
    a, b = torch.tensor(traj.lrs, dtype=torch.float64), torch.tensor(deployed["lrs"], dtype=torch.float64)
    assert len(a) == len(b) == steps
    assert float(a.max() / a.min()) > 1.5, "the policy should move the LR, or the test proves little"
    torch.testing.assert_close(a, b, rtol=1e-5, atol=0.0)
    warm = max(1, round(warmup * steps)) if warmup else 0
    if warmup:  # the envelope: step t (1-based) runs at t / W of what the rule set, which is the base LR before the first decision
        assert traj.lrs[: min(warm, every)] == pytest.approx([lr * t / warm for t in range(1, min(warm, every) + 1)], rel=1e-12)
    if every > 1:  # the LR of step t+1 is set after step t: after the warmup it can change only after a multiple of k (no guard here)
        changed = [t for t in range(warm, steps) if traj.lrs[t] != traj.lrs[t - 1]]
        assert changed and all(t % every == 0 for t in changed)


@pytest.mark.parametrize(("optimizer", "lr", "every"), [("sgdm", 0.05, 1), ("adam", 0.01, 4)])
def test_unroll_and_deployed_controller_agree_with_validation_readings(optimizer: str, lr: float, every: int) -> None:
    """Format 4 (`val_rise`): the unroll's validation readings and the deployed tracker's `record_eval` after the same
    steps, on the same validation batch, give the same LRs (rtol 1e-5), and the readings do move them."""
    pol = lively_policy(seed=1).double()
    with torch.no_grad():
        pol.net[0].weight[:, FEATURE_NAMES.index("val_rise")].normal_(0, 3.0)  # a policy that reads the rise
    spec = teacher_spec(optimizer, lr, 120, adam_eps=1e-12, n=160, noise=0.3, width=64)  # few, noisy examples: it over-fits
    rule = RuleConfig(decide_every=every)
    frozen = FrozenPolicy(pol, {}, "", rule)
    lrs = {}
    for reading in (0, 10):
        traj = start(materialise(spec, torch.float64), 64, val_reading=reading)
        while not traj.done:
            truncation(traj, pol, rule, 20, 10, track_higher_grads=False)
        deployed = run_spec(
            spec, lambda opt, total: MetaController(opt, checkpoint=frozen, total_steps=total), torch.float64, val_reading=reading, val_batch=64
        )
        a, b = torch.tensor(traj.lrs, dtype=torch.float64), torch.tensor(deployed["lrs"], dtype=torch.float64)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0.0)
        lrs[reading] = a
        if reading:
            assert traj.rule.features.v_min is not None and traj.rule.features.features(1.0, 0.0)[-1] > 0.01, "the run should over-fit"
    assert not torch.equal(lrs[0], lrs[10]), "the readings should move the LR, or the test proves little"


def test_val_rise_reads_the_last_validation_loss_against_the_best_and_zero_without_readings() -> None:
    idx = FEATURE_NAMES.index("val_rise")
    f = FeatureState()
    f.update(1.0, 1.0, 0.0)
    assert f.features(0.5, 0.0)[idx] == 0.0  # no reading: the value before any rise
    for v in (2.0, 1.5, float("nan"), None, 1.8):
        f.fold_val(v)  # a missing or non-finite reading is skipped
    assert f.features(0.5, 0.0)[idx] == pytest.approx(math.log(1.8 / 1.5))
    f.fold_val(100.0)
    assert f.features(0.5, 0.0)[idx] == 3.0  # clipped
    g = FeatureState.from_state(f.state_dict())
    assert (g.v_last, g.v_min) == (100.0, 1.5)
    old = {k: v for k, v in f.state_dict().items() if k not in ("v_last", "v_min")}  # a state saved before format 4
    assert FeatureState.from_state(old).features(0.5, 0.0)[idx] == 0.0


def test_a_format3_policy_ignores_validation_losses_and_a_format4_one_asks_for_them() -> None:
    """The shipped (format-3) policy reads the first 11 features: the same LRs whether or not the loop evaluates;
    a format-4 controller declares `val_loss` so the tracker passes it on (and averages it across ranks)."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    runs = {}
    for name, frozen in (("shipped", None), ("format4", FrozenPolicy(lively_policy(seed=2), {}, "", RuleConfig()))):
        for evaluate in (False, True):
            torch.manual_seed(1)
            model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            ctrl = metalr.hook(MetaController(opt, checkpoint=frozen, total_steps=60), opt)
            assert ("val_loss" in ctrl.controller.requires) == (name == "format4")
            lrs = []
            for t in range(1, 61):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                lrs.append(ctrl.step(loss)[0])
                if evaluate and t % 10 == 0:
                    ctrl.record_eval(2.0 + t / 10)  # a climbing validation loss
            runs[name, evaluate] = lrs
    assert runs["shipped", False] == runs["shipped", True]
    assert runs["format4", False] != runs["format4", True]


def test_runs_without_validation_readings_give_val_rise_no_meta_gradient() -> None:
    """val_rise's shift is 0, so a run without readings feeds it an exact 0: its input weights get no meta-gradient
    there (a widened format-3 policy keeps computing what it did), and a run with readings gives them one."""
    cfg = tiny_cfg(val_feature=1.0, steps_range=[40, 40], truncation=20)
    col = FEATURE_NAMES.index("val_rise")
    spec = teacher_spec("sgdm", 0.3, 40, n=160, noise=0.3, width=64)
    for reading, moved in ((0, False), (5, True)):
        pol = lively_policy(seed=3)
        pol.zero_grad(set_to_none=True)
        traj = start(materialise(spec), cfg.val_batch, cfg.objective, reading)
        run_trajectory(traj, pol, cfg.rule_config(), cfg, norm=1.0)
        grad = pol.net[0].weight.grad[:, col]
        assert bool(grad.abs().max() > 0) == moved, (reading, float(grad.abs().max()))


def test_val_feature_chooses_the_format_and_draws_readings_for_some_runs(tmp_path: Path) -> None:
    from metalr.meta.tasks import val_reading_every

    assert tiny_cfg().n_features == 11 and tiny_cfg(val_feature=0.5).n_features == 12
    with pytest.raises(ValueError, match="val_feature"):
        tiny_cfg(val_feature=1.5)
    specs = [teacher_spec(steps=400, seed=s) for s in range(400)]
    every = [val_reading_every(s, 0.5) for s in specs]
    assert every == [val_reading_every(s, 0.5) for s in specs]  # drawn from the spec: the unroll and validation agree
    present = [e for e in every if e]
    assert 160 < len(present) < 240 and all(20 <= e <= 100 for e in present)  # 400 / 20 .. 400 / 4
    assert all(val_reading_every(s, 0.0) == 0 for s in specs) and all(val_reading_every(s, 1.0) for s in specs)
    cfg = tiny_cfg(val_feature=0.5, meta_steps=1, validate_every=1, validation_tasks=1, validation_max_steps=30,
                   out_dir=str(tmp_path / "run"), export_path=str(tmp_path / "out.safetensors"))  # fmt: skip
    from metalr.meta.trainer import train

    train(cfg)
    out = read_policy(tmp_path / "out.safetensors")
    assert out.metadata["format_version"] == 4 and out.policy.n_features == 12 and out.metadata["feature_names"] == list(FEATURE_NAMES)


@pytest.mark.parametrize("optimizer", ["sgd", "sgdm", "adam"])
def test_decide_every_reads_statistics_only_on_its_steps_and_needs_no_special_tracker(optimizer: str) -> None:
    """decide_every=k: a tracker computing the statistics every step and one computing them every k-th step
    (what `build_tracker` makes) drive the controller to the same LRs; the latter reports them only on those
    steps, equal there to the former's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = {"sgd": lambda: torch.optim.SGD(model.parameters(), lr=0.3), "sgdm": lambda: torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
           "adam": lambda: torch.optim.Adam(model.parameters(), lr=1e-2)}[optimizer]()  # fmt: skip
    shadow = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=opt.param_groups[0]["lr"])
    frozen = FrozenPolicy(lively_policy(), {}, "", RuleConfig(decide_every=5))
    from metalr.train import build_tracker

    ctrl, ctrl_every = MetaController(opt, checkpoint=frozen, total_steps=60), MetaController(shadow, checkpoint=frozen, total_steps=60)
    assert ctrl.signal_every == 5
    full = build_tracker(ctrl, model.parameters(), total_steps=60)
    full.every = 1  # as a tracker built by hand would be
    sparse = build_tracker(ctrl_every, model.parameters(), total_steps=60)
    sparse.optimizer = opt  # reads the trained optimizer's moments
    assert sparse.every == 5
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    lrs, lrs_every = [], []
    for t in range(1, 61):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        a, b = full.collect(loss=loss), sparse.collect(loss=loss)
        for name in ("grad_norm", "grad_align", "update_size"):
            if t % 5:
                assert getattr(b, name) is None
            elif t > 1:
                assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-6), (t, name)
        assert b.loss == a.loss
        opt.step()
        lrs.append(ctrl.step(a)[0])
        lrs_every.append(ctrl_every.step(b)[0])
    assert lrs_every == pytest.approx(lrs, rel=1e-9) and len(set(lrs)) > 5


def test_rule_guard_cuts_a_blowing_up_loss_at_once() -> None:
    pol, cfg, state = MetaPolicy(), RuleConfig(guard_ratio=1.5, guard_factor=0.3, guard_cooldown=2), RuleState()
    log_rel = torch.tensor(0.0, dtype=torch.float64)
    seq = []
    for loss in [2.0, 2.1, 9.0, 9.0, 9.0, 9.0, math.nan]:
        log_rel = lr_rule(pol, cfg, state, log_rel, loss, 1.0, 0.0, len(seq) + 1, 100)
        seq.append(float(log_rel.detach()))
    assert seq[1] == pytest.approx(0.0, abs=0.05)  # no guard while the loss is normal (policy ~0 at init)
    assert seq[2] == pytest.approx(math.log(0.3), abs=0.05)  # fires at once
    assert seq[3] == pytest.approx(seq[2], abs=0.05) and seq[4] == pytest.approx(seq[2], abs=0.05)  # cooldown
    assert seq[5] == pytest.approx(2 * math.log(0.3), abs=0.1)  # fires again
    assert state.guard_fired == 2


def _run_rule(
    pol: MetaPolicy, cfg: RuleConfig, losses: list[float], path: str, total_steps: int = 1000, align: float | None = None
) -> tuple[list[float], list[int], RuleState]:
    """The rule over `losses` (and a constant `grad_align`, if given; no other gradient signal) on the torch or
    host path: log(LR / base LR) after each step, the steps on which the guard fired, and the final state."""
    from metalr.meta.policy import HostPolicy

    state = RuleState()
    log_rel: Any = 0.0 if path == "host" else torch.tensor(0.0, dtype=torch.float64)
    policy: Any = HostPolicy(pol) if path == "host" else pol
    lrs, fired = [], []
    for t, loss in enumerate(losses, 1):
        before = int(state.guard_fired)
        with torch.no_grad():
            log_rel = lr_rule(policy, cfg, state, log_rel, loss, None, align, t, total_steps)
        lrs.append(float(log_rel))
        if int(state.guard_fired) > before:
            fired.append(t)
    return lrs, fired, state


def _guard_firings(pol: MetaPolicy, cfg: RuleConfig, losses: list[float], path: str) -> tuple[list[int], RuleState]:
    """The steps on which the guard fires over `losses`, and the final state (`_run_rule`)."""
    _, fired, state = _run_rule(pol, cfg, losses, path)
    return fired, state


def _lr_path(pol: MetaPolicy, cfg: RuleConfig, losses: list[float], path: str, align: float | None = None) -> list[float]:
    """log(LR / base LR) after each step of a `len(losses)`-step run (`_run_rule`)."""
    return _run_rule(pol, cfg, losses, path, len(losses), align)[0]


def test_warmup_scales_the_lr_on_both_controller_paths_and_leaves_the_rule_alone() -> None:
    """`warmup` = w: the controller's LR at step t is base x exp(log_rel) x min(1, t / W), W = round(w x total), from
    the first step (set at construction) on, on the host path and the device path (no extra read-back); the rule's
    state (log_rel, what the policy reads as lr_rel) is the same as without it. Off (0) by default; refused outside
    [0, 1)."""
    pol = lively_policy()
    total, base = 50, 0.1
    losses = [1.0 - 0.01 * t for t in range(total)]
    for device_signals in (False, True):
        runs = {}
        for w in (0.0, 0.2):
            opt = torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=base)
            ctrl = MetaController(opt, checkpoint=FrozenPolicy(pol, {}, "", RuleConfig(warmup=w)), total_steps=total)
            lrs, rels = [opt.param_groups[0]["lr"]], []
            for t, loss in enumerate(losses[:-1], 1):
                value: Any = torch.tensor(loss, dtype=torch.float64) if device_signals else loss
                lrs.append(ctrl.step(Signals(step=t, loss=value))[0])
                rels.append(ctrl.log_rel)
            runs[w] = (lrs, rels)
        (plain, rel_plain), (warm, rel_warm) = runs[0.0], runs[0.2]
        assert rel_warm == pytest.approx(rel_plain, rel=1e-12)  # the policy never sees the envelope
        assert max(rel_plain) - min(rel_plain) > 0.05  # the policy moved the LR: the comparison is not of constants
        factors = [b / a for a, b in zip(plain, warm)]
        assert factors == pytest.approx([min(1.0, t / 10) for t in range(1, total + 1)], rel=1e-9), device_signals
    # restored into a controller built for another run length, it keeps the saved run's warmup
    frozen = FrozenPolicy(pol, {}, "", RuleConfig(warmup=0.2))
    opt = torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=base)
    ctrl = MetaController(opt, checkpoint=frozen, total_steps=total)
    for t in range(1, 4):
        ctrl.step(Signals(step=t, loss=losses[t - 1]))
    other = MetaController(torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=base), checkpoint=frozen, total_steps=5)
    other.load_state_dict(ctrl.state_dict())
    assert other.step(Signals(step=4, loss=losses[3])) == pytest.approx(ctrl.step(Signals(step=4, loss=losses[3])), rel=1e-12)
    assert RuleConfig().warmup == 0.0
    for bad in (-0.1, 1.0, True):
        with pytest.raises(ValueError, match="warmup"):
            RuleConfig(warmup=bad)


def test_policy_features_are_the_rule_state_on_both_paths() -> None:
    """`MetaController.policy_features()`: the feature vector of the last step (progress, lr_rel = the rule's log_rel,
    not the warmed-up LR), the same from host signals and from device tensors."""
    pol = lively_policy()
    frozen = FrozenPolicy(pol, {}, "", RuleConfig(warmup=0.2, decide_every=4))
    out = []
    for device_signals in (False, True):
        ctrl = MetaController(torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1), checkpoint=frozen, total_steps=40)
        for t in range(1, 6):  # past the first decision (step 4), inside the warmup (8 steps)
            loss, norm = 1.0 - 0.02 * t, 1.0 + 0.1 * t
            as_signal = (lambda v: torch.tensor(v, dtype=torch.float64)) if device_signals else (lambda v: v)
            ctrl.step(Signals(step=t, loss=as_signal(loss), grad_norm=as_signal(norm)))
        f = ctrl.policy_features()
        assert len(f) == N_FEATURES and f[0] == pytest.approx(5 / 40) and f[1] == pytest.approx(ctrl.log_rel)
        assert ctrl.log_rel != 0.0 and ctrl.optimizer.param_groups[0]["lr"] != pytest.approx(0.1 * math.exp(ctrl.log_rel))  # in the warmup
        out.append(f)
    assert out[0] == pytest.approx(out[1], rel=1e-6, abs=1e-9)  # the policy runs in float32 on both paths (numpy, torch)


def test_rise_cap_holds_the_lr_until_the_loss_has_dropped_on_every_path() -> None:
    """`rise_cap`: a policy that always raises the LR stops at rise_cap x base while the loss average is not
    `rise_drop` below the first loss (a flat loss: a fine-tune at chance level, or a run at a too-low LR), goes
    past it once the loss has dropped, and is held again (not pushed down) if the loss climbs back. Off (0) by
    default: every earlier checkpoint's rule is unchanged. Torch and host paths agree."""
    pol = MetaPolicy().double()
    last = [m for m in pol.net if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(5.0)  # always the largest raise
    flat, falling = [0.69] * 200, [0.69] * 50 + [0.69 - 0.004 * i for i in range(1, 101)] + [0.69] * 50
    cap, gated = RuleConfig(max_factor=1000.0, rise_cap=3.0), RuleConfig(max_factor=1000.0)
    lrs = {path: (_lr_path(pol, cap, flat, path), _lr_path(pol, cap, falling, path), _lr_path(pol, gated, flat, path)) for path in ("torch", "host")}
    held, freed, free = lrs["host"]
    assert max(held) == pytest.approx(math.log(3.0)) and held[-1] == pytest.approx(math.log(3.0))  # reached and held, never past
    assert max(free) > math.log(30.0)  # without the gate the same policy goes far past it
    drop_step = next(t for t in range(200) if freed[t] > math.log(3.0) + 1e-9)
    assert 60 < drop_step < 150  # past the cap only once the average is 10 % below the first loss
    assert max(freed) > math.log(10.0) and freed[-1] == pytest.approx(max(freed))  # loss back up: held where it was, not pulled down
    for path in ("torch",):
        for a, b in zip(lrs[path], lrs["host"]):
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    # `rise_align`: gradients that agree (a run at a too-low LR) open the gate before the loss has fallen; ones that do not, do not
    by_align = RuleConfig(max_factor=1000.0, rise_cap=3.0, rise_align=0.2)
    for path in ("torch", "host"):
        agree, fight = _lr_path(pol, by_align, flat, path, align=0.5), _lr_path(pol, by_align, flat, path, align=-0.3)
        assert max(agree) > math.log(30.0) and max(fight) == pytest.approx(math.log(3.0)), path
        assert _lr_path(pol, cap, flat, path, align=0.5) == pytest.approx(held), path  # rise_align 1 (default): alignment never opens it
    for bad in ({"rise_cap": 0.5}, {"rise_cap": 2000.0, "max_factor": 1000.0}, {"rise_cap": 3.0, "rise_drop": 0.0}, {"rise_cap": 3.0, "rise_align": 1.5}):
        with pytest.raises(ValueError, match="rise_cap"):
            RuleConfig(**bad)


def test_small_step_gain_speeds_up_rises_only_while_the_updates_are_small_on_every_path() -> None:
    """`small_step_gain` = G: a rise the policy proposes is G times larger while the `update_size` feature is below
    `small_step_below`; with larger updates, and for cuts, the rule is unchanged. Off (1) by default; torch and host
    paths agree."""
    from metalr.meta.policy import HostPolicy

    def path_of(bias: float, cfg: RuleConfig, size: float, path: str) -> list[float]:
        pol = MetaPolicy().double()
        last = [m for m in pol.net if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(bias)  # a constant proposal: a rise (> 0) or a cut (< 0)
        state, log_rel = RuleState(), (0.0 if path == "host" else torch.tensor(0.0, dtype=torch.float64))
        policy: Any = HostPolicy(pol) if path == "host" else pol
        out = []
        for t in range(1, 41):
            with torch.no_grad():
                log_rel = lr_rule(policy, cfg, state, log_rel, 1.0, 1.0, 0.0, t, 1000, size)
            out.append(float(log_rel))
        return out

    off, on = RuleConfig(max_factor=1000.0), RuleConfig(max_factor=1000.0, small_step_gain=2.0, small_step_below=-3.0)
    for path in ("host", "torch"):
        rise_off, rise_on = path_of(0.3, off, 1e-4, path), path_of(0.3, on, 1e-4, path)  # updates 10**-4 of the weights
        assert rise_off[-1] > 0.1 and rise_on == pytest.approx([2.0 * v for v in rise_off], rel=1e-9), path
        assert path_of(0.3, on, 1e-2, path) == pytest.approx(rise_off, rel=1e-12), path  # updates 10**-2: above the threshold
        assert path_of(-0.3, on, 1e-4, path) == pytest.approx(path_of(-0.3, off, 1e-4, path), rel=1e-12), path  # cuts unchanged
    assert path_of(0.3, on, 1e-4, "torch") == pytest.approx(path_of(0.3, on, 1e-4, "host"), rel=1e-9)
    assert RuleConfig().small_step_gain == 1.0
    for bad in ({"small_step_gain": 0.5}, {"small_step_gain": math.inf}, {"small_step_below": 1.0}, {"small_step_below": -7.0}):
        with pytest.raises(ValueError, match="small_step"):
            RuleConfig(**bad)


def test_guard_window_takes_the_largest_early_loss_as_reference_on_every_path() -> None:
    """`guard_window` = W: the guard compares with the largest of the first W finite losses and fires on the ratio only
    from then on (a non-finite loss at any step). A run that starts low and noisy (trained weights) trips the
    first-loss guard and not a W = 8 one; torch and host (numpy) paths fire on the same steps; a saved state
    restores the reference, and a state without one (metalr <= 0.3) reads as the first loss."""

    pol = MetaPolicy().double()
    rng = random.Random(3)
    noisy = [0.2] + [rng.uniform(0.2, 0.6) for _ in range(60)]  # a lucky first batch, then noise of a trained model
    blow_up = [2.0, 2.1, math.nan, 1.9, 2.0, 2.2, 2.1, 2.0, 2.1, 9.0, 9.0]

    fired = functools.partial(_guard_firings, pol)

    first, window = RuleConfig(guard_ratio=1.5), RuleConfig(guard_ratio=1.5, guard_window=8)  # stage 6's ratio
    for path in ("torch", "host"):
        assert len(fired(first, noisy, path)[0]) >= 3, path  # the first-loss reference reads noise as a blow-up
        assert fired(window, noisy, path)[0] == [], path
    # W = 8 on a blow-up: the NaN fires at once (step 3), the ratio test waits for 8 finite losses (step 9 on), then fires
    for path in ("torch", "host"):
        steps, state = fired(window, blow_up, path)
        assert steps == [3, 10], (path, steps)
        assert float(state.guard_ref) == pytest.approx(2.2) and int(state.guard_seen) == 8
    # Saved and restored; an old state (no guard keys) takes the first loss as its reference
    _, state = fired(window, noisy[:5], "host")
    back = RuleState.from_state(state.state_dict())
    assert (back.guard_ref, back.guard_seen) == (pytest.approx(max(noisy[:5])), 5)
    old = {k: v for k, v in state.state_dict().items() if not k.startswith("guard_") or k == "guard_fired"}
    legacy = RuleState.from_state(old)
    assert (legacy.guard_ref, legacy.guard_seen) == (pytest.approx(0.2), 1)
    with pytest.raises(ValueError, match="guard_window"):
        RuleConfig(guard_window=0)


def test_guard_rebase_raises_the_reference_to_the_level_that_tripped_it_on_every_path() -> None:
    """`guard_rebase`: the first loss is the reference (no window, so an early blow-up is caught at once), and each
    ratio firing raises it to the fast loss average that tripped it. A loss that jumps to a new level and stays (a
    fresh optimizer on trained weights) trips the plain guard again after every cooldown and the rebasing guard once;
    a loss that keeps climbing trips both again; a NaN fires without moving the reference. Torch and host (numpy)
    paths fire on the same steps and end with the same reference, which a saved state restores."""

    pol = MetaPolicy().double()
    plateau = [1.0] * 5 + [2.0] * 40  # a transient level 2x the first loss
    climbing = [1.0] * 5 + [2.0] * 20 + [4.0] * 20 + [math.nan] + [4.0] * 10

    run = functools.partial(_guard_firings, pol)

    plain, rebase = RuleConfig(guard_ratio=1.5), RuleConfig(guard_ratio=1.5, guard_rebase=True)
    results = {path: (run(plain, plateau, path), run(rebase, plateau, path), run(rebase, climbing, path)) for path in ("torch", "host")}
    (p_steps, _), (r_steps, r_state), (c_steps, c_state) = results["host"]
    assert len(p_steps) >= 5 and len(r_steps) == 1 and r_steps[0] == p_steps[0]  # the same first firing, then none
    assert 1.5 < float(r_state.guard_ref) <= 2.0  # the fast average that crossed 1.5 x the first loss
    nan_step = climbing.index(math.nan) + 1
    assert len(c_steps) == 3 and c_steps[2] == nan_step and 25 < c_steps[1] < nan_step  # the climb to 4 trips it again
    assert 2.9 < float(c_state.guard_ref) <= 4.0  # just over 1.5 x the first rebase; the NaN did not move it
    for path in ("torch",):
        (ps, _), (rs, rst), (cs, cst) = results[path]
        assert (ps, rs, cs) == (p_steps, r_steps, c_steps), path
        assert float(cst.guard_ref) == pytest.approx(float(c_state.guard_ref), rel=1e-12), path
    back = RuleState.from_state(c_state.state_dict())
    assert back.guard_ref == pytest.approx(float(c_state.guard_ref))
    with pytest.raises(ValueError, match="guard_rebase"):
        RuleConfig(guard_rebase=1)  # type: ignore[arg-type]


def test_update_ceiling_stops_raises_and_pulls_down_on_every_path() -> None:
    """A policy that always raises the LR: below the ceiling it does; above it the change is <= -pull * excess, the same on
    the torch (meta-training) and host (numpy) paths."""
    from metalr.meta.policy import HostPolicy

    pol = MetaPolicy().double()
    with torch.no_grad():
        pol.net[-1].bias.fill_(5.0)  # tanh(5) ~ 1: the maximal raise
    host = HostPolicy(pol)
    cfg = RuleConfig(update_ceiling=-2.0, ceiling_pull=0.1)
    sizes = [1e-4] * 5 + [1e-1] * 30  # update sizes far below, then 1 decade above, the ceiling
    runs = {}
    for path in ("torch", "host"):
        state = RuleState()
        log_rel: object = 0.0 if path == "host" else torch.tensor(0.0, dtype=torch.float64)
        seq = []
        for t, size in enumerate(sizes, 1):
            log_rel = lr_rule(host if path == "host" else pol, cfg, state, log_rel, 1.0, 1.0, 0.5, t, 100, size)
            seq.append(float(log_rel.detach() if isinstance(log_rel, torch.Tensor) else log_rel))
        runs[path] = seq
    seq = runs["host"]
    assert seq[4] == pytest.approx(5 * 0.2, rel=1e-3)  # raising at full speed below the ceiling
    # the EMA_0.9 of log10(size) crosses the ceiling 11 steps after the jump (-1 - 3 * 0.9**k > -2): no raise after that,
    # and a pull of -0.1 per decade above it (the average is 0.88 decades above after 30 steps)
    peak = seq.index(max(seq))
    assert 5 + 9 <= peak <= 5 + 11 and all(b < a for a, b in zip(seq[peak:], seq[peak + 1 :]))
    u = -1.0 - 3.0 * 0.9**30
    assert seq[-1] - seq[-2] == pytest.approx(-0.1 * (u + 2.0), rel=1e-3)
    assert runs["torch"] == pytest.approx(seq, rel=1e-9)
    for no_ceiling in (RuleConfig(),):  # the default (0: the weights' own norm) never binds here
        state, lr = RuleState(), 0.0
        for t, size in enumerate(sizes[:15], 1):
            lr = lr_rule(host, no_ceiling, state, lr, 1.0, 1.0, 0.5, t, 100, size)
        assert lr == pytest.approx(15 * 0.2, rel=1e-3)  # below the LR bound log(30)


def test_deployed_controller_needs_no_logits_and_warns_without_total_steps(caplog: pytest.LogCaptureFixture) -> None:
    assert "accuracy" not in MetaController.requires and MetaController.requires <= {"loss", "grad_align", "grad_norm", "update_size"}
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING):
        ctrl = MetaController(opt, checkpoint=FrozenPolicy(MetaPolicy(), {}, "", RuleConfig(default_total_steps=777)))
    assert ctrl.total_steps == 777 and "total_steps not given" in caplog.text


def test_a_run_shorter_than_any_meta_trained_one_is_logged_with_the_largest_move(caplog: pytest.LogCaptureFixture) -> None:
    """The shipped policy learned on 100-2000-step runs; its moves scale with 1/T, so a 40-step run gets a warning
    naming how far one decision may move the LR there, and how to bound it."""
    frozen = load_pretrained()
    shortest = frozen.metadata["config"]["steps_range"][0]

    def said(**kwargs: Any) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="metalr.controllers.meta"):
            MetaController(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), checkpoint=frozen, **kwargs)
        return [r.getMessage() for r in caplog.records if "meta-trained on" in r.getMessage()]

    rule = frozen.rule
    most = math.exp(frozen.policy.model_args["max_log_step"] * rule.decide_every * rule.small_step_gain * rule.horizon_scale(40))
    (msg,) = said(total_steps=40)
    assert f"a 40-step run is shorter than any the policy was meta-trained on ({shortest}-" in msg
    assert f"x{most:.3g} here" in msg and "bound it with max_factor" in msg
    (msg,) = said(total_steps=40, max_factor=3.0)
    assert "max_factor keeps the LR within x3 of the base LR" in msg
    assert said(total_steps=shortest) == [] and said(total_steps=5000) == []
    assert said() == []  # no total_steps: the rule's default run length (its own warning)


# ------------------------------------------------------------------ meta-gradients
def test_meta_gradient_reaches_every_parameter_and_is_finite() -> None:
    pol = lively_policy(std=0.05)
    traj = start(materialise(teacher_spec(steps=20)), 64)
    res = truncation(traj, pol, RuleConfig(), 20, 5)
    assert res.loss.requires_grad and res.weight > 0
    res.loss.backward()
    for name, p in pol.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, f"no meta-gradient reaches {name}"


def test_meta_gradient_matches_finite_differences_on_last_bias() -> None:
    """d(meta-loss)/d(output bias) by autograd vs a central difference (same seeded task, float64).

    The policy's input features are stop-gradient (as in learned_optimization): autograd ignores that a
    changed LR also changes later features, a central difference does not. So the two agree to a few
    percent, not to rounding; a wrong sign, scale or a missing path would be far outside that.
    """
    pol = lively_policy(std=0.05).double()
    spec = teacher_spec("sgd", 0.2, 10)

    def meta_loss() -> torch.Tensor:
        return truncation(start(materialise(spec, torch.float64), 64), pol, RuleConfig(), 10, 5).loss

    bias = pol.net[-1].bias
    meta_loss().backward()
    analytic = float(bias.grad[0])
    eps = 1e-5
    with torch.no_grad():
        bias += eps
    up = float(meta_loss().detach())
    with torch.no_grad():
        bias -= 2 * eps
    down = float(meta_loss().detach())
    numeric = (up - down) / (2 * eps)
    assert analytic != 0.0
    assert abs(analytic - numeric) <= 0.03 * abs(numeric), (analytic, numeric)


def test_lookahead_scores_each_truncation_after_more_steps_at_its_starting_lr_and_carries_nothing() -> None:
    """`lookahead` = M: the trajectory (LRs, losses, weights carried on) is the same as without it; each truncation
    that does not end the run gives one term, with the summed weight of the terms it replaces, taken after M more
    steps (at most to the run's end) at the LR it started from, which the policy reaches through the weights."""
    pol = lively_policy(std=0.05)
    spec = teacher_spec("sgdm", 0.05, 50)
    runs = {}
    for m in (0, 15):
        traj = start(materialise(spec), 64)
        results = []
        while not traj.done:
            results.append(truncation(traj, pol, RuleConfig(), 20, 5, lookahead=m))
        runs[m] = (traj, results)
    (plain, plain_res), (ahead, ahead_res) = runs[0], runs[15]
    assert ahead.lrs == plain.lrs and ahead.losses == plain.losses and ahead.log_rel == plain.log_rel
    for p, q in zip(plain.task.model.parameters(), ahead.task.model.parameters()):
        assert torch.equal(p, q)  # nothing of the look-ahead is carried on
    assert [r.weight for r in ahead_res] == pytest.approx([r.weight for r in plain_res])
    assert sum(r.weight for r in ahead_res) == pytest.approx(trajectory_weight(50, 5, 1.0))
    model = ahead.task.model.eval()  # the run's last truncation: its terms are taken at the run's end (no step left)
    with torch.no_grad():
        end = float(val_objective(model(ahead.task.x_val[ahead.val_idx]), ahead.task.y_val[ahead.val_idx], "soft_error"))
    assert float(ahead_res[-1].loss.detach()) == pytest.approx(ahead_res[-1].weight * end / ahead.val0, rel=1e-5)
    assert float(ahead_res[0].loss.detach()) != pytest.approx(float(plain_res[0].loss.detach()))  # one term, 15 steps further on
    ahead_res[0].loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pol.parameters())
    assert float(pol.net[-1].bias.grad.abs().sum()) > 0
    # the term is the soft error after 15 steps from the truncation's end at the starting LR (0.05), recomputed by hand
    traj = start(materialise(spec), 64)
    truncation(traj, pol, RuleConfig(), 20, 5, track_higher_grads=False)
    model, opt = traj.task.model, traj.optimizer
    for g in opt.param_groups:
        g["lr"] = 0.05
    for j in range(15):
        idx = traj.batches[traj.step + j]
        opt.zero_grad()
        traj.task.loss(model(traj.task.x_train[idx]), traj.task.y_train[idx]).backward()
        opt.step()
    model.eval()
    val = float(val_objective(model(traj.task.x_val[traj.val_idx]), traj.task.y_val[traj.val_idx], "soft_error"))
    assert float(ahead_res[0].loss.detach()) == pytest.approx(ahead_res[0].weight * val / traj.val0, rel=1e-4)


def test_credit_carried_across_truncations_equals_one_long_truncation() -> None:
    """d(final log LR)/d(policy): chained 10-step truncations with the carried credit == one 40-step truncation."""
    pol = lively_policy(std=0.05)
    params = list(pol.parameters())
    spec = teacher_spec(steps=40)
    long = truncation(start(materialise(spec), 64), pol, RuleConfig(), 40, 10)
    expected = torch.autograd.grad(long.log_rel_end, params, allow_unused=True)
    traj = start(materialise(spec), 64)
    _, credit, _ = run_trajectory(traj, pol, RuleConfig(), tiny_cfg(truncation=10, val_every=5, credit=True), norm=1.0)
    assert traj.step == 40
    for e, c in zip(expected, credit):
        torch.testing.assert_close(c, e if e is not None else torch.zeros_like(c), rtol=1e-4, atol=1e-7)


def test_short_meta_training_lowers_meta_loss_on_a_fixed_task() -> None:
    """LR far too small: a few meta-steps on that task must teach the policy to raise it (lower val loss)."""
    spec = teacher_spec("sgd", 0.003, 40, seed=12345)
    cfg = tiny_cfg(meta_lr=0.01, truncation=10, val_every=5)
    rule = cfg.rule_config()

    def fixed_loss(policy: MetaPolicy) -> float:
        traj, out = start(materialise(spec), 64), 0.0
        while not traj.done:
            out += float(truncation(traj, policy, rule, cfg.truncation, cfg.val_every, cfg.end_weight).loss.detach())
        return out / trajectory_weight(spec.steps, cfg.val_every, cfg.end_weight)

    torch.manual_seed(0)
    policy = MetaPolicy()
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.meta_lr)
    before = fixed_loss(policy)
    for _ in range(8):
        opt.zero_grad()
        run_trajectory(start(materialise(spec), 64), policy, rule, cfg, trajectory_weight(spec.steps, cfg.val_every, cfg.end_weight))
        opt.step()
    after = fixed_loss(policy)
    assert after < before - 0.01, (before, after)


def test_loss_from_scores_only_the_end_of_the_run() -> None:
    """With loss_from, the meta-loss is the validation objective over the run's tail only, and still reaches the policy."""
    spec = teacher_spec("sgd", 0.2, 40)
    pol = lively_policy(std=0.05)
    whole = truncation(start(materialise(spec), 64), pol, RuleConfig(), 40, 5)
    tail = truncation(start(materialise(spec), 64), pol, RuleConfig(), 40, 5, loss_from=0.8)
    assert whole.weight == trajectory_weight(40, 5, 1.0) == 8.0
    assert tail.weight == trajectory_weight(40, 5, 1.0, loss_from=0.8) == 2.0  # steps 35 and 40
    tail.loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in pol.parameters())
    assert float(tail.loss.detach()) != float(whole.loss.detach()) / 4  # not the whole run's terms, rescaled


def test_full_unroll_config_draws_whole_runs_and_task_clip_bounds_each_task() -> None:
    cfg = tiny_cfg(truncation=60, steps_range=[20, 60], val_every=5, meta_batch=2, loss_from=0.5)
    assert cfg.full_unroll and cfg.step_multiple == 5
    with pytest.raises(ValueError, match="unrolled whole"):
        tiny_cfg(truncation=30, steps_range=[20, 60])
    with pytest.raises(ValueError, match="loss_from"):
        tiny_cfg(loss_from=1.0)
    with pytest.raises(ValueError, match="task_grad_clip"):
        tiny_cfg(task_grad_clip=-1.0)
    norms = []
    for clip in (0.0, 1e-6):
        torch.manual_seed(0)
        pol = lively_policy(std=0.05)
        out = meta_step(pol, torch.optim.SGD(pol.parameters(), lr=0.0), tiny_cfg(**{**cfg.__dict__, "task_grad_clip": clip}), step=0)
        assert out["inner_steps"] >= 40  # two whole runs of >= 20 steps
        norms.append(out["grad_norm"])
    assert norms[0] > 1e-4 and norms[1] <= 2e-6 * (1 + 1e-5), norms  # each of the 2 tasks clipped to 1e-6


def test_warm_start_is_validated_first_and_kept_unless_beaten(tmp_path: Path) -> None:
    """init_from: training starts from the file's weights; that policy is the step-0 candidate of the selection."""
    from metalr.meta.trainer import BEST_POLICY, train

    src = lively_policy(seed=5, n_features=FORMAT_FEATURES[3])  # the config's (no val_feature: format 3)
    save_policy(tmp_path / "init.safetensors", src, rule=RuleConfig(), config={})
    cfg = tiny_cfg(init_from=str(tmp_path / "init.safetensors"), meta_steps=1, meta_lr=1e-12, validate_every=1, validation_tasks=1,
                   validation_max_steps=30, out_dir=str(tmp_path / "run"))  # fmt: skip
    policy = train(cfg)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[0]["step"] == 0 and "val_score" in history[0] and "meta_loss" not in history[0]
    assert history[1]["step"] == 1 and "meta_loss" in history[1]
    best = read_policy(tmp_path / "run" / BEST_POLICY)
    assert best.metadata["selected_by"]["step"] in (0, 1)
    for a, b in zip(policy.parameters(), src.parameters()):  # meta_lr ~ 0: still the warm start's weights
        assert torch.allclose(a, b, atol=1e-6)
    save_policy(tmp_path / "other.safetensors", MetaPolicy(hidden=(8, 4)), rule=RuleConfig(), config={})
    with pytest.raises(ValueError, match="model_args"):
        train(replace(cfg, init_from=str(tmp_path / "other.safetensors"), out_dir=str(tmp_path / "run2")))


def test_zero_meta_steps_exports_the_warm_start_under_the_configs_rule(tmp_path: Path) -> None:
    """meta_steps=0 with init_from: a rule change alone (e.g. a wider LR ceiling) made into a checkpoint by the one command."""
    from metalr.meta.trainer import train

    src = lively_policy(seed=6, n_features=FORMAT_FEATURES[3])
    save_policy(tmp_path / "init.safetensors", src, rule=RuleConfig(), config={})
    cfg = tiny_cfg(init_from=str(tmp_path / "init.safetensors"), meta_steps=0, validate_every=1, validation_tasks=1, validation_max_steps=30,
                   out_dir=str(tmp_path / "run"), export_path=str(tmp_path / "out.safetensors"), rule={"max_factor": 100.0})  # fmt: skip
    train(cfg)
    out = read_policy(tmp_path / "out.safetensors")
    assert out.rule.max_factor == 100.0 and out.metadata["selected_by"]["step"] == 0
    for a, b in zip(out.policy.parameters(), src.parameters()):
        assert torch.equal(a, b)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["step"] for h in history] == [0] and "val_score" in history[0]
    with pytest.raises(ValueError, match="meta_steps"):
        tiny_cfg(meta_steps=0)  # without a policy to start from there is nothing to export


def test_resume_with_other_validation_runs_scores_the_best_so_far_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Validation keys may change on --resume (they choose the export, not the training), but the best so far was scored
    on the old runs: compared with scores on the new ones, the export would follow the change of runs, not the policy.
    Resumed with other runs, it is scored again on them first (before: kept its old score)."""
    from metalr.meta.trainer import BEST_POLICY, train, validation_score

    save_policy(tmp_path / "init.safetensors", lively_policy(seed=5, n_features=FORMAT_FEATURES[3]), rule=RuleConfig(), config={})
    cfg = tiny_cfg(init_from=str(tmp_path / "init.safetensors"), meta_steps=1, meta_lr=1e-12, validate_every=1, validation_tasks=1,
                   validation_max_steps=30, out_dir=str(tmp_path / "run"), checkpoint_every=1)  # fmt: skip
    train(cfg)
    old = read_policy(tmp_path / "run" / BEST_POLICY).metadata["selected_by"]
    longer = replace(cfg, meta_steps=2, validation_max_steps=60)
    expected = validation_score(read_policy(tmp_path / "run" / BEST_POLICY).policy, longer)["val_score"]
    assert expected != old["val_score"]  # the other runs score the same policy otherwise
    with caplog.at_level("WARNING", logger="metalr.meta.trainer"):
        train(longer, resume=True)
    said = [r.getMessage() for r in caplog.records if "scored again" in r.getMessage()]
    assert len(said) == 1 and "validation_max_steps" in said[0]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    best = read_policy(tmp_path / "run" / BEST_POLICY).metadata["selected_by"]
    if best["step"] == old["step"]:  # kept: its score is the one on the new runs
        assert best["val_score"] == pytest.approx(expected) and best["rescored_at"] == {"validation_max_steps": 60}
    else:  # replaced by meta-step 2, which had to beat the new score
        assert best["step"] == 2 and history[-1]["val_score"] > expected


def test_text_validation_runs_are_opt_in_real_text_recurrent_and_apart() -> None:
    """`validation_text` adds GRU/LSTM runs over real documents after the others; none is a selection-script task."""
    base = validation_specs(8, n_large=4)
    more = validation_specs(8, n_large=4, n_text=4)
    assert more[: len(base)] == base and len(more) == len(base) + 12
    text = more[len(base) :]
    assert {s.data for s in text} == {"doctext"} and [s.model for s in text[::3]] == ["gru", "lstm", "gru", "lstm"]
    assert all(300 <= s.steps <= 600 for s in text)
    assert all(not 560_000 <= s.seed < 562_000 and not 777_000 <= s.seed < 778_000 for s in text)  # labelled tasks', selection's


# ----------------------------------------------------------------- task distribution
def test_teacher_large_is_opt_in_and_trains() -> None:
    """The opt-in family changes no default draw (stage configs and validation stay reproducible) and makes harder tasks."""
    assert all(sample_spec(s).data != "teacher_large" for s in range(300))
    assert validation_specs(8, n_large=2)[:24] == validation_specs(8)[:24] and len(validation_specs(8, n_large=2)) == 36
    spec = sample_spec(7, ("teacher_large",), steps_range=(100, 100))
    assert spec.data == "teacher_large" and 5000 <= spec.params["n"] <= 20000 and 5 <= spec.params["classes"] <= 20
    task = materialise(replace(spec, steps=5))
    assert len(task.y_train) + len(task.y_val) == spec.params["n"]
    r = run_spec(replace(spec, steps=20), None)
    assert not r["diverged"] and 0.0 <= r["val_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="teacher_large"):
        tiny_cfg(data_families=["nope"])
    assert tiny_cfg(data_families=["blobs", "teacher_large"], validation_large=1).validation_large == 1


@pytest.mark.parametrize("family", ["zipf_tokens", "doctext"])
def test_large_vocabulary_families_are_opt_in_sparse_and_deterministic(family: str) -> None:
    """The text-like families: never in a default draw; ids within the vocabulary, most of it rare
    (the sparse-embedding regime of real text); the same spec gives the same data."""
    assert all(sample_spec(s).data != family for s in range(300))
    spec = sample_spec(3, (family,), steps_range=(100, 100))
    task = materialise(spec)
    x = torch.cat([task.x_train, task.x_val])
    assert x.dtype == torch.long and int(x.min()) >= 0 and int(x.max()) < spec.params["vocab"]
    top = torch.bincount(x[x > 1].flatten(), minlength=spec.params["vocab"]).float().sort(descending=True).values
    assert top[: spec.params["vocab"] // 10].sum() > 0.5 * top.sum()  # a tenth of the words carry most tokens
    again = materialise(spec)
    assert torch.equal(again.x_train, task.x_train) and torch.equal(again.y_val, task.y_val)
    assert len(task.y_train) + len(task.y_val) == spec.params["n"]


def test_doctext_is_real_text_that_a_model_learns() -> None:
    """Sentences of Python's documentation, labelled by topic: left-padded, every class present, and
    learnable well above the majority class by a bag-of-embeddings model in 150 steps."""
    spec = next(s for s in (sample_spec(i, ("doctext",), steps_range=(150, 150)) for i in range(50)) if s.model == "bag")
    task = materialise(spec)
    assert set(task.y_train.tolist()) == set(range(spec.params["classes"])) and int((task.x_train[:, 0] == 0).sum()) > 0
    majority = float(torch.bincount(task.y_val).max()) / len(task.y_val)
    r = run_spec(replace(spec, optimizer="adam", lr=3e-3, weight_decay=0.0), None)
    assert not r["diverged"] and r["val_accuracy"] > majority + 0.1, (r["val_accuracy"], majority)


def test_task_distribution_covers_families_optimizers_and_three_decades() -> None:
    specs = [sample_spec(s) for s in range(400)]
    assert {s.model for s in specs} >= {"mlp", "cnn1d", "cnn2d", "gru", "lstm", "attention", "bag"}
    assert {s.optimizer for s in specs} == {"sgd", "sgdm", "adam"}
    assert {s.params.get("norm") for s in specs if s.model == "mlp"} >= {"none", "layer", "batch"}
    for opt in ("sgd", "sgdm", "adam"):
        lrs = [s.lr for s in specs if s.optimizer == opt]
        assert math.log10(max(lrs) / min(lrs)) > 2.7, opt
    assert min(s.steps for s in specs) <= 120 and max(s.steps for s in specs) >= 1500
    assert {s.batch_size for s in specs} >= {16, 256}
    assert sample_spec(7) == sample_spec(7)  # seeded
    val = validation_specs(2)
    assert {s.data for s in val} >= {"wine", "breast_cancer"} and not {s.seed for s in val} & {s.seed for s in specs}


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
def test_every_sampled_task_trains_for_a_few_steps(seed: int) -> None:
    spec = replace(sample_spec(seed * 7919), steps=20)
    traj = start(materialise(spec), 64)
    while not traj.done:
        truncation(traj, MetaPolicy(), RuleConfig(), 10, 5, track_higher_grads=False)
    assert traj.step == 20 or traj.diverged


# --------------------------------------------------------------------- checkpoints
def _saved(tmp_path: Path) -> tuple[Path, MetaPolicy]:
    pol = lively_policy(1)
    path = tmp_path / "p.safetensors"
    save_policy(path, pol, rule=RuleConfig(max_factor=20.0, decide_every=2), config={"seed": 1})
    return path, pol


def test_load_pretrained_round_trip(tmp_path: Path) -> None:
    path, pol = _saved(tmp_path)
    frozen = read_policy(path)
    for (k, a), (_, b) in zip(pol.state_dict().items(), frozen.policy.state_dict().items()):
        assert torch.equal(a, b), k
    assert frozen.metadata["feature_names"] == list(FEATURE_NAMES) and frozen.metadata["config"] == {"seed": 1}
    assert frozen.metadata["model_args"] == pol.model_args and frozen.rule.max_factor == 20.0 and frozen.rule.decide_every == 2
    assert json.loads((tmp_path / "p.json").read_text())["rule"]["max_factor"] == 20.0
    ctrl = load_pretrained(str(path), optimizer=torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), total_steps=10)
    ctrl2 = controllers.build("meta", torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), checkpoint=str(path), total_steps=10)
    lrs = []
    for i in range(5):
        s = Signals(step=i + 1, loss=2.0 - 0.1 * i, grad_norm=1.0, grad_align=0.3)
        lrs.append(ctrl.step(s))
        assert lrs[-1] == ctrl2.step(s)
    assert ctrl.max_lr == pytest.approx(0.1 * 20.0) and ctrl.signal_every == 2
    assert lrs[0] == [0.1] and lrs[1] != lrs[0] and lrs[2] == lrs[1] and lrs[3] != lrs[2]  # decides on steps 2 and 4 only
    with pytest.raises(ValueError, match="decide_every"):
        RuleConfig(decide_every=0)


def test_loading_a_checkpoint_leaves_the_callers_random_stream_alone(tmp_path: Path) -> None:
    """A user's run must be the same whether the controller's file was read now or cached: the first load of a
    checkpoint (which builds the policy before putting its weights in) draws nothing from torch's global RNG."""
    path, _ = _saved(tmp_path)
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    load_pretrained(str(path), optimizer=opt, total_steps=10)  # the first load of this file: not cached
    assert torch.equal(torch.rand(4), expected)
    torch.manual_seed(3)
    read_policy(path)
    assert torch.equal(torch.rand(4), expected)


def _rewrite_meta(path: Path, out: Path, **changes: object) -> None:
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["metalr"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(changes)
    out.write_bytes(save(tensors, metadata={"metalr": json.dumps(meta)}))


def test_refuses_mismatched_or_corrupt_files(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save

    path, pol = _saved(tmp_path)
    bad = tmp_path / "bad.safetensors"
    _rewrite_meta(path, bad, feature_names=["loss_rel", "something_else"])
    with pytest.raises(CheckpointError, match="features"):
        read_policy(bad)
    _rewrite_meta(path, bad, format_version=1)
    with pytest.raises(CheckpointError, match="format_version"):
        read_policy(bad)
    _rewrite_meta(path, bad, rule={"min_factor": 2.0})
    with pytest.raises(CheckpointError, match="invalid settings"):
        read_policy(bad)
    _rewrite_meta(path, bad, format_version=3)  # a format-4 policy (12 features) labelled format 3
    with pytest.raises(CheckpointError, match="format 3"):
        read_policy(bad)
    _rewrite_meta(path, bad, model_args={"n_features": 11, "max_log_step": 0.2, "hidden": [64, 32]})
    with pytest.raises(CheckpointError, match="n_features"):
        read_policy(bad)
    shipped = ROOT / "checkpoints" / "metalr_default.safetensors"  # format 3; model_args without n_features: its format's count
    _rewrite_meta(shipped, bad, model_args={"max_log_step": 0.2, "hidden": [64, 32]})
    assert read_policy(bad).policy.n_features == 11
    _rewrite_meta(path, bad, model_args={"n_features": 10, "max_log_step": 0.2, "depth": 9})
    with pytest.raises(CheckpointError, match="model_args"):
        read_policy(bad)
    bad.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_policy(bad)
    bad.write_bytes(b"\x80\x04garbage, maybe a pickle")
    with pytest.raises(CheckpointError):
        read_policy(bad)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    tensors = {k: v.clone() for k, v in pol.state_dict().items()}
    tensors["net.0.weight"] = torch.zeros(64, 3)
    bad.write_bytes(save(tensors, metadata=header))
    with pytest.raises(CheckpointError, match="wrong shape"):
        read_policy(bad)
    tensors = {k: v.clone() for k, v in pol.state_dict().items()}
    tensors["net.4.bias"] = torch.tensor([math.nan])
    bad.write_bytes(save(tensors, metadata=header))
    with pytest.raises(CheckpointError, match="non-finite"):
        read_policy(bad)
    with pytest.raises(FileNotFoundError):
        read_policy(tmp_path / "missing.safetensors")


def test_a_checkpoint_path_with_a_tilde_is_the_users_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _saved(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert read_policy(f"~/{path.name}").policy.state_dict().keys() == read_policy(path).policy.state_dict().keys()
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    assert load_pretrained(f"~/{path.name}", optimizer=opt, total_steps=200).frozen.path == str(path)


def test_controller_is_safe_on_nan_and_inf_signals(tmp_path: Path) -> None:
    path, _ = _saved(tmp_path)
    opt = torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    ctrl = controllers.build("meta", opt, checkpoint=str(path), total_steps=50)
    for i in range(50):
        v = [math.nan, math.inf, -math.inf, 1e308, None][i % 5]
        lr = ctrl.step(Signals(step=i + 1, loss=v, grad_norm=v, grad_align=v))[0]
        assert math.isfinite(lr) and 1e-3 * 1e-3 <= lr <= 1e-3 * 20.0
    odd = {k: math.nan for k in FeatureState().state_dict()} | {"loss0": 1.0, "l_mid": math.inf, "l_min": 0.5}
    assert all(math.isfinite(x) for x in FeatureState.from_state(odd).features(math.nan, math.nan))


def test_a_non_finite_loss_is_logged_once_and_cuts_the_lr(caplog: pytest.LogCaptureFixture) -> None:
    opt = torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    ctrl = controllers.build("meta", opt, total_steps=100)
    with caplog.at_level("WARNING", logger="metalr.controllers.meta"):
        for i in range(20):
            ctrl.step(Signals(step=i + 1, loss=1.0))
        before = ctrl.get_last_lr()[0]
        after = ctrl.step(Signals(step=21, loss=math.nan))[0]
        for i in range(21, 40):
            ctrl.step(Signals(step=i + 1, loss=math.inf if i % 7 == 0 else 1.0))
    assert math.isclose(after, before * ctrl.rule.guard_factor, rel_tol=1e-9)  # (step 21 is not a decision step)
    said = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert len(said) == 1 and "(nan) at step 21" in said[0]


def test_config_refuses_held_out_data_and_bad_values() -> None:
    with pytest.raises(ValueError, match="both meta-trained on and held out"):
        tiny_cfg(data_families=["digits"], held_out=["digits_mlp"])
    with pytest.raises(ValueError, match="valid"):
        tiny_cfg(data_families=["mnist1d"])
    with pytest.raises(ValueError, match="AdamW"):
        tiny_cfg(optimizers=["adamw"])
    with pytest.raises(ValueError, match="rule"):
        tiny_cfg(rule={"max_factor": 0.5})
    with pytest.raises(ValueError, match="pretrained_fraction"):
        tiny_cfg(pretrained_fraction=1.5)


def test_pretrained_tasks_start_from_trained_weights_the_same_way_for_every_caller() -> None:
    spec = TaskSpec(data="blobs", model="mlp", optimizer="sgdm", lr=0.03, weight_decay=0.0, batch_size=32, steps=60, seed=5,
                    params=dict(dim=8, classes=3, n=600, spread=1.5, width=16, layers=1, act="relu", norm="none"))  # fmt: skip
    scratch = materialise(spec)
    cont, head = materialise(with_pretraining(spec, "continue")), materialise(with_pretraining(spec, "new_head"))

    def val_loss(task: Any) -> float:
        with torch.no_grad():
            return float(task.loss(task.model(task.x_val), task.y_val))

    assert val_loss(cont) < 0.7 * val_loss(scratch)  # pretrained: the run proper starts far below a fresh model's loss
    again = materialise(with_pretraining(spec, "continue"))  # deterministic in the spec: the unroll and run_spec see one model
    assert all(torch.equal(a, b) for a, b in zip(cont.model.state_dict().values(), again.model.state_dict().values()))
    a, b = list(cont.model.state_dict().items()), list(head.model.state_dict().items())
    assert all(torch.equal(va, vb) for (_, va), (_, vb) in zip(a[:-2], b[:-2]))  # the body is the same pretrained one
    assert not torch.equal(a[-2][1], b[-2][1])  # the head is new
    assert all(p.grad is None for p in cont.model.parameters())
    with pytest.raises(ValueError, match="pretrained mode"):
        with_pretraining(spec, "frozen")


def test_a_pretraining_run_that_diverges_leaves_the_initialisation_and_says_so(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import metalr.meta.tasks as meta_tasks

    spec = teacher_spec(steps=20, act="relu")  # (tanh saturates: its loss stays finite at any LR)
    scratch = materialise(spec)
    monkeypatch.setitem(meta_tasks.USUAL_LR, "sgdm", 1e30)  # pretraining at this LR overflows within a few steps
    with caplog.at_level(logging.WARNING, logger="metalr.meta.tasks"):
        task = materialise(with_pretraining(spec, "continue"))
    assert "pretraining diverged" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(scratch.model.state_dict().values(), task.model.state_dict().values()))


def test_pretrained_fraction_turns_some_draws_into_pretrained_tasks_and_leaves_the_rest_unchanged() -> None:
    base, mixed = tiny_cfg(), tiny_cfg(pretrained_fraction=0.5)
    draws = [(draw_task(base, step, i), draw_task(mixed, step, i)) for step in range(1, 6) for i in range(4)]
    pretrained = [m for _, (m, _) in draws if "pretrained" in m.params]
    assert 0 < len(pretrained) < len(draws)
    assert {m.params["pretrained"] for m in pretrained} == {"continue", "new_head"}
    for (b, band_b), (m, band_m) in draws:
        if "pretrained" in m.params:
            assert band_m is None and with_pretraining(b, m.params["pretrained"]) == m
        else:
            assert (m, band_m) == (b, band_b)


# --------------------------------------------------------------- kill and resume
def _run_script(out: Path, *extra: str, pause_at: str | None = None) -> subprocess.Popen[str]:
    args = [
        "meta_batch=2", "truncation=10", "val_every=5", "val_batch=64", "data_families=[blobs]", "steps_range=[20,20]",
        "meta_steps=6", "checkpoint_every=1", "validate_every=3", "validation_tasks=1", "validation_max_steps=30", "progress=false",
        f"out_dir={out}", "export_path=",  # never touch the shipped checkpoint
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(PAUSE_ENV, None)
    if pause_at:
        env[PAUSE_ENV] = pause_at
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train_meta.py"), "--config", str(ROOT / "configs/meta_train.yaml"), *args, *extra],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    """Killed right after checkpoint 4 (the process stops itself there: no timing), resumed, bit-identical."""
    full = _run_script(tmp_path / "full")
    killed = _run_script(tmp_path / "killed", pause_at="meta_checkpoint:4")
    wait_until_paused(killed)
    assert (tmp_path / "killed" / "train_state.safetensors").is_file()
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "policy.safetensors").exists()
    resumed = _run_script(tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=600) == 0
    assert full.wait(timeout=600) == 0
    for name in ("policy.safetensors", "best_policy.safetensors"):
        a, b = read_policy(tmp_path / "full" / name).policy.state_dict(), read_policy(tmp_path / "killed" / name).policy.state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    h_full = json.loads((tmp_path / "full" / "history.json").read_text())
    h_res = json.loads((tmp_path / "killed" / "history.json").read_text())
    assert [h.get("meta_loss") for h in h_full] == [h.get("meta_loss") for h in h_res]
    # the shipped config warm-starts (init_from): step 0 is that policy's validation, then meta-steps 1-6;
    # steps 5-6 ran after the resume, none twice
    assert [h["step"] for h in h_res] == [0, *range(1, 7)]
    assert (tmp_path / "full" / "meta_loss.png").is_file()


# ------------------------------------------------------------------ distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    policy = MetaPolicy()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    meta_step(policy, opt, tiny_cfg(), 0, rank, world)
    if rank == 0:
        torch.save({k: v.clone() for k, v in policy.state_dict().items()}, out)  # test-only file, read with weights_only
    dist.barrier()  # no rank may tear down gloo while the other still uses it
    dist.destroy_process_group()
    leave_process()  # (gloo can abort a rank in the interpreter's finalisation: see metalr.testing)


@pytest.mark.slow
def test_two_process_update_equals_single_process(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    out = tmp_path / "dist.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    torch.manual_seed(0)
    policy = MetaPolicy()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    meta_step(policy, torch.optim.Adam(policy.parameters(), lr=1e-3), tiny_cfg(), 0)
    dist_state = torch.load(out, weights_only=True)
    changed = False
    for k, v in policy.state_dict().items():
        torch.testing.assert_close(dist_state[k], v, rtol=1e-5, atol=1e-7)
        changed |= not torch.equal(v, before[k])
    assert changed, "the meta-step did not change the policy"


def _validation_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from metalr.meta.trainer import validation_score

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    score = validation_score(lively_policy(seed=4), tiny_cfg(validation_tasks=1, validation_max_steps=40, val_feature=0.5), rank, world, "validation/7")
    if rank == 0:
        Path(out).write_text(json.dumps(score))
    dist.barrier()
    dist.destroy_process_group()
    leave_process()


@pytest.mark.slow
def test_two_process_validation_gives_the_single_process_score_bit_for_bit(tmp_path: Path) -> None:
    """The trainer's validation runs are shared by the processes (each run filled in by one): the same score exactly."""
    import torch.multiprocessing as mp

    from metalr.meta.trainer import validation_score

    out = tmp_path / "score.json"
    mp.spawn(_validation_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    single = validation_score(lively_policy(seed=4), tiny_cfg(validation_tasks=1, validation_max_steps=40, val_feature=0.5))
    assert json.loads(out.read_text()) == single
    assert 0.0 < single["val_score"] < 1.0


def test_host_policy_is_the_shipped_policy() -> None:
    """The deployed CPU path's numpy evaluation (`HostPolicy`) gives the torch module's output, float32 weights as shipped."""
    from metalr.meta.checkpoint import cached_policy
    from metalr.meta.policy import HostPolicy

    pol = cached_policy(None).policy
    host = HostPolicy(pol)
    n = pol.n_features  # the shipped policy's format (3: the first 11 features)
    x = torch.randn(200, n) * torch.tensor(FEATURE_SCALE[:n]) + torch.tensor(FEATURE_SHIFT[:n])
    with torch.no_grad():
        expected = pol(x).tolist()
    assert [host(row) for row in x.tolist()] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_update_size_host_and_device_paths_agree_and_measure_the_update() -> None:
    """`UpdateSize` on every coordinate is the exact |theta_t - theta_{t-1}| / |theta_t|; a strided sample is close; host = device."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 200), torch.nn.ReLU(), torch.nn.Linear(200, 7))
    params = list(model.parameters())
    exact, sampled, device = UpdateSize(max_coords=10**6), UpdateSize(max_coords=512), UpdateSize(max_coords=512)
    for u in (exact, sampled):
        assert u(params) is None  # nothing to compare with yet
    assert math.isnan(float(device(params, host=False)))
    for scale in (1e-4, 1e-2, 1.0):
        before = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                p.add_(scale * torch.randn_like(p))
        true = math.sqrt(sum(float((p.detach() - q).pow(2).sum()) for p, q in zip(params, before))) / math.sqrt(
            sum(float(p.detach().pow(2).sum()) for p in params)
        )
        assert exact(params) == pytest.approx(true, rel=1e-5)  # true: float32 sums
        got = sampled(params)
        assert got == pytest.approx(true, rel=0.15)  # a 512-coordinate sample of a 7.6k-parameter model
        assert float(device(params, host=False)) == pytest.approx(got, rel=1e-12)
    assert len(sampled.prev) <= 512  # a sample, never a model-sized buffer
    restored = UpdateSize(max_coords=512)
    restored.load_state_dict(sampled.state_dict())
    with torch.no_grad():
        params[0].mul_(1.5)
    assert restored(params) == pytest.approx(sampled(params), rel=1e-12)


def test_warm_start_from_an_earlier_format_widens_with_zero_weights(tmp_path: Path) -> None:
    """A format-2 policy (10 features) read with expand_features computes what it did, whatever the new feature's value."""
    from metalr.meta.checkpoint import read_policy

    old = ROOT / "checkpoints" / "stages" / "meta_stage2.safetensors"
    with pytest.raises(CheckpointError, match="format_version"):
        read_policy(old)  # deployment never widens
    widened = read_policy(old, expand_features=True)
    assert widened.policy.model_args["n_features"] == N_FEATURES == 12 and widened.metadata["expanded_from"]["format_version"] == 2
    assert widened.metadata["format_version"] == 4 and widened.metadata["feature_names"] == list(FEATURE_NAMES)
    to3 = read_policy(old, expand_features=11)  # widened to format 3 only (a run without val_feature)
    assert to3.policy.n_features == 11 and to3.metadata["format_version"] == 3
    from safetensors.torch import load_file

    t = load_file(str(old))
    x = torch.randn(64, 10)
    h = torch.relu(((x - t["feature_shift"]) / t["feature_scale"]) @ t["net.0.weight"].T + t["net.0.bias"])
    h = torch.relu(h @ t["net.2.weight"].T + t["net.2.bias"])
    reference = 0.2 * torch.tanh(h @ t["net.4.weight"].T + t["net.4.bias"]).squeeze(-1)
    for update_size, val_rise in ((-6.0, 0.0), (-2.5, 0.3), (0.0, 3.0)):
        x11 = torch.cat([x, torch.full((64, 1), update_size)], 1)
        x12 = torch.cat([x11, torch.full((64, 1), val_rise)], 1)
        assert torch.allclose(to3.policy(x11), reference, rtol=1e-5, atol=1e-7)
        assert torch.allclose(widened.policy(x12), reference, rtol=1e-5, atol=1e-7)


def test_update_size_reuses_its_sample_memory_without_mixing_up_samples() -> None:
    """The host path gathers each sample into the memory of one no longer needed (and takes the difference in
    place): alternating `prime` and calls, as `SignalTracker(every=k)` does, and calls in a row, every ratio equals
    the one a fresh `UpdateSize` computes from the same two parameter states."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(12, 40), torch.nn.Tanh(), torch.nn.Linear(40, 3))
    params = list(model.parameters())
    u = UpdateSize(max_coords=100)

    def step(scale: float) -> float | None:
        before = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                p.add_(scale * torch.randn_like(p))
        fresh = UpdateSize(max_coords=100)
        fresh(before)
        return fresh(params)

    u(params)
    for t in range(8):
        if t % 3 == 0:
            u.prime(params)  # a new reference sample, as on the step before a decision
        expected = step(0.01 * (t + 1))
        assert u(params) == pytest.approx(expected, rel=1e-12)


def test_update_size_reads_bfloat16_parameters() -> None:
    """numpy cannot view bfloat16: such parameters take the torch path and give the same ratio."""
    torch.manual_seed(1)
    model = torch.nn.Linear(40, 20).to(torch.bfloat16)
    params = list(model.parameters())
    u = UpdateSize()
    u(params)
    before = [p.detach().double().clone() for p in params]
    with torch.no_grad():
        params[0].add_(0.05)
    true = math.sqrt(sum(float((p.detach().double() - q).pow(2).sum()) for p, q in zip(params, before))) / math.sqrt(
        sum(float(p.detach().double().pow(2).sum()) for p in params)
    )
    assert u(params) == pytest.approx(true, rel=1e-9)


def test_update_size_sees_non_contiguous_parameters_move() -> None:
    """A parameter stored transposed (non-contiguous) is re-read every call, never a stale copy."""
    w = torch.nn.Parameter(torch.randn(30, 20).t())
    assert not w.is_contiguous()
    u = UpdateSize()
    u([w])
    for _ in range(3):
        with torch.no_grad():
            w.mul_(1.1)
        assert u([w]) == pytest.approx(0.1 / 1.1, rel=1e-6)


def test_grad_align_view_cache_follows_replaced_moment_buffers() -> None:
    """`GradAlign` keeps numpy views of the optimizer's moments; when the optimizer's state is replaced
    (a checkpoint load) it reads the new buffers: always the uncached figure."""
    from metalr.gradstats import GradAlign, host_grad_stats, moment_buffers

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    align = GradAlign()
    x, y = torch.randn(32, 5), torch.randint(0, 2, (32,))
    saved = None
    for t in range(12):
        if t == 8:  # new moment tensors, with other values (the state of step 4)
            opt.load_state_dict(saved)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x + 0.05 * t), y).backward()
        params = [p for g in opt.param_groups for p in g["params"]]
        grads, states = [p.grad for p in params], [opt.state.get(p) for p in params]
        got = align(grads, states)
        assert got == host_grad_stats(grads, moment_buffers(states)), t
        opt.step()
        if t == 4:
            saved = copy.deepcopy(opt.state_dict())


def test_host_gradient_statistics_of_an_overflowing_gradient_are_missing_without_numpy_warnings() -> None:
    """A diverging run's float32 gradient overflows the host reductions: the norm and cosine read as missing
    (NaN / None), as the torch reductions' non-finite values do, and numpy raises no RuntimeWarning."""
    import warnings

    from metalr.gradstats import grad_stats, host_dot, host_grad_stats, host_norm

    huge = [torch.full((64,), 1e30), torch.ones(3)]
    refs = [torch.ones(64), torch.ones(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy overflow warning would fail here
        norm, cos = host_grad_stats(huge, refs)
        assert math.isnan(norm) and cos is None
        assert math.isnan(host_norm(huge)) and not math.isfinite(host_dot(huge, huge))
    dev_norm, dev_cos = grad_stats(huge, refs)
    assert not torch.isfinite(dev_norm) and dev_cos is not None and not torch.isfinite(dev_cos)


def test_meta_warns_once_when_tracker_and_controller_count_steps_differently(caplog: pytest.LogCaptureFixture) -> None:
    """With decide_every > 1 the statistics must arrive on the policy's steps: a tracker out of phase is logged."""
    frozen = FrozenPolicy(lively_policy(), {}, "", RuleConfig(decide_every=4))
    ctrl = MetaController(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), checkpoint=frozen, total_steps=20)
    with caplog.at_level(logging.WARNING, logger="metalr.controllers.meta"):
        for t in range(1, 9):
            ctrl.step(Signals(step=t, loss=1.0))  # in phase
        assert not caplog.records
        for t in range(9, 13):
            ctrl.step(Signals(step=t + 2, loss=1.0))  # two steps ahead
    assert len(caplog.records) == 1 and "decide_every=4" in caplog.records[0].getMessage()


def test_min_and_max_factor_narrow_the_lr_range_and_refuse_to_widen_it() -> None:
    """A policy that always raises (or always lowers) the LR ends at the checkpoint's bound, or at the narrower one given."""

    def pushing(bias: float) -> FrozenPolicy:
        policy = MetaPolicy()
        last = [m for m in policy.net if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(bias)
        return FrozenPolicy(policy, {}, "", RuleConfig())

    for bias, kwargs, bound in [(5.0, {}, 30.0), (5.0, {"max_factor": 3.0}, 3.0), (-5.0, {}, 1e-3), (-5.0, {"min_factor": 0.1}, 0.1)]:
        opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        ctrl = MetaController(opt, checkpoint=pushing(bias), total_steps=100, **kwargs)
        lrs = []
        for t in range(1, 101):
            ctrl.step(Signals(step=t, loss=1.0))
            lrs.append(opt.param_groups[0]["lr"])
        assert lrs[-1] == pytest.approx(0.1 * bound), kwargs
        assert all(0.1 * min(1.0, bound) * (1 - 1e-9) <= lr <= 0.1 * max(1.0, bound) * (1 + 1e-9) for lr in lrs), kwargs
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    for bad in ({"max_factor": 100.0}, {"max_factor": 1.0}, {"min_factor": 1e-4}, {"min_factor": 1.0}, {"max_factor": math.nan}):
        with pytest.raises(ValueError, match="factor must be in"):
            MetaController(opt, checkpoint=pushing(0.0), total_steps=10, **bad)
    assert load_pretrained(optimizer=opt, total_steps=10, max_factor=2.0).rule.max_factor == 2.0


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("meta_train*.yaml")), ids=lambda p: p.name)
def test_every_committed_meta_training_config_validates_and_matches_its_exported_rule(path: Path) -> None:
    """A stage's config still loads (a renamed key would fail here, not at the start of a long run), and
    a committed export of it carries the rule the config states (what `--resume` and deployment rely on)."""
    from metalr.config import load_config

    cfg = load_config(MetaTrainConfig, path, [])
    export = ROOT / cfg.export_path
    if cfg.export_path and export.is_file():
        assert read_policy(export, expand_features=True).rule == cfg.rule_config()


def test_meta_reads_numpy_scalar_signals_as_the_numbers_they_are() -> None:
    """A user's loop may hand the controller numpy scalars (a loss from a numpy metric): the LRs are those of
    Python floats. (A float32 scalar is no `float` instance: before, its loss was read as missing, the guard
    saw it and the features did not.)"""
    import numpy as np

    rng = random.Random(0)
    readings = [(2.0 * 0.99**t + 0.1 * rng.random(), 1.0 + rng.random(), rng.uniform(-1, 1), 10 ** rng.uniform(-4, -2)) for t in range(64)]
    runs = []
    for cast in (float, np.float32, np.float64):
        opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
        ctrl = load_pretrained(optimizer=opt, total_steps=64)
        lrs = []
        for t, (loss, norm, align, size) in enumerate(readings, 1):
            vals = [cast(np.float32(v)) for v in (loss, norm, align, size)]
            lrs.append(ctrl.step(Signals(step=t, loss=vals[0], grad_norm=vals[1], grad_align=vals[2], update_size=vals[3]))[0])
        runs.append(lrs)
    assert runs[1] == runs[0] and runs[2] == runs[0]
    assert len(set(runs[0])) > 5  # the policy moved the LR
    with pytest.raises((TypeError, ValueError)):
        ctrl.step(Signals(step=65, loss="n/a"))  # type: ignore[arg-type]
