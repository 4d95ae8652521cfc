"""MaskSAM's mask decoder (paper Sec. 2.6, Fig. 3c): SAM's frozen prompt encoder and two-way
mask decoder, run once per query (prompt) and slice, with

- tokens ``[iou, mask tokens, 2 box-corner tokens, class token]`` where the class token is a
  global learnable token (one per query) plus the prompt generator's auxiliary classifier token;
- in each two-way block a DMLPAdapter after self-attention, after token->image attention and
  parallel to the MLP (prompt side), and a DConvAdapter after image->token attention (image side);
- a learnable depth position embedding added to the image positional encoding;
- a class head ``Linear(D, K + 1)`` on the output class token (last class = no object).

Rows are ordered ``(B, N, T)`` (slices innermost), so the depth adapters see the T slices of one
query of one patch as consecutive rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import Adapter


class MaskSAMDecoder(nn.Module):
    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, num_queries: int, num_classes: int,
                 depth: int, prompt_adapter: str = "dmlp", image_adapter: str = "dconv", depth_pe: bool = True,
                 zero_init: bool = True, use_mask_prompt: bool = True):
        super().__init__()
        self.prompt_encoder, self.mask_decoder = prompt_encoder, mask_decoder
        for p in list(prompt_encoder.parameters()) + list(mask_decoder.parameters()):
            p.requires_grad_(False)
        dim = mask_decoder.transformer_dim
        self.dim, self.num_queries, self.depth = dim, num_queries, depth
        self.use_mask_prompt, self.use_depth_pe = use_mask_prompt, depth_pe
        n_layers = len(mask_decoder.transformer.layers)

        def ad(kind: str, skip: bool) -> nn.ModuleList:
            return nn.ModuleList(Adapter(dim, depth, kind, skip=skip, zero_init=zero_init) for _ in range(n_layers))

        self.self_attn_adapters = ad(prompt_adapter, True)
        self.cross_attn_adapters = ad(prompt_adapter, True)
        self.mlp_adapters = ad(prompt_adapter, False)
        self.image_adapters = ad(image_adapter, True)
        self.class_tokens = nn.Parameter(torch.randn(num_queries, dim) * 0.02)  # global learnable classifier tokens
        self.depth_pe = nn.Parameter(torch.zeros(depth, dim), requires_grad=depth_pe)
        self.class_head = nn.Linear(dim, num_classes + 1)  # K foreground classes + no object

    # ------------------------------------------------------------------ helpers
    def _to_bnt(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """(B*T, N, ...) -> (B*N*T, ...)."""
        t, n = self.depth, x.shape[1]
        x = x.reshape(b, t, n, *x.shape[2:]).transpose(1, 2)
        return x.reshape(b * n * t, *x.shape[3:])

    def _embed_boxes(self, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Normalised xyxy boxes (R, 4) -> SAM corner tokens (R, 2, D) at input size ``size``."""
        pe = self.prompt_encoder
        scale = boxes.new_tensor([size[1], size[0], size[1], size[0]])
        corners = (boxes * scale + 0.5).reshape(-1, 2, 2)
        emb = pe.pe_layer.forward_with_coords(corners, size)
        return emb + torch.stack([pe.point_embeddings[2].weight[0], pe.point_embeddings[3].weight[0]])

    def _two_way(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor,
                 hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        tr = self.mask_decoder.transformer
        h, w = hw
        r = keys.shape[0]
        for i, layer in enumerate(tr.layers):
            if layer.skip_first_layer_pe:
                queries = self.self_attn_adapters[i](layer.self_attn(q=queries, k=queries, v=queries))
            else:
                q = queries + query_pe
                queries = queries + self.self_attn_adapters[i](layer.self_attn(q=q, k=q, v=queries))
            queries = layer.norm1(queries)
            q, k = queries + query_pe, keys + key_pe
            queries = layer.norm2(queries + self.cross_attn_adapters[i](layer.cross_attn_token_to_image(q=q, k=k, v=keys)))
            queries = layer.norm3(queries + layer.mlp(queries) + 0.5 * self.mlp_adapters[i](queries))
            q, k = queries + query_pe, keys + key_pe
            attn = layer.cross_attn_image_to_token(q=k, k=q, v=queries)
            attn = self.image_adapters[i](attn.reshape(r, h, w, -1)).reshape(r, h * w, -1)
            keys = layer.norm4(keys + attn)
        q, k = queries + query_pe, keys + key_pe
        queries = tr.norm_final_attn(queries + tr.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys

    # ------------------------------------------------------------------ forward
    def forward(self, embedding: torch.Tensor, prompts: dict, input_size: tuple[int, int], batch: int) -> dict:
        """``embedding``: (B*T, D, h, w); ``prompts`` from the prompt generator (per slice, N queries).

        Returns ``masks`` (B, T, N, 4h, 4w) logits and ``class_logits`` (B, T, N, K+1).
        """
        md, pe = self.mask_decoder, self.prompt_encoder
        b, t, n = batch, self.depth, self.num_queries
        _, d, h, w = embedding.shape
        r = b * n * t
        src = embedding.reshape(b, 1, t, d, h, w).expand(b, n, t, d, h, w).reshape(r, d, h, w)
        if self.use_mask_prompt and prompts.get("aux_masks") is not None:
            m = prompts["aux_masks"]
            size = (4 * h, 4 * w)
            if m.shape[-2:] != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            dense = pe.mask_downscaling(self._to_bnt(m, b)[:, None])
        else:
            dense = pe.no_mask_embed.weight.reshape(1, d, 1, 1).expand(r, d, h, w)
        src = src + dense
        image_pe = pe.pe_layer((h, w)).unsqueeze(0)  # 1, D, h, w
        if self.use_depth_pe:
            image_pe = image_pe + self.depth_pe[:, :, None, None]  # T, D, h, w
        else:
            image_pe = image_pe.expand(t, d, h, w)
        pos = image_pe.unsqueeze(0).expand(b * n, t, d, h, w).reshape(r, d, h, w)
        sparse = self._embed_boxes(self._to_bnt(prompts["boxes"], b), input_size)  # r, 2, D
        cls = self._to_bnt(prompts["tokens"] + self.class_tokens, b)[:, None]  # r, 1, D
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], 0).unsqueeze(0).expand(r, -1, -1)
        tokens = torch.cat([out_tokens, sparse, cls], 1)
        hs, keys = self._two_way(tokens, src.flatten(2).transpose(1, 2), tokens, pos.flatten(2).transpose(1, 2), (h, w))
        mask_token = hs[:, 1]
        class_token = hs[:, -1]
        up = md.output_upscaling(keys.transpose(1, 2).reshape(r, d, h, w))
        hyper = md.output_hypernetworks_mlps[0](mask_token)  # SAM's single-mask output
        masks = (hyper[:, None, :] @ up.flatten(2)).reshape(r, *up.shape[-2:])
        logits = self.class_head(class_token)
        masks = masks.reshape(b, n, t, *masks.shape[-2:]).transpose(1, 2)
        logits = logits.reshape(b, n, t, -1).transpose(1, 2)
        return {"masks": masks, "class_logits": logits}
