"""Evaluation of LR strategies on held-out tasks: grid runner, per-run metrics, reports.

`evaluate.py` is a thin script over `evaluate(EvalConfig)`; see `pipeline` for the outputs.
"""

from metalr.evaluation.config import EvalConfig, SensitivityConfig, Strategy, TunedConfig
from metalr.evaluation.pipeline import evaluate

__all__ = ["EvalConfig", "SensitivityConfig", "Strategy", "TunedConfig", "evaluate"]
