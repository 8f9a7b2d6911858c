"""The per-step path reads nothing back from the device where it says it does not.

On a GPU every `.item()`, `float(t)`, `int(t)`, `bool(t)` or `.tolist()` of a
device tensor is a host-device synchronisation that stalls the step pipeline.
No GPU is needed to check that a code path makes none: these tests count such
calls on CPU by patching `torch.Tensor`, around `SignalTracker.collect` and
`Controller.step` only (the optimizer's own step and the training loop are the
user's business), with the tracker built as it is for parameters on a GPU
(`as_tensors=True` for controllers that declare `device_signals`). They also
check the extra memory each tracker keeps.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from metalr.testing import count_cuda_syncs
from metalr.train import build_tracker, setup

HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy")
SCHEDULES = ("constant", "cosine", "step", "exponential", "onecycle")


@contextlib.contextmanager
def count_host_reads() -> Iterator[list[str]]:
    """Record every host read of a tensor inside the block (the name of the method called)."""
    seen: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def wrap(name: str, fn: Any) -> Any:
        def counted(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            seen.append(name)
            return fn(self, *args, **kwargs)

        return counted

    try:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, wrap(name, fn))
        yield seen
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")


def _loop(name: str, optimizer: str, steps: int, device: str = "cpu", **kwargs: Any) -> tuple[list[list[str]], list[list[str]], Any]:
    """A short training run; per step, the host reads (CPU) or CUDA synchronisations (`device="cuda"`) of collect and step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(device)
    opt: torch.optim.Optimizer
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    elif optimizer == "sgdm":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctrl = setup(name, model=model, optimizer=opt, total_steps=steps, controller_kwargs=kwargs).controller  # the harness's set-up path
    tracker = build_tracker(ctrl, model.parameters(), total_steps=steps, as_tensors=True if ctrl.device_signals else None)  # as on a GPU
    x, y = torch.randn(64, 6).to(device), torch.randint(0, 3, (64,)).to(device)
    count = count_cuda_syncs if device == "cuda" else count_host_reads
    collect_reads, step_reads = [], []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        with count() as seen:
            signals = tracker.collect(loss=loss)
        collect_reads.append(seen)
        opt.step()
        with count() as seen:
            ctrl.step(signals)
        step_reads.append(seen)
    return collect_reads, step_reads, tracker


def test_the_counter_sees_host_reads() -> None:
    t = torch.ones(())
    with count_host_reads() as seen:
        float(t), t.item(), bool(t > 0), t.reshape(1).tolist()  # noqa: B018
    assert seen == ["__float__", "item", "__bool__", "tolist"]


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedules_read_nothing_back(name: str) -> None:
    collect_reads, step_reads, _ = _loop(name, "adam", 12)
    assert collect_reads == [[]] * 12 and step_reads == [[]] * 12


@pytest.mark.parametrize(("optimizer", "every"), [("adam", 1), ("sgdm", 1), ("sgd", 1), ("sgd", 3), ("adam", 4)])
def test_meta_reads_back_only_the_lr_every_sync_every_steps(optimizer: str, every: int) -> None:
    collect_reads, step_reads, tracker = _loop("meta", optimizer, 20, sync_every=5, checkpoint=_shipped_every(every))
    assert tracker.as_tensors and tracker.every == every
    assert collect_reads == [[]] * 20, "the tracker synchronised for meta"
    reads = {i + 1: r for i, r in enumerate(step_reads) if r}
    assert reads == {5: ["tolist"], 10: ["tolist"], 15: ["tolist"], 20: ["tolist"]}


@CUDA
@pytest.mark.parametrize("name", SCHEDULES)
def test_on_cuda_schedules_synchronise_never(name: str) -> None:
    collect_syncs, step_syncs, _ = _loop(name, "adam", 12, device="cuda")
    assert collect_syncs == [[]] * 12 and step_syncs == [[]] * 12


