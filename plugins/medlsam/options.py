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
    # box extension in mm (z, y, x): the paper's [2, 10, 10] voxels at its data's spacing (WORD: ~0.98 mm
    # in-plane, 2.5-3 mm slices); converted to voxels of the configuration's grid (margin_voxels)
    box_margin_mm: list[float] = field(default_factory=lambda: [5.0, 10.0, 10.0])
    # --- SAM segmentation stage
    backbone: str = "litemedsam"
    sam_checkpoint: str | None = None
    sam_input_size: int | None = None  # None: the backbone's default
    finetune_sam: bool = False  # fine-tune the mask decoder on label boxes with 0-20 px perturbation
    finetune_steps: int = 200
    finetune_lr: float = 1e-5
    box_jitter_px: int = 20
    window: list[float] | None = None  # clip window in normalised units before the backbone (None: the volume's 0.5-99.5 percentiles)
    seed: int = 0


def margin_voxels(margin_mm, spacing) -> list[int]:
    """``margin_mm`` (z, y, x) in whole voxels of a grid with ``spacing`` (rounded, at least 0)."""
    return [max(0, int(round(float(m) / float(sp)))) for m, sp in zip(margin_mm, spacing)]
