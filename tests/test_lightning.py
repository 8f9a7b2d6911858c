"""metalr controllers drive a Lightning 2.x Trainer through metalr.integrations.lightning.MetalrCallback.

A small MLP LightningModule on fixed data (no shuffling, no dropout, so a resumed run
can match an uninterrupted one exactly). Checks: the optimizer applies the
controller's LR, the LR reaches TensorBoard through Lightning's logger, the
controller's state is in Lightning checkpoints and a `ckpt_path=` resume applies the
same LRs and ends with the same weights; every controller works or is refused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

L = pytest.importorskip("lightning.pytorch")
from metalr.controllers import available, get  # noqa: E402
from metalr.controllers.cosine import cosine_lr  # noqa: E402
from metalr.integrations.lightning import MetalrCallback  # noqa: E402
from metalr.testing import smoke_kwargs  # noqa: E402

EPOCHS, BATCHES, LR = 3, 4, 1e-2


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Module(L.LightningModule):
    def __init__(self, optimizer_name: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        self.optimizer_name = optimizer_name

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self.net(x)
        return {"loss": torch.nn.functional.cross_entropy(logits, y), "logits": logits.detach(), "targets": y}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
        self.log("val_accuracy", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name and get(self.optimizer_name).owns_optimizer:
            return get(self.optimizer_name).make_optimizer(self.parameters(), total_steps=EPOCHS * BATCHES)  # type: ignore[attr-defined,no-any-return]
        return torch.optim.Adam(self.parameters(), lr=LR)


def loaders() -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16 * BATCHES, 10, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    ds = torch.utils.data.TensorDataset(x, y)
    val = torch.utils.data.TensorDataset(x[:32] + 0.1, y[:32])
    return torch.utils.data.DataLoader(ds, batch_size=16, shuffle=False), torch.utils.data.DataLoader(val, batch_size=32)


class AppliedLR(L.Callback):
    """The LR in the optimizer just before each optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # type: ignore[no-untyped-def]
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))


class StopAfterEpoch(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def fit(tmp: Path, callbacks: list[Any], module: Module | None = None, ckpt_path: str | None = None, logger: Any = False, accumulate: int = 1) -> Module:
    module = module or Module()
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp / "ckpt", every_n_epochs=1, save_top_k=-1, save_on_train_epoch_end=True)
    trainer = L.Trainer(
        max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=logger, callbacks=[*callbacks, ckpt], enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1, num_sanity_val_steps=0, accumulate_grad_batches=accumulate, deterministic=True,
    )  # fmt: skip
    train, val = loaders()
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return module


def test_cosine_sets_the_lr_and_logs_it_to_tensorboard(tmp_path: Path) -> None:
    applied, cb = AppliedLR(), MetalrCallback("cosine")
    fit(tmp_path, [cb, applied], logger=L.loggers.TensorBoardLogger(str(tmp_path / "tb"), name="run"))
    total = EPOCHS * BATCHES
    assert applied.lrs == pytest.approx([cosine_lr(t, LR, total) for t in range(total)], rel=1e-12, abs=0)
    assert cb.lrs == applied.lrs

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb" / "run" / "version_0"))
    acc.Reload()
    events = acc.Scalars("charts/lr")
    assert [e.step for e in events] == list(range(1, total + 1))
    assert [e.value for e in events] == pytest.approx(applied.lrs, rel=1e-5)  # float32 in TensorBoard


