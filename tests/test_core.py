"""Registry errors, state checks, signals, config validation, harness determinism, recovery and TensorBoard."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from metalr import controllers, tasks, train
from metalr.config import ConfigError, load_config
from metalr.signals import GRADIENT_SIGNALS, Signals, SignalTracker


def _opt(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=lr)


def test_unknown_controller_lists_valid_names() -> None:
    with pytest.raises(KeyError) as e:
        controllers.build("cosin", _opt())
    msg = str(e.value)
    assert "cosin" in msg and "cosine" in msg and "constant" in msg


def test_unknown_keyword_lists_valid_ones() -> None:
    with pytest.raises(TypeError) as e:
        controllers.build("step", _opt(), step_sz=3)
    assert "step_sz" in str(e.value) and "step_size" in str(e.value) and "gamma" in str(e.value)


def test_unknown_task_and_override_list_valid_ones() -> None:
    with pytest.raises(KeyError, match="digits_mlp"):
        tasks.build("digits_mpl")
    with pytest.raises(TypeError, match="batch_size"):
        tasks.build("digits_mlp", batchsize=3)
    with pytest.raises(ValueError, match="cpu, full"):
        tasks.build("digits_mlp", preset="gpu")


def test_available_holds_the_classic_schedules() -> None:
    assert {"constant", "step", "exponential", "cosine", "plateau", "hypergradient"} <= set(controllers.available())
    assert {"digits_mlp", "digits_cnn", "mnist1d_cnn"} <= set(tasks.available())


def test_state_from_another_controller_is_refused() -> None:
    state = controllers.build("constant", _opt()).state_dict()
    with pytest.raises(ValueError, match="constant"):
        controllers.build("cosine", _opt()).load_state_dict(state)


def test_step_writes_every_param_group() -> None:
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.01}])
    ctrl = controllers.build("exponential", opt, gamma=0.5)
    lrs = ctrl.step()
    assert lrs == [0.05, 0.005] == [g["lr"] for g in opt.param_groups] == ctrl.get_last_lr()


def test_non_finite_proposal_keeps_previous_lr() -> None:
    ctrl = controllers.build("hypergradient", _opt(), rule="additive", beta=1.0)
    lr = ctrl.step(Signals(hypergrad=math.nan))
    assert lr == [0.1] and all(math.isfinite(g["lr"]) for g in ctrl.optimizer.param_groups)


def test_tracker_computes_only_requested_signals() -> None:
    model = torch.nn.Linear(4, 3)
    opt = _opt()
    bare = SignalTracker(model.parameters(), opt, requires=())
    full = SignalTracker(model.parameters(), opt, requires={"grad_norm", "grad_cos", "accuracy"})
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    for _ in range(2):
        model.zero_grad()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        s0, s1 = bare.collect(loss, logits, y), full.collect(loss, logits, y)
    assert s0.grad_norm is None and s0.accuracy is None and s0.loss is None  # not even the loss: float(loss) is a host sync on a GPU
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])  # type: ignore[union-attr]
    assert s1.grad_norm == pytest.approx(float(g.norm()), rel=1e-6)
    assert s1.grad_cos == pytest.approx(1.0)  # same batch, same params: identical gradients
    assert s1.accuracy == pytest.approx(float((logits.argmax(-1) == y).float().mean()))
    with pytest.raises(ValueError, match="grad_norm"):
        SignalTracker(model.parameters(), opt, requires={"grad_nrom"})


def test_tracker_leaves_sparse_gradients_out_of_its_statistics_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """An `nn.Embedding(sparse=True)` beside dense layers: the statistics are those of the dense gradients (before: a crash)."""
    torch.manual_seed(0)
    emb, head = torch.nn.Embedding(50, 8, sparse=True), torch.nn.Linear(8, 3)
    params = [*emb.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.1)
    tracker = SignalTracker(params, opt, requires=GRADIENT_SIGNALS | {"loss"})
    dense = SignalTracker(list(head.parameters()), torch.optim.SGD(head.parameters(), lr=0.1), requires={"grad_norm", "grad_cos"})
    with caplog.at_level("WARNING", logger="metalr.signals"):
        for step in range(4):
            loss = torch.nn.functional.cross_entropy(head(emb(torch.randint(0, 50, (16,)))), torch.randint(0, 3, (16,)))
            loss.backward()
            s, d = tracker.collect(loss=loss), dense.collect(loss=loss)
            assert s.grad_norm == d.grad_norm and s.grad_cos == d.grad_cos
            assert math.isfinite(s.grad_align) if step else s.grad_align is None  # (plain SGD: against the previous gradient)
            opt.step()
            opt.zero_grad()
    said = [r.getMessage() for r in caplog.records if "sparse gradients" in r.getMessage()]
    assert len(said) == 1 and "1 parameter(s)" in said[0] and "(50, 8)" in said[0]
    assert tracker.collect(loss=1.0).update_size is not None  # the weights themselves are dense: all of them are sampled


def test_tracker_refuses_gradient_statistics_when_every_gradient_is_sparse() -> None:
    """An embedding model trained by `SparseAdam` alone has no dense gradient: the meta-controller read gradient
    statistics over none (norm 0) and cut the LR 30x in 60 steps, only a warning said why; now a clear error."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 8, sparse=True)
    opt = torch.optim.SparseAdam(list(emb.parameters()), lr=0.01)
    tracker = SignalTracker(list(emb.parameters()), opt, requires={"loss", "grad_norm", "grad_align"})
    emb(torch.randint(0, 50, (16,))).pow(2).mean().backward()
    with pytest.raises(ValueError, match="every gradient of this step is sparse.*dense gradients"):
        tracker.collect(loss=1.0)
    schedule = SignalTracker(list(emb.parameters()), opt, requires={"loss"})  # a schedule's tracker reads no gradient
    assert schedule.collect(loss=1.0).loss == 1.0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_tracker_every_k_reports_the_every_step_values_on_its_steps(momentum: float) -> None:
    """`every=3`: gradient-level signals only on steps 3, 6, ...; there equal to an every-step tracker's (the buffers
    they compare with are primed on the step before); the loss every step; the phase survives a state round trip."""
    from metalr.signals import GRADIENT_SIGNALS

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    every1 = SignalTracker(model.parameters(), opt, requires=GRADIENT_SIGNALS | {"loss"})
    every3 = SignalTracker(model.parameters(), opt, requires=GRADIENT_SIGNALS | {"loss"}, every=3)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for t in range(1, 13):
        if t == 7:  # a restored tracker keeps the phase and the primed buffers
            restored = SignalTracker(model.parameters(), opt, requires=GRADIENT_SIGNALS | {"loss"}, every=3)
            restored.load_state_dict(every3.state_dict())
            every3 = restored
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x + 0.1 * t), y)
        loss.backward()
        a, b = every1.collect(loss), every3.collect(loss)
        assert b.loss == a.loss
        names = ("grad_norm", "grad_cos", "grad_align", "update_size", "hypergrad", "hypergrad_cos")
        if t % 3:
            assert all(getattr(b, n) is None for n in names), t
        else:
            for n in names:
                assert getattr(a, n) is not None and getattr(b, n) == pytest.approx(getattr(a, n), rel=1e-6), (t, n)
        opt.step()
    with pytest.raises(ValueError, match="every"):
        SignalTracker(model.parameters(), opt, requires=(), every=0)


