"""Classic schedules reproduce torch.optim.lr_scheduler exactly, step for step."""

from __future__ import annotations

import math

import pytest
import torch

from metalr import controllers
from metalr.signals import Signals

N = 60


def _opt(lr: float = 0.1, groups: int = 1) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr * (i + 1)} for i in range(groups)]
    return torch.optim.SGD(params, lr=lr)


def _ours(name: str, n: int = N, groups: int = 1, signals: list[Signals] | None = None, **kw: object) -> list[list[float]]:
    ctrl = controllers.build(name, _opt(groups=groups), **kw)
    seq = [ctrl.get_last_lr()]
    for i in range(n):
        seq.append(ctrl.step(signals[i] if signals else None))
    return seq


def _torch(make: object, n: int = N, groups: int = 1, metrics: list[float] | None = None) -> list[list[float]]:
    opt = _opt(groups=groups)
    sched = make(opt)  # type: ignore[operator]
    seq = [[g["lr"] for g in opt.param_groups]]
    for i in range(n):
        opt.step()
        sched.step(metrics[i]) if metrics is not None else sched.step()
        seq.append([g["lr"] for g in opt.param_groups])
    return seq


def _close(a: list[list[float]], b: list[list[float]]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == pytest.approx(y, rel=1e-12, abs=1e-15), f"step {i}: {x} != {y}"


@pytest.mark.parametrize("groups", [1, 2])
def test_constant_matches_torch(groups: int) -> None:
    _close(_ours("constant", groups=groups), _torch(lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=1.0), groups=groups))


@pytest.mark.parametrize("groups", [1, 2])
def test_step_matches_torch(groups: int) -> None:
    _close(_ours("step", step_size=7, gamma=0.5, groups=groups), _torch(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5), groups=groups))


def test_exponential_matches_torch() -> None:
    _close(_ours("exponential", gamma=0.93), _torch(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.93)))


def test_cosine_matches_torch() -> None:
    _close(_ours("cosine", total_steps=N, eta_min=1e-4), _torch(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=N, eta_min=1e-4)))


def test_cosine_with_warmup_matches_torch_sequential() -> None:
    w = 10

    def make(o: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        warm = torch.optim.lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=w)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=N - w, eta_min=0.0)
        return torch.optim.lr_scheduler.SequentialLR(o, [warm, cos], milestones=[w])

    _close(_ours("cosine", total_steps=N, warmup_steps=w, warmup_start_factor=0.25), _torch(make))


def test_cosine_hand_computed_values() -> None:
    seq = _ours("cosine", n=4, total_steps=4)
    assert [s[0] for s in seq] == pytest.approx([0.1, 0.1 * (1 + math.cos(math.pi / 4)) / 2, 0.05, 0.1 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.0])


@pytest.mark.parametrize("kw", [dict(patience=2, factor=0.5), dict(patience=0, factor=0.1, cooldown=2), dict(patience=1, threshold=0.1, threshold_mode="abs")])
def test_plateau_matches_torch(kw: dict[str, object]) -> None:
    metrics = [1.0, 0.9, 0.95, 0.95, 0.96, 0.8, 0.81, 0.82, 0.83, 0.84, 0.85, 0.7, 0.7, 0.7, 0.7, 0.7, 0.69, 0.7, 0.7, 0.7]
    signals = [Signals(step=i + 1, val_loss=m) for i, m in enumerate(metrics)]
    ours = _ours("plateau", n=len(metrics), signals=signals, **kw)
    theirs = _torch(lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, **kw), n=len(metrics), metrics=metrics)  # type: ignore[arg-type]
    _close(ours, theirs)
    assert ours[-1][0] < ours[0][0]  # the sequence really did reduce


def test_plateau_ignores_steps_without_a_new_metric() -> None:
    ctrl = controllers.build("plateau", _opt(), patience=0, factor=0.5)
    for _ in range(10):
        ctrl.step(Signals(loss=1.0))  # no val_loss: no evaluation happened
    assert ctrl.get_last_lr() == [0.1]


def test_hypergradient_direction_and_additive_rule() -> None:
    ctrl = controllers.build("hypergradient", _opt(), beta=0.1)
    up = ctrl.step(Signals(hypergrad_cos=1.0))[0]
    assert up == pytest.approx(0.1 * 1.1)
    down = ctrl.step(Signals(hypergrad_cos=-1.0))[0]
    assert down == pytest.approx(0.1 * 1.1 * 0.9)
    add = controllers.build("hypergradient", _opt(), beta=0.01, rule="additive")
    assert add.step(Signals(hypergrad=2.0))[0] == pytest.approx(0.12)
    assert add.step(Signals(hypergrad=-1.0))[0] == pytest.approx(0.11)


def test_hypergradient_signal_is_dot_of_gradient_and_previous_update() -> None:
    """On f(x) = 0.5 |x|^2 with SGD, u_{t-1} = g_{t-1} = x_{t-1}, so h_t = x_t . x_{t-1}."""
    from metalr.signals import SignalTracker

    x = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([x], lr=0.1)
    tracker = SignalTracker([x], opt, requires={"hypergrad", "grad_norm"})
    prev = None
    for _ in range(3):
        opt.zero_grad()
        (0.5 * (x**2).sum()).backward()
        s = tracker.collect()
        if prev is None:
            assert s.hypergrad is None
        else:
            assert s.hypergrad == pytest.approx(float(x.detach() @ prev), rel=1e-5)  # float32 parameter difference
            assert s.hypergrad_cos == pytest.approx(1.0)
        assert s.grad_norm == pytest.approx(float(x.detach().norm()))
        prev = x.detach().clone()
        opt.step()


