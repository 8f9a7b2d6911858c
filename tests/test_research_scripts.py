"""Session 18's research scripts do what their docstrings say (on tiny stand-ins: no figure is checked here)."""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from metalr import controllers
from metalr.controllers.meta import MetaController
from metalr.meta.checkpoint import CheckpointError, read_policy, save_policy
from metalr.meta.features import SHIFT
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
        sys.modules[name] = module  # (as importlib's recipe does: a dataclass in the script looks its module up there)
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


@pytest.mark.parametrize("dead", [0.0, 3.0])
def test_range_probe_restart_puts_the_weights_and_optimizer_back_and_runs_the_rest_at_the_level(dead: float) -> None:
    probe = _script("meta_range_probe")
    original = (MetaController.__init__, MetaController._compute_lrs)
    probe.patch(0.1, 10.0, 1.2, 4.0, dead, rollback=True)  # T = 24 steps (a multiple of 8)
    try:
        w = nn.Parameter(torch.tensor([1.0, -2.0]))
        opt = torch.optim.SGD([w], lr=0.5, momentum=0.9)
        ctrl = controllers.build("meta", opt, total_steps=100)
        losses = [1.0 - 0.01 * i for i in range(10)] + [5.0] * 10  # falling, then blowing up from the 11th step
        lrs = []
        for i, loss in enumerate(losses, start=1):
            w.grad = torch.ones(2)
            opt.step()  # the weights move, the momentum buffer fills
            ctrl.step(Signals(step=i, loss=loss))
            lrs.append(opt.param_groups[0]["lr"])
            if not ctrl._ramp["on"]:
                break
        assert len(lrs) == 16  # the blow-up at step 11; the restart waits for step 16 (the decision phase), the LR held
        assert lrs[10:15] == [lrs[9]] * 5
        assert torch.equal(w.detach(), torch.tensor([1.0, -2.0])) and not opt.state  # put back as before the first step
        assert ctrl.last_step == 0 and ctrl.total_steps == 84  # the rest of the run, as a run of its own
        level = ctrl._ramp["best_m"] / 4.0 if dead == 0 else 1.0  # 3 decades of dead zone: the base LR kept
        assert math.isclose(ctrl._log_rel, math.log(level))
        assert math.isclose(lrs[-1], 0.5 * level * probe.warmup_factor(ctrl.rule, 1, 84))  # its first step: the warmup again
        ctrl.step(Signals(step=17, loss=1.0))  # the shipped rule from there on (fresh state)
        assert ctrl._rule_state.features.loss0 == 1.0 and ctrl.last_step == 1
    finally:
        probe.unpatch()
    assert (MetaController.__init__, MetaController._compute_lrs) == original


@pytest.mark.parametrize("late", [False, True])
def test_restart_probe_puts_the_weights_back_when_the_guard_fires_in_its_window_only(late: bool) -> None:
    probe = _script("meta_restart_probe")
    original = (MetaController.__init__, MetaController._compute_lrs)
    probe.patch(0.25, 3)  # a 100-step run: the window is its first 25 steps
    try:
        w = nn.Parameter(torch.tensor([1.0, -2.0]))
        opt = torch.optim.SGD([w], lr=0.5, momentum=0.9)
        ctrl = controllers.build("meta", opt, total_steps=100)
        blow = 30 if late else 11  # the loss blows up from this step on (the guard fires at once: 100 > 1.5 x the first loss)
        restarted_at, lrs = None, []
        for i in range(1, 41):
            w.grad = torch.ones(2)
            opt.step()
            ctrl.step(Signals(step=i, loss=100.0 if i >= blow else 1.0))
            lrs.append(opt.param_groups[0]["lr"])
            if restarted_at is None and torch.equal(w.detach(), torch.tensor([1.0, -2.0])):
                restarted_at = i
                assert not opt.state and ctrl._rule_state.guard_fired == 0  # the optimizer's and the rule's state afresh
                assert lrs[-1] == ctrl.get_last_lr()[0] < 0.1 * 0.5  # the LR the rule set (after the guard's cuts), not the optimizer's saved one
        if late:  # fired after the window: nothing put back, the copy freed
            assert restarted_at is None and ctrl._restart["start"] is None and ctrl._rule_state.guard_fired >= 1
        else:
            assert restarted_at == 16  # fired at step 11; put back on the next multiple of the decision interval (8)
            assert lrs[10] < 0.2 * lrs[9]  # the guard's cut at step 11
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


