"""Do the fine-tunes that lost under their own rule pass selection under the shipped rule? (research; issue 13, session 25)

    python scripts/meta_rerule_probe.py [--workers 2]          # writes runs/meta_rerule/*.safetensors, then selects
    python scripts/meta_rerule_probe.py --round 2              # round 2 (below)

Every policy meta-trained since stage 6 (stages 8, 10, 13, 14, 18, 19) was judged under the rule it was trained under,
with a divergence guard that cut x0.3 and waited 5 steps, and no small-step rise. Several gained at and below the usual
LR and lost from too-high LRs: stage 8 higher from x0.1 on the held-out preview and at the default LR on two tasks but
lower from x10; stage 14 better at the usual LR on the development and real-text tasks but 2.1 points worse from
10^1.5x on the labelled tasks (README, *What was tried*). The shipped rule (stage 23, session 22) protects from
too-high LRs by itself: a x0.1 guard cut that may follow after 2 steps, worth 1.6 points on those labelled tasks, and a
faster rise while the updates are small. The default-LR gap that remains (issue 13's first bar) is where those
fine-tunes gained, and the loss from too-high LRs is where the new rule acts. So each fine-tune's weights are written,
without training, under the shipped checkpoint's rule, and judged as every candidate since session 22.

Candidates, declared before any was measured (the list is fixed; nothing is added after a result):
R8, R10, R13, R14, R18, R19: `checkpoints/stages/meta_stage{N}.safetensors`'s weights under the shipped rule;
S1: session 21's uniform soup (the shipped weights and those six) under the shipped rule.

Acceptance, declared before measuring: beat the shipped checkpoint under `scripts/meta_select.py --rule v3` (mean
difference >= +0.002, no cell below its tolerance); among those that do, the largest mean difference. A candidate that
passes is then checked on runs from trained weights (`scripts/meta_continue_probe.py`) and on the pretrained MiniLM
cell under the callbacks' cap (`scripts/meta_pretrained_probe.py`) before the held-out evaluation runs, as in session 22.
If none passes, nothing changes.

Round 2 (`--round 2`), declared after round 1 (none passed; stage 8 closest at +0.0012, gaining at and below the usual
LR and losing from 31.6x on the sequence cells) and before measuring: W8, the weights halfway between the shipped
policy and stage 8's (`meta_soup.py` with equal weights: the WiSE-FT interpolation of Wortsman et al. 2022, which keeps
much of a fine-tune's gain and the start's robustness off its distribution), under the shipped rule. One candidate,
the same acceptance; then the probe stops.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from meta_soup import soup  # noqa: E402

from metalr.meta.checkpoint import DEFAULT_PATH, read_policy, save_policy  # noqa: E402

STAGES = (8, 10, 13, 14, 18, 19)


def rerule(src: Path, out: Path, rule_from: Path = DEFAULT_PATH) -> None:
    """Write `src`'s weights under `rule_from`'s rule (no training), recording where both came from."""
    frozen, base = read_policy(src), read_policy(rule_from)
    extra = {
        "rerule": {
            "weights_from": str(src),
            "weights_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
            "weights_rule": frozen.metadata["rule"],
            "rule_from": str(rule_from),
        }
    }
    save_policy(out, frozen.policy, rule=base.rule, config=frozen.metadata.get("config", {}), extra=extra)


def candidates(out_dir: Path) -> list[Path]:
    """Write the seven declared candidates into `out_dir` and return their paths, in the declared order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in STAGES:
        out = out_dir / f"R{n}.safetensors"
        rerule(ROOT / "checkpoints" / "stages" / f"meta_stage{n}.safetensors", out)
        paths.append(out)
    ingredients = [str(DEFAULT_PATH)] + [str(ROOT / "checkpoints" / "stages" / f"meta_stage{n}.safetensors") for n in STAGES]
    policy, meta = soup(ingredients)  # under the shipped checkpoint's rule
    out = out_dir / "S1.safetensors"
    save_policy(out, policy, rule=meta["rule"], config=meta["config"], extra=meta["extra"])
    paths.append(out)
    return paths


def round2(out_dir: Path) -> list[Path]:
    """W8: the midpoint of the shipped weights and stage 8's, under the shipped rule."""
    out_dir.mkdir(parents=True, exist_ok=True)
    policy, meta = soup([str(DEFAULT_PATH), str(ROOT / "checkpoints" / "stages" / "meta_stage8.safetensors")])
    out = out_dir / "W8.safetensors"
    save_policy(out, policy, rule=meta["rule"], config=meta["config"], extra=meta["extra"])
    return [out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(ROOT / "runs" / "meta_rerule"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--write-only", action="store_true", help="write the candidates, do not select")
    ap.add_argument("--round", type=int, default=1, choices=(1, 2))
    a = ap.parse_args()
    paths = candidates(Path(a.out_dir)) if a.round == 1 else round2(Path(a.out_dir))
    for p in paths:
        print(f"wrote {p}")
    if not a.write_only:
        cmd = [sys.executable, str(ROOT / "scripts" / "meta_select.py"), *map(str, paths), "--rule", "v3", "--workers", str(a.workers)]
        raise SystemExit(subprocess.call(cmd, cwd=ROOT))


if __name__ == "__main__":
    main()
