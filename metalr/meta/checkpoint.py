"""Frozen policy files: safetensors weights + JSON metadata, never pickle.

One `.safetensors` file holds the policy's tensors and, in its header, the
metadata (format tag and version, feature names, normalisation, LR bounds,
library versions, the training config). A `.json` copy of the metadata is written
beside it for people to read; loading never needs it. Loading checks everything
before building anything (format, features, tensor names, shapes, finiteness),
so a mismatched or corrupt file is refused with a clear error and nothing is
half-loaded.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metalr.io import atomic_write_bytes, atomic_write_json, versions
from metalr.meta.features import FEATURE_NAMES
from metalr.meta.policy import MetaPolicy

FORMAT = "metalr.meta_policy"
FORMAT_VERSION = 1
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "checkpoints" / "metalr_default.safetensors"


class CheckpointError(ValueError):
    """A policy file that cannot be used; the message says why."""


@dataclass
class FrozenPolicy:
    """A loaded, frozen policy plus its metadata. `.bind(optimizer)` makes a Controller."""

    policy: MetaPolicy
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def min_factor(self) -> float:
        return float(self.metadata["min_factor"])

    @property
    def max_factor(self) -> float:
        return float(self.metadata["max_factor"])

    @property
    def horizon_steps(self) -> int:
        return int(self.metadata.get("horizon_steps", 0))

    def bind(self, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        from metalr.controllers.meta import MetaController

        return MetaController(optimizer, checkpoint=self, **kwargs)


def save_policy(
    path: str | os.PathLike[str], policy: MetaPolicy, *, min_factor: float, max_factor: float, config: dict[str, Any], extra: dict[str, Any] | None = None
) -> None:
    """Write `path` (.safetensors, atomically) and a readable `.json` copy of its metadata."""
    from safetensors.torch import save

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "feature_names": list(FEATURE_NAMES),
        "normalisation": {"shift": list(policy.feature_shift.tolist()), "scale": list(policy.feature_scale.tolist())},
        "max_log_step": policy.max_log_step,
        "min_factor": float(min_factor),
        "max_factor": float(max_factor),
        "architecture": "Linear(n,64)-ReLU-Linear(64,32)-ReLU-Linear(32,1), max_log_step*tanh",
        "versions": versions(),
        "config": config,
        **(extra or {}),
    }
    tensors = {k: v.detach().contiguous().clone() for k, v in policy.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata={"metalr": json.dumps(meta)}))
    atomic_write_json(Path(path).with_suffix(".json"), meta)


def read_policy(path: str | os.PathLike[str] | None = None) -> FrozenPolicy:
    """Load and validate a policy file (default: the shipped one)."""
    from safetensors.torch import load

    p = Path(path) if path is not None else DEFAULT_PATH
    if not p.is_file():
        raise FileNotFoundError(
            f"meta-controller checkpoint not found: {p}" + (" (the shipped default; run train_meta.py to create it)" if path is None else "")
        )
    data = p.read_bytes()
    try:
        tensors = load(data)
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{p}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    try:
        n = int.from_bytes(data[:8], "little")  # safetensors layout: u64 header size, JSON header, tensor bytes
        meta = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["metalr"])
    except Exception as e:
        raise CheckpointError(f"{p}: no metalr metadata in the safetensors header ({type(e).__name__}: {e})") from None
    _validate(p, meta, tensors)
    policy = MetaPolicy(len(FEATURE_NAMES), max_log_step=float(meta["max_log_step"]))
    policy.load_state_dict(tensors, strict=True)
    policy.eval()
    for q in policy.parameters():
        q.requires_grad_(False)
    return FrozenPolicy(policy, meta, str(p))


def _validate(p: Path, meta: Any, tensors: dict[str, torch.Tensor]) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{p}: format {meta.get('format') if isinstance(meta, dict) else meta!r} is not {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{p}: format_version {meta.get('format_version')!r} != {FORMAT_VERSION} (supported)")
    if meta.get("feature_names") != list(FEATURE_NAMES):
        raise CheckpointError(f"{p}: features {meta.get('feature_names')} do not match this metalr's {list(FEATURE_NAMES)}")
    for key in ("max_log_step", "min_factor", "max_factor"):
        v = meta.get(key)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise CheckpointError(f"{p}: metadata {key}={v!r} must be a positive number")
    if not meta["min_factor"] < 1.0 < meta["max_factor"]:
        raise CheckpointError(f"{p}: need min_factor < 1 < max_factor, got {meta['min_factor']}, {meta['max_factor']}")
    expected = {k: tuple(v.shape) for k, v in MetaPolicy(len(FEATURE_NAMES)).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != expected:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise CheckpointError(
            f"{p}: tensors do not match the policy (missing {missing}, unexpected {extra}, wrong shape {[(k, got[k], expected[k]) for k in wrong]})"
        )
    bad = sorted(k for k, v in tensors.items() if not torch.isfinite(v).all())
    if bad:
        raise CheckpointError(f"{p}: non-finite values in {bad}")


_CACHE: dict[tuple[str, int, int], FrozenPolicy] = {}


def cached_policy(path: str | os.PathLike[str] | None = None) -> FrozenPolicy:
    """`read_policy`, memoised on (path, mtime, size): building many controllers reads the file once."""
    p = Path(path) if path is not None else DEFAULT_PATH
    st = p.stat() if p.is_file() else None
    key = (str(p.resolve()), st.st_mtime_ns if st else 0, st.st_size if st else 0)
    if key not in _CACHE:
        _CACHE[key] = read_policy(p)
    return _CACHE[key]


def load_pretrained(path: str | os.PathLike[str] | None = None, optimizer: torch.optim.Optimizer | None = None, **kwargs: Any) -> Any:
    """The shipped (or given) controller: a `MetaController` with `optimizer`, else the `FrozenPolicy`."""
    frozen = cached_policy(path)
    if optimizer is None:
        if kwargs:
            raise TypeError(f"keyword arguments {sorted(kwargs)} need an optimizer (they configure the bound controller)")
        return frozen
    return frozen.bind(optimizer, **kwargs)
