"""Options of the ``medlsam`` method (defaults from the paper / official code; see README)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MedLSAMOptions:
    # --- MedLAM localiser
    coarse_spacing: list[float] = field(default_factory=lambda: [3.0, 3.0, 3.0])  # mm (z, y, x), paper: 3 mm
    patch: int = 64  # coarse patch side (paper: 64); the planner shrinks it for small images
    r_mm: list[float] = field(default_factory=lambda: [1500.0, 600.0, 600.0])  # tanh range (paper); planned from the dataset extent
    base_width: int = 24  # code: 24
    num_pool: int = 4  # code: 4 poolings
    feature_dim: int = 32  # channels of each MSS feature map
    mss_weight: float = 1.0
    lr: float = 1e-3  # paper: 1e-3 (code: 1e-4)
    weight_decay: float = 0.0
    batch_size: int = 4  # crops per iteration (code: 4 pairs; paper: 8)
    crops_per_scan: int = 2  # crops of one scan per group; every pair in a group is an RDR pair (paper: 2)
    mss_crops: int | None = None  # crops that also get an augmented copy for MSS (None: one per group)
    agent_moves: int = 3
    agent_starts: int = 1  # agents per point, combined by the median (official code: 10 random crops)
    mss_refine: bool = True
    mss_template: int = 8  # MSS descriptor: feature block of this side (coarse voxels) around the point (official: 8; 1 = the paper's point feature)
    mss_radius: int | None = None  # MSS search radius around the agent, coarse voxels (None: the whole patch)
    # --- few-shot support
    num_support: int = 5
    split_components: bool = True  # a label made of separate parts in every support (both kidneys) -> one target per part
    max_components: int = 2
    # box extension (see README, "Box extension"): the paper's [2, 10, 10] voxels were given on WORD
    # (512 x 512 slices, ~0.98 mm in-plane, 2.5-3 mm apart). Along z it covers the localiser's
    # error, so it is kept in mm (2 slices ~ 5 mm). In-plane, SAM sees each slice resized to its
    # input size, so what a margin does to the prompt depends on its share of the slice: 10 px of a
    # 512 px slice is 1.95 % of the side (20 px at SAM's 1024, MedSAM's largest box perturbation
    # in training). ``box_margin_xy_fraction`` keeps that share: fraction x the slice's longer
    # physical side, in voxels of each in-plane axis.
    box_margin_z_mm: float = 5.0
    box_margin_xy_fraction: float = 10.0 / 512.0
    # explicit margin in mm (z, y, x); replaces the two above when given (an mm margin on every axis)
    box_margin_mm: list[float] | None = None
    # --- SAM segmentation stage
    backbone: str = "litemedsam"
    sam_checkpoint: str | None = None
    allow_random_init: bool = False  # a randomly initialised SAM (speed checks; it segments nothing useful)
    sam_input_size: int | None = None  # None: the backbone's default
    finetune_sam: bool = False  # fine-tune the mask decoder on label boxes with 0-20 px perturbation
    finetune_steps: int = 200
    finetune_lr: float = 1e-4  # MedSAM's; best of 1e-5 / 1e-4 / 3e-4 in benchmarks/learning/medlsam_finetune.py
    finetune_weight_decay: float = 0.01  # MedSAM's AdamW weight decay
    finetune_slices: int = 64  # labelled training slices, encoded once (the image encoder is frozen)
    box_jitter_px: int = 20  # MedSAM's 0-20 px per side, in pixels of SAM's 1024 input (scaled to the backbone's)
    # how a box is followed through its slices: "propagate" (each slice prompted with the box of the
    # previous slice's mask, LiteMedSAM's way) or "fixed" (the box itself on every slice)
    box_mode: str = "propagate"
    max_boxes: int = 256  # box prompts per case (localised components or --boxes-json); more are refused
    window: list[float] | None = None  # clip window in normalised units before the backbone (None: CT -> MedSAM's soft-tissue window W400/L40 in normalised units; else the volume's 0.5-99.5 percentiles)
    seed: int = 0


def margin_voxels(margin_mm, spacing) -> list[int]:
    """``margin_mm`` (z, y, x) in whole voxels of a grid with ``spacing`` (rounded, at least 0)."""
    return [max(0, int(round(float(m) / float(sp)))) for m, sp in zip(margin_mm, spacing)]


def box_margin_voxels(options: MedLSAMOptions, spacing, shape) -> list[int]:
    """The box extension (z, y, x) in whole voxels of a grid with ``spacing`` whose slices are
    ``shape[-2:]`` voxels: ``box_margin_mm`` if set, otherwise ``box_margin_z_mm`` along z and
    ``box_margin_xy_fraction`` of the longer physical in-plane side (the side SAM's input size
    is fitted to) along y and x."""
    if options.box_margin_mm is not None:
        return margin_voxels(options.box_margin_mm, spacing)
    sz, sy, sx = (float(v) for v in spacing)
    side_mm = max(int(shape[-2]) * sy, int(shape[-1]) * sx)
    xy_mm = float(options.box_margin_xy_fraction) * side_mm
    return margin_voxels([options.box_margin_z_mm, xy_mm, xy_mm], (sz, sy, sx))
