"""EfficientNet-B0 (Tan & Le, 2019) in plain PyTorch, with a stride-1 stem for 32x32 inputs.

Stages follow the paper's B0 table (MBConv expand ratio, kernel, stride, channels,
repeats); squeeze-excitation at ratio 0.25 of the block input; SiLU; stochastic
depth left out (a small-data CPU model does not need it). `width_mult` shrinks it.
"""

from __future__ import annotations

import torch
from torch import nn

# (expand ratio, kernel, stride, out channels, repeats)
B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.SiLU()) if act else nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, c_squeeze: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c_squeeze, 1), nn.SiLU(), nn.Conv2d(c_squeeze, c, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class MBConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, expand: int, k: int, stride: int) -> None:
        super().__init__()
        c_mid = c_in * expand
        layers: list[nn.Module] = [_conv_bn(c_in, c_mid, 1)] if expand != 1 else []
        layers += [_conv_bn(c_mid, c_mid, k, stride, groups=c_mid), SqueezeExcite(c_mid, max(1, c_in // 4)), _conv_bn(c_mid, c_out, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class EfficientNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()

        def w(c: int) -> int:
            return max(8, int(round(c * width_mult / 8)) * 8)

        c_in = w(32)
        blocks: list[nn.Module] = [_conv_bn(in_channels, c_in, 3, stride=1)]  # stride 1 (not 2) for 32x32 inputs
        for expand, k, stride, c, n in B0_STAGES:
            for i in range(n):
                blocks.append(MBConv(c_in, w(c), expand, k, stride if i == 0 else 1))
                c_in = w(c)
        blocks.append(_conv_bn(c_in, w(1280), 1))
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(w(1280), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def efficientnet_b0(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> EfficientNet:
    return EfficientNet(num_classes, in_channels, width_mult)
