"""M-SAM network: 3D SAM (LoRA on q/v, rest of the encoder frozen), Mask-Enhanced Adapter, one mask
token per foreground class, iterative refinement driven by the previous mask (and, in training or
the simulated-click evaluation mode, by clicks)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from autosam.sam.lora import apply_lora

from .mea import MaskEnhancedAdapter


def _multiclass_decoder(decoder: nn.Module, num_fg: int) -> None:
    """Give the 3D mask decoder one mask token (and hypernetwork MLP) per foreground class,
    initialised from the single-mask token of the (pretrained) decoder."""
    tok = decoder.mask_tokens.weight.data[0:1]
    decoder.mask_tokens = nn.Embedding(num_fg, tok.shape[1])
    decoder.mask_tokens.weight.data.copy_(tok.repeat(num_fg, 1))
    decoder.output_hypernetworks_mlps = nn.ModuleList(copy.deepcopy(decoder.output_hypernetworks_mlps[0]) for _ in range(num_fg))
    decoder.num_mask_tokens = num_fg
    head = decoder.iou_prediction_head
    last = head.layers[-1]
    new_last = nn.Linear(last.in_features, num_fg)
    new_last.weight.data.copy_(last.weight.data[0:1].repeat(num_fg, 1))
    new_last.bias.data.copy_(last.bias.data[0:1].repeat(num_fg))
    head.layers[-1] = new_last


def _multichannel_mask_input(prompt_encoder: nn.Module, channels: int) -> None:
    """The mask prompt carries one logit map per foreground class: widen the first mask conv,
    splitting the pretrained single-channel weights evenly over the channels."""
    conv = prompt_encoder.mask_downscaling[0]
    if conv.in_channels == channels:
        return
    new = nn.Conv3d(channels, conv.out_channels, conv.kernel_size, conv.stride)
    new.weight.data.copy_(conv.weight.data.repeat(1, channels, 1, 1, 1) / channels)
    new.bias.data.copy_(conv.bias.data)
    prompt_encoder.mask_downscaling[0] = new


class MSamNetwork(nn.Module):
    def __init__(self, backbone, num_classes: int, lora_rank: int = 4, use_mea: bool = True, mea_heads: int | None = None,
                 freeze_encoder: bool = True, mea_zero_init: bool = True):
        super().__init__()
        self.backbone = backbone
        self.num_fg = num_classes - 1
        apply_lora(backbone.image_encoder, rank=lora_rank, targets=("q", "v"), freeze_base=freeze_encoder)
        if not freeze_encoder:  # random weights: nothing to protect, the whole encoder (LoRA bases too) learns
            for p in backbone.image_encoder.parameters():
                p.requires_grad_(True)
        _multiclass_decoder(backbone.mask_decoder, self.num_fg)
        _multichannel_mask_input(backbone.prompt_encoder, self.num_fg)
        self.use_mea = use_mea
        self.mea = MaskEnhancedAdapter(backbone.embed_dim, heads=mea_heads, zero_init=mea_zero_init) if use_mea else None
        self.mask_size = backbone.low_res_mask_size

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: B x 1 x S^3 normalised patches -> image embedding B x D x g^3."""
        return self.backbone.encode(self.backbone.prepare_volume(x))

    def step(self, embedding: torch.Tensor, prev_logits: torch.Tensor, points=None) -> torch.Tensor:
        """One refinement iteration: previous low-res logits (B x K x m^3) -> new low-res logits."""
        pe = self.backbone.prompt_encoder
        sparse, dense = pe(points=points, masks=prev_logits)
        if self.use_mea:
            image = self.mea(embedding, dense)  # MEA replaces "image embedding + dense prompt"
            dense = torch.zeros_like(dense)
        else:
            image = embedding
        # all K class masks (the decoder's ``forward`` would apply SAM's multimask slicing)
        logits, _ = self.backbone.mask_decoder.predict_masks(image_embeddings=image, image_pe=pe.get_dense_pe(),
                                                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        return logits

    def initial_mask(self, b: int, device) -> torch.Tensor:
        return torch.zeros(b, self.num_fg, *self.mask_size, device=device)

    def upsample(self, logits: torch.Tensor, size) -> torch.Tensor:
        if tuple(logits.shape[2:]) == tuple(size):  # tiny3d: the logits already have the input's size
            return logits
        return F.interpolate(logits, size=tuple(size), mode="trilinear", align_corners=False)

    def forward(self, x: torch.Tensor, iterations: int = 3) -> torch.Tensor:
        """Automatic mode (no clicks, no label): ``iterations`` mask-feedback refinements; returns
        class logits B x (K+1) x S^3 with a fixed 0 background logit."""
        if iterations < 1:
            raise ValueError(f"msam: at least one mask-decoder step is needed, got iterations={iterations}")
        emb = self.encode(x)
        logits = self.initial_mask(x.shape[0], x.device)
        for _ in range(iterations):
            logits = self.step(emb, logits)
        return with_background(self.upsample(logits, x.shape[2:]))


def with_background(fg_logits: torch.Tensor) -> torch.Tensor:
    """Prepend a constant 0 background logit: softmax over [0, l_1..l_K] (= sigmoid for K = 1)."""
    return torch.cat([torch.zeros_like(fg_logits[:, :1]), fg_logits], 1)
