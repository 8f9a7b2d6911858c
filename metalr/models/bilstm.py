"""BiLSTM with additive attention pooling for text classification (Zhou et al., 2016 style).

Input: padded token ids (pad id 0). The attention scores of padding positions are
masked out, so a review's padding never changes its prediction.
"""

from __future__ import annotations

import torch
from torch import nn


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Run a batch-first LSTM on packed sequences, so the backward direction starts at each
    sequence's last real token rather than at its padding; padded outputs are zeros."""
    lengths = mask.long().sum(1).clamp_min(1).cpu()
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    h, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return h


class BiLSTMAttention(nn.Module):
    def __init__(
        self, vocab_size: int, num_classes: int, embed_dim: int = 100, hidden: int = 128, layers: int = 1, dropout: float = 0.3, pad_id: int = 0
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True, dropout=dropout if layers > 1 else 0.0)
        self.attn = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1, bias=False))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != self.pad_id
        h = run_lstm(self.lstm, self.drop(self.embed(ids)), mask)  # (B, T, 2H)
        scores = self.attn(h).squeeze(-1).masked_fill(~mask, torch.finfo(h.dtype).min)
        weights = scores.softmax(-1)  # an all-padding row gets uniform weights, not NaN
        return self.head(self.drop(torch.einsum("bt,btd->bd", weights, h)))
