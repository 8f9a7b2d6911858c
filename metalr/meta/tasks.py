"""The meta-training task distribution: procedurally generated tasks, plus real sets nobody evaluates on.

A `TaskSpec` is drawn from a seeded generator, so the i-th task of meta-step s is
the same whether one process or several draw it (that is what makes the
multi-process meta-gradient equal to the single-process one). Everything about a
task is drawn: the data family, the model family and its size, normalisation,
the optimizer (SGD with or without momentum, Adam with or without weight decay),
the batch size, the base LR (log-uniform over three orders of magnitude around
the optimizer's usual value: the policy must learn to find the LR level, not
only to shape a schedule) and the run length (log-uniform up to a curriculum cap).

Data families (all classification, cross-entropy):
- `teacher`: Gaussian inputs labelled by a random teacher MLP (+ label noise).
- `blobs`: a Gaussian mixture with random size and overlap.
- `signal`: 1-D signals (random sinusoid mixtures + noise) labelled by a random teacher conv net.
- `tokens`: token sequences labelled by a random teacher RNN (order matters).
- `digits`, `iris`: real scikit-learn sets (never in any evaluation).

Opt-in families (`EXTRA_FAMILIES`: drawn only when a config lists them, so the default draws are unchanged):
- `teacher_large`: a larger teacher task (5000-20000 samples, still learning at the end).
- `zipf_tokens`: token sequences over a large vocabulary (500-5000) with Zipfian token frequencies,
  labelled by a random teacher RNN: the sparse-embedding regime of real text (most rows of the
  embedding get a gradient rarely), which the small-vocabulary `tokens` family never shows.
- `doctext`: real English text: sentences of Python's own documentation (`pydoc_data.topics`, in the
  standard library), labelled by the topic they come from (2-8 of the topics with at least 100
  sentences), words as ids of the `vocab` most frequent ones (0 pads on the left, 1 is any other word).
  No evaluation task uses it. Its contents follow the Python version (a caveat for exact reproduction).

Model families: MLP (depth 1-3, width 16-256, ReLU/tanh/GELU, none/LayerNorm/BatchNorm),
1-D CNN, 2-D CNN (digits), GRU, LSTM, a one-block self-attention model, bag-of-embeddings MLP.

Pretrained tasks (opt-in: `with_pretraining`, drawn by the trainer's `pretrained_fraction`): the task's model
is first trained at constant LR (the optimizer's usual one, the task's own data, `pretrain_steps` steps, a batch
order of its own) and the run proper starts from those weights with a fresh optimizer at the task's base LR, as
a fine-tune or a second training stage does: `pretrained="continue"` keeps the weights as they are,
`pretrained="new_head"` re-initialises the last linear layer (a new classifier head). Every generated run
otherwise starts from a random initialisation, where a low, flat loss means "stuck" (raise the LR); after
pretraining it means "converged" (do not). `materialise` does the pretraining, so every caller (the unroll,
`run_spec`, selection) sees the same starting weights.

Held out, never drawn here: every data set the evaluation uses (MNIST-1D, Fashion-MNIST,
Rotten Tomatoes, Twitter NER, ...). Validation tasks for checkpoint selection
(`validation_specs`) come from a separate seed stream and include real sets
(wine, breast cancer) that meta-training never sees either.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

DATA_FAMILIES = ("teacher", "blobs", "signal", "tokens", "digits", "iris")
#: Opt-in families (a config must name them; the defaults above, and every draw made from them, are unchanged):
#: `teacher_large`: 5k-20k examples, 5-20 classes, a deeper noisy teacher: tasks still learning when the run ends.
EXTRA_FAMILIES = ("teacher_large", "zipf_tokens", "doctext")
ALL_FAMILIES = DATA_FAMILIES + EXTRA_FAMILIES
#: Real sets used only to select checkpoints (neither meta-training nor evaluation).
VALIDATION_REAL = ("wine", "breast_cancer")
#: The registered tasks (`metalr.tasks`) built on one of the data sets above: a held-out task's data may never be a
#: meta-training family (`train_meta.py` refuses it), and an evaluation of a policy on one is not held out
#: (`metalr.meta.checkpoint.data_seen`).
TASK_DATA = {"digits_mlp": "digits", "digits_cnn": "digits", "wine_mlp": "wine", "breast_cancer_mlp": "breast_cancer"}
OPTIMIZERS = ("sgd", "sgdm", "adam")
#: The optimizer's usual LR; a task's base LR is this times 10**U(-1.5, 1.5).
USUAL_LR = {"sgd": 0.1, "sgdm": 0.03, "adam": 2e-3}


PRETRAINED_MODES = ("continue", "new_head")


@dataclass(frozen=True)
class TaskSpec:
    data: str
    model: str
    optimizer: str  # sgd | sgdm | adam
    lr: float
    weight_decay: float
    batch_size: int
    steps: int
    seed: int
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InnerTask:
    """Tensors and a model: everything one inner trajectory needs."""

    spec: TaskSpec
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    model: nn.Module

    def make_optimizer(self, params: Any = None, lr: float | None = None) -> torch.optim.Optimizer:
        params = self.model.parameters() if params is None else params
        return make_optimizer(self.spec.optimizer, params, self.spec.lr if lr is None else lr, self.spec.weight_decay, self.spec.params.get("adam_eps", 1e-8))

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float = 0.0, adam_eps: float = 1e-8) -> torch.optim.Optimizer:
    """`sgd`, `sgdm` (momentum 0.9) or `adam`.

    `higher`'s Adam adds eps to the uncorrected sqrt(v) where torch adds it to the bias-corrected
    one; the two agree exactly only as eps -> 0 (the parity test uses `adam_eps` 1e-12).
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "sgdm":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, eps=adam_eps)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def task_seed(seed: int, meta_step: int, index: int) -> int:
    """Seed of the `index`-th task of `meta_step` (independent of the process count)."""
    return (seed * 1_000_003 + meta_step * 10_007 + index * 101) % (2**31 - 1)


