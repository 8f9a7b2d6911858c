"""Gradient statistics shared by the signal tracker and the meta-training unroll.

One function, two callers: `SignalTracker` (deployment, reading `.grad` and the
optimizer's state) and `metalr.meta.unroll` (meta-training, reading `higher`'s
gradients and differentiable optimizer state) both call `grad_stats`, so the
meta-controller sees at deployment exactly the statistic it was trained on.

`grad_align` is the cosine between the current gradient and the optimizer's own
running average of past gradients: SGD's momentum buffer, Adam's first moment
(`exp_avg`), before this step's update folds the new gradient in. It says whether
successive gradients agree (LR may grow) or fight (the iterate oscillates: LR too
high). It needs no copy of the model: the optimizer already keeps the buffer.
An optimizer without such a buffer (plain SGD) is given the previous gradient
instead, which the caller keeps (one model-sized buffer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: Optimizer state keys holding a running average of gradients, in order of preference.
MOMENT_KEYS = ("exp_avg", "momentum_buffer")


def moment_buffers(states: Sequence[dict[str, object] | None]) -> list[torch.Tensor] | None:
    """The per-parameter gradient-average buffers of an optimizer state, or None if it keeps none."""
    out: list[torch.Tensor] = []
    for st in states:
        buf = None
        if st:
            for key in MOMENT_KEYS:
                v = st.get(key)
                if isinstance(v, torch.Tensor):
                    buf = v
                    break
        if buf is None:
            return None
        out.append(buf)
    return out


def grad_stats(grads: Sequence[torch.Tensor | None], refs: Sequence[torch.Tensor | None] | None) -> tuple[float, float | None]:
    """(global L2 norm of `grads`, cosine between `grads` and `refs`); cosine is None without refs.

    Per-tensor float32 reductions, float64 for float64 models (no flattened copy). Non-finite results come back as nan
    (norm) / None (cosine), which every reader treats as "missing".
    """
    dtype = torch.float64 if any(g is not None and g.dtype == torch.float64 for g in grads) else torch.float32
    sq = torch.zeros((), dtype=dtype)
    dot = torch.zeros((), dtype=dtype)
    rsq = torch.zeros((), dtype=dtype)
    for i, g in enumerate(grads):
        if g is None:
            continue
        g32 = g.detach().to(dtype)
        sq = sq + (g32 * g32).sum().cpu()
        if refs is not None and refs[i] is not None:
            r32 = refs[i].detach().to(dtype)  # type: ignore[union-attr]
            dot = dot + (g32 * r32).sum().cpu()
            rsq = rsq + (r32 * r32).sum().cpu()
    norm = math.sqrt(float(sq))
    if not math.isfinite(norm):
        return float("nan"), None
    if refs is None:
        return norm, None
    denom = norm * math.sqrt(float(rsq))
    if not denom > 0 or not math.isfinite(denom):
        return norm, None
    cos = float(dot) / denom
    return norm, (max(-1.0, min(1.0, cos)) if math.isfinite(cos) else None)


class GradAlign:
    """Per-run state of the `grad_align` statistic: the optimizer's moment, or else the previous gradient.

    Called once per step with the gradients and the optimizer's per-parameter state *before* the
    update. While the optimizer keeps a gradient average (from its first step on, for SGD with
    momentum and Adam) that is the reference and nothing is copied; otherwise the previous
    gradient is kept (one model-sized buffer) and used instead.
    """

    def __init__(self) -> None:
        self.prev: list[torch.Tensor | None] | None = None

    def __call__(self, grads: Sequence[torch.Tensor | None], states: Sequence[dict[str, object] | None]) -> tuple[float, float | None]:
        refs = moment_buffers(states)
        if refs is not None:
            self.prev = None
            return grad_stats(grads, refs)
        out = grad_stats(grads, self.prev)
        self.prev = [None if g is None else g.detach().clone() for g in grads]
        return out

    def state_dict(self) -> dict[str, object]:
        return {"prev": None if self.prev is None else [None if t is None else t.clone() for t in self.prev]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        prev = state.get("prev")
        self.prev = None if prev is None else [None if t is None else t.clone() for t in prev]  # type: ignore[attr-defined]
