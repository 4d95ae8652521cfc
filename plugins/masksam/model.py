"""The MaskSAM network: stem + adapted SAM encoder -> prompt generator -> adapted mask decoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import image_adapter_kind
from .decoder import MaskSAMDecoder
from .encoder import MaskSAMEncoder
from .prompt_generator import PromptGenerator


class MaskSAMNet(nn.Module):
    """``forward(x)`` with ``x``: B x C x T x H x W returns a dict of per-slice predictions:

    - ``class_logits``: B x T x N x (K+1) (last = no object);
    - ``masks``: B x T x N x h_m x w_m final mask logits (SAM's low-resolution output);
    - ``aux_masks``: B x T x N x S x S auxiliary mask logits (None for the ``box`` prompt mode);
    - ``boxes``: B x T x N x 4 learned auxiliary boxes, normalised xyxy (None for ``mask``);
    - ``prompt_boxes``: B x T x N x 4 the box prompts given to SAM.
    """

    def __init__(self, backbone: nn.Module, in_channels: int, num_classes: int, depth: int, num_queries: int,
                 input_size: int, prompt_mode: str = "mask_avg_box", adapter: str = "dmlp", dconv: bool = True,
                 depth_pe: bool = True, pg_width: int = 32, zero_init: bool = True, stem_residual: bool = True):
        super().__init__()
        self.depth, self.num_queries, self.num_classes, self.input_size = depth, num_queries, num_classes, input_size
        self.encoder = MaskSAMEncoder(backbone.image_encoder, in_channels, depth, input_size,
                                      adapter_kind=image_adapter_kind(dconv, adapter), depth_pe=depth_pe, zero_init=zero_init,
                                      stem_residual_of=backbone.normalisation if stem_residual else None)
        token_dim = backbone.mask_decoder.transformer_dim
        self.prompt_generator = PromptGenerator(self.encoder.levels, num_queries, token_dim, pg_width, prompt_mode)
        self.decoder = MaskSAMDecoder(backbone.prompt_encoder, backbone.mask_decoder, num_queries, num_classes, depth,
                                      prompt_adapter=adapter, image_adapter=image_adapter_kind(dconv, adapter),
                                      depth_pe=depth_pe, zero_init=zero_init, use_mask_prompt=prompt_mode != "box")

    def forward(self, x: torch.Tensor) -> dict:
        b, _, t, h, w = x.shape
        s = self.input_size
        if (h, w) != (s, s):
            x = F.interpolate(x, size=(t, s, s), mode="trilinear", align_corners=False)
        feats = self.encoder(x)
        prompts = self.prompt_generator(feats)
        out = self.decoder(feats[-1], prompts, (s, s), b)

        def per_slice(v):
            return None if v is None else v.reshape(b, t, *v.shape[1:])

        out["aux_masks"] = per_slice(prompts["aux_masks"])
        out["boxes"] = per_slice(prompts["learned_boxes"])
        out["prompt_boxes"] = per_slice(prompts["boxes"])
        return out


def semantic_scores(out: dict, size: tuple[int, int]) -> torch.Tensor:
    """MaskFormer semantic inference: ``sum_q softmax(class_q)[:K] * sigmoid(mask_q)``.

    Returns B x K x T x H x W scores of the K foreground classes at in-plane ``size``.
    """
    cls = out["class_logits"].softmax(-1)[..., :-1]  # B, T, N, K
    masks = out["masks"]
    b, t, n = masks.shape[:3]
    m = F.interpolate(masks.reshape(b * t, n, *masks.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    m = m.sigmoid().reshape(b, t, n, *size)
    return torch.einsum("btnk,btnhw->bkthw", cls, m)


def scores_to_log_probs(scores: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """K foreground scores (B x K x ...) -> log-probabilities of background + K classes.

    Background gets ``clamp(1 - sum_k s_k, 0, 1)``: with one confident query per object and masks
    that are 1 on it and 0 elsewhere, the K scores sum to 1 on objects and 0 elsewhere, so this is
    the background indicator. The K+1 scores (plus ``eps``) are normalised to sum to 1; the log is
    returned so that a softmax over the class axis gives back exactly these probabilities.
    """
    bg = (1 - scores.sum(1, keepdim=True)).clamp(0, 1)
    p = torch.cat([bg, scores.clamp_min(0)], 1) + eps
    return (p / p.sum(1, keepdim=True)).log()