@CUDA
@pytest.mark.parametrize(("optimizer", "every"), [("adam", 1), ("sgdm", 1), ("sgd", 1), ("adam", 8)])
def test_on_cuda_meta_synchronises_only_to_read_the_lr_every_sync_every_steps(optimizer: str, every: int) -> None:
    """What CUDA itself reports (not a count of Python calls): one synchronisation at each read-back of the LR, none else."""
    collect_syncs, step_syncs, tracker = _loop("meta", optimizer, 20, device="cuda", sync_every=5, checkpoint=_shipped_every(every))
    assert tracker.as_tensors and tracker.every == every
    assert collect_syncs == [[]] * 20, "the tracker synchronised for meta"
    assert [i + 1 for i, s in enumerate(step_syncs) if s] == [5, 10, 15, 20]
    assert all(len(s) == 1 for s in step_syncs if s)


@CUDA
@pytest.mark.parametrize("name", ["hypergradient", "grad_variability"])
def test_on_cuda_controllers_that_need_numbers_read_back_once_per_step(name: str) -> None:
    """Controllers whose rule needs Python numbers every step read their statistics back together: one synchronisation."""
    collect_syncs, step_syncs, _ = _loop(name, "adam", 12, device="cuda")
    assert [len(s) for s in collect_syncs[1:]] == [1] * 11 and step_syncs == [[]] * 12


def test_meta_sync_every_holds_the_lr_between_read_backs() -> None:
    """With sync_every=k the rule steps over every step's signals; the optimizer's LR is its value at every k-th step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    # a rule that decides every step (the shipped one decides every 8th), so the device LR moves every step
    s = setup("meta", model=model, optimizer=opt, total_steps=40, controller_kwargs={"sync_every": 4, "checkpoint": _shipped_every(1)})
    s.tracker = build_tracker(s.controller, model.parameters(), total_steps=40, as_tensors=True)
    x, y = torch.randn(32, 5), torch.randn(32, 2)
    lrs, device_lrs = [], []
    for _ in range(40):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        signals = s.tracker.collect(loss=loss)
        opt.step()
        lrs.append(s.controller.step(signals)[0])
        device_lrs.append(0.05 * math.exp(s.controller.log_rel))  # reads back what is kept (the rule's LR of this step); the LRs applied stay
    assert lrs[3::4] == pytest.approx(device_lrs[3::4], rel=1e-12)
    assert lrs[:3] == [0.05] * 3 and all(lrs[i] == lrs[i - 1] for i in range(4, 40) if (i + 1) % 4)
    assert len(set(device_lrs)) > 10  # the rule itself moved every step


@pytest.mark.parametrize(
    ("name", "optimizer", "buffers"),
    [("meta", "adam", 0), ("meta", "sgdm", 0), ("meta", "sgd", 1), ("hypergradient", "adam", 1), ("grad_variability", "adam", 0), ("cosine", "adam", 0)],
)
def test_trackers_keep_at_most_one_model_sized_buffer(name: str, optimizer: str, buffers: int) -> None:
    _, _, tracker = _loop(name, optimizer, 9)  # past the first 8-step block of the shipped meta rule
    n = sum(p.numel() for p in tracker.params)
    # what the tracker holds, whether in its state or set aside between a reading and the next prime (every > 1)
    kept = [b for k in (tracker._prev_grad, tracker._prev_params, tracker._align.prev) for b in k.buffers()]
    sizes = [sum(t.numel() for t in b if t is not None) for b in kept if b is not None]
    assert sizes == [n] * buffers


def _shipped_every(every: int) -> Any:
    """The shipped policy under a rule that decides every `every` steps."""
    from dataclasses import replace

    from metalr.meta.checkpoint import FrozenPolicy, cached_policy

    frozen = cached_policy()
    return FrozenPolicy(frozen.policy, frozen.metadata, "", replace(frozen.rule, decide_every=every))


@pytest.mark.parametrize(("optimizer", "every"), [("adam", 1), ("sgd", 1), ("adam", 4), ("sgd", 3)])
def test_meta_device_path_gives_the_host_path_lrs(optimizer: str, every: int) -> None:
    """Signals as device tensors (the GPU path, here on CPU) and as Python numbers drive meta to the same LRs.

    One training run (driven by the host-path controller); at every step both trackers read the same
    gradients and optimizer state, and each feeds its own controller. `every` > 1: the rule's `decide_every`.
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    base = 3e-2 if optimizer == "adam" else 0.5
    opt = torch.optim.Adam(model.parameters(), lr=base) if optimizer == "adam" else torch.optim.SGD(model.parameters(), lr=base)
    kwargs = {"checkpoint": _shipped_every(every)}
    host = setup("meta", model=model, optimizer=opt, total_steps=60, controller_kwargs=kwargs)
    shadow = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)  # the device controller's LR goes here
    dev_ctrl = setup("meta", model=torch.nn.Linear(1, 1), optimizer=shadow, total_steps=60, controller_kwargs=kwargs).controller
    dev_tracker = build_tracker(dev_ctrl, model.parameters(), total_steps=60, as_tensors=True)
    dev_tracker.optimizer = opt  # reads the trained optimizer's moments, as the host tracker does
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    host_lrs, dev_lrs = [], []
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        signals, dev_signals = host.tracker.collect(loss=loss), dev_tracker.collect(loss=loss)
        if host.tracker.step % every == 0:
            assert isinstance(dev_signals.grad_norm, torch.Tensor) and isinstance(signals.grad_norm, float)
        else:
            assert dev_signals.grad_norm is None and signals.grad_norm is None
        opt.step()
        host_lrs.append(host.controller.step(signals)[0])
        dev_lrs.append(dev_ctrl.step(dev_signals)[0])
    assert dev_lrs == pytest.approx(host_lrs, rel=1e-5) and len(set(host_lrs)) > 10
    dev_state, host_state = dev_ctrl.state_dict()["rule_state"], host.controller.state_dict()["rule_state"]
    assert dev_state["features"] == pytest.approx(host_state["features"], rel=1e-5, nan_ok=True)
    assert dev_state["guard_fired"] == host_state["guard_fired"]