def _host_policy() -> HostPolicy:
    return MetaController(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), total_steps=10)._host_policy


def _patched_proposal(probe: ModuleType, setting: object, features: list[float]) -> float:
    """The shipped policy's proposal for `features` with `probe` patched by `setting`; checks the patch is undone."""
    original = HostPolicy.__call__
    probe.patch(setting)
    try:
        return _host_policy()(features)
    finally:
        probe.unpatch()
        assert HostPolicy.__call__ is original


CUTTING = [0.9, 0.0, 0.0, -0.05, 0.2, -1.0, 0.3, -0.5, 0.1, 0.0, -2.5]  # late in the run, align_fast -0.5: the policy cuts


@pytest.mark.parametrize(
    "script, threshold, index, gated_value",
    [("meta_decay_gate_probe", 0.1, 3, -0.3), ("meta_align_gate_probe", 0.3, 8, 0.6)],  # trend_slow -0.3; align_slow 0.6
)
def test_gate_probes_stop_only_cuts_and_only_past_their_threshold(script: str, threshold: float, index: int, gated_value: float) -> None:
    gate = _script(script)
    gated = [*CUTTING[:index], gated_value, *CUTTING[index + 1 :]]
    raw = {name: _host_policy()(f) for name, f in (("open", CUTTING), ("gated", gated))}
    assert raw["open"] < 0 and raw["gated"] < 0  # both cuts unpatched: the gate is what differs
    assert _patched_proposal(gate, threshold, gated) == 0.0  # the cut is held off
    assert _patched_proposal(gate, threshold, CUTTING) == raw["open"]  # short of the threshold: the policy's own cut


def test_rise_gain_probe_speeds_up_rises_only() -> None:
    probe = _script("meta_rise_gain_probe")
    rising = [*CUTTING[:7], 0.6, 0.6, *CUTTING[9:]]  # successive gradients agree: the policy raises the LR
    up, down = _host_policy()(rising), _host_policy()(CUTTING)
    assert up > 0 > down
    assert _patched_proposal(probe, 2.0, rising) == 2.0 * up
    assert _patched_proposal(probe, 2.0, CUTTING) == down  # a cut is left as it is
    small = [*rising[:10], -3.5]  # the weights move 10**-3.5 of their norm per step
    probe.patch = probe.patch_small_steps  # (the module object is this test's own)
    assert _patched_proposal(probe, -3.0, small) == probe.SMALL_STEP_GAIN * _host_policy()(small)
    assert _patched_proposal(probe, -3.0, rising) == up  # update size -2.5: above the threshold, the policy's own rise


def test_anchor_probe_scales_only_what_the_policy_reads_of_lr_rel_and_unpatches() -> None:
    probe = _script("meta_anchor_probe")
    moved = [0.5, 2.0, 0.0, -0.05, 0.2, -1.0, 0.3, 0.0, 0.0, 0.0, -2.5]  # lr_rel 2: the LR is e^2 x the base LR
    want = {scale: _host_policy()([*moved[:1], 2.0 * scale, *moved[2:]]) for scale in (0.5, 0.0)}
    assert want[0.5] != want[0.0] != _host_policy()(moved)  # the input matters to this policy
    for scale in (0.5, 0.0):
        assert _patched_proposal(probe, scale, moved) == want[scale]
        assert moved[1] == 2.0  # the caller's features are not changed


def test_ablation_probe_hands_the_policy_neutral_values_for_one_group_only() -> None:
    probe = _script("meta_ablation_probe")
    features = [0.9, 1.0, 0.2, -0.3, 1.0, -2.0, 0.8, 0.6, 0.5, 0.4, -1.0]  # nothing neutral
    for group, names in probe.GROUPS.items():
        idx = [probe.FEATURE_NAMES.index(n) for n in names]
        want = _host_policy()([SHIFT[i] if i in idx else v for i, v in enumerate(features)])
        assert _patched_proposal(probe, group, list(features)) == want, group
    assert sorted(n for names in probe.GROUPS.values() for n in names) == sorted(set(probe.FEATURE_NAMES) - {"lr_rel"})


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