RESUME_CASES = {  # name: (controller, kwargs, accumulate_grad_batches)
    "pretrained": ("pretrained", {}, 1),  # feature state, previous gradient, batch accuracy from the outputs dict
    "hypergradient_accum": ("hypergradient", {"beta": 0.2}, 2),  # tracker's previous parameters; gradient accumulation
    # validation at the end of epoch 0 reaches the controller after the resume; mode="max": the next one halves the LR
    "plateau": ("plateau", {"patience": 0, "factor": 0.5, "mode": "max"}, 1),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_ckpt_path_resume_applies_the_uninterrupted_lrs(tmp_path: Path, case: str) -> None:
    spec, kwargs, accum = RESUME_CASES[case]
    full_lrs, full_cb = AppliedLR(), MetalrCallback(spec, **kwargs)
    full = fit(tmp_path / "full", [full_cb, full_lrs], accumulate=accum)
    assert len(full_lrs.lrs) == EPOCHS * BATCHES // accum and len(set(full_lrs.lrs)) > 1

    first = AppliedLR()
    fit(tmp_path / "cut", [MetalrCallback(spec, **kwargs), first, StopAfterEpoch(0)], accumulate=accum)
    (ckpt,) = (tmp_path / "cut" / "ckpt").glob("epoch=0-*.ckpt")
    saved = torch.load(ckpt, weights_only=True)["callbacks"]
    (state,) = [v for k, v in saved.items() if k.startswith("MetalrCallback")]
    assert state["global_step"] == BATCHES // accum

    resumed_lrs, resumed_cb = AppliedLR(), MetalrCallback(spec, **kwargs)
    resumed = fit(tmp_path / "cut", [resumed_cb, resumed_lrs], ckpt_path=str(ckpt), accumulate=accum)
    assert first.lrs + resumed_lrs.lrs == pytest.approx(full_lrs.lrs, rel=1e-9, abs=0)
    assert resumed_cb.lrs == pytest.approx(full_cb.lrs, rel=1e-9, abs=0)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), name


@pytest.mark.parametrize("name", [n for n in available() if "uncertainty" not in get(n).requires])
def test_every_controller_resumes_under_lightning(tmp_path: Path, name: str) -> None:
    kwargs = {k: v for k, v in smoke_kwargs(name).items() if k != "total_steps"}
    if name == "resource_aware":
        kwargs["reader"] = lambda: {"cpu_util": 0.5, "mem_util": 0.2}
    full = AppliedLR()
    fit(tmp_path, [MetalrCallback(name, **kwargs), full], module=Module(name))
    assert len(full.lrs) == EPOCHS * BATCHES and all(math.isfinite(lr) for lr in full.lrs)
    (ckpt,) = (tmp_path / "ckpt").glob("epoch=0-*.ckpt")
    resumed = AppliedLR()
    fit(tmp_path / "again", [MetalrCallback(name, **kwargs), resumed], module=Module(name), ckpt_path=str(ckpt))
    assert resumed.lrs == pytest.approx(full.lrs[BATCHES:], rel=1e-9, abs=0)


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="metalr.train.run"):
        MetalrCallback("uncertainty")
    with pytest.raises(TypeError, match="configure_optimizers"):
        fit(tmp_path, [MetalrCallback("prodigy")])  # the module returns Adam, not Prodigy

    class WithScheduler(Module):
        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            opt = torch.optim.Adam(self.parameters(), lr=LR)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1)}

    with pytest.raises(ValueError, match="not an LR scheduler"):
        fit(tmp_path / "s", [MetalrCallback("cosine")], module=WithScheduler())


def test_a_module_holding_a_pretrained_model_gets_the_meta_controllers_lr_cap(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A LightningModule that holds a model loaded with transformers' `from_pretrained` (seen by `config._name_or_path`
    on any submodule) gets the meta-controller under the same default cap as the HF callback, logged; `max_factor`
    given is used as given; a module without one is left alone."""
    import types

    from metalr.integrations.base import PRETRAINED_MAX_FACTOR

    class Holder(Module):
        def __init__(self) -> None:
            super().__init__()
            self.net.config = types.SimpleNamespace(_name_or_path="org/pretrained-model")  # what from_pretrained leaves on a model

    def run(module: Module, **kwargs: Any) -> tuple[Any, list[str]]:
        caplog.clear()
        cb = MetalrCallback("pretrained", **kwargs)
        with caplog.at_level("WARNING", logger="metalr.integrations.base"):
            fit(tmp_path / str(len(kwargs)) / type(module).__name__, [cb], module=module)
        return cb.controller, [r.getMessage() for r in caplog.records if r.name == "metalr.integrations.base" and "max_factor" in r.getMessage()]

    ctrl, warned = run(Holder())
    assert ctrl.rule.max_factor == PRETRAINED_MAX_FACTOR and len(warned) == 1 and "org/pretrained-model" in warned[0]  # type: ignore[attr-defined]
    ctrl, warned = run(Holder(), max_factor=5.0)
    assert ctrl.rule.max_factor == 5.0 and warned == []  # type: ignore[attr-defined]
    ctrl, warned = run(Module())
    assert ctrl.rule.max_factor > PRETRAINED_MAX_FACTOR and warned == []  # type: ignore[attr-defined]