@CUDA
@pytest.mark.parametrize(("optimizer", "every"), [("adam", 1), ("sgd", 1), ("adam", 8)])
def test_on_cuda_meta_device_rule_gives_the_host_rule_lrs(optimizer: str, every: int) -> None:
    """The rule run on the GPU (features, policy, guard as CUDA tensors) and on the host, fed the same signals, give the same LRs.

    A CUDA training run driven by the device controller; every step's signals (CUDA tensors) are kept and,
    after the run, fed as Python numbers to a host-path controller.
    """
    from dataclasses import replace

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).cuda()
    base = 3e-2 if optimizer == "adam" else 0.5
    opt = torch.optim.Adam(model.parameters(), lr=base) if optimizer == "adam" else torch.optim.SGD(model.parameters(), lr=base)
    kwargs = {"checkpoint": _shipped_every(every)}
    dev = setup("meta", model=model, optimizer=opt, total_steps=60, controller_kwargs=kwargs)
    assert dev.tracker.as_tensors
    x, y = torch.randn(64, 6, device="cuda"), torch.randint(0, 3, (64,), device="cuda")
    kept, dev_lrs = [], []
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        signals = dev.tracker.collect(loss=loss)
        names = [k for k in ("loss", "grad_norm", "grad_align", "update_size") if isinstance(getattr(signals, k), torch.Tensor)]
        kept.append((signals, {k: getattr(signals, k).clone() for k in names}))  # a clone on the device: no synchronisation
        opt.step()
        dev_lrs.append(dev.controller.step(signals)[0])
    shadow = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    host = setup("meta", model=torch.nn.Linear(1, 1), optimizer=shadow, total_steps=60, controller_kwargs=kwargs).controller
    host_lrs = []
    for signals, values in kept:
        host_lrs.append(host.step(replace(signals, **{k: float(v) for k, v in values.items()}))[0])
    assert dev_lrs == pytest.approx(host_lrs, rel=1e-5) and len(set(host_lrs)) > 5


