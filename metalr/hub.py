"""Hugging Face data sets and models, from local copies first and the hub second.

Where metalr looks, in order:
1. `METALR_DATA_DIR` (or `set_data_dir(path)`, e.g. from a config's `data_dir`):
   `<data_dir>/<dataset id>` ("/" in the id becomes "__") holding either a
   `save_to_disk` copy or parquet / json(l) / csv files whose names contain the
   split (`train*.parquet`, `test*.parquet`, `validation*.parquet`).
2. The hub, through `datasets.load_dataset(<id>)` (which also finds the HF cache).

The hub lookup never hangs: with `HF_DATASETS_OFFLINE=1` / `HF_HUB_OFFLINE=1` it
fails at once, and otherwise a 3-second reachability probe comes first. Either
way the error (`DataUnavailableError`) says how to point the task at local files.
"""

from __future__ import annotations

import os
import socket
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "METALR_DATA_DIR"
MODEL_DIR_ENV = "METALR_MODEL_DIR"
_SPLITS = ("train", "validation", "test")
_FORMATS = (("parquet", "parquet"), ("jsonl", "json"), ("json", "json"), ("csv", "csv"))


class DataUnavailableError(RuntimeError):
    """A data set or model that is neither in a local folder nor reachable on the hub."""


def set_data_dir(path: str | os.PathLike[str] | None) -> None:
    """Point every hub task at local copies under `path` (None: back to the environment / hub)."""
    if path is None:
        os.environ.pop(DATA_DIR_ENV, None)
    else:
        os.environ[DATA_DIR_ENV] = str(path)


def data_dir() -> Path | None:
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Can huggingface.co be reached? False at once in offline mode; at most `timeout` seconds otherwise.

    The probe runs in a daemon thread because name resolution ignores socket timeouts.
    """
    if offline():
        return False
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def how_to_get(dataset_id: str) -> str:
    folder = dataset_id.replace("/", "__")
    return (
        f"To run it offline, put a copy of {dataset_id!r} in a folder and set {DATA_DIR_ENV} (or call "
        f"metalr.hub.set_data_dir) to that folder's parent: {DATA_DIR_ENV}=/data reads /data/{folder}, "
        f"made either with `datasets.load_dataset({dataset_id!r}).save_to_disk('/data/{folder}')` on a machine with "
        f"internet (read back with load_from_disk), or as parquet/json/csv files named by split (train*.parquet, "
        f"test*.parquet; read with load_dataset('parquet', data_files=...)). A copy already in the HF cache loads "
        f"with HF_DATASETS_OFFLINE=1. The offline tasks (rt_bilstm, rt_minilm, twitter_ner_bilstm_crf, synthetic_qa) need no download."
    )


def load_local(path: str | os.PathLike[str]) -> Any:
    """A `DatasetDict` from a `save_to_disk` folder or from split-named parquet/json/csv files."""
    import datasets

    p = Path(path)
    if (p / "dataset_dict.json").exists() or (p / "state.json").exists():
        d = datasets.load_from_disk(str(p))
        return d if isinstance(d, datasets.DatasetDict) else datasets.DatasetDict({"train": d})
    for ext, builder in _FORMATS:
        files = sorted(str(f) for f in p.rglob(f"*.{ext}"))
        if not files:
            continue
        by_split: dict[str, list[str]] = {}
        for f in files:
            rel = os.path.relpath(f, p).lower()
            split = next((s for s in _SPLITS if s in rel), None) or ("validation" if "valid" in rel or "dev" in rel else "train")
            by_split.setdefault(split, []).append(f)
        return datasets.load_dataset(builder, data_files=by_split)
    raise DataUnavailableError(f"{p} holds no save_to_disk copy and no parquet/json/jsonl/csv files")


def load_hf_dataset(dataset_id: str, name: str | None = None, local_dir: str | os.PathLike[str] | None = None) -> Any:
    """`datasets.load_dataset(dataset_id, name)`, preferring a local copy (see the module docstring)."""
    import datasets

    root = Path(local_dir) if local_dir is not None else data_dir()
    if root is not None:
        for candidate in (root / dataset_id.replace("/", "__"), root / dataset_id):
            if candidate.exists():
                return load_local(candidate)
    if not offline() and not hub_reachable():
        raise DataUnavailableError(f"cannot load Hugging Face dataset {dataset_id!r}: huggingface.co cannot be reached. " + how_to_get(dataset_id))
    try:
        return datasets.load_dataset(dataset_id, name)
    except (ConnectionError, OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        where = f"; nothing under {root}" if root is not None else f"; {DATA_DIR_ENV} is not set"
        raise DataUnavailableError(f"cannot load Hugging Face dataset {dataset_id!r} ({type(e).__name__}: {e}){where}. " + how_to_get(dataset_id)) from e


def train_val(dd: Any, n_train: int | None, n_val: int | None, seed: int = 0, val_fraction: float = 0.1) -> tuple[Any, Any]:
    """Train and held-out splits (the 'test' or 'validation' split; carved from train if neither), subsampled with a fixed seed."""
    train = dd["train"]
    val_name = next((s for s in ("validation", "test") if s in dd), None)
    if val_name is None:
        parts = train.train_test_split(test_size=val_fraction, seed=seed)
        train, val = parts["train"], parts["test"]
    else:
        val = dd[val_name]
    if n_train is not None and n_train < len(train):
        train = train.shuffle(seed=seed).select(range(n_train))
    if n_val is not None and n_val < len(val):
        val = val.shuffle(seed=seed).select(range(n_val))
    return train, val
