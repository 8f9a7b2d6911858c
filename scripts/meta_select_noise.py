"""How large are the selection rule's differences between two controllers that are the same? (research; issue 13, session 21)

    python scripts/meta_select_noise.py [--copies 2] [--scale 1e-3] [--workers 2] [--rule v2]

`scripts/meta_select.py` judges a candidate by its differences to the shipped checkpoint over 12 cells of single-seed
runs. A run is chaotic in its LR sequence: a change of the LR by a part in a thousand at one step sends the weights,
and the final accuracy, elsewhere. This script measures that floor with null candidates: the shipped policy with
every network weight multiplied by (1 + scale x N(0, 1)) (seeded; the feature normalisation and the rule unchanged),
a controller that is the shipped one for any purpose but whose runs differ from its runs. The differences these get
are what the rule's cells read when nothing has changed; a probe's difference of the same size says nothing.

The null checkpoints are written to runs/meta_select_noise/ and measured by `meta_select.py` (its cache applies).
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metalr.meta.checkpoint import read_policy, save_policy  # noqa: E402


def null_copies(out_dir: Path, copies: int, scale: float) -> list[Path]:
    """`copies` null candidates: the shipped weights, each network tensor x (1 + scale N(0, 1)), seeds 0..copies-1."""
    shipped = read_policy()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(copies):
        g = torch.Generator().manual_seed(seed)
        policy = copy.deepcopy(shipped.policy)
        with torch.no_grad():
            for name, t in policy.named_parameters():
                if name.startswith("net."):
                    t.mul_(1.0 + scale * torch.randn(t.shape, generator=g, dtype=t.dtype))
        path = out_dir / f"null_{scale:g}_{seed}.safetensors"
        extra = {"null": {"of": "checkpoints/metalr_default.safetensors", "scale": scale, "seed": seed}}
        save_policy(path, policy, rule=shipped.rule, config=shipped.metadata.get("config", {}), extra=extra)
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1e-3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rule", default="v2", help="the selection rule whose cells to measure (scripts/meta_select.py --rule)")
    a = ap.parse_args()
    paths = null_copies(ROOT / "runs" / "meta_select_noise", a.copies, a.scale)
    cmd = [sys.executable, str(ROOT / "scripts" / "meta_select.py"), *map(str, paths), "--workers", str(a.workers), "--rule", a.rule]
    sys.exit(subprocess.call(cmd, cwd=ROOT))


if __name__ == "__main__":
    main()
