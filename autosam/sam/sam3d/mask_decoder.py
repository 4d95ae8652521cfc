"""3D mask decoder of SAM-Med3D: segment-anything's two-way transformer on flattened 3D tokens
(its attention blocks are reused, so state-dict keys match), transposed-conv upscaling
``C -> C/4 -> C/8`` by 4x, one hypernetwork MLP per mask token, and an IoU head.

Unlike segment-anything's decoder, image embeddings are repeated per prompt only when the
batch sizes differ, so ``B`` embeddings with ``B`` prompt sets give ``B`` masks.
"""
from __future__ import annotations

import torch
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.transformer import TwoWayTransformer
from torch import nn

from autosam.sam.sam3d.prompt_encoder import LayerNorm3d


class TwoWayTransformer3D(TwoWayTransformer):
    """segment-anything's TwoWayTransformer on ``B x C x D x H x W`` embeddings."""

    def forward(self, image_embedding, image_pe, point_embedding):
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe)
        attn_out = self.final_attn_token_to_image(q=queries + point_embedding, k=keys + key_pe, v=keys)
        queries = self.norm_final_attn(queries + attn_out)
        return queries, keys


class MaskDecoder3D(nn.Module):
    def __init__(self, transformer_dim: int = 384, num_multimask_outputs: int = 3, depth: int = 2,
                 num_heads: int = 8, mlp_dim: int = 2048, iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = TwoWayTransformer3D(depth=depth, embedding_dim=transformer_dim, mlp_dim=mlp_dim,
                                               num_heads=num_heads)
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm3d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose3d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                multimask_output: bool):
        masks, iou = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou[:, sl]

    def predict_masks(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings):
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        out_tokens = out_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.shape[0], -1, -1)
        tokens = torch.cat((out_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings), dim=1)
        n = tokens.shape[0]
        src = image_embeddings if image_embeddings.shape[0] == n else torch.repeat_interleave(image_embeddings, n, 0)
        src = src + dense_prompt_embeddings
        pos = image_pe if image_pe.shape[0] == n else torch.repeat_interleave(image_pe, n, 0)
        b, c, d, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        iou_out = hs[:, 0]
        mask_out = hs[:, 1:1 + self.num_mask_tokens]
        up = self.output_upscaling(src.transpose(1, 2).reshape(b, c, d, h, w))
        hyper = torch.stack([mlp(mask_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, d, h, w = up.shape
        masks = (hyper @ up.view(b, c, d * h * w)).view(b, -1, d, h, w)
        return masks, self.iou_prediction_head(iou_out)
