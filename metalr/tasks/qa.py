"""Extractive QA in the SQuAD v2 shape: answer spans or "no answer", scored by EM / F1.

- `synthetic_qa` (offline, SYNTHETIC): no real QA data ships in any installable
  package here, so this task generates SQuAD v2-shaped data: a context of short
  facts ("the city of dario is new york ."), a question ("what is the city of
  dario ?") and, for about a third of the questions, no answer in the context
  (the person or the attribute asked about is absent). Distractor facts share
  the person or the attribute, so the model must match both. Model: `BiLSTMQA`.
- `squad_v2_bert` (hub `squad_v2`, or a local copy): a BERT QA head; the cpu
  preset uses the shipped all-MiniLM-L6-v2 encoder (its QA head starts untrained).

Batches are `(input_ids, token_type_ids, attention_mask, start, end)`; position 0
(`[CLS]`) is the no-answer slot. One feature per question: contexts longer than
`max_len` are truncated (no doc-stride windows); a training answer cut off by the
truncation becomes "no answer", while evaluation keeps the true gold answers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from metalr import text_metrics
from metalr.hub import load_hf_dataset, train_val
from metalr.tasks import register
from metalr.tasks.base import StepOutput, Task
from metalr.tasks.text import BERT_MODEL_ENV, Vocab, trim_collate

SpanText = Callable[[int, int, int], str]  # (val example index, start position, end position) -> answer text


def best_spans(start: torch.Tensor, end: torch.Tensor, allowed: torch.Tensor, max_answer_len: int = 30) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best (start, end) with start <= end < start + max_answer_len inside `allowed` positions (never 0),
    and whether it beats the null score start[0] + end[0]. Returns (start, end, has_answer)."""
    t = start.shape[1]
    ok = allowed.clone()
    ok[:, 0] = False
    scores = start.unsqueeze(2) + end.unsqueeze(1)  # (B, T, T): [i, j] = s_i + e_j
    i, j = torch.arange(t).view(-1, 1), torch.arange(t).view(1, -1)
    band = ((j >= i) & (j - i < max_answer_len)).to(start.device)
    valid = band & ok.unsqueeze(2) & ok.unsqueeze(1)
    flat = scores.masked_fill(~valid, float("-inf")).flatten(1)
    best, idx = flat.max(1)
    has = best > start[:, 0] + end[:, 0]
    return idx // t, idx % t, has & torch.isfinite(best)


