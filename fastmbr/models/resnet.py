"""torchvision ResNets; small inputs (≤ 64 px) get a 3×3 stride-1 stem without max-pool, as for CIFAR."""

from __future__ import annotations

import torchvision
from torch import nn


def resnet(depth: int, num_classes: int, in_channels: int = 3, image_size: int = 224) -> nn.Module:
    factory = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}[depth]
    model = factory(weights=None, num_classes=num_classes)
    if image_size <= 64:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model
