"""The 3D SAM of SAM-Med3D (image encoder, prompt encoder, mask decoder), implemented from the
architecture facts in ``shared/METHODS.md`` with state-dict keys matching its checkpoints."""
from autosam.sam.sam3d.image_encoder import ImageEncoderViT3D
from autosam.sam.sam3d.mask_decoder import MaskDecoder3D, TwoWayTransformer3D
from autosam.sam.sam3d.prompt_encoder import PositionEmbeddingRandom3D, PromptEncoder3D

__all__ = ["ImageEncoderViT3D", "MaskDecoder3D", "TwoWayTransformer3D", "PromptEncoder3D", "PositionEmbeddingRandom3D"]