@dataclass
class QATask(Task):
    """Span prediction; `val_answers[i]` are question i's gold texts ([] = unanswerable)."""

    val_answers: list[list[str]] = field(default_factory=list)
    span_text: SpanText | None = None
    max_answer_len: int = 30
    family: str = "qa"

    @staticmethod
    def allowed(token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ok = (token_type_ids == 1) & (attention_mask == 1)
        ok[:, 0] = True  # the no-answer slot
        return ok

    def span_logits(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Start / end logits with question and padding positions masked out, and the allowed-position mask."""
        ids, types, mask = batch[:3]
        s, e = model(ids, types, mask)
        ok = self.allowed(types, mask)
        return s.masked_fill(~ok, -1e4), e.masked_fill(~ok, -1e4), ok

    def forward(self, model: nn.Module, batch: Any) -> StepOutput:
        s, e, _ = self.span_logits(model, batch)
        start, end = batch[3], batch[4]
        loss = (F.cross_entropy(s, start) + F.cross_entropy(e, end)) / 2
        return StepOutput(loss, s, start, len(start))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """val_loss, val_exact_match (also val_accuracy), val_f1 and their answerable / unanswerable parts, in [0, 1]."""
        assert self.span_text is not None, "QATask needs span_text to turn spans into answers"
        device = next(model.parameters()).device
        total, n, preds = 0.0, 0, []
        for batch in self.val_loader():
            batch = tuple(b.to(device) for b in batch)
            s, e, ok = self.span_logits(model, batch)
            total += float((F.cross_entropy(s, batch[3]) + F.cross_entropy(e, batch[4])) / 2) * len(s)
            bs, be, has = best_spans(s.float(), e.float(), ok, self.max_answer_len)
            for a, b, h in zip(bs.tolist(), be.tolist(), has.tolist()):
                preds.append(self.span_text(n, a, b) if h else "")
                n += 1
        sc = text_metrics.squad_v2_scores(preds, self.val_answers)
        return {
            "val_loss": total / max(n, 1), "val_accuracy": sc["exact_match"], "val_exact_match": sc["exact_match"], "val_f1": sc["f1"],
            "val_has_ans_f1": sc["has_ans_f1"], "val_no_ans_accuracy": sc["no_ans_exact_match"],
        }  # fmt: skip


# --------------------------------------------------------------------- synthetic, offline
_ATTRS: dict[str, list[str]] = {
    "city": ["paris", "new york", "lima", "oslo", "san jose", "cairo", "hong kong", "quito", "rio de janeiro", "kyoto"],
    "job": ["baker", "nurse", "civil engineer", "pilot", "farmer", "data analyst", "judge", "chef", "bus driver", "painter"],
    "pet": ["cat", "dog", "parrot", "goldfish", "hamster", "horse", "rabbit", "turtle", "snake", "guinea pig"],
    "color": ["red", "blue", "green", "dark purple", "yellow", "orange", "light grey", "black", "white", "pink"],
    "sport": ["tennis", "golf", "rugby", "table tennis", "chess", "rowing", "judo", "ice hockey", "cricket", "surfing"],
    "food": ["soup", "pasta", "rice", "fried chicken", "salad", "pizza", "sushi", "ice cream", "bread", "apple pie"],
}
_NAMES = [a + b for a in ("da", "ki", "lo", "me", "nu", "sa", "to", "vi") for b in ("rio", "lan", "mo", "ne", "ssa")]  # 40 made-up names


def synthetic_qa_examples(n: int, seed: int, unanswerable: float = 1 / 3) -> list[tuple[list[str], list[str], int, int]]:
    """(question, context, answer start, answer end) with word tokens; start = end = -1 means no answer."""
    rng = np.random.default_rng(seed)
    attrs = sorted(_ATTRS)
    out = []
    for _ in range(n):
        people = list(rng.choice(_NAMES, size=int(rng.integers(2, 4)), replace=False))
        facts = [(p, a) for p in people for a in rng.choice(attrs, size=2, replace=False)]
        rng.shuffle(facts)
        facts = facts[: int(rng.integers(3, 6))]
        context: list[str] = []
        spans: dict[tuple[str, str], tuple[int, int]] = {}
        for p, a in facts:
            value = str(rng.choice(_ATTRS[a])).split()
            context += ["the", a, "of", p, "is"]
            spans[(p, a)] = (len(context), len(context) + len(value) - 1)
            context += [*value, "."]
        if rng.random() < unanswerable:  # ask about a known person's missing attribute, or a stranger
            stranger = rng.random() < 0.5
            p = str(rng.choice([x for x in _NAMES if x not in people])) if stranger else str(rng.choice(people))
            a = str(rng.choice([x for x in attrs if (p, x) not in spans]))
            start, end = -1, -1
        else:
            p, a = facts[int(rng.integers(len(facts)))]
            start, end = spans[(p, a)]
        out.append((["what", "is", "the", a, "of", p, "?"], context, start, end))
    return out


def encode_word_qa(examples: list[tuple[list[str], list[str], int, int]], vocab: Vocab) -> TensorDataset:
    """`[CLS] question [SEP] context [SEP]` ids (CLS = UNK id's neighbour: vocab tokens "[cls]", "[sep]")."""
    cls, sep = vocab.stoi["[cls]"], vocab.stoi["[sep]"]
    rows, types, starts, ends = [], [], [], []
    for q, c, s, e in examples:
        offset = len(q) + 2
        rows.append([cls, *vocab.encode(q), sep, *vocab.encode(c), sep])
        types.append([0] * offset + [1] * (len(c) + 1))
        starts.append(s + offset if s >= 0 else 0)
        ends.append(e + offset if e >= 0 else 0)
    t = max(len(r) for r in rows)
    ids, tt, mask = (torch.zeros(len(rows), t, dtype=torch.long) for _ in range(3))
    for i, (r, ty) in enumerate(zip(rows, types)):
        ids[i, : len(r)], tt[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), torch.tensor(ty), 1
    return TensorDataset(ids, tt, mask, torch.tensor(starts), torch.tensor(ends))


@register("synthetic_qa")
def synthetic_qa(preset: str = "cpu") -> Task:
    """SYNTHETIC extractive QA with unanswerable questions (SQuAD v2 shaped); a BiLSTM + self-attention span model."""
    n_train, n_val = (4000, 500) if preset == "cpu" else (50000, 2000)
    train_ex, val_ex = synthetic_qa_examples(n_train, seed=0), synthetic_qa_examples(n_val, seed=1)
    vocab = Vocab(
        ["[cls]", "[sep]", *sorted({w for q, c, _, _ in train_ex for w in q + c} | {w for v in _ATTRS.values() for x in v for w in x.split()} | set(_NAMES))]
    )
    answers = [[" ".join(c[s : e + 1])] if s >= 0 else [] for _, c, s, e in val_ex]
    offsets = [len(q) + 2 for q, _, _, _ in val_ex]

    def span_text(i: int, start: int, end: int) -> str:
        return " ".join(val_ex[i][1][start - offsets[i] : end - offsets[i] + 1])

    def model_fn() -> nn.Module:
        from metalr.models.qa import BiLSTMQA

        return BiLSTMQA(len(vocab), embed_dim=64, hidden=64) if preset == "cpu" else BiLSTMQA(len(vocab), embed_dim=128, hidden=128)

    train = encode_word_qa(train_ex, vocab)
    return QATask(
        name="synthetic_qa", train_data=train, val_data=encode_word_qa(val_ex, vocab), model_fn=model_fn, num_classes=train.tensors[0].shape[1], family="qa",
        num_features=float(np.mean([len(q) + len(c) for q, c, _, _ in train_ex])), collate_fn=trim_collate, optimizer="adam", lr=3e-3 if preset == "cpu" else 1e-3,
        batch_size=64, eval_batch_size=250, steps=400 if preset == "cpu" else 5000, eval_every=100 if preset == "cpu" else 500, val_answers=answers, span_text=span_text,
        max_answer_len=4, target={"val_f1": 0.9}, data_kind="synthetic", description="SYNTHETIC SQuAD v2-shaped QA (facts + questions, 1/3 unanswerable), BiLSTM + self-attention span model",
    )  # fmt: skip


# --------------------------------------------------------------------- SQuAD v2 (hub)
def encode_squad(tokenizer: Any, split: Any, max_len: int) -> tuple[TensorDataset, list[list[tuple[int, int] | None]], list[str], list[list[str]]]:
    """Tokenised features (truncating the context), each token's character span in the context (None outside it), contexts and gold texts."""
    questions, contexts = [q.strip() for q in split["question"]], list(split["context"])
    enc = tokenizer(questions, contexts, truncation="only_second", max_length=max_len, padding="max_length", return_offsets_mapping=True)
    starts, ends, spans, golds = [], [], [], []
    for i, ans in enumerate(split["answers"]):
        seq_ids = enc.sequence_ids(i)
        offs = [tuple(o) if sid == 1 else None for o, sid in zip(enc["offset_mapping"][i], seq_ids)]
        spans.append(offs)
        golds.append(list(ans["text"]))
        s = e = 0
        if ans["text"]:
            a0 = int(ans["answer_start"][0])
            a1 = a0 + len(ans["text"][0])
            inside = [(k, o) for k, o in enumerate(offs) if o is not None and o[0] < a1 and o[1] > a0]
            if inside and inside[0][1][0] <= a0 and inside[-1][1][1] >= a1:  # whole answer kept by the truncation
                s, e = inside[0][0], inside[-1][0]
        starts.append(s)
        ends.append(e)
    tensors = [torch.tensor(enc[k]) for k in ("input_ids", "token_type_ids", "attention_mask")]
    return TensorDataset(*tensors, torch.tensor(starts), torch.tensor(ends)), spans, contexts, golds


@register("squad_v2_bert")
def squad_v2_bert(preset: str = "cpu") -> Task:
    """SQuAD v2 with a BERT QA head: cpu preset = shipped MiniLM on 256/128 questions; full = $METALR_BERT_MODEL or bert-base-uncased."""
    from metalr.models import hf
    from metalr.models.qa import TransformersQA

    cpu = preset == "cpu"
    spec = "minilm" if cpu else os.environ.get(BERT_MODEL_ENV, "bert-base-uncased")
    n_train, n_val, max_len = (256, 128, 192) if cpu else (None, None, 384)
    train_split, val_split = train_val(load_hf_dataset("squad_v2"), n_train, n_val)
    tokenizer = hf.load_tokenizer(spec)
    train, _, _, _ = encode_squad(tokenizer, train_split, max_len)
    val, spans, contexts, golds = encode_squad(tokenizer, val_split, max_len)

    def span_text(i: int, start: int, end: int) -> str:
        a, b = spans[i][start], spans[i][end]
        return contexts[i][a[0] : b[1]] if a is not None and b is not None else ""

    return QATask(
        name="squad_v2_bert", train_data=train, val_data=val, model_fn=lambda: TransformersQA(hf.load_model(spec, "qa")), num_classes=max_len, family="qa",
        num_features=float(np.mean([len(q.split()) + len(c.split()) for q, c in zip(train_split["question"], train_split["context"])])), collate_fn=trim_collate,
        optimizer="adam", lr=5e-5 if cpu else 3e-5, batch_size=16 if cpu else 32, eval_batch_size=32, steps=16 if cpu else 2 * max(1, len(train) // 32),
        eval_every=8 if cpu else 2000, val_answers=golds, span_text=span_text, target={"val_f1": 0.75}, description=f"SQuAD v2 (HF `squad_v2`), {spec} QA head",
    )  # fmt: skip
