"""Builders of the ``sam_med3d`` and ``tiny3d`` backbones.

``sam_med3d`` is SAM-Med3D's ``vit_b_ori``: 128^3 single-channel input, 16^3 patches (8^3 tokens),
ViT-B (768-d, 12 blocks, 12 heads, global blocks 2/5/8/11, window 14, 3D rel-pos), neck to 384;
prompt encoder 384-d; decoder depth 2, 8 heads, MLP 2048, masks at 32^3. Weights are loaded by
path (``sam_med3d_turbo.pth`` or another SAM-Med3D ``vit_b_ori`` checkpoint) with a full key and
shape check; checkpoints are wrapped as ``{"model_state_dict": ...}`` or plain. Other input sizes
interpolate the position embedding and the global blocks' rel-pos tables.
"""
from __future__ import annotations

from dataclasses import dataclass

from autosam.sam.backbone import SamBackbone
from autosam.sam.checkpoints import (ENV_SAM_CHECKPOINT, ENV_SAM_MED3D_CHECKPOINT, load_checked, read_state_dict,
                                     resize_position_tensors, resolve_checkpoint)
from autosam.sam.sam3d.image_encoder import ImageEncoderViT3D
from autosam.sam.sam3d.mask_decoder import MaskDecoder3D
from autosam.sam.sam3d.prompt_encoder import PromptEncoder3D
from autosam.sam.vit2d import check_input_size


@dataclass(frozen=True)
class Sam3dConfig:
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int
    prompt_dim: int
    decoder_heads: int
    decoder_mlp: int
    iou_hidden: int
    rel_pos_mode: str
    checkpoint_filename: str | None


SAM3D_CONFIGS = {
    "sam_med3d": Sam3dConfig(16, 768, 12, 12, (2, 5, 8, 11), 14, 384, 8, 2048, 256, "sam_med3d", "sam_med3d_turbo.pth"),
    # 4^3-voxel patches: at its 32^3 input, tiny3d has SAM-Med3D's 8^3 token grid and 32^3 logits
    "tiny3d": Sam3dConfig(4, 48, 2, 2, (1,), 2, 48, 2, 96, 48, "decomposed", None),
}


def build_sam3d_modules(cfg: Sam3dConfig, input_size: int):
    g = input_size // cfg.patch_size
    encoder = ImageEncoderViT3D(
        img_size=input_size, patch_size=cfg.patch_size, in_chans=1, embed_dim=cfg.embed_dim, depth=cfg.depth,
        num_heads=cfg.num_heads, out_chans=cfg.prompt_dim, window_size=cfg.window_size,
        global_attn_indexes=cfg.global_attn_indexes, rel_pos_mode=cfg.rel_pos_mode,
    )
    prompt = PromptEncoder3D(cfg.prompt_dim, (g, g, g), (input_size,) * 3, mask_in_chans=16)
    decoder = MaskDecoder3D(transformer_dim=cfg.prompt_dim, num_heads=cfg.decoder_heads, mlp_dim=cfg.decoder_mlp,
                            iou_head_hidden_dim=cfg.iou_hidden)
    return encoder, prompt, decoder


def build_sam3d_backbone(spec, input_size: int | None = None, checkpoint=None, allow_random_init: bool = False,
                         fast_attention: bool = True, rel_pos_mode: str | None = None) -> SamBackbone:
    """Builder of the 3D specs. ``rel_pos_mode`` overrides the config's (see
    :mod:`autosam.sam.sam3d.image_encoder`)."""
    cfg = SAM3D_CONFIGS[spec.name]
    if rel_pos_mode is not None:
        cfg = Sam3dConfig(**{**cfg.__dict__, "rel_pos_mode": rel_pos_mode})
    size = check_input_size(spec, input_size)
    path = None
    if cfg.checkpoint_filename is not None:
        path = resolve_checkpoint(spec.name, checkpoint, cfg.checkpoint_filename,
                                  (ENV_SAM_MED3D_CHECKPOINT, ENV_SAM_CHECKPOINT), allow_random_init)
    elif checkpoint is not None:
        path = checkpoint
    encoder, prompt, decoder = build_sam3d_modules(cfg, size)
    g = size // cfg.patch_size
    backbone = SamBackbone(spec, encoder, prompt, decoder, size, (g, g, g), normalisation="zscore",
                           checkpoint_path=None if path is None else str(path))
    if path is not None:
        state = resize_position_tensors(read_state_dict(path), backbone)
        load_checked(backbone, state, path, spec.name, cfg.checkpoint_filename)
    for m in encoder.modules():
        if hasattr(m, "use_sdpa"):
            m.use_sdpa = bool(fast_attention)
    return backbone.eval()
