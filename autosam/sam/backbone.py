"""``SamBackbone``: a SAM-style image encoder, prompt encoder and mask decoder plus what the core
needs to feed them (input size, intensity mapping, batched encoding, per-image decoding).

The three submodules keep the call signatures of the ``segment-anything`` package
(``image_encoder(x)``, ``prompt_encoder(points=, boxes=, masks=)``,
``mask_decoder(image_embeddings=, image_pe=, sparse_prompt_embeddings=, dense_prompt_embeddings=,
multimask_output=)``), in 2D or, for SAM-Med3D, in 3D. Methods train through the submodules
(SAM's own ``Sam.forward`` runs under ``no_grad``).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autosam.sam.intensity import normalise_for_backbone, window_to_unit
from autosam.utils import precision

logger = logging.getLogger(__name__)


class SamBackbone(nn.Module):
    """A built SAM backbone (see :func:`autosam.sam.backbones.build_backbone`).

    Attributes: ``image_encoder``, ``prompt_encoder``, ``mask_decoder``, ``spec``
    (:class:`~autosam.sam.registry.BackboneSpec`), ``input_size`` (in-plane side for 2D, cube side
    for 3D), ``embed_dim`` (channels of the image embedding), ``image_embedding_size`` (spatial
    size of the embedding, a tuple), ``normalisation`` (``sam_rgb``, ``unit`` or ``zscore``) and
    ``checkpoint_path`` (where the weights came from; ``None`` for a random init).
    """

    def __init__(
        self,
        spec: Any,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        input_size: int,
        image_embedding_size: tuple[int, ...],
        normalisation: str,
        checkpoint_path: str | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        float32_layer_norms(self)
        self.spec = spec
        self.input_size = int(input_size)
        self.image_embedding_size = tuple(int(s) for s in image_embedding_size)
        self.embed_dim = int(spec.embed_dim)
        self.normalisation = normalisation
        self.checkpoint_path = checkpoint_path
        #: clip window (units of the data) that :meth:`prepare_slices` applies when called without one;
        #: a method sets it from the dataset (:func:`autosam.sam.intensity.method_window`: CT soft tissue)
        self.intensity_window: tuple[float, float] | None = None

    # ------------------------------------------------------------------ properties
    @property
    def dims(self) -> int:
        return int(self.spec.dims)

    @property
    def name(self) -> str:
        return str(self.spec.name)

    @property
    def low_res_mask_size(self) -> tuple[int, ...]:
        """Spatial size of the decoder's logits (4x the embedding, as in SAM)."""
        return tuple(4 * s for s in self.image_embedding_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ input mapping
    def prepare_slices(
        self,
        x: torch.Tensor,
        window: tuple[float, float] | None = None,
        channel: int | None = None,
    ) -> torch.Tensor:
        """Map normalised slices ``B x C x H x W`` to the encoder input ``B x 3 x S x S``.

        Steps: pick channels (``C == 1`` is repeated to 3; ``C == 3`` is kept; other ``C`` need
        ``channel=i``, which repeats that channel), resize bilinearly to ``S x S`` (``S`` =
        ``self.input_size``; non-square slices are stretched, so box prompts scale per axis),
        clip to ``window`` (in the units of ``x``; ``None`` = :attr:`intensity_window`, and when that
        is ``None`` too, each slice's own range) and min-max
        scale to ``[0, 1]``, then apply the backbone's own normalisation
        (``sam_rgb``: x255 then SAM's pixel mean/std; ``unit``: LiteMedSAM's ``[0, 1]``).
        """
        if self.dims != 2:
            raise ValueError(f"backbone {self.name!r} is 3D; use prepare_volume")
        if x.dim() != 4:
            raise ValueError(f"prepare_slices expects B x C x H x W, got shape {tuple(x.shape)}")
        x = _select_channels(x, channel, want=3)
        x = x.float()
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = window_to_unit(x, window if window is not None else self.intensity_window, dims=2)
        return normalise_for_backbone(x, self.normalisation)

    def prepare_volume(self, x: torch.Tensor, window: tuple[float, float] | None = None) -> torch.Tensor:
        """Map normalised volumes ``B x C x D x H x W`` to the 3D encoder input ``B x 1 x S x S x S``.

        A single channel is required (pass one channel of a multi-modal case). The volume is
        resized trilinearly to ``S^3`` when its shape differs (crop or pad beforehand to keep the
        voxel size), clipped to ``window`` if given, then standardised per volume (SAM-Med3D's
        z-score), or min-max scaled when the backbone's normalisation is ``unit``.
        """
        if self.dims != 3:
            raise ValueError(f"backbone {self.name!r} is 2D; use prepare_slices")
        if x.dim() != 5:
            raise ValueError(f"prepare_volume expects B x C x D x H x W, got shape {tuple(x.shape)}")
        if x.shape[1] != 1:
            raise ValueError(f"backbone {self.name!r} takes 1 channel, got {x.shape[1]}; select one channel first")
        x = x.float()
        size = (self.input_size,) * 3
        if tuple(x.shape[-3:]) != size:
            x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        if window is not None:
            x = x.clamp(float(window[0]), float(window[1]))
        if self.normalisation == "unit":
            return window_to_unit(x, None, dims=3)
        return normalise_for_backbone(x, "zscore")

    # ------------------------------------------------------------------ encoder
    def encode(self, x: torch.Tensor, batch_size: int = 8, amp: bool = True) -> torch.Tensor:
        """Run the image encoder on prepared input in chunks of ``batch_size``.

        On CUDA with ``amp=True`` the encoder runs under autocast in the training precision
        (:func:`autosam.utils.precision.amp_dtype`: bf16 where the card computes it natively, else
        fp16); the result is returned in float32. Gradients flow when grad mode is on (LoRA training); wrap in ``torch.no_grad()``
        for inference.
        """
        if x.shape[0] == 0:
            raise ValueError("encode: empty batch")
        ctx = precision.autocast(x.device, enabled=amp)
        outs = []
        with ctx:
            for start in range(0, x.shape[0], max(1, int(batch_size))):
                outs.append(self.image_encoder(x[start : start + batch_size]))
        return torch.cat(outs).float()

    # ------------------------------------------------------------------ decoder
    def decode_image(
        self,
        image_embedding: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``K`` prompts against ONE image embedding (``1 x C x ...``).

        Prompts follow segment-anything: ``boxes`` ``K x 4`` (x0, y0, x1, y1 in input pixels),
        ``points`` ``(K x N x 2|3, K x N)``, ``masks`` ``K x 1 x low-res``. Returns logits
        ``K x M x low-res`` and IoU predictions ``K x M``.
        """
        if image_embedding.shape[0] != 1:
            raise ValueError("decode_image takes one image embedding (1 x C x ...); use decode for batches")
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        return self.mask_decoder(
            image_embeddings=image_embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def decode(
        self,
        image_embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one prompt per image: prompt ``i`` goes with embedding ``i``.

        (segment-anything's decoder would pair every image with every prompt, B^2 rows.)
        ``boxes`` ``B x 4``, ``points`` ``(B x N x 2|3, B x N)``, ``masks`` ``B x 1 x low-res``;
        all optional. Returns logits ``B x M x low-res`` and IoU predictions ``B x M``.
        """
        b = image_embeddings.shape[0]
        for name, t in (("boxes", boxes), ("masks", masks), ("points", None if points is None else points[0])):
            if t is not None and t.shape[0] != b:
                raise ValueError(f"decode: {name} has {t.shape[0]} rows for {b} image embeddings")
        logits, ious = [], []
        for i in range(b):
            lg, io = self.decode_image(
                image_embeddings[i : i + 1],
                points=None if points is None else (points[0][i : i + 1], points[1][i : i + 1]),
                boxes=None if boxes is None else boxes[i : i + 1],
                masks=None if masks is None else masks[i : i + 1],
                multimask_output=multimask_output,
            )
            logits.append(lg)
            ious.append(io)
        return torch.cat(logits), torch.cat(ious)

    def upscale_logits(self, logits: torch.Tensor, size: tuple[int, ...] | None = None) -> torch.Tensor:
        """Resize decoder logits to ``size`` (default: the encoder input size)."""
        size = tuple(size) if size is not None else (self.input_size,) * self.dims
        mode = "bilinear" if self.dims == 2 else "trilinear"
        return F.interpolate(logits, size=size, mode=mode, align_corners=False)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None, points=None, masks=None,
                multimask_output: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prepared images and decode one prompt per image (see :meth:`decode`)."""
        return self.decode(self.encode(images), points=points, boxes=boxes, masks=masks,
                           multimask_output=multimask_output)

    def extra_repr(self) -> str:
        return (f"name={self.name}, dims={self.dims}, input_size={self.input_size}, "
                f"embedding={self.embed_dim}x{'x'.join(map(str, self.image_embedding_size))}")


def float32_layer_norms(module: nn.Module) -> nn.Module:
    """Make every segment-anything ``LayerNorm2d`` in ``module`` compute in float32 under autocast
    (in place, same parameters and state dict): its squared activations overflow fp16."""
    try:
        from segment_anything.modeling.common import LayerNorm2d
    except ImportError:  # pragma: no cover - segment-anything is a dependency
        return module
    for m in module.modules():
        if type(m) is LayerNorm2d:
            m.__class__ = _float32_subclass(LayerNorm2d)
    return module


_FLOAT32_CLASSES: dict[type, type] = {}


def _float32_subclass(cls: type) -> type:
    if cls not in _FLOAT32_CLASSES:
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return precision.channel_layer_norm(x, self.weight, self.bias, self.eps)

        _FLOAT32_CLASSES[cls] = type(f"Float32{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    return _FLOAT32_CLASSES[cls]


def _select_channels(x: torch.Tensor, channel: int | None, want: int) -> torch.Tensor:
    c = x.shape[1]
    if channel is not None:
        if not 0 <= channel < c:
            raise ValueError(f"channel={channel} out of range for {c} input channels")
        return x[:, channel : channel + 1].expand(-1, want, *x.shape[2:])
    if c == want:
        return x
    if c == 1:
        return x.expand(-1, want, *x.shape[2:])
    raise ValueError(
        f"the backbone takes {want} channels but the input has {c}; pass channel=i to use one channel "
        "(repeated), or map the channels with a learned stem first"
    )
