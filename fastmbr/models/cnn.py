"""The paper's classifier (Appendix A.2): c32-3, c64-3, p2, c128-3, p2, d0.25, flat, fc128, d0.5, fc-classes."""

from __future__ import annotations

from torch import nn


def cnn_feature_size(image_size: int) -> int:
    """Side length after the valid 3×3 convolutions and the two 2×2 poolings."""
    return ((image_size - 4) // 2 - 2) // 2


class PaperCNN(nn.Sequential):
    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32):
        side = cnn_feature_size(image_size)
        if side < 1:
            raise ValueError(f"the paper CNN needs images of at least 10 px, got {image_size}")
        super().__init__(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Flatten(),
            nn.Linear(128 * side * side, 128), nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )
