"""The trained state of a MedLSAM fold: the MedLAM localiser plus the support prototypes (buffers,
so they travel in every checkpoint and each fold of an ensemble keeps its own)."""
from __future__ import annotations

import logging

import torch
from torch import nn

from .localize import EXTREMES, Prototype
from .localizer import MedLAM
from .options import MedLSAMOptions

logger = logging.getLogger(__name__)


def template_sides(opts: MedLSAMOptions) -> list[int]:
    """Side of the MSS template at each feature scale (1/4, 1/2, full resolution)."""
    return [max(1, int(round(opts.mss_template * f))) for f in (0.25, 0.5, 1.0)]


class MedLSAMNetwork(nn.Module):
    def __init__(self, opts: MedLSAMOptions, in_channels: int, num_classes: int):
        super().__init__()
        self.localizer = MedLAM(1, opts.base_width, opts.num_pool, opts.feature_dim, opts.patch)
        k, c, n = num_classes, max(1, opts.max_components), len(EXTREMES)
        # index [label, component]; row 0 (background) stays invalid
        self.register_buffer("proto_valid", torch.zeros(k, c, dtype=torch.bool))
        self.register_buffer("proto_latent", torch.zeros(k, c, n, 3))
        self.template_names = []
        for s, t in enumerate(template_sides(opts)):
            name = f"proto_template{s}"
            self.register_buffer(name, torch.zeros(k, c, n, opts.feature_dim, t, t, t))
            self.template_names.append(name)
        self.register_buffer("r_mm", torch.tensor(opts.r_mm, dtype=torch.float32))
        # With ``finetune_sam`` the plugin attaches a fine-tuned copy of the backbone's mask decoder
        # as ``self.sam_mask_decoder`` (then it is part of the checkpoint); otherwise SAM is zero-shot.
        self.sam_mask_decoder: nn.Module | None = None
        self._register_load_state_dict_pre_hook(self._decoder_state_hook)

    def _decoder_state_hook(self, state_dict, prefix, *args) -> None:
        """A checkpoint with a fine-tuned decoder loads into a zero-shot network
        (``--finetune-sam false`` at prediction: the same fold, SAM's own decoder): its decoder
        entries are dropped. The reverse cannot work and says why."""
        key = prefix + "sam_mask_decoder."
        has = [k for k in state_dict if k.startswith(key)]
        if self.sam_mask_decoder is None and has:
            for k in has:
                del state_dict[k]
            logger.info("medlsam: the checkpoint's fine-tuned SAM decoder is not used (finetune_sam is off): zero-shot")
        elif self.sam_mask_decoder is not None and not has:
            raise RuntimeError("medlsam: finetune_sam is on, but this checkpoint was trained without --finetune-sam "
                               "(it holds no fine-tuned decoder); predict without --finetune-sam true")

    def forward(self, x: torch.Tensor):
        return self.localizer(x)

    def set_prototypes(self, protos: dict[int, list[list[Prototype]]]) -> None:
        self.proto_valid.zero_()
        for label, comps in protos.items():
            for c, plist in enumerate(comps):
                self.proto_valid[label, c] = True
                self.proto_latent[label, c] = torch.stack([p.latent for p in plist])
                for s, name in enumerate(self.template_names):
                    getattr(self, name)[label, c] = torch.stack([p.templates[s] for p in plist])

    def prototypes(self, label: int) -> list[list[Prototype]] | None:
        """The prototypes of ``label``, one list of 6 per component (None: no support had the label)."""
        if label >= len(self.proto_valid) or not bool(self.proto_valid[label].any()):
            return None
        comps = []
        for c in range(self.proto_valid.shape[1]):
            if bool(self.proto_valid[label, c]):
                comps.append([Prototype(self.proto_latent[label, c, i],
                                        [getattr(self, name)[label, c, i] for name in self.template_names])
                              for i in range(len(EXTREMES))])
        return comps