def test_meta_kept_device_signals_are_read_in_order_with_steps_that_bring_none() -> None:
    """With device signals kept between read-backs, a step whose signals hold no tensor (no loss given) waits behind
    them: the LR at every read-back and the final state are the host path's, fed the same numbers in the same order."""
    from metalr.controllers import build
    from metalr.signals import Signals

    def run(kept: bool) -> tuple[list[float], float]:
        opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
        ctrl = build("meta", opt, total_steps=60, sync_every=3 if kept else 1, checkpoint=_shipped_every(1))
        lrs = []
        for t in range(1, 61):
            loss = None if t % 5 == 0 else 1.0 - 0.01 * t
            lrs.append(ctrl.step(Signals(step=t, loss=torch.tensor(loss, dtype=torch.float64) if kept and loss is not None else loss))[0])
        return lrs, ctrl.log_rel

    (kept, kept_end), (host, host_end) = run(True), run(False)
    assert kept[2::3] == pytest.approx(host[2::3], rel=1e-12) and kept_end == pytest.approx(host_end, rel=1e-12)
    assert len(set(host)) > 10


def test_meta_sync_every_on_the_policy_steps_follows_the_warmup_and_only_a_guard_cut_waits() -> None:
    """`sync_every` = the rule's `decide_every` (8, shipped): device signals are read back only on the policy's steps,
    so the warmup and every decision give the host path's LRs on the same steps; a guard cut between two decisions
    takes effect at the next read-back, after which the two paths agree again (`scripts/meta_sync_probe.py` measures
    what that delay costs: too much for a default)."""
    from metalr.controllers import build
    from metalr.signals import Signals

    spike = (20, 21)  # a loss 10x the first: the guard (ratio 1.5 of the first loss) fires at step 20

    def run(device: bool) -> tuple[list[float], list[int], int]:
        opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
        ctrl = build("meta", opt, total_steps=400, sync_every=8)  # the shipped checkpoint: decide_every 8, warmup over 8 steps
        lrs, read_steps = [], []
        for t in range(1, 61):
            loss = 10.0 if t in spike else 1.0 - 0.005 * t
            with count_host_reads() as seen:
                lrs.append(ctrl.step(Signals(step=t, loss=torch.tensor(loss, dtype=torch.float64) if device else loss))[0])
            read_steps += [t] if seen else []
        return lrs, read_steps, ctrl.state_dict()["rule_state"]["guard_fired"]

    (dev, dev_reads, dev_fired), (host, _, host_fired) = run(True), run(False)
    assert dev_reads == list(range(8, 61, 8)) and dev_fired == host_fired == 1
    assert len(set(host[:8])) == 8  # the warmup moves the LR every step, on both paths
    assert dev[:19] == pytest.approx(host[:19], rel=1e-12)  # steps 1-19: warmup, the decisions at 8 and 16
    from metalr.meta.checkpoint import cached_policy

    assert host[19] == pytest.approx(cached_policy().rule.guard_factor * host[18], rel=0.05)  # the host path cuts at step 20 ...
    assert dev[19:23] == [dev[18]] * 4  # ... the device path holds its LR until the read-back at step 24 ...
    assert dev[23:] == pytest.approx(host[23:], rel=1e-12)  # ... and from there on the two agree


@pytest.mark.parametrize("bad", [0, -2, True, 2.5, "8"])
def test_meta_refuses_a_sync_every_that_is_not_a_positive_int(bad: Any) -> None:
    from metalr.controllers import build

    with pytest.raises(ValueError, match="sync_every must be an int >= 1"):
        build("meta", torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), total_steps=10, sync_every=bad)


KEPT_UNTIL_DECISION = [
    ("grad_variability", {}, 5),  # decides every `interval` (5) steps
    ("grad_variability_relative", {"interval": 4}, 4),
    ("loss_patterns", {"interval_steps": 3, "window": 3}, 3),  # a period closes every 3 steps
    ("loss_patterns_relative", {"interval_steps": 4, "window": 3}, 4),
]