@pytest.mark.parametrize("lrs", [(0.05, 0.2), (0.0, 0.2), (0.1, 0.1)])
def test_hypergradient_signals_per_param_group(lrs: tuple[float, float]) -> None:
    """Groups at their own LRs (a fine-tune's backbone and head; a frozen group at 0): with SGD the update direction
    is the previous gradient, so each group's hypergradient is g_t . g_{t-1} over its own parameters, `hypergrad`
    their sum, and the cosine is that of g_t and the actual step, over the parameters that moved."""
    from metalr.signals import SignalTracker

    torch.manual_seed(0)
    a, b, c = (torch.nn.Parameter(torch.randn(n)) for n in (3, 4, 5))
    w, k = [torch.randn(n) for n in (3, 4, 5)], [torch.rand(n) + 0.5 for n in (3, 4, 5)]
    opt = torch.optim.SGD([{"params": [a, b], "lr": lrs[0]}, {"params": [c], "lr": lrs[1]}])
    tracker = SignalTracker([a, b, c], opt, requires={"hypergrad_groups"})
    prev: list[torch.Tensor] | None = None
    for _ in range(4):
        opt.zero_grad()
        sum((q * (p - t) ** 2).sum() for p, t, q in zip((a, b, c), w, k)).backward()  # type: ignore[union-attr]
        s = tracker.collect()
        g = [p.grad.detach().clone() for p in (a, b, c)]  # type: ignore[union-attr]
        if prev is not None:
            h0 = float(g[0] @ prev[0] + g[1] @ prev[1]) if lrs[0] > 0 else 0.0
            h1 = float(g[2] @ prev[2])
            assert s.hypergrad_groups == pytest.approx([h0, h1], rel=1e-4, abs=1e-6)
            assert s.hypergrad == pytest.approx(h0 + h1, rel=1e-4)
            moved = [i for i, lr in enumerate((lrs[0], lrs[0], lrs[1])) if lr > 0]
            step = torch.cat([prev[i] * (lrs[0], lrs[0], lrs[1])[i] for i in moved])
            grad = torch.cat([g[i] for i in moved])
            assert s.hypergrad_cos == pytest.approx(float(grad @ step / (grad.norm() * step.norm())), rel=1e-4)
            assert s.grad_norm == pytest.approx(float(torch.cat(g).norm()), rel=1e-5)
        prev = g
        opt.step()


def test_a_param_group_added_mid_run_counts_as_still_on_the_step_after() -> None:
    """Progressive unfreezing in the long form (the tracker follows every parameter; a group is added mid-run): on the
    step after the addition the LRs read before it have one group fewer. That group's parameters did not move (they
    were in no group): its hypergradient is 0 there (it raised an IndexError with groups at different LRs), its own after."""
    from metalr.signals import SignalTracker

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x, y = torch.randn(64, 6), torch.randint(0, 2, (64,))
    opt = torch.optim.SGD([{"params": net[4].parameters(), "lr": 0.1}, {"params": net[2].parameters(), "lr": 0.01}])
    tracker = SignalTracker(net.parameters(), opt, requires={"hypergrad_groups"})
    seen = []
    for t in range(6):
        if t == 3:
            opt.add_param_group({"params": net[0].parameters(), "lr": 0.001})
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        s = tracker.collect()
        seen.append(s.hypergrad_groups)
        opt.step()
    assert [len(h or []) for h in seen] == [0, 2, 2, 3, 3, 3]
    assert seen[3][2] == 0.0 and seen[4][2] != 0.0  # type: ignore[index]


def test_hypergradient_moves_each_group_and_a_group_at_zero_leaves_the_others_as_without_it() -> None:
    """A first group at LR 0 left the hypergradient controller at a constant LR (it divided by the first group's LR);
    the additive rule gave every group one step of the first group's scale."""

    def run(groups: list[tuple[list[int], float]], rule: str, beta: float) -> list[list[float]]:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        x, y = torch.randn(64, 6), torch.randint(0, 2, (64,))
        params = list(net.parameters())
        opt = torch.optim.SGD([{"params": [params[i] for i in idx], "lr": lr} for idx, lr in groups], momentum=0.9)
        ctrl = controllers.build("hypergradient", opt, rule=rule, beta=beta)
        from metalr.train import build_tracker

        tracker = build_tracker(ctrl, [p for g in opt.param_groups for p in g["params"]], total_steps=25)
        seq = []
        for _ in range(25):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            s = tracker.collect(loss)
            opt.step()
            seq.append(ctrl.step(s))
        return seq

    for rule, beta in (("multiplicative", 0.05), ("additive", 0.01)):
        head_only = [lrs[0] for lrs in run([([2, 3], 0.1)], rule, beta)]
        with_frozen = run([([0, 1], 0.0), ([2, 3], 0.1)], rule, beta)
        assert all(lrs[0] == 0.0 for lrs in with_frozen)
        assert [lrs[1] for lrs in with_frozen] == pytest.approx(head_only, rel=1e-9)
        assert abs(head_only[-1] - 0.1) > 1e-4  # it moved
    two = run([([0, 1], 0.01), ([2, 3], 0.1)], "additive", 0.01)
    one = run([([0, 1, 2, 3], 0.1)], "additive", 0.01)
    assert two[-1][0] != pytest.approx(two[-1][1] - 0.09)  # not one shared step: each group its own hypergradient
    assert one[-1][0] != pytest.approx(two[-1][1])
    split = run([([0, 2], 0.1), ([1, 3], 0.1)], "additive", 0.01)  # a weight-decay split (weights / biases) at one LR
    assert all(a == b for a, b in split) and [a for a, _ in split] == pytest.approx([lrs[0] for lrs in one], rel=1e-9)