def test_tracker_every_k_copies_the_previous_gradient_and_weights_only_on_prime_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """`every=3`, plain SGD (no moment to compare with): the model-sized copies (previous gradient for
    grad_cos and grad_align, previous weights for hypergrad) happen on the step before each reading,
    into buffers allocated once, not also after the reading; between them the state holds no previous reading."""
    import metalr.gradstats as gradstats
    from metalr.signals import GRADIENT_SIGNALS

    copies: list[int] = []
    real = gradstats.copy_into

    def counting(buffers, tensors):  # type: ignore[no-untyped-def]
        copies.append(step)
        return real(buffers, tensors)

    monkeypatch.setattr(gradstats, "copy_into", counting)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = SignalTracker(model.parameters(), opt, requires=GRADIENT_SIGNALS | {"loss"}, every=3)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    buffers = set()
    for step in range(1, 13):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x + 0.1 * step), y).backward()
        s = tracker.collect()
        if step % 3 == 0:
            assert s.grad_cos is not None and s.hypergrad is not None and s.grad_align is not None
            state = tracker.state_dict()
            assert state["prev_grad"] is None and state["prev_params"] is None and state["align"]["prev"] is None
        else:
            held = [tracker._prev_grad.tensors, tracker._prev_params.tensors, tracker._align.prev.tensors]
            buffers |= {id(t) for b in held if b is not None for t in b}
        opt.step()
    assert copies == [t for t in (2, 5, 8, 11) for _ in range(3)]  # 3 buffers, each copied once per 3 steps
    assert len(buffers) == 3 * len(list(model.parameters()))  # the same buffers each time: allocated once