@pytest.mark.parametrize(("name", "kwargs", "every"), KEPT_UNTIL_DECISION)
def test_controllers_that_decide_every_k_steps_read_back_only_then(name: str, kwargs: dict[str, Any], every: int) -> None:
    """With device signals they keep each step's tensor and read them back together on their decision steps."""
    collect_reads, step_reads, tracker = _loop(name, "adam", 20, **kwargs)
    assert tracker.as_tensors and collect_reads == [[]] * 20
    assert [i + 1 for i, seen in enumerate(step_reads) if seen] == list(range(every, 21, every))
    assert all(seen == ["tolist"] for seen in step_reads if seen)  # one read for all the kept values


@CUDA
@pytest.mark.parametrize(("name", "kwargs", "every"), KEPT_UNTIL_DECISION)
def test_on_cuda_controllers_that_decide_every_k_steps_synchronise_only_then(name: str, kwargs: dict[str, Any], every: int) -> None:
    """CUDA's own count (`count_cuda_syncs`): one synchronisation on each decision step, none on the others."""
    collect_syncs, step_syncs, tracker = _loop(name, "adam", 20, device="cuda", **kwargs)
    assert tracker.as_tensors and collect_syncs == [[]] * 20
    assert [i + 1 for i, seen in enumerate(step_syncs) if seen] == list(range(every, 21, every))


