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

Cost. No flattened copy of the gradient: per-tensor reductions, in the tensors'
precision (float32 accumulation for float32 models). Two paths, tested to agree:
- device (`grad_stats`): `torch._foreach_norm` and one `vdot` per tensor on the
  parameters' device; the results are 0-d tensors there, so computing them never
  synchronises host and device (for readers that take tensors: `SignalTracker(as_tensors=True)`);
- host (`host_grad_stats`, `host_norm`, `host_dot`): Python numbers. For CPU
  tensors the reductions run through numpy views of the same memory (no copy): a
  torch call costs microseconds of dispatch each, several times a numpy call, and
  on a tiny model that dispatch is the whole cost. Off the CPU: the device path,
  then one read per number.
Non-finite or undefined values (a zero norm) are NaN / None: every reader treats them as "missing".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
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


def _acc_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


@torch.no_grad()
def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm of the concatenation of `tensors` (0-d, on their device; no copy, no host sync)."""
    if not tensors:
        return torch.tensor(float("nan"))  # no gradient at all: "missing"
    norms = torch._foreach_norm(list(tensors))
    return torch.linalg.vector_norm(_cast(torch.stack(norms), _acc_dtype(tensors)))


@torch.no_grad()
def global_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_i <a_i, b_i> over paired tensors (0-d, on their device; one `vdot` per pair, no copy)."""
    dtype = _acc_dtype([*a, *b])
    if not a:
        device = next((t.device for t in b), None)
        return torch.zeros((), dtype=dtype, device=device)
    return torch.stack([torch.vdot(_cast(x, dtype).view(-1), _cast(y, dtype).view(-1)) for x, y in zip(a, b)]).sum()


def cosine(dot: torch.Tensor, norm_a: torch.Tensor, norm_b: torch.Tensor) -> torch.Tensor:
    """dot / (norm_a norm_b) clipped to [-1, 1]; NaN where undefined (a zero or non-finite norm): the division gives it."""
    denom = norm_a * norm_b
    return (dot / torch.where(torch.isfinite(denom) & (denom > 0), denom, torch.nan)).clamp(-1.0, 1.0)


