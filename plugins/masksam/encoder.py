"""MaskSAM's image encoder (paper Fig. 3a): the frozen 2D SAM encoder run on every slice of a
T x H x W patch, with a trainable conv stem, a learnable depth position embedding and an adapter
in every transformer block.

Two encoder families are supported (duck-typed, so any backbone built on them works):

- SAM ViT (``segment_anything.modeling.ImageEncoderViT``): adapters in every ``Block``; the
  multi-level features for the prompt generator are the outputs of the global-attention blocks
  (ViT-B: 3, 6, 9), the last level being the encoder output after the neck (paper Sec. 2.5).
- TinyViT (LiteMedSAM): adapters in every ``TinyViTBlock`` of the three attention stages (the first
  stage is convolutional, MBConv, and has no attention); the multi-level features are the output of
  stage 2 (stride 2), of stage 3 (stride 4), and the neck output (stride 4).

Adapters act on un-partitioned tokens ``(B*T, h, w, D)`` (not inside attention windows).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import Adapter


@dataclass
class Level:
    """One multi-level feature: channels and stride relative to the encoder input."""

    channels: int
    stride: int


def conv_stem(in_channels: int, mid: int = 8, out: int = 3) -> nn.Sequential:
    """C_in -> 8 -> 3 with 3x3x3 convolutions, InstanceNorm and LeakyReLU (MaskSAM code).

    The last stage stops after the InstanceNorm (no LeakyReLU) so the 3 channels keep the signed,
    zero-mean range of SAM's normalised input.
    """
    return nn.Sequential(
        nn.Conv3d(in_channels, mid, 3, padding=1), nn.InstanceNorm3d(mid, affine=True), nn.LeakyReLU(0.01, inplace=True),
        nn.Conv3d(mid, out, 3, padding=1), nn.InstanceNorm3d(out, affine=True),
    )


def standard_input(x: torch.Tensor, normalisation: str, window: tuple[float, float] | None = None) -> torch.Tensor:
    """The image as the pretrained encoder expects it (``autosam.sam.backbone.SamBackbone.prepare_slices``
    without the resize): ``(N, C, H, W)`` -> ``(N, 3, H, W)``, the first channel repeated, clipped to
    ``window`` (CT: soft tissue) and min-max scaled per slice to [0, 1], then the backbone's own
    normalisation (``unit``: LiteMedSAM, ``sam_rgb``: SAM's pixel mean/std)."""
    from autosam.sam.intensity import normalise_for_backbone, window_to_unit

    x = x[:, :1].float().expand(-1, 3, -1, -1)
    return normalise_for_backbone(window_to_unit(x, window, dims=2), normalisation)


def _is_vit(encoder: nn.Module) -> bool:
    return hasattr(encoder, "blocks") and hasattr(encoder, "patch_embed") and hasattr(encoder, "neck")


def _is_tinyvit(encoder: nn.Module) -> bool:
    return hasattr(encoder, "layers") and hasattr(encoder, "patch_embed") and hasattr(encoder, "neck")


class _ViTRunner(nn.Module):
    """Runs a SAM ``ImageEncoderViT`` block by block with adapters; returns the levels."""

    def __init__(self, encoder: nn.Module, depth: int, adapter_kind: str, zero_init: bool):
        super().__init__()
        self.encoder = encoder
        dim = encoder.patch_embed.proj.out_channels
        self.dim = dim
        n = len(encoder.blocks)
        self.attn_adapters = nn.ModuleList(Adapter(dim, depth, adapter_kind, skip=True, zero_init=zero_init) for _ in range(n))
        self.mlp_adapters = nn.ModuleList(Adapter(dim, depth, adapter_kind, skip=False, zero_init=zero_init) for _ in range(n))
        global_blocks = [i for i, b in enumerate(encoder.blocks) if getattr(b, "window_size", 0) == 0]
        if len(global_blocks) < 2:  # a ViT without (enough) global blocks: every quarter of the depth
            global_blocks = sorted({max(0, round(n * k / 4) - 1) for k in (1, 2, 3, 4)})
        self.level_blocks = global_blocks[:-1]  # the last level is the neck output
        patch = encoder.patch_embed.proj.stride[0]
        out_ch = encoder.neck[0].out_channels
        self.levels = [Level(dim, patch) for _ in self.level_blocks] + [Level(out_ch, patch)]
        self.depth_pe = nn.Parameter(torch.zeros(depth, dim))

    def forward(self, x: torch.Tensor, use_depth_pe: bool) -> list[torch.Tensor]:
        from segment_anything.modeling.image_encoder import window_partition, window_unpartition

        enc = self.encoder
        x = enc.patch_embed(x)  # (B*T, h, w, D)
        bt, h, w, _ = x.shape
        if enc.pos_embed is not None:
            pe = enc.pos_embed
            if pe.shape[1:3] != (h, w):
                pe = F.interpolate(pe.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
            x = x + pe
        if use_depth_pe:
            t = self.depth_pe.shape[0]
            x = x + self.depth_pe.repeat(bt // t, 1)[:, None, None, :]
        feats = []
        for i, blk in enumerate(enc.blocks):
            shortcut = x
            y = blk.norm1(x)
            if blk.window_size > 0:
                y, pad_hw = window_partition(y, blk.window_size)
            y = blk.attn(y)
            if blk.window_size > 0:
                y = window_unpartition(y, blk.window_size, pad_hw, (h, w))
            x = shortcut + self.attn_adapters[i](y)  # adapter after attention, on un-partitioned tokens
            xn = blk.norm2(x)
            x = x + blk.mlp(xn) + 0.5 * self.mlp_adapters[i](xn)  # second adapter parallel to the MLP
            if i in self.level_blocks:
                feats.append(x.permute(0, 3, 1, 2))
        feats.append(enc.neck(x.permute(0, 3, 1, 2)))
        return feats


class _TinyViTRunner(nn.Module):
    """Runs a TinyViT (LiteMedSAM) encoder stage by stage with adapters; returns the levels."""

    def __init__(self, encoder: nn.Module, depth: int, adapter_kind: str, zero_init: bool, input_size: int):
        super().__init__()
        self.encoder = encoder
        self.attn_adapters = nn.ModuleDict()
        self.mlp_adapters = nn.ModuleDict()
        stride = 1
        self.levels: list[Level] = []
        self.level_layers: list[int] = []
        self.layer_strides: list[int] = []
        for li, layer in enumerate(encoder.layers):
            if li > 0:
                for bi, blk in enumerate(layer.blocks):
                    key = f"{li}_{bi}"
                    self.attn_adapters[key] = Adapter(blk.dim, depth, adapter_kind, skip=True, zero_init=zero_init)
                    self.mlp_adapters[key] = Adapter(blk.dim, depth, adapter_kind, skip=False, zero_init=zero_init)
            stride = max(1, input_size // layer.input_resolution[0])
            self.layer_strides.append(stride)
            if li in (1, len(encoder.layers) - 2):
                self.levels.append(Level(layer.blocks[-1].dim, stride))
                self.level_layers.append(li)
        out_ch = encoder.neck[0].out_channels
        final_stride = self.levels[-1].stride if self.levels else 4
        self.levels.append(Level(out_ch, final_stride))
        first_dim = encoder.patch_embed.seq[-1].c.out_channels
        self.depth_pe = nn.Parameter(torch.zeros(depth, first_dim))

    def _block(self, blk: nn.Module, key: str, x: torch.Tensor) -> torch.Tensor:
        h, w = blk.input_resolution
        b, n, c = x.shape
        ws = blk.window_size
        res = x
        if h == ws and w == ws:
            y = blk.attn(x)
        else:
            y = x.view(b, h, w, c)
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_b or pad_r:
                y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            y = y.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            y = blk.attn(y)
            y = y.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)[:, :h, :w]
        y = y.reshape(b, h, w, c)
        x = res + self.attn_adapters[key](y).reshape(b, n, c)  # adapter after attention (un-partitioned)
        x = blk.local_conv(x.transpose(1, 2).reshape(b, c, h, w)).view(b, c, n).transpose(1, 2)
        xn = blk.mlp.norm(x).reshape(b, h, w, c)
        x = x + blk.mlp(x) + 0.5 * self.mlp_adapters[key](xn).reshape(b, n, c)
        return x

    def forward(self, x: torch.Tensor, use_depth_pe: bool) -> list[torch.Tensor]:
        enc = self.encoder
        x = enc.patch_embed(x)  # (B*T, C0, S, S)
        if use_depth_pe:
            t = self.depth_pe.shape[0]
            x = x + self.depth_pe.repeat(x.shape[0] // t, 1)[:, :, None, None]
        size = x.shape[-2:]
        for layer, stride in zip(enc.layers, self.layer_strides):  # stage resolutions follow the input
            res = (size[0] // stride, size[1] // stride)
            layer.input_resolution = res
            for blk in layer.blocks:
                blk.input_resolution = res
            if layer.downsample is not None:
                layer.downsample.input_resolution = res
        x = enc.layers[0](x)  # MBConv stage + patch merging -> (B*T, L, C)
        feats = []
        for li in range(1, len(enc.layers)):
            layer = enc.layers[li]
            for bi, blk in enumerate(layer.blocks):
                x = self._block(blk, f"{li}_{bi}", x)
            if li in self.level_layers:
                h, w = layer.blocks[-1].input_resolution
                feats.append(x.transpose(1, 2).reshape(x.shape[0], -1, h, w))
            if layer.downsample is not None:
                x = layer.downsample(x)
        h, w = enc.layers[-1].blocks[-1].input_resolution
        feats.append(enc.neck(x.transpose(1, 2).reshape(x.shape[0], -1, h, w)))
        return feats


class MaskSAMEncoder(nn.Module):
    """Stem + frozen 2D SAM encoder with depth adapters and depth PE.

    ``forward(x)`` takes ``B x C x T x H x W`` (H, W already at the SAM input size) and returns the
    multi-level features, each ``(B*T, C_l, H/s_l, W/s_l)``; the last one is the image embedding.
    """

    def __init__(self, image_encoder: nn.Module, in_channels: int, depth: int, input_size: int,
                 adapter_kind: str = "dconv", depth_pe: bool = True, zero_init: bool = True,
                 stem_residual_of: str | None = None):
        super().__init__()
        self.stem = conv_stem(in_channels)
        #: ``None``: the stem's output is the encoder input (official code). Else the name of the
        #: backbone normalisation: the input is ``standard_input(x) + stem(x)`` with the stem's last
        #: InstanceNorm affine zero-initialised, so the frozen encoder starts on its usual input.
        self.stem_residual_of = stem_residual_of
        #: clip window of the standard input (set by the method from the dataset: CT soft tissue)
        self.intensity_window: tuple[float, float] | None = None
        if stem_residual_of is not None:
            nn.init.zeros_(self.stem[-1].weight)
            nn.init.zeros_(self.stem[-1].bias)
        self.depth = depth
        self.use_depth_pe = depth_pe
        for p in image_encoder.parameters():
            p.requires_grad_(False)
        if _is_vit(image_encoder):
            self.runner = _ViTRunner(image_encoder, depth, adapter_kind, zero_init)
        elif _is_tinyvit(image_encoder):
            self.runner = _TinyViTRunner(image_encoder, depth, adapter_kind, zero_init, input_size)
        else:
            raise TypeError(f"MaskSAM supports SAM ViT and TinyViT image encoders, not {type(image_encoder).__name__}")
        self.levels = self.runner.levels
        self.runner.depth_pe.requires_grad_(depth_pe)

    def train(self, mode: bool = True):
        super().train(mode)
        self.runner.encoder.eval()  # frozen: BatchNorm statistics (TinyViT) and attention caches stay fixed
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, _, t, h, w = x.shape
        if t != self.depth:
            raise ValueError(f"MaskSAM was built for patches of depth T={self.depth}, got T={t}")
        y = self.stem(x)  # B, 3, T, H, W
        y = y.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)
        if self.stem_residual_of is not None:
            slices = x.permute(0, 2, 1, 3, 4).reshape(b * t, x.shape[1], h, w)
            y = standard_input(slices, self.stem_residual_of, self.intensity_window) + y
        x = y
        return self.runner(x, self.use_depth_pe)


def embedding_stride(levels: list[Level]) -> int:
    return levels[-1].stride


def log2_int(v: int) -> int:
    k = int(round(math.log2(v)))
    if 2 ** k != v:
        raise ValueError(f"stride {v} is not a power of two")
    return k
