"""2D SAM backbones from the segment-anything package (ViT-B/L/H and the small ``tiny``).

The encoder is built directly at the requested input size ``S`` (a multiple of the patch size
16): its absolute position embedding has ``S/16 x S/16`` entries and the relative-position tables
of the global-attention blocks ``2*S/16 - 1`` rows. Pretrained 1024x1024 weights are interpolated
to that size when loaded (:func:`autosam.sam.checkpoints.resize_position_tensors`), as SAMed does.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

from autosam.sam.backbone import SamBackbone
from autosam.sam.checkpoints import (ENV_SAM_CHECKPOINT, load_checked, read_state_dict, resize_position_tensors,
                                     resolve_checkpoint)
from autosam.sam.fast_attention import use_fast_attention

PATCH = 16


@dataclass(frozen=True)
class Vit2dConfig:
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    checkpoint_filename: str | None
    window_size: int = 14
    prompt_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp: int = 2048
    iou_hidden: int = 256
    default_input_size: int = 1024


#: Architectures of segment-anything's ``sam_model_registry`` and the file names Meta publishes.
VIT_CONFIGS = {
    "sam_vit_b": Vit2dConfig(768, 12, 12, (2, 5, 8, 11), "sam_vit_b_01ec64.pth"),
    "sam_vit_l": Vit2dConfig(1024, 24, 16, (5, 11, 17, 23), "sam_vit_l_0b3195.pth"),
    "sam_vit_h": Vit2dConfig(1280, 32, 16, (7, 15, 23, 31), "sam_vit_h_4b8939.pth"),
    # tests and smoke runs: 2 blocks (one windowed, one global), 64-d prompts
    "tiny": Vit2dConfig(64, 2, 2, (1,), None, window_size=4, prompt_dim=64, decoder_depth=1, decoder_heads=2,
                        decoder_mlp=128, iou_hidden=64, default_input_size=64),
}


def build_vit_modules(cfg: Vit2dConfig, input_size: int):
    """Build (image_encoder, prompt_encoder, mask_decoder) for ``cfg`` at ``input_size``."""
    emb = input_size // PATCH
    encoder = ImageEncoderViT(
        depth=cfg.depth, embed_dim=cfg.embed_dim, img_size=input_size, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=cfg.num_heads, patch_size=PATCH,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=cfg.global_attn_indexes,
        window_size=cfg.window_size, out_chans=cfg.prompt_dim,
    )
    prompt = PromptEncoder(embed_dim=cfg.prompt_dim, image_embedding_size=(emb, emb),
                           input_image_size=(input_size, input_size), mask_in_chans=16)
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=cfg.prompt_dim,
                                      mlp_dim=cfg.decoder_mlp, num_heads=cfg.decoder_heads),
        transformer_dim=cfg.prompt_dim, iou_head_depth=3, iou_head_hidden_dim=cfg.iou_hidden,
    )
    return encoder, prompt, decoder


def build_vit_backbone(spec, input_size: int | None = None, checkpoint=None, allow_random_init: bool = False,
                       fast_attention: bool = True) -> SamBackbone:
    """Builder of the ``sam_vit_*`` and ``tiny`` specs (see :mod:`autosam.sam.backbones`)."""
    # a spec may reuse an architecture with other weights (MedSAM: SAM ViT-B trained on [0, 1] input)
    cfg = VIT_CONFIGS[spec.extra.get("architecture", spec.name)]
    filename = spec.checkpoint_filename or cfg.checkpoint_filename
    size = check_input_size(spec, input_size)
    path = None
    if filename is not None:
        path = resolve_checkpoint(spec.name, checkpoint, filename, (ENV_SAM_CHECKPOINT,), allow_random_init)
    elif checkpoint is not None:
        path = checkpoint
    encoder, prompt, decoder = build_vit_modules(cfg, size)
    backbone = SamBackbone(spec, encoder, prompt, decoder, size, (size // PATCH, size // PATCH),
                           normalisation=spec.extra.get("normalisation", "sam_rgb"),
                           checkpoint_path=None if path is None else str(path))
    if path is not None:
        state = resize_position_tensors(read_state_dict(path), backbone)
        load_checked(backbone, state, path, spec.name, filename)
    if fast_attention:
        use_fast_attention(backbone.image_encoder)
    return backbone.eval()


def check_input_size(spec, input_size: int | None) -> int:
    """``input_size`` (default: the spec's) after checking it is a positive multiple of the patch size."""
    size = int(spec.default_input_size if input_size is None else input_size)
    if size <= 0 or size % spec.vit_patch_size:
        raise ValueError(f"backbone {spec.name!r}: input size {size} must be a positive multiple of "
                         f"{spec.vit_patch_size}")
    return size
