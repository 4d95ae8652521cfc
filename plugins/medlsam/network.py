"""The trained state of a MedLSAM fold: the MedLAM localiser plus the support prototypes (buffers,
so they travel in every checkpoint and each fold of an ensemble keeps its own)."""
from __future__ import annotations

import torch
from torch import nn

from .localize import EXTREMES, Prototype
from .localizer import MedLAM
from .options import MedLSAMOptions


class MedLSAMNetwork(nn.Module):
    def __init__(self, opts: MedLSAMOptions, in_channels: int, num_classes: int):
        super().__init__()
        self.localizer = MedLAM(1, opts.base_width, opts.num_pool, opts.feature_dim)
        k = num_classes  # index = label value; row 0 (background) stays invalid
        self.register_buffer("proto_valid", torch.zeros(k, dtype=torch.bool))
        self.register_buffer("proto_latent", torch.zeros(k, len(EXTREMES), 3))
        self.register_buffer("proto_vectors", torch.zeros(k, len(EXTREMES), 3, opts.feature_dim))
        self.register_buffer("r_mm", torch.tensor(opts.r_mm, dtype=torch.float32))
        # With ``finetune_sam`` the plugin attaches a fine-tuned copy of the backbone's mask decoder
        # as ``self.sam_mask_decoder`` (then it is part of the checkpoint); otherwise SAM is zero-shot.
        self.sam_mask_decoder: nn.Module | None = None

    def forward(self, x: torch.Tensor):
        return self.localizer(x)

    def set_prototypes(self, protos: dict[int, list[Prototype]]) -> None:
        self.proto_valid.zero_()
        for label, plist in protos.items():
            self.proto_valid[label] = True
            self.proto_latent[label] = torch.stack([p.latent for p in plist])
            self.proto_vectors[label] = torch.stack([torch.stack(p.vectors) for p in plist])

    def prototypes(self, label: int) -> list[Prototype] | None:
        if label >= len(self.proto_valid) or not bool(self.proto_valid[label]):
            return None
        return [
            Prototype(self.proto_latent[label, i], list(self.proto_vectors[label, i]))
            for i in range(len(EXTREMES))
        ]
