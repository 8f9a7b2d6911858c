"""Extractive QA models: `(input_ids, token_type_ids, attention_mask) -> (start_logits, end_logits)`.

Inputs are `[CLS] question [SEP] context [SEP]` (SQuAD v2 layout): position 0 is
the "no answer" slot, so an unanswerable question is trained with start = end = 0
and predicted when the null score s_0 + e_0 beats the best span's score.

- `BiLSTMQA`: a small from-scratch encoder (BiLSTM + one self-attention layer, so
  context words can look up the question) for the offline synthetic QA task.
- `TransformersQA`: wraps any `AutoModelForQuestionAnswering` to the same call.
"""

from __future__ import annotations

import torch
from torch import nn

from metalr.models.bilstm import run_lstm


class BiLSTMQA(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden: int = 64, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.segment = nn.Embedding(2, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.attn = nn.MultiheadAttention(2 * hidden, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(2 * hidden)
        self.lstm2 = nn.LSTM(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)
        self.span = nn.Linear(2 * hidden, 2)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.drop(self.embed(input_ids) + self.segment(token_type_ids))
        mask = attention_mask.bool()
        h = run_lstm(self.lstm, x, mask)
        a, _ = self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)
        h = run_lstm(self.lstm2, self.norm(h + self.drop(a)), mask)
        start, end = self.span(self.drop(h)).unbind(-1)
        return start, end


class TransformersQA(nn.Module):
    """Adapts a `transformers` QA model (BERT-style: start/end logits) to `BiLSTMQA`'s call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        return out.start_logits, out.end_logits