@pytest.mark.parametrize(("name", "kwargs", "every"), [*KEPT_UNTIL_DECISION, ("loss_patterns", {"window": 3}, 0)])
def test_kept_device_signals_give_the_host_path_lrs_and_state(name: str, kwargs: dict[str, Any], every: int) -> None:
    """One training run, two trackers reading the same gradients (Python numbers; device tensors) and two controllers:
    the same LRs, and a state saved between two decisions (kept values folded in) that resumes to the same LRs.
    `every` 0: loss_patterns' default periods, one per epoch (here 7 steps)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    host = setup(name, model=model, optimizer=opt, total_steps=60, controller_kwargs=kwargs)

    def device_controller() -> Any:
        shadow = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=3e-2)  # the device controller's LR goes here
        return setup(name, model=torch.nn.Linear(1, 1), optimizer=shadow, total_steps=60, controller_kwargs=kwargs).controller

    dev = device_controller()
    dev_tracker = build_tracker(dev, model.parameters(), total_steps=60, as_tensors=True)
    dev_tracker.optimizer = opt
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    host_lrs, dev_lrs, saved = [], [], None
    for t in range(1, 61):
        host.tracker.epoch = dev_tracker.epoch = (t - 1) // 7
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        signals, dev_signals = host.tracker.collect(loss=loss), dev_tracker.collect(loss=loss)
        assert isinstance(dev_signals.loss if "loss" in dev.requires else dev_signals.grad_norm, torch.Tensor)
        opt.step()
        host_lrs.append(host.controller.step(signals)[0])
        dev_lrs.append(dev.step(dev_signals)[0])
        if t == 34:  # between two decisions (34 is no multiple of 3, 4, 5 or 7): values are kept
            assert dev._pending
            saved = (dev.state_dict(), host.controller.state_dict(), len(dev_lrs))
            assert not dev._pending
            resumed = device_controller()
            resumed.load_state_dict(saved[0])
            resumed_lrs: list[float] = []
        elif t > 34:
            resumed_lrs.append(resumed.step(dev_signals)[0])
    assert dev_lrs == pytest.approx(host_lrs, rel=1e-9) and len(set(host_lrs)) > 2
    assert saved is not None
    for key in host.controller._state_keys:
        # float32 norms, torch's reduction against numpy's: their summation orders differ by CPU (1.2e-6 apart on an AMD EPYC,
        # where 1e-6 failed a fresh clone in session 32; within 1e-6 on the Intel Xeons before), so a few float32 roundings
        assert saved[0][key] == pytest.approx(saved[1][key], rel=1e-5, nan_ok=True), key
    assert resumed_lrs == pytest.approx(dev_lrs[34:], rel=1e-12)


def test_a_binding_reads_the_loss_only_for_a_controller_that_reads_it() -> None:
    """The integrations hand the step's loss to `after_step`; a controller that does not require it (a schedule,
    plateau on the validation loss) never has it read (on a GPU: no synchronisation per step)."""
    from metalr.integrations.base import Binding
    from metalr.train import build_controller

    model = torch.nn.Linear(3, 1)
    for name, reads in (("cosine", 0), ("plateau", 0), ("loss_patterns", 1), ("plateau", 1)):  # (on a CPU a reader gets a Python number)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        kwargs = {"metric": "loss"} if (name, reads) == ("plateau", 1) else {}
        binding = Binding(build_controller(name, opt, total_steps=10, **kwargs), params=model.parameters(), total_steps=10)
        loss = torch.tensor(0.5)
        binding.before_step()
        with count_host_reads() as seen:
            binding.after_step(loss)
        assert len(seen) == reads, (name, seen)


def test_read_back_keeps_the_order_of_tensors_numbers_and_none_exactly() -> None:
    from metalr.controllers.base import read_back

    values = [torch.tensor(0.1, dtype=torch.float32), None, 2.5, torch.tensor(1 / 3, dtype=torch.float64), torch.tensor(float("nan"))]
    with count_host_reads() as seen:
        out = read_back(values)
    assert seen == ["tolist"]  # one read for every tensor
    assert out[:4] == [float(torch.tensor(0.1, dtype=torch.float32)), None, 2.5, 1 / 3] and math.isnan(out[4])
    assert read_back([1.0, None]) == [1.0, None]


def _signal_stream(steps: int, tensors: bool) -> list[Any]:
    """A fixed stream of signals (no training): a falling loss with a 10x spike at steps 20-21 (the guard fires),
    gradient statistics that change sign, as Python numbers or as 0-d tensors (as a tracker hands them on a GPU)."""
    from metalr.signals import Signals

    out = []
    for t in range(1, steps + 1):
        vals = {
            "loss": 10.0 if t in (20, 21) else 2.0 - 0.01 * t,
            "grad_norm": 1.0 + 0.1 * math.sin(t),
            "grad_align": 0.5 * math.cos(t / 7),
            "update_size": 1e-3 * (1 + 0.5 * math.sin(t / 5)),
        }
        out.append(Signals(step=t, **{k: torch.tensor(v, dtype=torch.float64) if tensors else v for k, v in vals.items()}))
    return out


def _run_meta(stream: list[Any], **kwargs: Any) -> tuple[list[float], Any]:
    from metalr.controllers import build

    opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    ctrl = build("meta", opt, total_steps=400, **kwargs)  # the shipped checkpoint: decide_every 8, warmup over 8 steps
    return [ctrl.step(s)[0] for s in stream], ctrl


@pytest.mark.parametrize("tensors", [False, True])
def test_meta_read_lag_runs_the_exact_rule_one_step_late(tensors: bool) -> None:
    """`read_lag=1`: the LR set after step t is the exact rule's after step t - 1 (its signals up to t - 1), under step
    t + 1's warmup; the guard's cut (spike at step 20) and every decision come one step later, on both paths."""
    from metalr.meta.rule import warmup_factor

    exact, ref = _run_meta(_signal_stream(80, tensors=False))
    lagged, ctrl = _run_meta(_signal_stream(80, tensors=tensors), read_lag=1)
    rule = ref.rule
    w = [warmup_factor(rule, t + 1, 400) for t in range(1, 81)]  # the warmup of the step each LR is for
    assert lagged[0] == pytest.approx(0.1 * w[0], rel=1e-12)  # nothing read yet: the base LR under the warmup
    for t in range(1, 80):  # LR set after step t+1 (lagged) = exact LR after step t, re-enveloped
        assert lagged[t] == pytest.approx(exact[t - 1] / w[t - 1] * w[t], rel=1e-12), t
    cut = rule.guard_factor  # the guard's cut (spike at step 20): one step later
    assert exact[19] == pytest.approx(cut * exact[18], rel=0.05) and lagged[20] == pytest.approx(cut * lagged[19], rel=0.05)
    assert len(set(exact[8:])) > 10  # decisions moved it
    assert ctrl.log_rel == pytest.approx(ref.log_rel, rel=1e-12)  # read for inspection: the rule's state is the exact one


def test_meta_read_lag_reads_each_step_once_and_inspection_or_resume_changes_no_lr() -> None:
    """With tensors, each step reads back one step's copy (the last step's), never more; reading `log_rel` mid-run or
    saving and restoring the controller's state (a resume) gives the same LRs as an uninterrupted run."""
    from metalr.controllers import build

    stream = _signal_stream(60, tensors=True)
    opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    ctrl = build("meta", opt, total_steps=400, read_lag=1)
    plain, reads = [], []
    for s in stream:
        with count_host_reads() as seen:
            plain.append(ctrl.step(s)[0])
        reads.append(len(seen))
    assert reads[0] == 0 and set(reads[1:]) == {1}  # step 1 has nothing to read; from step 2 on, the one copy (`tolist`)
    opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    ctrl = build("meta", opt, total_steps=400, read_lag=1)
    seen_lrs = []
    for s in stream[:30]:
        seen_lrs.append(ctrl.step(s)[0])
        _ = ctrl.log_rel  # an inspection: reads this step early
    state = ctrl.state_dict()
    resumed = build("meta", opt, total_steps=400, read_lag=1)  # a new process: the optimizer's LR restored with it
    resumed.load_state_dict(state)
    seen_lrs += [resumed.step(s)[0] for s in stream[30:]]
    assert seen_lrs == pytest.approx(plain, rel=1e-12)


