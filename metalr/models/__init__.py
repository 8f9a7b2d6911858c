"""Models for the research plans' tasks, written in plain PyTorch (no torchvision).

- `resnet`: CIFAR-style ResNet-18 / ResNet-50 (3x3 stem, no max-pool) for 32x32 images.
- `efficientnet`: EfficientNet-B0 (MBConv + squeeze-excitation) with a CIFAR stem.
- `bilstm`: BiLSTM with additive attention pooling, for text classification.
- `crf`: a linear-chain CRF and the BiLSTM-CRF tagger for NER.
- `qa`: extractive QA models returning (start_logits, end_logits), position 0 = no answer.
- `hf`: `transformers` encoders (local path, shipped MiniLM, hub name, or a small config).
"""

from metalr.models.bilstm import BiLSTMAttention
from metalr.models.crf import CRF, BiLSTMCRF
from metalr.models.efficientnet import efficientnet_b0
from metalr.models.qa import BiLSTMQA
from metalr.models.resnet import resnet18, resnet50

__all__ = ["BiLSTMAttention", "BiLSTMCRF", "BiLSTMQA", "CRF", "efficientnet_b0", "resnet18", "resnet50"]
