"""Options of the ``sautomed`` method and the planning rule for its plans section."""
from __future__ import annotations

from dataclasses import dataclass

from autosam.sam.sizing import encoder_input_size, median_slice_size


@dataclass
class SAutoMedOptions:
    """Hyperparameters of 3D-SAutoMed. Precedence: these defaults <- the plans section written by
    :func:`plan_section` <- command-line flags (``--lora-rank 8``, ``--use-history false``)."""

    backbone: str = "litemedsam"  #: SAM backbone (litemedsam, sam_vit_b, tiny, ...)
    sam_checkpoint: str | None = None  #: weights file for sam_vit_* (default: $AUTOSAM_SAM_CHECKPOINT)
    allow_random_init: bool = False  #: train from a randomly initialised backbone (tests, smoke runs)
    input_size: int | None = None  #: SAM input side; None: derived from slice_size (see plan_section)
    slice_size: list[int] | None = None  #: in-plane (y, x) size of training slices and inference tiles
    #: clip window (normalised units) before each slice is min-max scaled for the encoder; None: MedSAM's
    #: CT soft-tissue window when the data are CT (autosam.sam.intensity.method_window), else each slice's range
    window: list[float] | None = None
    lora_rank: int = 4  #: LoRA rank on q and v of every encoder block (0: encoder fully frozen)
    lora_alpha: float = 4.0
    history_tokens: int = 8  #: K of HIS
    use_history: bool = True  #: ablation: HIS (global 3D awareness)
    use_inter_slice: bool = True  #: ablation: inter-slice attention (local 3D awareness across t-1, t, t+1)
    use_intra_slice: bool = True  #: ablation: intra-slice attention
    use_box_generator: bool = True  #: ablation: Box Prompt Generator (False: no prompt tokens)
    order: str = "mid_to_ends"  #: slice order: mid_to_ends | top_to_bottom (paper's ablation)
    min_context_slices: int = 1  #: training: preceding slices run before the loss slice (random in [min, max])
    max_context_slices: int = 3
    context_encoder_grad: bool = False  #: back-propagate through the encoder for context slices too (slower)
    context_seg_loss: bool = False  #: [ours] True: CE + Dice on every visited slice (False: on the loss slice t only, as the paper)
    generator_layers: int = 3
    attention_heads: int = 8  #: heads of the 3D-awareness block and the box generator
    lr: float = 1e-4
    weight_decay: float = 1e-4
    lr_schedule: str = "constant"  #: constant (paper) | poly (nnU-Net's (1 - epoch/epochs)^0.9)
    grad_clip: float = 1.0
    box_l1_weight: float = 1.0
    box_giou_weight: float = 1.0
    train_decoder: bool = True  #: fine-tune SAM's two-way transformer and upscaling inside the new decoder
    tile_batch: int = 4  #: inference: in-plane tiles segmented together (x2 for the two directions)
    encode_batch: int = 16  #: slices per encoder call


def plan_section(configuration, spec, backbone: str) -> dict:
    """The plans section of ``sautomed`` for one configuration."""
    slice_size = median_slice_size(configuration)
    return {
        "backbone": backbone,
        "slice_size": slice_size,
        "input_size": encoder_input_size(slice_size, spec),
        "slice_spacing_mm": [float(s) for s in configuration.spacing[-2:]],
    }
