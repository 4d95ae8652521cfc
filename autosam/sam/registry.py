"""Backbone specifications. Backbones are registered through the ``register_backbones`` hook.

A backbone bundles a SAM-style ``image_encoder``, ``prompt_encoder`` and ``mask_decoder``
(the interfaces of the ``segment-anything`` package, 2D or 3D) plus what the core needs to feed it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class BackboneSpec:
    name: str
    dims: int  # 2 (slice encoder) or 3 (volume encoder, SAM-Med3D)
    vit_patch_size: int  # input size must be a multiple of this
    default_input_size: int  # in-plane (2D) or cubic (3D) size the weights were trained at
    in_channels: int  # channels the encoder takes (3 for RGB-trained SAMs)
    embed_dim: int  # channels of the image embedding handed to the prompt encoder/decoder
    builder: Callable[..., object]  # builder(input_size=..., checkpoint=..., allow_random_init=...) -> SamBackbone
    checkpoint_filename: str | None = None  # expected file for weights given by path, e.g. sam_vit_b_01ec64.pth
    pretrained_builtin: bool = False  # weights ship with an installed package (litemedsam)
    intensity: str = ""  # how normalised slices are mapped into the encoder's input range
    description: str = ""
    extra: dict = field(default_factory=dict)
