"""Text metrics as pure functions: seqeval-style entity scores, SQuAD v2 EM / F1.

Entity scores follow seqeval's default (conlleval) chunking of BIO tags: an
entity starts at `B-X`, or at `I-X` that does not continue an entity of type X
(so a stray `I-X` after `O` still counts, as in conlleval). Precision, recall and
F1 are micro-averaged over exact (type, start, end) matches.

SQuAD v2 scores follow the official evaluation script: answers are normalised
(lower case, no punctuation, no articles a/an/the, single spaces); an
unanswerable question has the gold answer "" and is right only when the
prediction is "" too; each question takes the max over its gold answers.
Scores are in [0, 1] (the official script reports them x100).
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Sequence

Entity = tuple[str, int, int]  # (type, start token, end token inclusive)


def _split_tag(tag: str) -> tuple[str, str]:
    if tag in ("O", "", None):
        return "O", ""
    prefix, _, kind = tag.partition("-")
    if prefix not in ("B", "I", "E", "S") or not kind:
        raise ValueError(f"tag {tag!r} is not BIO; expected 'O', 'B-TYPE' or 'I-TYPE'")
    return prefix, kind


def bio_entities(tags: Sequence[str]) -> list[Entity]:
    """Entity spans in one BIO-tagged sentence, conlleval style."""
    out: list[Entity] = []
    kind, start = "", -1
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, t = _split_tag(tag)
        continues = prefix in ("I", "E") and t == kind and start >= 0
        if start >= 0 and not continues:
            out.append((kind, start, i - 1))
            kind, start = "", -1
        if prefix in ("B", "S") or (prefix in ("I", "E") and not continues):
            kind, start = t, i
        if prefix in ("E", "S") and start >= 0:
            out.append((kind, start, i))
            kind, start = "", -1
    return out


def entity_scores(gold: Iterable[Sequence[str]], pred: Iterable[Sequence[str]]) -> dict[str, float]:
    """Micro precision / recall / F1 over exactly matching entities (seqeval's default mode).

    An empty denominator gives 0.0 (seqeval's `zero_division=0` behaviour).
    """
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred, strict=True):
        if len(g) != len(p):
            raise ValueError(f"gold and predicted sentences differ in length: {len(g)} vs {len(p)}")
        ge, pe = set(bio_entities(g)), set(bio_entities(p))
        tp += len(ge & pe)
        n_gold += len(ge)
        n_pred += len(pe)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def token_accuracy(gold: Iterable[Sequence[str]], pred: Iterable[Sequence[str]]) -> float:
    right = total = 0
    for g, p in zip(gold, pred, strict=True):
        right += sum(a == b for a, b in zip(g, p, strict=True))
        total += len(g)
    return right / total if total else float("nan")


# ------------------------------------------------------------------ SQuAD v2
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official script)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1; if either side is empty (no answer), 1.0 only when both are."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_v2_scores(predictions: Sequence[str], gold_answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean exact match and F1 over questions; "" (or no gold answer) means unanswerable.

    Also reports the scores on the answerable (`has_ans_*`) and unanswerable
    (`no_ans_*`) questions, as the official script does (nan when there are none).
    """
    if len(predictions) != len(gold_answers):
        raise ValueError(f"{len(predictions)} predictions for {len(gold_answers)} questions")
    em, f1, has = [], [], []
    for pred, golds in zip(predictions, gold_answers):
        golds = [a for a in golds if normalize_answer(a)] or [""]
        em.append(max(exact_match(pred, a) for a in golds))
        f1.append(max(f1_score(pred, a) for a in golds))
        has.append(golds != [""])

    def mean(xs: list[float], keep: list[bool] | None = None) -> float:
        xs = [x for x, k in zip(xs, keep or [True] * len(xs)) if k]
        return sum(xs) / len(xs) if xs else float("nan")

    no = [not h for h in has]
    return {
        "exact_match": mean(em), "f1": mean(f1),
        "has_ans_exact_match": mean(em, has), "has_ans_f1": mean(f1, has),
        "no_ans_exact_match": mean(em, no), "no_ans_f1": mean(f1, no),
    }  # fmt: skip
