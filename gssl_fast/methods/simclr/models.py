"""The networks of G-SimCLR (docs/method.md section 4): the denoising autoencoder whose
codes are clustered, the contrastive model (backbone + projection head), and the heads
of its linear evaluation and fine-tuning.

    pixels [B, 3, H, W] --Autoencoder--> code [B, 128], reconstruction [B, 3, H, W] in [0, 1]
    pixels --normalize--> backbone h [B, D] --Linear, ReLU--> p2 [B, 256] --Linear, ReLU--> p1 [B, 128] --Linear--> z [B, 50]

Linear evaluation reads P1 = ``p1``, P2 = ``p2`` and P3 = ``h``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

# Depths of the linear evaluation, outermost first: name -> output of ContrastiveModel.
DEPTHS = ("p1", "p2", "p3")


class Autoencoder(nn.Module):
    """The notebooks' convolutional denoising autoencoder.

    Encoder: three 3x3 conv (``channels``) + BatchNorm + ReLU + 2x2 max-pool blocks; the
    last feature map, average-pooled, is the code ``[B, channels[-1]]``. Decoder: per
    pooling, nearest upsampling + 3x3 conv (``decoder`` channels) + BatchNorm + ReLU, then a
    3x3 conv to 3 channels and a sigmoid (the notebooks' decoder: 128, 64, 32). Input:
    pixels (uint8, or float in [0, 1]) with sides divisible by 8.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128), decoder: Sequence[int] = (64, 32, 16)):
        super().__init__()
        if len(decoder) != len(channels):
            raise ValueError(f"the decoder has one conv per pooling: {len(channels)} widths, got {list(decoder)}")
        enc, dec, prev = [], [], 3
        for c in channels:
            enc += [nn.Conv2d(prev, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            prev = c
        for c in decoder:
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(prev, c, 3, padding=1),
                    nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            prev = c
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        self.out = nn.Conv2d(prev, 3, 3, padding=1)

    def forward(self, images: torch.Tensor) -> dict:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        fmap = self.encoder(x)
        return {"code": fmap.mean(dim=(2, 3)), "reconstruction": torch.sigmoid(self.out(self.decoder(fmap)))}


class ContrastiveModel(nn.Module):
    """Input normalization + backbone + the projection head ``widths`` (256-128-50 in the
    authors' CIFAR setting) with ReLU between its layers. ``forward(images)`` returns
    ``z`` (the projection), ``p1``, ``p2`` (the hidden layers) and ``p3`` = ``features``
    (the backbone's pooled output)."""

    def __init__(self, backbone: nn.Module, normalize: nn.Module, widths: Sequence[int] = (256, 128, 50)):
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"the projection head has three layers, got widths {list(widths)}")
        self.normalize, self.backbone = normalize, backbone
        a, b, c = widths
        self.fc1, self.fc2, self.fc3 = nn.Linear(backbone.num_features, a), nn.Linear(a, b), nn.Linear(b, c)

    def forward(self, images: torch.Tensor) -> dict:
        h = self.backbone(self.normalize(images))
        p2 = torch.relu(self.fc1(h))
        p1 = torch.relu(self.fc2(p2))
        return {"features": h, "p3": h, "p2": p2, "p1": p1, "z": self.fc3(p1)}

    def width(self, depth: str) -> int:
        return {"p1": self.fc2.out_features, "p2": self.fc1.out_features, "p3": self.backbone.num_features}[depth]


class LinearProbes(nn.Module):
    """Linear classifiers on the frozen contrastive model, one per depth, trained
    together from one forward. ``logits`` is the outermost depth's (P1); every depth's
    are under ``logits_<depth>``. The encoder stays in eval mode and never trains."""

    def __init__(self, encoder: ContrastiveModel, num_classes: int, depths: Sequence[str] = DEPTHS):
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()
        self.depths = tuple(depths)
        self.heads = nn.ModuleDict({d: nn.Linear(encoder.width(d), num_classes) for d in self.depths})

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: BatchNorm statistics stay those of pretraining
        return self

    def forward(self, images: torch.Tensor) -> dict:
        with torch.no_grad():
            feats = self.encoder(images)
        out = {f"logits_{d}": self.heads[d](feats[d].float()) for d in self.depths}
        out["logits"] = out[f"logits_{self.depths[0]}"]
        return out


class FineTuned(nn.Module):
    """The pretrained normalization + backbone with a new linear class head, all trained.
    ``bn_eval``: the backbone's BatchNorm layers stay in inference mode (their pretraining
    statistics, never updated; their scale and shift still train), as Keras' ``extractor(x,
    training=False)`` in the notebooks."""

    def __init__(self, encoder: ContrastiveModel, num_classes: int, *, bn_eval: bool = False):
        super().__init__()
        self.normalize, self.backbone = encoder.normalize, encoder.backbone
        self.head = nn.Linear(encoder.backbone.num_features, num_classes)
        self.bn_eval = bn_eval
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.bn_eval:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor) -> dict:
        h = self.backbone(self.normalize(images))
        return {"features": h, "logits": self.head(h)}