def test_soup_averages_the_policies_under_one_rule_and_refuses_other_feature_scalings(tmp_path: Path) -> None:

    m = _script("meta_soup")
    shipped = read_policy()
    other = read_policy()
    with torch.no_grad():
        for p in other.policy.net.parameters():
            p.add_(1.0)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_policy(a, shipped.policy, rule=shipped.rule, config={})
    save_policy(b, other.policy, rule=replace(shipped.rule, guard_ratio=2.0), config={})  # another rule: the soup takes the reference's
    policy, meta = m.soup([str(a), str(b)], weights=[3.0, 1.0])
    for (name, t), t0 in zip(policy.state_dict().items(), shipped.policy.state_dict().values()):
        want = t0 + (0.25 if name.startswith("net.") else 0.0)  # 3/4 of the first + 1/4 of (the first + 1)
        assert torch.allclose(t, want, atol=1e-6), name
    assert meta["rule"] == shipped.rule and [i["weight"] for i in meta["extra"]["soup"]] == [3.0, 1.0]
    assert meta["extra"]["soup"][1]["rule"]["guard_ratio"] == 2.0
    out = tmp_path / "soup.safetensors"
    save_policy(out, policy, rule=meta["rule"], config=meta["config"], extra=meta["extra"])
    assert read_policy(out).rule == shipped.rule  # a loadable checkpoint
    with torch.no_grad():
        other.policy.feature_scale.mul_(2.0)
    save_policy(b, other.policy, rule=shipped.rule, config={})
    with pytest.raises(CheckpointError, match="feature_scale"):
        m.soup([str(a), str(b)])
    with pytest.raises(ValueError, match="two ingredients"):
        m.soup([str(a)])


def test_select_noise_writes_seeded_null_copies_of_the_shipped_policy(tmp_path: Path) -> None:
    m = _script("meta_select_noise")
    shipped = read_policy()
    a = m.null_copies(tmp_path / "a", 2, 1e-3)
    b = m.null_copies(tmp_path / "b", 2, 1e-3)
    state0 = shipped.policy.state_dict()
    for pa, pb in zip(a, b):
        fa, fb = read_policy(pa), read_policy(pb)
        assert fa.rule == shipped.rule
        for name, t in fa.policy.state_dict().items():
            assert torch.equal(t, fb.policy.state_dict()[name])  # seeded: the same copy twice
            rel = ((t - state0[name]).abs() / state0[name].abs().clamp_min(1e-12)).max().item()
            assert (rel == 0.0) if not name.startswith("net.") else (0.0 < rel < 1e-2), name
    w = [read_policy(p).policy.state_dict()["net.0.weight"] for p in a]
    assert not torch.equal(w[0], w[1])  # two different copies


def test_selection_rule_v3_tolerates_more_on_the_sequence_cells_only() -> None:
    m = _script("meta_select")
    cells = m.RULES["v3"]
    ref = {c: 0.5 for c in cells}
    up = {c: 0.5 + 0.003 for c in cells}  # +0.003 everywhere: a gain above MIN_GAIN
    ok, mean, _ = m.beats(up, ref, cells, m.MAX_LOSS_SEQ)
    assert ok and mean == pytest.approx(0.003)
    seq_drop = {**up, "txt10": 0.5 - 0.008}  # 0.8 points down on a 24-task real-text cell: within v3's tolerance
    assert m.beats(seq_drop, ref, cells, m.MAX_LOSS_SEQ)[0]
    assert not m.beats(seq_drop, ref, cells)[0]  # v2's tolerance (0.005 on every cell) vetoes it
    lab_drop = {**up, "lab0": 0.5 - 0.008}  # the same drop on a many-task cell: vetoed under both
    ok, _, why = m.beats(lab_drop, ref, cells, m.MAX_LOSS_SEQ)
    assert not ok and why.startswith("lab0")
    far = {**up, "rnn10": 0.5 - 0.02}
    assert not m.beats(far, ref, cells, m.MAX_LOSS_SEQ)[0]
    assert m.SEQ_TASKS["v3"] == 24 and m.SEQ_TASKS["v2"] == 8


def test_selection_with_validation_readings_is_cached_apart_and_hands_the_runs_their_readings() -> None:
    """--val-readings P: the runs of a checkpoint get the validation readings meta-training would draw (P = 0: none, the
    cache key of every look before), and the results are cached under their own key."""
    m = _script("meta_select")
    from metalr.meta.tasks import val_reading_every

    assert m.rule_key("v3", 0.0) == m.rule_key("v3") != m.rule_key("v3", 1.0) != m.rule_key("v3", 0.5)
    seen: list[int] = []
    real = m.run_spec
    try:
        m.run_spec = lambda spec, make, val_reading=0, **kw: seen.append(val_reading) or {"val_accuracy": 0.5}
        spec = m.lab.TaskSpec("teacher", "mlp", "sgdm", 0.1, 0.0, 32, 400, 3, {})
        m._job(("val", "0", spec, "cosine", 1.0))  # the cosine never reads them
        m._job(("val", "0", spec, "checkpoints/metalr_default.safetensors", 1.0))
        m._job(("val", "0", spec, "checkpoints/metalr_default.safetensors", 0.0))
    finally:
        m.run_spec = real
    assert seen == [0, val_reading_every(spec, 1.0), 0] and seen[1] > 0


def test_tagging_look_decodes_spans_as_conlleval_and_scores_exact_spans() -> None:
    """scripts/meta_tagging_look.py: B/I decoding (an I without its B, or of another type, starts an entity), exact-span
    micro F1, and generated tags that mark only lexicon tokens right after a trigger or inside a span."""
    m = _script("meta_tagging_look")
    assert m.spans([0, 1, 2, 0, 3, 0, 2, 2, 5, 6]) == {(1, 3, 0), (4, 5, 1), (6, 8, 0), (8, 10, 2)}
    assert m.spans([1, 4, 0]) == {(0, 1, 0), (1, 2, 1)}  # I-1 after B-0: a new entity
    gold = torch.tensor([[0, 1, 2, 0, 3]])
    assert m.entity_f1(gold, gold) == 1.0
    assert m.entity_f1(torch.tensor([[0, 1, 0, 0, 3]]), gold) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))  # one span cut short
    assert m.entity_f1(torch.zeros_like(gold), gold) == 0.0
    x, y, _, _ = m.make_data()
    begins = (y % 2 == 1) & (y > 0)
    assert 0.05 < float((y > 0).float().mean()) < 0.25 and bool(begins.any())
    assert not bool(begins[:, 0].any())  # a B always follows its trigger token
    torch.manual_seed(0)
    tagger = m.Tagger(m.SUITES["crf"])
    assert tagger.crf is not None and m.predict(tagger, x[:4]).shape == x[:4].shape and math.isfinite(float(m.tag_loss(tagger, x[:4], y[:4])))


def test_pretrained_probe_data_are_fixed_and_split() -> None:
    """scripts/meta_pretrained_probe.py: the same topics and split on every call, a fifth of the sentences for
    validation, every topic on both sides."""
    m = _script("meta_pretrained_probe")
    xtr, ytr, xva, yva = m.make_data()
    assert (xtr, ytr, xva, yva) == m.make_data()
    assert len(xva) == (len(xtr) + len(xva)) // 5 and set(ytr) == set(yva) == set(range(m.TOPICS))
    assert all(isinstance(t, str) and t for t in xtr[:50])


def test_rerule_writes_the_weights_unchanged_under_the_shipped_rule(tmp_path: Path) -> None:
    m = _script("meta_rerule_probe")
    shipped = read_policy()
    src = tmp_path / "src.safetensors"
    other = read_policy()
    with torch.no_grad():
        for p in other.policy.net.parameters():
            p.add_(0.5)
    save_policy(src, other.policy, rule=replace(shipped.rule, guard_factor=0.3, small_step_gain=1.0), config={"seed": 8})
    out = tmp_path / "out.safetensors"
    m.rerule(src, out)
    got = read_policy(out)
    assert got.rule == shipped.rule  # the shipped rule, not the source's
    for (k, a), b in zip(got.policy.state_dict().items(), other.policy.state_dict().values()):
        assert torch.equal(a, b), k  # the source's weights, untouched
    assert got.metadata["rerule"]["weights_rule"]["guard_factor"] == 0.3 and got.metadata["config"] == {"seed": 8}


def test_lr_look_reports_each_checkpoints_accuracy_and_lr_level_per_run() -> None:
    from metalr.meta.tasks import validation_specs

    m = _script("meta_lr_look")
    specs = [replace(s, steps=48) for s in validation_specs(1, lr_factors=(0.1, 10.0))[:2]]
    shipped = str(SCRIPTS.parent / "checkpoints" / "metalr_default.safetensors")
    rows = m.look([shipped], specs)[shipped]
    assert len(rows) == 2 and all(0.0 <= r["acc"] <= 1.0 and r["peak"] >= r["tail"] for r in rows)
    assert rows[0]["peak"] > rows[1]["peak"]  # the multiple of a 100x lower base LR rises further