@pytest.mark.parametrize("bad", [2, -1, True, 0.5])
def test_meta_refuses_a_read_lag_other_than_0_or_1_and_with_sync_every(bad: Any) -> None:
    from metalr.controllers import build

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="read_lag must be 0"):
        build("meta", opt, total_steps=10, read_lag=bad)
    with pytest.raises(ValueError, match="does not combine with sync_every"):
        build("meta", opt, total_steps=10, read_lag=1, sync_every=8)


@CUDA
@pytest.mark.parametrize("optimizer", ["sgdm", "adam"])
def test_on_cuda_meta_with_read_lag_synchronises_never(optimizer: str) -> None:
    """CUDA's own count: with `read_lag=1` no step synchronises: the copies are non-blocking into pinned memory, and
    the host waits only on the last step's copy event (written in session 22 without a GPU: not yet run)."""
    collect_syncs, step_syncs, _ = _loop("meta", optimizer, 20, device="cuda", read_lag=1, checkpoint=_shipped_every(8))
    assert all(not s for s in collect_syncs) and all(not s for s in step_syncs), (collect_syncs, step_syncs)


@pytest.mark.parametrize("name", SCHEDULES)
def test_a_tensor_lr_is_driven_through_the_integrations_without_reading_it(name: str) -> None:
    """The integrations' check for an outside LR write (a framework's own scheduler) compares a tensor LR's identity and
    version counter, not its value: on a GPU a read would be a synchronisation every step. An outside write in place
    is still seen, and undone (logged)."""
    from metalr import controllers
    from metalr.integrations.base import Binding

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    lr = torch.tensor(0.1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    binding = Binding(controllers.build(name, opt, **({"total_steps": 12} if name in ("cosine", "onecycle") else {})), total_steps=12)
    reads = []
    for step in range(12):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        with count_host_reads() as seen:
            binding.before_step()
        opt.step()
        opt.zero_grad()
        with count_host_reads() as seen_after:
            binding.after_step()
        reads.append(seen + seen_after)
        if step == 6:
            lr.fill_(5.0)  # an outside write, in place
    assert opt.param_groups[0]["lr"] is lr and math.isclose(float(lr), binding.controller.get_last_lr()[0], rel_tol=1e-6)
    assert reads[:7] == [[]] * 7 and reads[8:] == [[]] * 4  # the outside write is read (for the log) once, at step 8
    assert reads[7] and all(r == "__float__" for r in reads[7]) and binding.applied[0] != 5.0
