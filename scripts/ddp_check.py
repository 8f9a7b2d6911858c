"""Does every rank of a data-parallel run set the same LR? A real client's check (2 CPU processes, gloo).

    torchrun --standalone --nproc_per_node=2 scripts/ddp_check.py hf runs/ddp_hf            # HF Trainer, 60 steps
    python scripts/ddp_check.py lightning runs/ddp_lightning                                 # Lightning, strategy="ddp", devices=2

Each trains one small model with the pretrained meta-controller's callback (`MetalrCallback("pretrained")`) the way a
user's multi-device run would: the HF Trainer under `torchrun` with evaluation and its default checkpointing (every 20
steps), then once more resumed from its step-40 checkpoint (a fresh model and Trainer, as after an interruption), Lightning with its own `ddp` strategy launching two processes. Each rank records the LR the optimizer applied
at every step and the sum of its final weights; rank 0 then prints how many steps' LRs differ between the ranks and
both weight sums (README, "Use with HF Trainer" and "Use with PyTorch Lightning": before the ranks' loss was averaged,
the LRs differed at most steps and the replicas drifted apart). The models are tiny and freshly initialised: the
figures say nothing about accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _first() -> bool:
    """This process is rank 0 (torchrun sets RANK; Lightning's launcher sets LOCAL_RANK in the processes it starts)."""
    return int(os.environ.get("RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def _report(out: Path) -> None:
    """On rank 0, once both ranks' files are written: how far apart the ranks are."""
    paths = [out / "rank0.json", out / "rank1.json"]
    deadline = time.time() + 300  # (the other rank writes its file right after the same last step: a bound, not a wait)
    while not all(p.is_file() for p in paths):
        if time.time() > deadline:
            raise SystemExit(f"no record from the other rank in {out} after 300 s")
        time.sleep(0.1)
    a, b = (json.loads(p.read_text()) for p in paths)
    differ = sum(x != y for x, y in zip(a["lrs"], b["lrs"]))
    print(f"LRs differ at {differ} of {len(a['lrs'])} steps; weight sums {a['w']!r} / {b['w']!r}")


def hf(out: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    from metalr.integrations.hf import MetalrCallback
    from metalr.testing import TokenData

    class Applied(TrainerCallback):
        def __init__(self) -> None:
            self.lrs: list[float] = []

        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):  # type: ignore[no-untyped-def]
            self.lrs.append(float(optimizer.param_groups[0]["lr"]))

    def trained(resume: str | None) -> tuple[list[float], torch.nn.Module]:
        torch.manual_seed(0)
        cfg = BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=32, num_labels=2
        )  # type: ignore[call-arg]
        model = BertForSequenceClassification(cfg)
        rec = Applied()
        trainer = Trainer(model=model, args=args, train_dataset=TokenData(512, 0), eval_dataset=TokenData(64, 1), callbacks=[MetalrCallback("pretrained"), rec])
        trainer.train(resume_from_checkpoint=resume)
        return rec.lrs, model

    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=8, learning_rate=5e-4, logging_steps=5, max_steps=60, report_to="none",
        disable_tqdm=True, seed=0, use_cpu=True, ddp_backend="gloo", save_steps=20, eval_strategy="steps", eval_steps=20,
        per_device_eval_batch_size=16, dataloader_num_workers=0,
    )  # fmt: skip
    lrs, model = trained(None)
    _write(out, int(os.environ.get("RANK", 0)), lrs, model)
    if _first():
        _report(out)
    # Then as a user resumes an interrupted run: a fresh model and Trainer from the step-40 checkpoint rank 0 wrote.
    resumed, again = trained(str(out / "checkpoint-40"))
    same_w = all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    if _first():
        print(
            f"resumed from checkpoint-40: the last {len(resumed)} LRs equal the uninterrupted run's: {resumed == lrs[-len(resumed) :]}; same weights: {same_w}"
        )


def lightning(out: Path) -> None:
    import lightning.pytorch as L

    from metalr.integrations.lightning import MetalrCallback

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y), sync_dist=True)

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    class Applied(L.Callback):
        def __init__(self) -> None:
            self.lrs: list[float] = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # type: ignore[no-untyped-def]
            self.lrs.append(float(optimizer.param_groups[0]["lr"]))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 10, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:128] + 0.1, y[:128]), batch_size=32)
    rec = Applied()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, callbacks=[MetalrCallback("pretrained"), rec], logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out),
    )  # fmt: skip
    module = Module()
    trainer.fit(module, train, val)
    _write(out, trainer.global_rank, rec.lrs, module)
    if trainer.global_rank == 0:
        _report(out)


def _write(out: Path, rank: int, lrs: list[float], model: torch.nn.Module) -> None:
    w = sum(float(p.detach().double().sum()) for p in model.parameters())
    tmp = out / f".rank{rank}.json.tmp"
    tmp.write_text(json.dumps({"lrs": lrs, "w": w}))
    tmp.replace(out / f"rank{rank}.json")  # atomic: rank 0 waits for the whole file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("client", choices=("hf", "lightning"))
    ap.add_argument("out")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if _first():
        for p in out.glob("rank*.json"):
            p.unlink()
    torch.set_num_threads(1)
    start = time.time()
    (hf if a.client == "hf" else lightning)(out)
    if _first():
        print(f"{a.client}: {time.time() - start:.0f} s")
    if dist.is_initialized():  # the Trainer leaves its process group up: take it down on every rank
        dist.barrier()
        dist.destroy_process_group()
    from metalr.testing import leave_process

    leave_process()  # everything this script reports is written: exit without the finalisation where gloo can abort (metalr.testing)


if __name__ == "__main__":
    main()