@pytest.mark.parametrize("chunk", [None, 5])
def test_hypergrad_one_pass_host_step_gives_the_torch_path_numbers(monkeypatch: pytest.MonkeyPatch, chunk: int | None) -> None:
    """`hypergrad` on CPU takes one pass over memory (`host_step_dots`): the same numbers as the three-call torch
    path (bit for bit unless a tensor is walked in slices), the kept buffer holding the weights after each step.
    A non-contiguous parameter (whose kept copy has no flat view) takes the torch path."""
    import metalr.gradstats as gradstats
    import metalr.signals as signals_mod

    if chunk is not None:
        monkeypatch.setattr(gradstats, "STEP_CHUNK", chunk)  # every tensor but the last bias (3 entries) walked in slices
    calls: list[int] = []
    real = gradstats.host_step_dots
    monkeypatch.setattr(signals_mod, "host_step_dots", lambda *a: calls.append(1) or real(*a))
    for contiguous in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        if not contiguous:
            model[2].weight = torch.nn.Parameter(torch.randn(8, 3).t())  # a transposed (strided) weight
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        fast = SignalTracker(model.parameters(), opt, requires={"hypergrad"})
        slow = SignalTracker(model.parameters(), opt, requires={"hypergrad"})
        monkeypatch.setattr(slow, "_host_step", lambda *a: None)  # the torch path: sub, dots, copy
        calls.clear()
        x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        for step in range(6):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x + 0.1 * step), y).backward()
            a, b = fast.collect(), slow.collect()
            for name in ("grad_norm", "hypergrad", "hypergrad_cos"):
                if chunk is None:
                    assert getattr(a, name) == getattr(b, name), (step, name)
                else:
                    assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-6), (step, name)
            assert all(torch.equal(k, p) for k, p in zip(fast._prev_params.tensors, model.parameters()))  # type: ignore[union-attr]
            opt.step()
        assert a.hypergrad is not None and a.hypergrad_cos is not None
        assert len(calls) == (5 if contiguous else 0)  # every step after the first, on contiguous weights


