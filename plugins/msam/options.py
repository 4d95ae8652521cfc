"""Options of the ``msam`` method (paper / official code defaults; see README for deviations)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MSamOptions:
    backbone: str = "sam_med3d"  # weights by path (--sam-checkpoint / AUTOSAM_SAM_MED3D_CHECKPOINT); tiny3d for tests
    sam_checkpoint: str | None = None
    allow_random_init: bool = False  # train a real-size backbone from random weights (explicit only)
    input_size: int | None = None  # cube side of the encoder input; None = backbone default (128 / 32)
    lora_rank: int = 4
    freeze_encoder: bool | None = None  # None: frozen (LoRA only) with pretrained weights, fully trained with random ones
    use_mea: bool = True  # ablation: False = SAM's "image embedding + dense prompt"
    mea_heads: int | None = None  # None: 64-d heads as in the official recipe (6 heads at 384-d; 1 for tiny3d's 48-d)
    mea_zero_init: bool = True  # [ours] MEA starts as the identity on the image embedding (zeroed output projections)
    train_iterations: int = 10  # refinement iterations in training (paper: 10; code: 11)
    auto_iterations: int = 3  # mask-feedback refinements in automatic (label-free) prediction
    click_training_fraction: float = 0.5  # [ours] share of batches trained with clicks; the rest without, like automatic prediction
    lr: float = 8e-4
    decoder_lr: float | None = None  # prompt encoder + mask decoder; None: 8e-5 with pretrained weights, ``lr`` with random ones
    batch_size: int | None = None  # None: the plans' batch size
    oversample_foreground: float = 0.5  # [ours] share of training patches centred on foreground (core default 0.33)
    weight_decay: float = 0.1
    milestones: tuple[float, float] = (0.6, 0.9)  # MultiStep at 120/180 of 200 epochs, as fractions
    w_dice: float = 0.5
    w_ce: float = 0.5
    grad_clip: float = 12.0
