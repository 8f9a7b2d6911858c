"""Average the weights of meta-controller checkpoints that share an init (a "model soup"; research, issue 13).

    python scripts/meta_soup.py OUT.safetensors A.safetensors B.safetensors ... [--rule-from checkpoints/metalr_default.safetensors]

Wortsman et al. (2022, "Model soups") average the weights of models fine-tuned from one pretrained
start and find the average more robust off-distribution than any one of them. Every fine-tune of
this project's policy since stage 6 (stages 8, 10, 13, 14, 18, 19) started from stage 6's weights,
so their average is a candidate that needs no meta-training. The soup keeps the 64-32 network:
each tensor is the (optionally weighted) mean of the ingredients' tensors. The ingredients must
have the same network shape and the same feature normalisation (`feature_shift`/`feature_scale`,
refused otherwise: an average over different input scalings would mean nothing). The soup is
written under one rule (the LR bounds, guard and warmup), by default the shipped checkpoint's; the
ingredients' own rules are recorded in its metadata, with their sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metalr.meta.checkpoint import DEFAULT_PATH, CheckpointError, read_policy, save_policy  # noqa: E402
from metalr.meta.policy import MetaPolicy  # noqa: E402

FIXED = ("feature_shift", "feature_scale")


def soup(paths: list[str], weights: list[float] | None = None, rule_from: str | None = None) -> tuple[MetaPolicy, dict]:
    """The weighted mean of the ingredients' tensors, as a policy, and the metadata that records it."""
    if len(paths) < 2:
        raise ValueError("a soup needs at least two ingredients")
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths) or any(not w > 0 for w in weights):
        raise ValueError(f"weights must be {len(paths)} positive numbers, got {weights}")
    frozen = [read_policy(p) for p in paths]
    args = frozen[0].metadata["model_args"]
    states = [f.policy.state_dict() for f in frozen]
    for p, f, s in zip(paths, frozen, states):
        if f.metadata["model_args"] != args:
            raise CheckpointError(f"{p}: model_args {f.metadata['model_args']} differ from {paths[0]}'s {args}")
        for k in FIXED:
            if not torch.equal(s[k], states[0][k]):
                raise CheckpointError(f"{p}: {k} differs from {paths[0]}'s: these policies read their features on different scales")
    total = sum(weights)
    mean = {k: sum(w * s[k].double() for w, s in zip(weights, states)) / total for k in states[0]}
    policy = MetaPolicy(**frozen[0].policy.model_args)
    policy.load_state_dict({k: v.to(states[0][k].dtype) for k, v in mean.items()}, strict=True)
    base = read_policy(rule_from)
    info = {
        "soup": [
            {"path": p, "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest(), "weight": w, "rule": f.metadata["rule"]}
            for p, w, f in zip(paths, weights, frozen)
        ],
        "rule_from": str(rule_from or DEFAULT_PATH),
    }
    return policy, {"rule": base.rule, "config": {}, "extra": info}  # no training config: the soup was never trained as such


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("ingredients", nargs="+")
    ap.add_argument("--weights", type=float, nargs="*", default=None)
    ap.add_argument("--rule-from", default=None, help="the checkpoint whose LR rule the soup is written under (default: the shipped one)")
    a = ap.parse_args()
    policy, meta = soup(a.ingredients, a.weights, a.rule_from)
    save_policy(a.out, policy, rule=meta["rule"], config=meta["config"], extra=meta["extra"])
    print(f"wrote {a.out}: mean of {len(a.ingredients)} policies under {meta['extra']['rule_from']}'s rule")


if __name__ == "__main__":
    main()
