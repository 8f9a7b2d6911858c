"""Frozen policy files: safetensors weights + JSON metadata, never pickle.

One `.safetensors` file holds the policy's tensors and, in its header, the
metadata: format tag and version, feature names, the policy's constructor
arguments (`model_args`, enough to rebuild it), the LR rule's settings
(`rule`: bounds, horizon, guard), library versions and the training config. A
`.json` copy of the metadata is written beside it for people to read; loading
never needs it. Loading checks everything before building anything (format,
features, tensor names, shapes, finiteness), so a mismatched or corrupt file is
refused with a clear error and nothing is half-loaded.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from metalr.io import atomic_write_bytes, atomic_write_json, versions
from metalr.meta.features import FEATURE_NAMES, FORMAT_FEATURES, SCALE, SHIFT
from metalr.meta.policy import MetaPolicy
from metalr.meta.rule import RuleConfig

FORMAT = "metalr.meta_policy"
#: Formats a deployment reads (2: model_args + rule settings; grad_align/loss features, no accuracy. 3: + update_size.
#: 4: + val_rise): each reads the first `FORMAT_FEATURES[v]` features, and a policy is saved in the format of its count.
READABLE_VERSIONS = tuple(sorted(FORMAT_FEATURES))
#: The shipped policy: `checkpoints/metalr_default.safetensors` in a checkout (an editable install), else the copy a
#: wheel or `pip install .` puts in the package (`metalr/shipped/`, a link to that file in the repository).
_IN_CHECKOUT = Path(__file__).resolve().parents[2] / "checkpoints" / "metalr_default.safetensors"
_IN_PACKAGE = Path(__file__).resolve().parents[1] / "shipped" / "metalr_default.safetensors"
DEFAULT_PATH = _IN_CHECKOUT if _IN_CHECKOUT.is_file() else _IN_PACKAGE


class CheckpointError(ValueError):
    """A policy file that cannot be used; the message says why."""


@dataclass
class FrozenPolicy:
    """A loaded, frozen policy, its LR-rule settings and its metadata (`metalr.controllers.meta` drives an optimizer with it)."""

    policy: MetaPolicy
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    rule: RuleConfig = field(default_factory=RuleConfig)


def save_policy(path: str | os.PathLike[str], policy: MetaPolicy, *, rule: RuleConfig, config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write `path` (.safetensors, atomically) and a readable `.json` copy of its metadata."""
    from safetensors.torch import save

    version = _version_of(policy.n_features)
    meta = {
        "format": FORMAT,
        "format_version": version,
        "feature_names": list(FEATURE_NAMES[: policy.n_features]),
        "model_args": dict(policy.model_args),
        "rule": rule.to_dict(),
        "versions": versions(),
        "config": config,
        **(extra or {}),
    }
    tensors = {k: v.detach().contiguous().clone() for k, v in policy.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata={"metalr": json.dumps(meta)}))
    atomic_write_json(Path(path).with_suffix(".json"), meta)


def read_policy(path: str | os.PathLike[str] | None = None, expand_features: bool | int = False) -> FrozenPolicy:
    """Load and validate a policy file (default: the shipped one). Formats 3 and 4 are read as they are.

    `expand_features=True` (meta-training's warm start only) also accepts a file from an earlier
    format whose features are a prefix of this metalr's, and widens it to all of them (an int n: to
    the first n): the new features get zero input weights, so the expanded policy computes exactly
    what the file's did and meta-training can learn to use them. Deployment never expands: a policy
    must have been trained on the features it reads.
    """
    from safetensors import safe_open

    p = Path(path).expanduser() if path is not None else DEFAULT_PATH
    if not p.is_file():
        raise FileNotFoundError(
            f"meta-controller checkpoint not found: {p}" + (" (the shipped default; run train_meta.py to create it)" if path is None else "")
        )
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{p}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    try:
        meta = json.loads(header["metalr"])
    except Exception as e:
        raise CheckpointError(f"{p}: no metalr metadata in the safetensors header ({type(e).__name__}: {e})") from None
    if expand_features:
        meta, tensors = _expand(meta, tensors, len(FEATURE_NAMES) if expand_features is True else int(expand_features))
    _validate(p, meta, tensors)
    policy = _built(meta)
    policy.load_state_dict(tensors, strict=True)
    policy.eval()
    for q in policy.parameters():
        q.requires_grad_(False)
    return FrozenPolicy(policy, meta, str(p), RuleConfig(**meta["rule"]))


