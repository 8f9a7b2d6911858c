"""What the meta-controller reads at its decision steps, on a pretrained transformer and on generated tasks (research).

    python scripts/meta_feature_probe.py [--checkpoint PATH] [--steps 96]

Runs the `rt_minilm` task (all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes, Adam, cpu preset) under the
controller for `--steps` steps, then three generated tasks of `scripts/meta_continue_probe.py`'s stream
(888000 + i) twice each: pretrained and continued at the usual LR (`with_pretraining(..., "continue")`), and
from scratch at x0.1 of it. Prints, every 8th (MiniLM) or 16th step, the LR factor and the run-dependent
features (`metalr.meta.features.FEATURE_NAMES` from `trend_fast` on). No output is published from it;
docs/meta_training/README.md ("Session 14") quotes one run of it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metalr import tasks  # noqa: E402
from metalr.controllers.meta import MetaController  # noqa: E402
from metalr.meta.checkpoint import cached_policy  # noqa: E402
from metalr.meta.features import FEATURE_NAMES  # noqa: E402
from metalr.meta.tasks import ALL_FAMILIES, USUAL_LR, batch_stream, materialise, sample_spec, with_pretraining  # noqa: E402
from metalr.signals import SignalTracker  # noqa: E402
from metalr.train import setup  # noqa: E402


def show(title: str, rows: list[tuple[int, float, list[float]]]) -> None:
    print(title)
    for step, factor, f in rows:
        print(f"  step {step:4d} LR x{factor:6.2f}  " + " ".join(f"{n}={v:+.2f}" for n, v in zip(FEATURE_NAMES[2:], f[2:])))


def minilm(checkpoint: str, steps: int) -> None:
    task = tasks.build("rt_minilm")
    s = setup("pretrained", task=task, total_steps=steps, seed=0, controller_kwargs={"path": checkpoint})
    ctrl = s.controller
    assert isinstance(ctrl, MetaController) and s.task is not None
    rows, step = [], 0
    while step < steps:
        for b in s.task.train_loader(0):
            s.optimizer.zero_grad(set_to_none=True)
            out = s.task.forward(s.model, b)
            out.loss.backward()
            sig = s.tracker.collect(loss=out.loss, logits=out.logits, targets=out.targets, batch_size=out.batch_size)
            s.optimizer.step()
            ctrl.step(sig)
            step += 1
            if step % 8 == 0:
                rows.append((step, s.optimizer.param_groups[0]["lr"] / ctrl.base_lrs[0], ctrl.policy_features()))
            if step >= steps:
                break
    show(f"rt_minilm ({type(s.optimizer).__name__}, base LR {task.lr:g})", rows)


def generated(checkpoint: str, steps: int) -> None:
    frozen = cached_policy(checkpoint)
    for i in (0, 3, 5):
        spec = sample_spec(888_000 + i, ALL_FAMILIES, steps_range=(200, 1000))
        spec = replace(spec, lr=USUAL_LR[spec.optimizer])
        for label, sp in (
            ("pretrained, continued at the usual LR", with_pretraining(spec, "continue")),
            ("from scratch at x0.1", replace(spec, lr=spec.lr * 0.1)),
        ):
            task = materialise(sp)
            opt = task.make_optimizer()
            ctrl = MetaController(opt, checkpoint=frozen, total_steps=sp.steps)
            tracker = SignalTracker(task.model.parameters(), opt, requires=ctrl.requires, total_steps=sp.steps, every=ctrl.signal_every)
            rows = []
            for k, idx in enumerate(batch_stream(task)[:steps]):
                opt.zero_grad(set_to_none=True)
                loss = task.loss(task.model(task.x_train[idx]), task.y_train[idx])
                loss.backward()
                sig = tracker.collect(loss=loss)
                opt.step()
                ctrl.step(sig)
                if (k + 1) % 16 == 0:
                    rows.append((k + 1, opt.param_groups[0]["lr"] / ctrl.base_lrs[0], ctrl.policy_features()))
            show(f"{sp.data}/{sp.model}/{sp.optimizer}, {label} ({sp.steps}-step run)", rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints/metalr_default.safetensors"))
    ap.add_argument("--steps", type=int, default=96)
    args = ap.parse_args()
    torch.set_num_threads(2)
    minilm(args.checkpoint, args.steps)
    generated(args.checkpoint, args.steps)


if __name__ == "__main__":
    main()
