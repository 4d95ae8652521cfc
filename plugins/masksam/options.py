"""Options of the ``masksam`` method and the planning rule for its plans section."""
from __future__ import annotations

from dataclasses import dataclass

from autosam.sam.sizing import encoder_input_size, median_slice_size, round_up


@dataclass
class MaskSAMOptions:
    """Hyperparameters of MaskSAM. Precedence: these defaults <- the plans section written by
    :func:`plan_section` <- command-line flags (``--num-queries 16``, ``--dconv false``)."""

    backbone: str = "litemedsam"  #: SAM backbone (litemedsam, sam_vit_b, tiny, ...)
    sam_checkpoint: str | None = None  #: weights file for sam_vit_* (default: $AUTOSAM_SAM_CHECKPOINT)
    allow_random_init: bool = False  #: train from a randomly initialised backbone (tests, smoke runs)
    input_size: int | None = None  #: SAM input side S (slices are resized to S x S); None: from the patch
    patch_size: list[int] | None = None  #: (T, H, W) training patch and inference tile; None: from the plans
    #: clip window (normalised units) before each slice is min-max scaled for the encoder; None: MedSAM's
    #: CT soft-tissue window when the data are CT (autosam.sam.intensity.method_window), else each slice's range
    window: list[float] | None = None
    num_queries: int = 8  #: N, must exceed the largest number of classes in one slice
    # ---- Table 4 ablations
    prompt_mode: str = "mask_avg_box"  #: mask_avg_box (B4, paper) | mask (B1) | box (B2) | mask_box (B3)
    adapter: str = "dmlp"  #: prompt-side adapter: dmlp (B8) | vanilla (B4/B5) | dmlp_after_up (B6) | dmlp_before_down (B7)
    dconv: bool = True  #: DConvAdapter for image embeddings (B9); False: image blocks use ``adapter``
    depth_pe: bool = True  #: learnable depth position embeddings in encoder and decoder (B5)
    # ---- architecture details
    generator_width: int = 32  #: channels of the prompt generator's decoder stages
    zero_init_adapters: bool = True  #: adapters start as identity (up-projection zero)
    stem_residual: bool = True  #: encoder input = standard SAM input + stem output (zero at start); False: stem only (official)
    # ---- optimisation (paper: AdamW lr 1e-3, poly)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    poly_exponent: float = 0.9
    grad_clip: float = 1.0
    no_object_weight: float = 0.1
    cost_size: int = 64  #: masks are compared at most at this side for the matching cost


def default_num_queries(num_foreground: int) -> int:
    """N: at least 1.5 x the number of foreground classes and at least 8, in steps of 8 (the
    official code uses 24 for AMOS's 15 classes and 8 for ACDC's 3)."""
    return round_up(max(8.0, 1.5 * num_foreground), 8)


def default_patch(configuration, max_depth: int = 8) -> list[int]:
    """(T, H, W): whole typical slices in-plane (:func:`autosam.sam.sizing.median_slice_size`: the
    median in-plane image size, at least the configuration's patch) and at most ``max_depth`` slices
    (every slice goes through the 2D encoder and N decoder passes, so T sets the cost). Whole slices
    rather than the 3D UNet's in-plane patch: the encoder's input size follows the slice (one token
    per 8 voxels), and prediction then needs one tile per slice instead of many overlapping small
    ones (on the CPU plans' 48 x 48 patches, ~25 tiles per slice of the organs example)."""
    z = int(list(configuration.patch_size)[-3])
    return [min(z, max_depth), *median_slice_size(configuration)]


def default_input_size(patch: list[int], spec) -> int:
    """S for patches ``(T, H, W)`` (:func:`autosam.sam.sizing.encoder_input_size` of the slice)."""
    return encoder_input_size(list(patch)[-2:], spec)


def plan_section(configuration, spec, backbone: str, num_foreground: int) -> dict:
    patch = default_patch(configuration)
    return {
        "backbone": backbone,
        "patch_size": patch,
        "input_size": default_input_size(patch, spec),
        "num_queries": default_num_queries(num_foreground),
    }