class _Draw:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def pick(self, xs: Any, p: Any = None) -> Any:
        return xs[int(self.rng.choice(len(xs), p=p))]

    def logu(self, lo: float, hi: float) -> float:
        return float(math.exp(self.rng.uniform(math.log(lo), math.log(hi))))

    def int(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))


#: Data family -> (weight, model families it can feed).
_FAMILIES: dict[str, tuple[float, tuple[str, ...]]] = {
    "teacher": (0.25, ("mlp",)),
    "blobs": (0.12, ("mlp",)),
    "signal": (0.2, ("cnn1d", "mlp")),
    "tokens": (0.18, ("gru", "lstm", "attention", "bag")),
    "digits": (0.17, ("mlp", "cnn2d")),
    "iris": (0.08, ("mlp",)),
    "teacher_large": (0.25, ("mlp",)),
    "zipf_tokens": (0.18, ("gru", "lstm", "attention", "bag")),
    "doctext": (0.18, ("gru", "lstm", "attention", "bag")),
}


def sample_spec(
    seed: int,
    data_families: tuple[str, ...] = DATA_FAMILIES,
    optimizers: tuple[str, ...] = OPTIMIZERS,
    lr_decades: float = 1.5,
    steps_range: tuple[int, int] = (100, 2000),
    step_multiple: int = 20,
) -> TaskSpec:
    """Draw one meta-training task. Run length is log-uniform in `steps_range`, rounded to `step_multiple`."""
    d = _Draw(seed)
    fams = [f for f in _FAMILIES if f in data_families]
    if not fams:
        raise ValueError(f"no known data family in {data_families}; valid: {', '.join(ALL_FAMILIES)}")
    w = np.array([_FAMILIES[f][0] for f in fams])
    data = d.pick(fams, w / w.sum())
    model = d.pick(_FAMILIES[data][1])
    opt = d.pick(list(optimizers))
    lr = USUAL_LR[opt] * 10 ** float(d.rng.uniform(-lr_decades, lr_decades))
    wd = d.pick([0.0, 0.0, 1e-4, 1e-2]) if opt == "adam" else d.pick([0.0, 0.0, 5e-4])
    lo, hi = steps_range
    steps = max(step_multiple, int(round(d.logu(lo, hi) / step_multiple)) * step_multiple)
    heavy = model in ("gru", "lstm", "attention", "cnn2d")
    if heavy:
        steps = min(steps, 600)  # the slowest models per step on CPU: shorter runs keep meta-batches balanced
    params: dict[str, Any] = {}
    if data == "teacher":
        params.update(dim=d.int(8, 64), classes=d.int(2, 10), n=d.int(600, 4000), noise=float(d.rng.uniform(0, 0.2)), depth=d.int(1, 3))
    elif data == "teacher_large":
        params.update(dim=d.int(16, 96), classes=d.int(5, 20), n=d.int(5000, 20000), noise=float(d.rng.uniform(0, 0.3)), depth=d.int(2, 3))
    elif data == "blobs":
        params.update(dim=d.int(5, 40), classes=d.int(2, 8), n=d.int(600, 3000), spread=float(d.rng.uniform(0.5, 2.0)))
    elif data == "signal":
        params.update(length=d.pick([32, 48, 64]), classes=d.int(2, 8), n=d.int(800, 4000), noise=float(d.rng.uniform(0.1, 1.0)))
    elif data == "tokens":
        params.update(vocab=d.int(6, 24), length=d.int(6, 14), classes=d.int(2, 5), n=d.int(800, 3000))
    elif data == "zipf_tokens":
        params.update(
            vocab=d.pick([500, 1000, 2000, 5000]), zipf=float(d.rng.uniform(1.0, 1.3)), length=d.int(10, 30), classes=d.int(2, 5), n=d.int(1500, 5000)
        )
    elif data == "doctext":
        params.update(vocab=d.pick([500, 1000, 2000]), length=d.int(12, 32), classes=d.int(2, 8), topics_seed=d.int(0, 10**6))
        params["n"] = len(_doctext(params["classes"], params["vocab"], params["length"], params["topics_seed"])[1])
    if model == "mlp":
        params.update(
            width=d.pick([16, 32, 64, 128, 256]), layers=d.int(1, 3), act=d.pick(["relu", "tanh", "gelu"]), norm=d.pick(["none", "none", "layer", "batch"])
        )
    elif model == "cnn1d":
        params.update(channels=d.pick([8, 16, 32]))
    elif model == "cnn2d":
        params.update(channels=d.pick([4, 8, 16]))
    else:
        params.update(width=d.pick([16, 24, 32]))
    n_train = {"digits": 1437, "iris": 120}.get(data, int(params.get("n", 1000) * 0.8))
    batch = min(d.pick([16, 32, 64, 128, 256]), max(8, n_train // 4), 64 if heavy else 256)
    return TaskSpec(data=data, model=model, optimizer=opt, lr=lr, weight_decay=wd, batch_size=batch, steps=steps, seed=seed, params=params)


# ------------------------------------------------------------------------ data
def _teacher_labels(x: torch.Tensor, classes: int, depth: int, g: torch.Generator) -> torch.Tensor:
    h = x
    for _ in range(depth):
        w = torch.randn(h.shape[1], 64, generator=g) / math.sqrt(h.shape[1])
        h = torch.tanh(h @ w * 2.0)
    w = torch.randn(h.shape[1], classes, generator=g) / math.sqrt(h.shape[1])
    return (h @ w).argmax(1)


def _teacher_rnn_labels(x: torch.Tensor, vocab: int, classes: int, g: torch.Generator) -> torch.Tensor:
    """Labels of token sequences `x` (n, length) from a random tanh RNN over random 16-d embeddings (order matters)."""
    emb, wh = torch.randn(vocab, 16, generator=g), torch.randn(16, 16, generator=g) / 4.0
    h = torch.zeros(len(x), 16)
    for i in range(x.shape[1]):
        h = torch.tanh(h @ wh + emb[x[:, i]])
    return (h @ torch.randn(16, classes, generator=g)).argmax(1)


def _noisy(y: torch.Tensor, classes: int, noise: float, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(y), generator=g) < noise
    return torch.where(flip, torch.randint(classes, y.shape, generator=g), y)


@cache
def _sklearn(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn import datasets

    loader = {"digits": datasets.load_digits, "iris": datasets.load_iris, "wine": datasets.load_wine, "breast_cancer": datasets.load_breast_cancer}[name]
    x, y = loader(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


@cache
def _doc_sentences() -> dict[str, tuple[tuple[str, ...], ...]]:
    """Python's documentation topics (`pydoc_data.topics`, standard library) as lower-case word lists, 5-40 words per sentence."""
    import re
    from pydoc_data.topics import topics

    out = {}
    for name in sorted(topics):
        parts = re.split(r"(?<=[.!?])\s+|\n\s*\n", topics[name])
        sents = tuple(tuple(w) for w in (re.findall(r"[a-z]+", s.lower()) for s in parts) if 5 <= len(w) <= 40)
        if len(sents) >= 100:
            out[name] = sents
    return out


@cache
def _doctext(classes: int, vocab: int, length: int, topics_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(word ids, topic labels) of `classes` documentation topics drawn by `topics_seed` (see the module docstring)."""
    corpus = _doc_sentences()
    if not 2 <= classes <= len(corpus):
        raise ValueError(f"doctext: classes must be in [2, {len(corpus)}] (topics with >= 100 sentences), got {classes}")
    names = sorted(corpus)
    chosen = [names[i] for i in np.random.default_rng(topics_seed).choice(len(names), classes, replace=False)]
    counts: dict[str, int] = {}
    for name in chosen:
        for sent in corpus[name]:
            for w in sent:
                counts[w] = counts.get(w, 0) + 1
    ids = {w: i + 2 for i, w in enumerate(sorted(counts, key=lambda w: (-counts[w], w))[: vocab - 2])}
    rows, labels = [], []
    for label, name in enumerate(chosen):
        for sent in corpus[name]:
            seq = [ids.get(w, 1) for w in sent[:length]]
            rows.append([0] * (length - len(seq)) + seq)  # left-padded: the recurrent models read the last state
            labels.append(label)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def make_data(spec: TaskSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(x_train, y_train, x_val, y_val, classes) for the spec, deterministic in its seed."""
    p, g = spec.params, torch.Generator().manual_seed(spec.seed + 11)
    if spec.data in ("digits", "iris", "wine", "breast_cancer"):
        x, y = _sklearn(spec.data)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # fixed split, as in metalr.tasks
        x, y = x[perm], y[perm]
        n_val = len(y) // 5
        if spec.data == "digits" and spec.model == "cnn2d":
            x = x.reshape(-1, 1, 8, 8)
        return x[n_val:], y[n_val:], x[:n_val], y[:n_val], int(y.max()) + 1
    n, k = int(p["n"]), int(p["classes"])
    if spec.data in ("teacher", "teacher_large"):
        x = torch.randn(n, p["dim"], generator=g)
        y = _noisy(_teacher_labels(x, k, p["depth"], g), k, p["noise"], g)
    elif spec.data == "blobs":
        centres = torch.randn(k, p["dim"], generator=g) * p["spread"]
        y = torch.randint(k, (n,), generator=g)
        x = centres[y] + torch.randn(n, p["dim"], generator=g)
    elif spec.data == "signal":
        t = torch.linspace(0, 1, p["length"])
        freqs = torch.rand(n, 3, 1, generator=g) * 8 + 1
        phase = torch.rand(n, 3, 1, generator=g) * 6.28
        amp = torch.randn(n, 3, 1, generator=g)
        x = (amp * torch.sin(freqs * t * 6.28 + phase)).sum(1) + p["noise"] * torch.randn(n, p["length"], generator=g)
        kernel = torch.randn(4, 1, 5, generator=g)
        feats = F.relu(F.conv1d(x.unsqueeze(1), kernel, padding=2)).mean(-1)
        y = (feats @ torch.randn(4, k, generator=g)).argmax(1)
    elif spec.data == "tokens":
        v, length = int(p["vocab"]), int(p["length"])
        x = torch.randint(v, (n, length), generator=g)
        y = _teacher_rnn_labels(x, v, k, g)
    elif spec.data == "zipf_tokens":
        v, length = int(p["vocab"]), int(p["length"])
        freq = 1.0 / torch.arange(1, v + 1, dtype=torch.float64) ** float(p["zipf"])
        x = torch.multinomial(freq, n * length, replacement=True, generator=g).view(n, length)
        y = _teacher_rnn_labels(x, v, k, g)
    elif spec.data == "doctext":
        x, y = _doctext(k, int(p["vocab"]), int(p["length"]), int(p["topics_seed"]))
        perm = torch.randperm(len(y), generator=g)
        x, y = x[perm], y[perm]
        n_val = len(y) // 5
        return x[n_val:], y[n_val:], x[:n_val], y[:n_val], k
    else:
        raise ValueError(f"unknown data family {spec.data!r}; valid: {', '.join(ALL_FAMILIES + VALIDATION_REAL)}")
    n_val = max(100, n // 5)
    return x[n_val:], y[n_val:], x[:n_val], y[:n_val], k


# ---------------------------------------------------------------------- models
_ACT = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _mlp(n_in: int, k: int, width: int, layers: int, act: str, norm: str) -> nn.Module:
    mods: list[nn.Module] = [nn.Flatten()]
    for _ in range(layers):
        mods.append(nn.Linear(n_in, width))
        if norm == "layer":
            mods.append(nn.LayerNorm(width))
        elif norm == "batch":
            mods.append(nn.BatchNorm1d(width))
        mods.append(_ACT[act]())
        n_in = width
    mods.append(nn.Linear(n_in, k))
    return nn.Sequential(*mods)


class _Recurrent(nn.Module):
    def __init__(self, vocab: int, k: int, width: int, cell: str) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(width, width, batch_first=True)
        self.out = nn.Linear(width, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.emb(x))
        return self.out(h[:, -1])


class _Attention(nn.Module):
    """One pre-norm self-attention block with learned positions, mean-pooled."""

    def __init__(self, vocab: int, k: int, width: int, length: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(length, width) * 0.1)
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.out = nn.Linear(width, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x) + self.pos[: x.shape[1]]
        q, kk, v = self.qkv(self.ln1(h)).chunk(3, -1)
        h = h + torch.softmax(q @ kk.transpose(1, 2) / math.sqrt(q.shape[-1]), -1) @ v
        h = h + self.ff(self.ln2(h))
        return self.out(h.mean(1))


class _Bag(nn.Module):
    def __init__(self, vocab: int, k: int, width: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.net = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.emb(x).mean(1))


def _cnn1d(length: int, k: int, c: int) -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, length)), nn.Conv1d(1, c, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv1d(c, c, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(4), nn.Flatten(), nn.Linear(4 * c, k),
    )  # fmt: skip


def _cnn2d(k: int, c: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * c, k),
    )  # fmt: skip


def make_model(spec: TaskSpec, x: torch.Tensor, k: int) -> nn.Module:
    p = spec.params
    if spec.model == "mlp":
        return _mlp(x[0].numel(), k, p["width"], p["layers"], p["act"], p["norm"])
    if spec.model == "cnn1d":
        return _cnn1d(x.shape[1], k, p["channels"])
    if spec.model == "cnn2d":
        return _cnn2d(k, p["channels"])
    vocab = int(p["vocab"])
    if spec.model in ("gru", "lstm"):
        return _Recurrent(vocab, k, p["width"], spec.model)
    if spec.model == "attention":
        return _Attention(vocab, k, p["width"], x.shape[1])
    if spec.model == "bag":
        return _Bag(vocab, k, p["width"])
    raise ValueError(f"unknown model family {spec.model!r}")


def materialise(spec: TaskSpec, dtype: torch.dtype = torch.float32) -> InnerTask:
    """Data and a freshly initialised model, pretrained if the spec says so (seeded by the spec; global RNG untouched).

    `dtype=torch.float64` is for exactness checks (the parity test): the same run in double precision.
    """
    xt, yt, xv, yv, k = make_data(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed + 2)
        model = make_model(spec, xt, k).to(dtype)
    if xt.is_floating_point():
        xt, xv = xt.to(dtype), xv.to(dtype)
    task = InnerTask(spec, xt, yt, xv, yv, model)
    if spec.params.get("pretrained"):
        _pretrain(task)
    return task


def _batches(n: int, b: int, steps: int, seed: int) -> torch.Tensor:
    """Indices of `steps` batches of `b` out of `n` examples, reshuffled each epoch (full batches only), shape (steps, b)."""
    g = torch.Generator().manual_seed(seed)
    rows: list[torch.Tensor] = []
    while len(rows) < steps:
        perm = torch.randperm(n, generator=g)
        rows.extend(perm[i : i + b] for i in range(0, n - b + 1, b))
    return torch.stack(rows[:steps])


def batch_stream(task: InnerTask) -> torch.Tensor:
    """Indices of every training batch of the trajectory (reshuffled each epoch), shape (steps, batch)."""
    return _batches(len(task.y_train), task.spec.batch_size, task.spec.steps, task.spec.seed + 3)


def val_subset(task: InnerTask, val_batch: int) -> torch.Tensor:
    """The run's fixed validation batch: `val_batch` validation examples drawn by the task's seed (the meta-loss's,
    and the validation readings' of `val_reading_every`)."""
    g = torch.Generator().manual_seed(task.spec.seed + 4)
    return torch.randperm(len(task.y_val), generator=g)[:val_batch]


def val_batch_loss(task: InnerTask, model: nn.Module, idx: torch.Tensor) -> float:
    """The task's loss of `model` on the validation examples `idx` (eval mode, no gradient, then back to train mode):
    the reading an evaluation hands a deployed controller, taken alike by the unroll and by `run_spec`."""
    with torch.no_grad():
        model.eval()
        value = float(task.loss(model(task.x_val[idx]), task.y_val[idx]))
        model.train()
    return value


#: Evaluations per run when a run has validation readings: drawn uniformly from this range (the harness's tasks evaluate 5-10 times).
VAL_READINGS = (4, 20)


def val_reading_every(spec: TaskSpec, present: float) -> int:
    """Steps between the validation losses a run of `spec` shows the policy (`val_rise`), 0 for none.

    A deployed controller gets one after each evaluation the loop makes, and a plain loop may make none, so a run
    has readings with probability `present` and then every steps / n steps, n uniform in `VAL_READINGS`. Drawn from
    the spec's seed (its own stream: no other draw moves), so the unroll and the deployed validation runs agree."""
    if present <= 0:
        return 0
    g = random.Random(spec.seed * 1_000_003 + 17)
    if g.random() >= present:
        return 0
    return max(1, round(spec.steps / g.randint(*VAL_READINGS)))


def reset_head(model: nn.Module, seed: int) -> None:
    """Re-initialise the model's last linear layer (a new classifier head), seeded by `seed` (through the global RNG)."""
    torch.manual_seed(seed)
    [m for m in model.modules() if isinstance(m, nn.Linear)][-1].reset_parameters()


def with_pretraining(spec: TaskSpec, mode: str, steps: int | None = None) -> TaskSpec:
    """`spec` started from weights pretrained for `steps` (default: the run's own length) at the usual LR (see the module docstring)."""
    if mode not in PRETRAINED_MODES:
        raise ValueError(f"unknown pretrained mode {mode!r}; valid: {', '.join(PRETRAINED_MODES)}")
    steps = spec.steps if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"pretrain_steps must be >= 1, got {steps}")
    return TaskSpec(**{**spec.to_dict(), "params": {**spec.params, "pretrained": mode, "pretrain_steps": steps}})


def _pretrain(task: InnerTask) -> None:
    """Train `task.model` in place as `with_pretraining` says (plain torch, constant usual LR); seeded by the spec.

    A pretraining run whose loss turns non-finite leaves the model as it was initialised (logged): the task is
    then an ordinary one rather than a dead start."""
    spec, model = task.spec, task.model
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = make_optimizer(spec.optimizer, model.parameters(), USUAL_LR[spec.optimizer], spec.weight_decay, spec.params.get("adam_eps", 1e-8))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed + 7)  # dropout-free models; seeded anyway so nothing global moves
        model.train()
        for step, idx in enumerate(_batches(len(task.y_train), spec.batch_size, int(spec.params["pretrain_steps"]), spec.seed + 6)):
            opt.zero_grad(set_to_none=True)
            loss = task.loss(model(task.x_train[idx]), task.y_train[idx])
            if not math.isfinite(float(loss.detach())):
                log.warning("task %d: pretraining diverged at step %d; the run starts from its initialisation", spec.seed, step)
                model.load_state_dict(init)
                return
            loss.backward()
            opt.step()
        if spec.params["pretrained"] == "new_head":
            reset_head(model, spec.seed + 1)
    model.zero_grad(set_to_none=True)


def recurrent_spec(seed: int, i: int, family: str) -> TaskSpec:
    """A recurrent task of a token family (GRU for even `i`, LSTM for odd), 300-600 steps, at its optimizer's usual LR:
    the real-text validation runs (`validation_specs(n_text=)`) and the selection script's recurrent cells
    (`scripts/meta_rnn_probe.py`), each from its own seed stream."""
    t = sample_spec(seed, (family,), steps_range=(300, 600))
    return replace(t, model=("gru", "lstm")[i % 2], lr=USUAL_LR[t.optimizer])


def validation_specs(
    n_generated: int = 8, lr_factors: tuple[float, ...] = (0.1, 1.0, 10.0), seed: int = 987_654_321, n_large: int = 0, n_text: int = 0
) -> list[TaskSpec]:
    """Fixed checkpoint-selection tasks: generated ones from their own seed stream, plus wine and breast cancer.

    Each base task is run at its drawn LR times every factor in `lr_factors` (selection rewards robustness to the base LR).
    `n_large` adds that many `teacher_large` tasks (600-1000 steps, their own seed stream) after the others; `n_text` that
    many real-text tasks (`doctext`: a GRU or LSTM, alternately, over real documents at its optimizer's usual LR, 300-600
    steps; their own seed stream, apart from the labelled tasks' 560000+ and the selection script's 777000+) last.
    """
    bases = [sample_spec(seed + i, steps_range=(200, 1000)) for i in range(n_generated)]
    bases += [sample_spec(seed + 500 + i, ("teacher_large",), steps_range=(600, 1000)) for i in range(n_large)]
    for j, name in enumerate(VALIDATION_REAL):
        bases.append(TaskSpec(data=name, model="mlp", optimizer=("sgdm", "adam")[j % 2], lr=USUAL_LR[("sgdm", "adam")[j % 2]], weight_decay=0.0,
                              batch_size=32, steps=300, seed=seed + 100 + j, params=dict(width=64, layers=1, act="relu", norm="none")))  # fmt: skip
    bases += [recurrent_spec(seed + 700 + i, i, "doctext") for i in range(n_text)]
    out = []
    for b in bases:
        for f in lr_factors:
            out.append(TaskSpec(**{**b.to_dict(), "lr": b.lr * f}))
    return out