def grad_stats(grads: Sequence[torch.Tensor | None], refs: Sequence[torch.Tensor | None] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(global L2 norm of `grads`, cosine between `grads` and `refs`) as 0-d tensors; the cosine is None without refs.

    Missing gradients count as zeros. A non-finite norm (or cosine) is what the tensors hold: readers treat it as missing.
    """
    gs = [g for g in grads if g is not None]
    norm = global_norm(gs)
    if refs is None:
        return norm, None
    pairs = [(g, r) for g, r in zip(grads, refs) if g is not None and r is not None]
    rs = [r for _, r in pairs]
    return norm, cosine(global_dot([g for g, _ in pairs], rs), norm, global_norm(rs))


def _host_arrays(tensors: Sequence[torch.Tensor]) -> list[np.ndarray] | None:
    """numpy views of CPU float tensors, in their own shape (for `np.vdot`, which reads any contiguous
    array as flat without a copy), or None when any is elsewhere, needs grad, or is of another dtype.

    `Tensor.numpy()` itself refuses a tensor off the CPU, one that requires grad and a dtype numpy lacks
    (bfloat16); asking it first costs less than three checks per tensor on the per-step path."""
    try:
        out = [t.numpy() for t in tensors]
    except (RuntimeError, TypeError, NotImplementedError):
        return None
    for a in out:
        if a.dtype.kind != "f":  # complex (whose vdot conjugates) or integer: the torch path
            return None
    return out


def _arrays(tensors: Sequence[torch.Tensor]) -> list[np.ndarray] | None:
    """Flat numpy views of CPU float tensors (no copy; detached first where they require grad), or None as `_host_arrays`."""
    arrays = _host_arrays([t.detach() if t.requires_grad else t for t in tensors])
    return None if arrays is None else [a.reshape(-1) for a in arrays]


# The host reductions use `np.vdot`: the same BLAS dot as `np.dot` (bit for bit), without `np.dot`'s check of
# the floating-point flags, so an overflowing (diverging) run gives inf/NaN without a warning and needs no
# `np.errstate` around it (which costs more than a small tensor's dot). Callers read inf/NaN as missing.


class ViewCache:
    """`_arrays` of tensors whose storage persists from step to step (the optimizer's moments), kept while it does.

    Rebuilt when any tensor's data pointer changes (a new or moved buffer); never kept for a
    non-contiguous tensor, whose flat array is a copy rather than a view. The views hold the tensors
    they view, which the optimizer holds anyway: no extra memory while the pointers match.
    """

    def __init__(self) -> None:
        self.ptrs: list[int] = []
        self.views: list[np.ndarray] | None = None

    def __call__(self, tensors: Sequence[torch.Tensor], writable: bool = False) -> list[np.ndarray] | None:
        """The flat arrays; None where there are none (`_arrays`) and, with `writable`, unless every one is a view."""
        ptrs = [t.data_ptr() for t in tensors]
        if ptrs != self.ptrs or self.views is None:
            if writable and not all(t.is_contiguous() for t in tensors):
                return None  # their flat arrays would be copies: none built
            self.views = _arrays(tensors)
            self.ptrs = ptrs if self.views is not None and all(t.is_contiguous() for t in tensors) else []
            if not self.ptrs:
                views, self.views = self.views, None
                return None if writable else views
        return self.views


def host_dots(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], b_arrays: list[np.ndarray] | None = None) -> tuple[float, float, float]:
    """(<a, a>, <a, b>, <b, b>) over paired tensors as Python floats, in one pass (numpy views on CPU).

    `b_arrays`: `b`'s numpy views when the caller has them already (`ViewCache`)."""
    xa, xb = _host_arrays(a), (b_arrays if b_arrays is not None else _host_arrays(b))
    if xa is None or xb is None:  # on a GPU: the three read back together, one synchronisation (cat promotes: exact)
        aa, ab, bb = torch.cat([global_dot(a, a).reshape(1), global_dot(a, b).reshape(1), global_dot(b, b).reshape(1)]).tolist()
        return aa, ab, bb
    vdot = np.vdot
    aa = ab = bb = 0.0
    for x, y in zip(xa, xb):
        aa += float(vdot(x, x))
        ab += float(vdot(x, y))
        bb += float(vdot(y, y))
    return aa, ab, bb


def each_dots(a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor]) -> list[tuple[float, float, float]]:
    """(<a_i, a_i>, <a_i, b_i>, <b_i, b_i>) for each pair as Python floats; an absent `a_i` counts as zeros.
    On the CPU numpy dots; elsewhere the per-tensor sums read back together (one synchronisation)."""
    present = [x for x in a if x is not None]
    xa, xb = _host_arrays(present), _host_arrays(b)
    if xa is not None and xb is not None:
        vdot, it = np.vdot, iter(xa)
        out = []
        for x, y in zip(a, xb):
            bb = float(vdot(y, y))
            if x is None:
                out.append((0.0, 0.0, bb))
            else:
                xx = next(it)
                out.append((float(vdot(xx, xx)), float(vdot(xx, y)), bb))
        return out
    sums: list[torch.Tensor] = []
    for g, q in zip(a, b):
        qf = q.reshape(-1).to(_acc_dtype([q]))
        gf = qf.new_zeros(()) if g is None else g.reshape(-1).to(qf.dtype)
        sums += [(gf * gf).sum(), (gf * qf).sum(), (qf * qf).sum()]
    flat = torch.stack(sums).tolist() if sums else []
    return [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]


#: Tensors longer than this are walked in slices of this many entries by `host_step_dots`, so that each slice is
#: still in the cache when it is read again: 256 KiB of float32 (2 MiB of L2 per core on the benchmark machine).
STEP_CHUNK = 1 << 16


def host_step_dots(grads: Sequence[np.ndarray], prev: Sequence[np.ndarray], theta: Sequence[np.ndarray]) -> tuple[float, float, float]:
    """`hypergrad`'s step on flat numpy arrays: each `prev` (theta_{t-1}, written in place) becomes
    d = theta_{t-1} - theta_t, the sums (<g, g>, <g, d>, <d, d>) are taken, and `prev` then holds theta_t.

    The same numbers as `_foreach_sub_`, `host_dots` and `_foreach_copy_` in turn (bit for bit on a tensor of
    at most `STEP_CHUNK` entries; a longer one is summed slice by slice, the same value up to rounding) in one
    pass over memory instead of four: on a model of 22M parameters, 15 ms instead of 23 (lab timing).
    `prev` and `theta` are flat (`prev` views of the kept buffer, not copies); `grads` in any shape of their size."""
    vdot, sub, copyto, chunk = np.vdot, np.subtract, np.copyto, STEP_CHUNK
    gg = gd = dd = 0.0
    for g, p, t in zip(grads, prev, theta):
        if p.size > chunk:
            g = g.reshape(-1)
            for i in range(0, p.size, chunk):
                gc, pc, tc = g[i : i + chunk], p[i : i + chunk], t[i : i + chunk]
                sub(pc, tc, out=pc)
                gg += float(vdot(gc, gc))
                gd += float(vdot(gc, pc))
                dd += float(vdot(pc, pc))
                copyto(pc, tc)
            continue
        sub(p, t, out=p)
        gg += float(vdot(g, g))
        gd += float(vdot(g, p))
        dd += float(vdot(p, p))
        copyto(p, t)
    return gg, gd, dd


def finite_or_nan(v: float) -> float:
    return v if math.isfinite(v) else math.nan


def host_norm(tensors: Sequence[torch.Tensor]) -> float:
    """`global_norm` as a Python float (NaN if non-finite or there is no tensor)."""
    arrays = _host_arrays(tensors)
    if arrays is None:
        return finite_or_nan(float(global_norm(tensors)))
    if not arrays:
        return math.nan
    vdot, sq = np.vdot, 0.0
    for x in arrays:
        sq += float(vdot(x, x))
    return finite_or_nan(math.sqrt(sq))


def host_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """`global_dot` as a Python float."""
    xa, xb = _host_arrays(a), _host_arrays(b)
    if xa is None or xb is None:
        return float(global_dot(a, b))
    vdot, total = np.vdot, 0.0
    for x, y in zip(xa, xb):
        total += float(vdot(x, y))
    return total


def host_grad_stats(
    grads: Sequence[torch.Tensor | None], refs: Sequence[torch.Tensor | None] | None, ref_cache: ViewCache | None = None
) -> tuple[float, float | None]:
    """`grad_stats` as Python numbers: (norm, NaN if non-finite), (cosine, None if absent or undefined).

    `ref_cache`: keeps the numpy views of `refs` from call to call (they are the optimizer's moments)."""
    gs = [g for g in grads if g is not None]
    if refs is None:
        return host_norm(gs), None
    if ref_cache is not None and len(gs) == len(grads) and all(r is not None for r in refs):  # every tensor paired: the common case
        g_sq, gr, rr = host_dots(gs, refs, ref_cache(refs))  # type: ignore[arg-type]
        lone: list[torch.Tensor] = []
    else:
        paired = [(g, r) for g, r in zip(grads, refs) if g is not None and r is not None]
        lone = [g for g, r in zip(grads, refs) if g is not None and r is None]
        g_sq, gr, rr = host_dots([g for g, _ in paired], [r for _, r in paired])  # one pass over the pairs
    if lone:
        g_sq += host_norm(lone) ** 2
    norm = finite_or_nan(math.sqrt(g_sq)) if gs else math.nan
    denom = norm * math.sqrt(rr)
    if not (denom > 0 and math.isfinite(denom)):
        return norm, None
    cos = gr / denom
    return norm, (max(-1.0, min(1.0, cos)) if math.isfinite(cos) else None)


class KeptCopy:
    """The previous step's tensors, for a statistic that compares with them (the previous gradient or weights).

    One model-sized buffer, per tensor, allocated by the first `keep` and overwritten in place after it.
    A reader every k steps (`SignalTracker(every=k)`) calls `set_aside` once it has read: `tensors` is then
    None (no previous reading in the state) and the buffer waits for the `keep` on the step before the next reading.
    """

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor | None] | None = None
        self._spare: list[torch.Tensor | None] | None = None

    def keep(self, tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """`tensors` copied into the buffer (the one in use or the one set aside)."""
        self.tensors = copy_into(self.tensors if self.tensors is not None else self._spare, tensors)
        self._spare = None
        return self.tensors

    def set_aside(self) -> None:
        if self.tensors is not None:
            self._spare, self.tensors = self.tensors, None

    def clear(self) -> None:
        self.tensors = self._spare = None

    def load(self, tensors: list[torch.Tensor | None] | None) -> None:
        self.tensors, self._spare = tensors, None

    def buffers(self) -> list[list[torch.Tensor | None]]:
        """Every buffer held, in use or set aside (for memory accounting)."""
        return [b for b in (self.tensors, self._spare) if b is not None]


class GradAlign:
    """Per-run state of the `grad_align` statistic: the optimizer's moment, or else the previous gradient.

    Called once per step with the gradients and the optimizer's per-parameter state *before* the
    update. While the optimizer keeps a gradient average (from its first step on, for SGD with
    momentum and Adam) that is the reference and nothing is copied; otherwise the previous
    gradient is kept (`KeptCopy`: one model-sized buffer) and used instead.
    """

    def __init__(self) -> None:
        self.prev = KeptCopy()
        self._views = ViewCache()

    def __call__(
        self, grads: Sequence[torch.Tensor | None], states: Sequence[dict[str, object] | None], host: bool = True, keep: bool = True
    ) -> tuple[Any, Any]:
        """(norm, cosine): Python numbers (`host_grad_stats`) or, with `host=False`, 0-d device tensors (`grad_stats`).

        `keep=False` (a caller that calls `prime` before its next call) skips keeping this step's
        gradient: the previous gradient is set aside for `prime` to fill.
        """
        refs = moment_buffers(states)
        if refs is not None:
            self.prev.clear()
            return host_grad_stats(grads, refs, self._views) if host else grad_stats(grads, refs)
        stats = host_grad_stats if host else grad_stats
        out = stats(grads, self.prev.tensors)
        if keep:
            self.prev.keep(grads)
        else:
            self.prev.set_aside()
        return out

    def prime(self, grads: Sequence[torch.Tensor | None], states: Sequence[dict[str, object] | None]) -> None:
        """Keep what the next call needs without computing anything: for a caller that reads the
        statistic only every k steps (`SignalTracker(every=k)`), on the step before it does."""
        if moment_buffers(states) is not None:
            self.prev.clear()
        else:
            self.prev.keep(grads)

    def state_dict(self) -> dict[str, object]:
        prev = self.prev.tensors
        return {"prev": None if prev is None else [None if t is None else t.clone() for t in prev]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        prev = state.get("prev")
        self.prev.load(None if prev is None else [None if t is None else t.clone() for t in prev])  # type: ignore[attr-defined]


def copy_into(buffers: list[torch.Tensor | None] | None, tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """`tensors` (detached) copied into `buffers`, in place when their layout matches (no new allocation)."""
    if buffers is not None and len(buffers) == len(tensors):
        dst = [b for b in buffers if b is not None]
        src = [t.detach() if t.requires_grad else t for t in tensors if t is not None]
        if len(dst) == len(src) and all((b is None) == (t is None) for b, t in zip(buffers, tensors)):
            try:
                torch._foreach_copy_(dst, src)  # raises on a shape mismatch: then fresh buffers below
                return buffers
            except RuntimeError:
                pass
    return [None if t is None else t.detach().clone() for t in tensors]


class UpdateSize:
    """Relative size of the last update, |theta_t - theta_{t-1}| / |theta_t|, on a fixed subset of coordinates.

    The one signal that tells an LR that is 10x too high from one that is right whatever the
    optimizer (SGD, momentum, Adam, AdamW, a user's own): how far the weights moved, relative to
    the weights. Measured on at most `max_coords` coordinates, every `stride`-th entry of the
    parameters laid end to end (fixed at the first call: no RNG), so it keeps a buffer of that
    many numbers, never a model-sized one; with a few thousand coordinates the sampling error of
    the ratio is a few per cent, which a log10 feature does not notice.

    Call it once per step with the current parameters, before the step's update: it returns the
    ratio of the previous update (None on the first call, or when the sampled weights are all zero).
    `host=True`: a Python float, from numpy views for CPU tensors; `host=False`: a 0-d float64
    tensor on the parameters' device (NaN when undefined), with no host synchronisation.
    """

    def __init__(self, max_coords: int = 4096) -> None:
        if max_coords < 1:
            raise ValueError(f"max_coords must be >= 1, got {max_coords}")
        self.max_coords = int(max_coords)
        self.stride: int | None = None
        self.offsets: list[int] = []
        self.prev: Any = None  # the last call's sample: a numpy array (host path) or a tensor (device path)
        self._ptrs: list[int] = []
        self._views: list[np.ndarray] | None = None
        self._n = 0  # the sample's length on the host path
        self._spare: np.ndarray | None = None  # the sample before last, whose memory the next sample reuses (host path)

    def _sample(self, params: Sequence[torch.Tensor], host: bool) -> Any:
        if self.stride is None or len(self.offsets) != len(params):
            self.stride = max(1, math.ceil(sum(p.numel() for p in params) / self.max_coords))
            self.offsets, start = [], 0
            for p in params:
                self.offsets.append((-start) % self.stride)  # global index start + offset is a multiple of stride
                start += p.numel()
        stride = self.stride
        if host:
            ptrs = [p.data_ptr() for p in params]
            if ptrs != self._ptrs:  # strided numpy views of the parameters' memory, kept while the storage is the same
                arrays = _arrays(params)  # None off the CPU or for a dtype numpy cannot view (bfloat16): the torch path
                self._views = None if arrays is None else [a[off::stride] for a, off in zip(arrays, self.offsets)]
                self._n = 0 if self._views is None else sum(len(v) for v in self._views)
                # a non-contiguous parameter's flat array is a copy, not a view: never reuse it
                self._ptrs = ptrs if arrays is not None and all(p.is_contiguous() for p in params) else []
            if self._views is not None:
                spare, self._spare = self._spare, None
                if spare is None or len(spare) != self._n:
                    spare = np.empty(self._n, dtype=np.float64)
                return np.concatenate(self._views, out=spare)  # one pass: gathered and widened into a kept buffer
        return torch.cat([p.detach().reshape(-1)[off::stride].to(torch.float64) for p, off in zip(params, self.offsets)])

    def prime(self, params: Sequence[torch.Tensor], host: bool = True) -> None:
        """Take the sample the next call compares with, computing nothing: for a caller that reads
        the ratio only every k steps (`SignalTracker(every=k)`), on the step before it does."""
        self._recycle(self.prev)
        self.prev = self._sample(params, host)

    def _recycle(self, old: Any) -> None:
        """Keep a sample that is no longer needed as the memory of the next one (host path)."""
        if isinstance(old, np.ndarray) and old.dtype.char == "d" and len(old) == self._n:  # float64
            self._spare = old

    def __call__(self, params: Sequence[torch.Tensor], host: bool = True) -> Any:
        x = self._sample(params, host)
        prev, self.prev = self.prev, x
        if isinstance(x, np.ndarray):
            if prev is None or len(prev) != len(x):
                return None
            norm = math.sqrt(float(np.vdot(x, x)))
            if isinstance(prev, np.ndarray) and prev.dtype.char == "d":  # a sample of this path: its memory is no one else's
                d = np.subtract(x, prev, out=prev)  # the difference, in place of the sample no longer needed
                self._recycle(d)
            else:
                d = x - np.asarray(prev)  # a CPU tensor if the last call took the torch path
            return finite_or_nan(math.sqrt(float(np.vdot(d, d))) / norm) if norm > 0 else None
        if prev is None or len(prev) != len(x):
            return None if host else torch.full((), math.nan, dtype=torch.float64, device=x.device)
        norm = torch.linalg.vector_norm(x)
        ratio = torch.where(norm > 0, torch.linalg.vector_norm(x - torch.as_tensor(prev, device=x.device)) / norm, math.nan)
        if host:
            v = float(ratio)
            return finite_or_nan(v) if not math.isnan(v) else None
        return ratio

    def state_dict(self) -> dict[str, object]:
        prev = None if self.prev is None else torch.as_tensor(self.prev).detach().cpu().clone()
        return {"stride": self.stride, "offsets": list(self.offsets), "prev": prev}

    def load_state_dict(self, state: dict[str, object]) -> None:
        stride, prev = state.get("stride"), state.get("prev")
        self.stride = None if stride is None else int(stride)  # type: ignore[call-overload]
        offsets: Any = state.get("offsets") or []
        self.offsets = [int(o) for o in offsets]
        self.prev = None if prev is None else torch.as_tensor(prev, dtype=torch.float64).clone().numpy()
        self._ptrs, self._spare = [], None  # the views follow the restored stride and offsets
