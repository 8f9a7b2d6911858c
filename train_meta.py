"""Meta-train the metalr LR controller.

    python train_meta.py --config configs/meta_train.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node=2 train_meta.py --config configs/meta_train.yaml

See metalr/meta/trainer.py for what a meta-step does and MetaTrainConfig for every key.
"""

from __future__ import annotations

import argparse
import logging
import sys

from metalr.config import ConfigError, load_config
from metalr.meta.trainer import MetaTrainConfig, train


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/meta_train.yaml")
    ap.add_argument("--resume", action="store_true", help="continue from out_dir/train_state.safetensors (same result as an uninterrupted run)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        cfg = load_config(MetaTrainConfig, args.config, args.overrides)
    except ConfigError as e:  # before any work: a clear message, no traceback
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    train(cfg, resume=args.resume)


if __name__ == "__main__":
    main()
