"""Linear-chain CRF (Lafferty et al., 2001) and the BiLSTM-CRF tagger (Lample et al., 2016).

The CRF is batched over time steps: the forward algorithm gives log Z, Viterbi
gives the best path; masked positions (padding, `mask == False`) carry the
previous state through unchanged, so sentences of any length share a batch.
The first position of every sequence must be unmasked.
"""

from __future__ import annotations

import torch
from torch import nn

from metalr.models.bilstm import run_lstm


class CRF(nn.Module):
    def __init__(self, num_tags: int) -> None:
        super().__init__()
        self.num_tags = num_tags
        self.start = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))  # [from, to]

    def _check(self, emissions: torch.Tensor, mask: torch.Tensor) -> None:
        if emissions.dim() != 3 or emissions.shape[-1] != self.num_tags or mask.shape != emissions.shape[:2]:
            raise ValueError(f"need emissions (B, T, {self.num_tags}) and mask (B, T); got {tuple(emissions.shape)} and {tuple(mask.shape)}")
        if not bool(mask[:, 0].all()):
            raise ValueError("the first position of every sequence must be unmasked")

    def score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised log score of the tag path `tags`, per sequence (B,)."""
        tags = tags.masked_fill(~mask, 0)
        b = torch.arange(len(tags), device=tags.device)
        s = self.start[tags[:, 0]] + emissions[b, 0, tags[:, 0]]
        for t in range(1, tags.shape[1]):
            step = self.transitions[tags[:, t - 1], tags[:, t]] + emissions[b, t, tags[:, t]]
            s = s + step * mask[:, t]
        last = tags[b, mask.long().sum(1) - 1]
        return s + self.end[last]

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log Z per sequence (B,), by the forward algorithm."""
        alpha = self.start + emissions[:, 0]
        for t in range(1, emissions.shape[1]):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + self.transitions + emissions[:, t].unsqueeze(1), dim=1)
            alpha = torch.where(mask[:, t : t + 1], nxt, alpha)
        return torch.logsumexp(alpha + self.end, dim=1)

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of the gold paths."""
        self._check(emissions, mask)
        return (self.log_partition(emissions, mask) - self.score(emissions, tags, mask)).mean()

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Viterbi: the best tag path of each sequence, as lists of its unmasked length."""
        self._check(emissions, mask)
        score = self.start + emissions[:, 0]
        backpointers = []
        for t in range(1, emissions.shape[1]):
            best, idx = (score.unsqueeze(2) + self.transitions).max(dim=1)
            nxt = best + emissions[:, t]
            m = mask[:, t : t + 1]
            score = torch.where(m, nxt, score)
            backpointers.append(torch.where(m, idx, torch.arange(self.num_tags, device=idx.device).expand_as(idx)))  # masked: stay put
        score = score + self.end
        last = score.argmax(1)
        paths = [last]
        for bp in reversed(backpointers):
            last = bp.gather(1, last.unsqueeze(1)).squeeze(1)
            paths.append(last)
        full = torch.stack(paths[::-1], dim=1)
        lengths = mask.long().sum(1).tolist()
        return [row[:n] for row, n in zip(full.tolist(), lengths)]


class BiLSTMCRF(nn.Module):
    """Word embeddings (+ an optional character CNN) -> BiLSTM -> per-tag emissions -> CRF.

    Call it as `model(words, chars, mask)` for emissions; `model.crf.nll` and
    `model.crf.decode` do the rest. `chars` is (B, T, L) character ids or None.
    """

    def __init__(
        self,
        vocab_size: int,
        num_tags: int,
        embed_dim: int = 100,
        hidden: int = 128,
        char_vocab_size: int = 0,
        char_dim: int = 30,
        char_filters: int = 50,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.char_embed = nn.Embedding(char_vocab_size, char_dim, padding_idx=0) if char_vocab_size else None
        self.char_cnn = nn.Conv1d(char_dim, char_filters, 3, padding=1) if char_vocab_size else None
        d_in = embed_dim + (char_filters if char_vocab_size else 0)
        self.lstm = nn.LSTM(d_in, hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)
        self.emit = nn.Linear(2 * hidden, num_tags)
        self.crf = CRF(num_tags)

    def forward(self, words: torch.Tensor, chars: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(words)
        if self.char_embed is not None and self.char_cnn is not None and chars is not None:
            b, t, n = chars.shape
            c = self.char_embed(chars.reshape(b * t, n)).transpose(1, 2)  # (B*T, D, L)
            pad = chars.reshape(b * t, 1, n) == 0
            c = self.char_cnn(c).masked_fill(pad, -1e4).amax(-1)  # max over the word's real characters
            c = c.masked_fill(pad.all(-1), 0.0)  # padding words (no characters) get zeros
            x = torch.cat([x, c.reshape(b, t, -1)], dim=-1)
        h = run_lstm(self.lstm, self.drop(x), words != 0 if mask is None else mask)
        return self.emit(self.drop(h))