def _expand(meta: Any, tensors: dict[str, torch.Tensor], n_new: int) -> tuple[Any, dict[str, torch.Tensor]]:
    """A format-2+ policy whose features are a strict prefix of the first `n_new` FEATURE_NAMES, widened with zero input weights."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") not in (2, *READABLE_VERSIONS):
        return meta, tensors
    names = meta.get("feature_names")
    if n_new not in FORMAT_FEATURES.values() or not isinstance(names, list) or not 0 < len(names) < n_new or names != list(FEATURE_NAMES[: len(names)]):
        return meta, tensors
    n_old = len(names)
    tensors = dict(tensors)
    w = tensors.get("net.0.weight")
    if w is None or w.shape[1] != n_old:
        return meta, tensors
    tensors["net.0.weight"] = torch.cat([w, w.new_zeros(w.shape[0], n_new - n_old)], 1)
    tensors["feature_shift"] = torch.cat([tensors["feature_shift"], torch.tensor(SHIFT[n_old:n_new], dtype=tensors["feature_shift"].dtype)])
    tensors["feature_scale"] = torch.cat([tensors["feature_scale"], torch.tensor(SCALE[n_old:n_new], dtype=tensors["feature_scale"].dtype)])
    version = _version_of(n_new)
    meta = {**meta, "format_version": version, "feature_names": list(FEATURE_NAMES[:n_new]), "model_args": {**meta.get("model_args", {}), "n_features": n_new}}
    meta["expanded_from"] = {"format_version": _version_of(n_old), "feature_names": names}
    return meta, tensors


def _version_of(n_features: int) -> int:
    """The format of a policy that reads the first `n_features` features (2: before update_size)."""
    return {n: v for v, n in FORMAT_FEATURES.items()}.get(n_features, 2)


def _built(meta: dict[str, Any]) -> MetaPolicy:
    """The policy `meta` describes, its weights still the initialiser's: drawn from a forked RNG, so that loading a
    checkpoint never moves the caller's torch random stream (a user's run is the same whether the file was cached)."""
    with torch.random.fork_rng(devices=[]):
        return MetaPolicy(**_model_args(meta))


def _model_args(meta: dict[str, Any]) -> dict[str, Any]:
    args = dict(meta["model_args"])
    args.setdefault("n_features", len(meta["feature_names"]))  # a file that names its features but not their count
    if "hidden" in args:
        args["hidden"] = tuple(args["hidden"])
    return args


def _validate(p: Path, meta: Any, tensors: dict[str, torch.Tensor]) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{p}: format {meta.get('format') if isinstance(meta, dict) else meta!r} is not {FORMAT!r}")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(f"{p}: format_version {version!r} is not one this metalr reads ({', '.join(map(str, READABLE_VERSIONS))})")
    names = list(FEATURE_NAMES[: FORMAT_FEATURES[version]])
    if meta.get("feature_names") != names:
        raise CheckpointError(f"{p}: features {meta.get('feature_names')} do not match format {version}'s {names}")
    args = meta.get("model_args")
    if not isinstance(args, dict) or set(args) - {"n_features", "max_log_step", "hidden"}:
        raise CheckpointError(f"{p}: model_args {args!r} are not MetaPolicy's constructor arguments")
    if args.get("n_features", len(names)) != len(names):  # (absent: the format's, as `_model_args` reads it)
        raise CheckpointError(f"{p}: model_args.n_features={args.get('n_features')!r} but format {version} has {len(names)} features")
    v = args.get("max_log_step")
    if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise CheckpointError(f"{p}: model_args.max_log_step={v!r} must be a positive number")
    rule = meta.get("rule")
    known = {f.name for f in fields(RuleConfig)}
    if not isinstance(rule, dict) or set(rule) - known:
        raise CheckpointError(f"{p}: rule settings {rule!r} do not match this metalr's ({sorted(known)})")
    try:
        RuleConfig(**rule)
        expected = {k: tuple(v.shape) for k, v in _built(meta).state_dict().items()}
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{p}: invalid settings ({e})") from None
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


def data_seen(path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """{data set: "meta-trained on" | "selected on"}: what a policy file (default: the shipped one) learned from, as far as
    its metadata and the files it names tell: the families its meta-training drew tasks from (its config's
    `data_families`, or the tasks of its LR-label file), over its whole lineage (each `init_from` warm start, where the
    file is at hand), and the real sets every checkpoint selection scores (`VALIDATION_REAL`). A registered task built on
    one of them (`TASK_DATA`) is not held out for this policy. Files are named relative to the repository root."""
    from metalr.meta.tasks import DATA_FAMILIES, VALIDATION_REAL

    seen = dict.fromkeys(VALIDATION_REAL, "selected on")
    todo, done = [Path(path).expanduser() if path is not None else DEFAULT_PATH], set()
    while todo:
        p = todo.pop().resolve()  # (one file named two ways is read once: a lineage that loops ends)
        if p in done or not p.is_file():
            continue
        done.add(p)
        config = _header(p).get("config") or {}
        labels = _named(config.get("lr_labels"))
        families = _label_data(labels) if labels is not None else None  # the label file's tasks are the draw
        if families is None:  # no label file (or not at hand): the families the config names (their defaults if unnamed)
            families = set(config.get("data_families") or DATA_FAMILIES)
        seen.update(dict.fromkeys(sorted(families), "meta-trained on"))
        warm = _named(config.get("init_from"))
        if warm is not None:
            todo.append(warm)
    return seen


def _named(name: Any) -> Path | None:
    """A file a policy's config names (relative to the repository root, or absolute), or None if it names none."""
    if not isinstance(name, str) or not name:
        return None
    p = Path(name).expanduser()
    return p if p.is_absolute() else DEFAULT_PATH.resolve().parents[1] / p


def _header(p: Path) -> dict[str, Any]:
    """A policy file's metalr metadata ({} if unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["metalr"])
    except Exception:
        return {}
    return meta if isinstance(meta, dict) else {}


def _label_data(p: Path) -> set[str] | None:
    """The data sets of an LR-label file's tasks (`scripts/meta_label_tasks.py`), or None if it cannot be read."""
    try:
        tasks = json.loads(p.read_text())["tasks"]
        return {str(t["spec"]["data"]) for t in tasks}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cached_policy(path: str | os.PathLike[str] | None = None) -> FrozenPolicy:
    """`read_policy`, memoised on (path, mtime, size): building many controllers reads the file once."""
    p = Path(path).expanduser() if path is not None else DEFAULT_PATH
    st = p.stat() if p.is_file() else None
    key = (str(p.resolve()), st.st_mtime_ns if st else 0, st.st_size if st else 0)
    if key not in _CACHE:
        _CACHE[key] = read_policy(p)
    return _CACHE[key]