def test_per_group_hypergrad_gives_on_the_torch_path_the_host_numbers_and_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Param groups at different LRs take the per-tensor path (`each_dots`): its torch reductions (a GPU's path) give
    the numpy numbers, a state saved mid-run resumes them, and a state of the single-LR format (one number) loads."""
    import metalr.gradstats as gradstats

    def run(host: bool, resume_at: int | None = None, old_format: bool = False) -> list[tuple[float, ...]]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        ps = list(model.parameters())
        opt = torch.optim.Adam([{"params": ps[:2], "lr": 0.01}, {"params": ps[2:], "lr": 0.05}])
        tracker = SignalTracker(ps, opt, requires={"hypergrad_groups"})
        x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        out = []
        for step in range(6):
            if step == resume_at:
                state = tracker.state_dict()
                if old_format:
                    opt.param_groups[1]["lr"] = 0.01  # one LR for both groups, as the old format could only record
                    state["prev_lr"] = 0.01
                tracker = SignalTracker(ps, opt, requires={"hypergrad_groups"})
                tracker.load_state_dict(state)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x + 0.1 * step), y).backward()
            s = tracker.collect()
            out.append((s.grad_norm, s.hypergrad, s.hypergrad_cos, *(s.hypergrad_groups or [])))
            opt.step()
        return out

    host = run(True)
    assert len(host[-1]) == 5 and host[0][1] is None
    assert run(True, resume_at=3) == host
    with monkeypatch.context() as m:
        m.setattr(gradstats, "_host_arrays", lambda tensors: None)
        torch_path = run(False)
    for a, b in zip(host[1:], torch_path[1:]):
        assert a == pytest.approx(b, rel=1e-5)
    old = run(True, resume_at=3, old_format=True)
    assert old[3][1] is not None and old[:3] == host[:3]


def test_eval_signals_arrive_once() -> None:
    model = torch.nn.Linear(2, 1)
    t = SignalTracker(model.parameters(), _opt())
    t.record_eval(0.5, 0.9)
    assert (t.collect(loss=1.0).val_loss, t.collect(loss=1.0).val_loss) == (0.5, None)


def test_harness_is_deterministic_and_learns() -> None:
    task = tasks.build("digits_mlp", steps=60, eval_every=30)
    a = train.run(task, "cosine", seed=3)
    b = train.run(task, "cosine", seed=3)
    c = train.run(task, "cosine", seed=4)
    assert a.loss == b.loss and a.lr == b.lr
    assert [e["val_loss"] for e in a.evals] == [e["val_loss"] for e in b.evals]
    assert a.loss != c.loss
    assert len(a.loss) == 60 and [e["step"] for e in a.evals] == [30, 60]
    assert a.evals[-1]["val_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert a.lr[0] == pytest.approx(1e-3) and a.lr[-1] < 1e-4  # cosine decays over the run


def test_harness_epochs_convert_to_steps() -> None:
    task = tasks.build("wine_mlp")
    h = train.run(task, "constant", epochs=2, seed=0)
    assert len(h.loss) == 2 * len(task.train_loader(0))


def test_tensorboard_event_file_holds_lr_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    task = tasks.build("wine_mlp", steps=20, eval_every=10)
    h = train.run(task, "exponential", controller_kwargs={"gamma": 0.9}, seed=0, log_dir=tmp_path)
    run_dir = tmp_path / "wine_mlp__exponential__0"
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    lrs = [e.value for e in acc.Scalars("charts/lr")]
    assert lrs == pytest.approx(h.lr, rel=1e-6)
    assert lrs[1] == pytest.approx(lrs[0] * 0.9, rel=1e-6)
    assert len(acc.Scalars("eval/val_loss")) == 2


def test_nan_loss_recovers_then_diverges() -> None:
    task = tasks.build("wine_mlp", steps=50, eval_every=10, lr=1e6)  # SGD at LR 1e6 overflows
    h = train.run(task, "constant", seed=0, max_retries=2)
    assert h.diverged and h.recoveries == 2
    assert not math.isfinite(h.loss[-1])
    h2 = train.run(task, "constant", seed=0, nan_recovery=False)
    assert h2.diverged and h2.recoveries == 0


def test_recovery_rolls_every_clock_back_to_the_snapshot() -> None:
    """One NaN loss mid-run: model, optimizer, controller, tracker (and its resource source) and the step
    counter all go back to the last evaluation; resource_aware's decisions and readings stay in step."""
    task = tasks.build("wine_mlp", steps=30, eval_every=10)
    forward, calls = task.forward, [0]

    def poisoned(model, batch):  # type: ignore[no-untyped-def]
        calls[0] += 1
        out = forward(model, batch)
        if calls[0] == 15:  # a training step after the evaluation at step 10 (the evaluation calls forward too)
            out.loss = out.loss * float("nan")
        return out

    task.forward = poisoned  # type: ignore[method-assign]
    h = train.run(task, "resource_aware", controller_kwargs={"interval_steps": 4, "reader": lambda: {"cpu_util": 0.9, "mem_util": 0.1}}, seed=0)
    assert h.recoveries == 1 and not h.diverged
    assert h.steps == list(range(1, 31)) and [e["step"] for e in h.evals] == [10, 20, 30]  # one entry per step, no gap
    assert h.lr[10:] == pytest.approx([0.5 * h.lr[9]] * 20, rel=1e-12)  # halved; every later decision read the same load
    assert h.extras["resource_cpu_util"] == [0.9] * 30


def test_config_rejects_bad_input(tmp_path: Path) -> None:
    from dataclasses import dataclass, field

    @dataclass
    class Cfg:
        lr: float = 0.1
        window: int = 5
        names: list[str] = field(default_factory=list)

        def __post_init__(self) -> None:
            if self.lr <= 0:
                raise ValueError(f"lr must be > 0, got {self.lr}")

    assert load_config(Cfg, None, ["lr=1e-3", "names=[a, b]"]) == Cfg(lr=1e-3, names=["a", "b"])
    for bad, word in [
        ("lrr=1", "lrr"),
        ("lr=fast", "lr"),
        ("window=2.5", "window"),
        ("lr=-1", "lr must be > 0"),
        ("names=3", "names"),
        ("noequals", "key=value"),
    ]:
        with pytest.raises(ConfigError, match=word):
            load_config(Cfg, None, [bad])
    p = tmp_path / "c.yaml"
    p.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Cfg, p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Cfg, p)


@pytest.mark.parametrize(
    "name,kw,word",
    [
        ("uncertainty", {"passes": 10**6}, "passes"),
        ("loss_patterns", {"window": 0}, "window"),
        ("step", {"step_size": 0}, "step_size"),
        ("cosine", {"total_steps": 10, "warmup_steps": 10}, "warmup_steps"),
        ("constant", {"min_lr": -1.0}, "min_lr"),
        ("constant", {"min_lr": 0.5, "max_lr": 0.1}, "max_lr"),
        ("plateau", {"metric": "val_f1"}, "metric"),
    ],
)
def test_out_of_range_settings_are_refused(name: str, kw: dict[str, object], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        controllers.build(name, _opt(), **kw)


def test_train_meta_config_error_is_a_message_not_a_traceback() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, str(root / "train_meta.py"), "--config", str(root / "configs/meta_train.yaml"), "meta_lr=-1"], capture_output=True, text=True
    )
    assert res.returncode == 2 and res.stderr.startswith("config error:") and "meta_lr" in res.stderr and "Traceback" not in res.stderr
