"""The ``sautomed`` method: 3D-SAutoMed on the core's Method contract."""
from __future__ import annotations

import logging
import random

import torch
import torch.nn.functional as F
from torch import nn

from autosam.sam.sizing import encoder_input_size, median_slice_size
from autosam.method import Method, MethodContext, StepResult

from .inference import predict_volume_middle_out
from .loss import SAutoMedLoss
from .network import ArchitectureConfig, SAutoMedNet
from .options import SAutoMedOptions

logger = logging.getLogger(__name__)


def build_sautomed_network(opts: SAutoMedOptions, num_classes: int, slice_size: list[int] | None = None,
                           configuration=None, weights_follow: bool = False) -> SAutoMedNet:
    """Backbone (+ LoRA on q, v; everything else in the encoder and prompt encoder frozen) and the
    new modules. ``configuration`` supplies defaults for ``slice_size``/``input_size``.
    ``weights_follow``: a trained checkpoint will be loaded into the network, so a missing SAM
    checkpoint file is no error (the backbone's weights are part of the trained checkpoint)."""
    from autosam.plugins import get_backbone
    from autosam.sam.backbones import build_backbone
    from autosam.sam.lora import apply_lora

    spec = get_backbone(opts.backbone)
    if spec.dims != 2:
        raise ValueError(f"sautomed needs a 2D SAM backbone; {opts.backbone!r} is {spec.dims}D")
    if slice_size is None:
        slice_size = opts.slice_size or (median_slice_size(configuration) if configuration is not None else None)
    input_size = opts.input_size or (encoder_input_size(slice_size, spec) if slice_size else None)
    backbone = build_backbone(opts.backbone, input_size=input_size, checkpoint=opts.sam_checkpoint,
                              allow_random_init=opts.allow_random_init or weights_follow)
    for p in backbone.parameters():
        p.requires_grad_(False)
    if opts.lora_rank > 0:
        apply_lora(backbone.image_encoder, rank=opts.lora_rank, alpha=opts.lora_alpha)
    cfg = ArchitectureConfig(
        num_classes=num_classes, history_tokens=opts.history_tokens, use_history=opts.use_history,
        use_inter_slice=opts.use_inter_slice, use_intra_slice=opts.use_intra_slice,
        use_box_generator=opts.use_box_generator, order=opts.order, local_heads=opts.attention_heads,
        generator_layers=opts.generator_layers, encode_batch=opts.encode_batch,
    )
    net = SAutoMedNet(backbone, cfg)
    for p in net.decoder.parameters():
        p.requires_grad_(True)
    if not opts.train_decoder:
        for module in (net.decoder.transformer, net.decoder.output_upscaling):
            for p in module.parameters():
                p.requires_grad_(False)
    return net


def parameter_counts(module: nn.Module) -> tuple[int, int]:
    from autosam.sam.lora import count_parameters

    return count_parameters(module)


class SAutoMedMethod(Method):
    name = "sautomed"
    description = ("3D-SAutoMed (Liang et al., MICCAI 2024): LoRA-tuned 2D SAM + inter/intra-slice attention, "
                   "historical slice tokens, box prompt generator, middle-out slice order")
    configurations = ("3d",)
    Options = SAutoMedOptions
    # a validation step segments the whole 9-slice patch in both directions: ~1.2 training steps of
    # CPU time on the hippocampus cases, so nnU-Net's fifth would add ~23 % to every epoch (~6 % now)
    per_epoch_validation_fraction = 0.05
    # the Box Prompt Generator's boxes can come from the user (README, "Prompts")
    prompt_kinds = frozenset({"box3d", "box2d"})

    # ------------------------------------------------------------------ sizes
    def slice_size(self, ctx: MethodContext) -> list[int]:
        return list(ctx.options.slice_size or median_slice_size(ctx.configuration))

    def train_patch_size(self, ctx: MethodContext) -> list[int]:
        """``2 * (max_context + 1) + 1`` slices: the loss slice sits at the centre (where the
        foreground-oversampled patches put their foreground voxel) with room for 3 preceding
        slices, their look-back neighbour and the look-ahead neighbour."""
        z = 2 * (ctx.options.max_context_slices + 1) + 1
        return [z, *self.slice_size(ctx)]

    # ------------------------------------------------------------------ building
    def build_network(self, ctx: MethodContext) -> nn.Module:
        opts = ctx.options
        if not 1 <= opts.min_context_slices <= opts.max_context_slices:
            raise ValueError("sautomed: need 1 <= min_context_slices <= max_context_slices")
        # outside training (no fold folder) the caller loads a trained checkpoint that holds the
        # backbone weights too, so predicting does not need the SAM checkpoint file any more
        net = build_sautomed_network(opts, ctx.num_classes, self.slice_size(ctx),
                                     weights_follow=ctx.output_folder is None and not ctx.extra.get("training"))
        from autosam.sam.intensity import method_window

        net.backbone.intensity_window = method_window(ctx, opts.window)  # CT: soft tissue, as MedSAM saw it
        trainable, total = parameter_counts(net)
        logger.info("sautomed: backbone %s, input %d, slices %s; trainable parameters %d of %d (%.2f%%)",
                    opts.backbone, net.backbone.input_size, self.slice_size(ctx), trainable, total,
                    100.0 * trainable / max(total, 1))
        ctx.extra["parameters"] = {"trainable": trainable, "total": total}
        return net.to(ctx.device)

    def build_loss(self, ctx: MethodContext):
        o = ctx.options
        return SAutoMedLoss(ctx.num_classes, box_l1_weight=o.box_l1_weight, box_giou_weight=o.box_giou_weight)

    def configure_optimizers(self, network: nn.Module, ctx: MethodContext):
        o = ctx.options
        params = [p for p in network.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        if o.lr_schedule == "constant":
            schedule = lambda epoch: 1.0  # noqa: E731
        elif o.lr_schedule == "poly":
            epochs = max(int(ctx.num_epochs), 1)
            schedule = lambda epoch: (1 - min(epoch, epochs - 1) / epochs) ** 0.9  # noqa: E731
        else:
            raise ValueError(f"sautomed: lr_schedule must be 'constant' or 'poly', got {o.lr_schedule!r}")
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    # ------------------------------------------------------------------ training
    def train_step(self, network: nn.Module, batch: dict, loss_fn, ctx: MethodContext) -> StepResult:
        """Pick ``n`` in [min, max] context slices; run slices ``t-n .. t`` in iteration order
        (each with its neighbours), building history tokens and previous boxes with gradients
        flowing through them; the loss is CE + Dice averaged over the visited slices (slice ``t``
        only with ``context_seg_loss=False``) plus L1 + GIoU on the generator's boxes of every
        visited slice."""
        o = ctx.options
        data, target = batch["data"], batch["target"]
        target = target[0] if isinstance(target, (list, tuple)) else target
        if network.cfg.order == "mid_to_ends" and random.random() < 0.5:
            # half of a middle-out pass runs towards the top: train both iteration directions
            data, target = data.flip(2), target.flip(2)
        n = random.randint(o.min_context_slices, o.max_context_slices)
        t = data.shape[2] // 2
        lo, hi = t - n - 1, t + 2  # look-back neighbour of the first visited slice .. look-ahead of t
        if lo < 0 or hi > data.shape[2]:
            raise ValueError(f"sautomed: patch of {data.shape[2]} slices is too short for {n} context slices")
        window, labels = data[:, :, lo:hi], target[:, 0, lo:hi]
        outs = network.run_sequence(window, first=1, stop=window.shape[2] - 1,
                                    encoder_grad_from=0 if o.context_encoder_grad else n)
        h, w = window.shape[-2:]
        supervised = outs if o.context_seg_loss else outs[-1:]
        seg_terms = [loss_fn.segmentation(F.interpolate(out.logits, size=(h, w), mode="bilinear", align_corners=False),
                                          labels[:, out.slice_index]) for out in supervised]
        loss = sum(t for t, _ in seg_terms) / len(seg_terms)
        logs = {k: sum(d[k] for _, d in seg_terms) / len(seg_terms) for k in seg_terms[-1][1]}
        if network.box_generator is not None:
            box_terms = [loss_fn.boxes(out.boxes, labels[:, out.slice_index]) for out in outs]
            box_loss = sum(b for b, _ in box_terms) / len(box_terms)
            loss = loss + box_loss
            logs.update({k: sum(d[k] for _, d in box_terms) / len(box_terms) for k in ("box_l1", "box_giou")})
        logs["context_slices"] = float(n)
        return StepResult(loss, logs)

    def validation_step(self, network: nn.Module, batch: dict, loss_fn, ctx: MethodContext) -> StepResult:
        """Segment the whole validation patch in the inference order (no labels used)."""
        target = batch["target"][0] if isinstance(batch["target"], (list, tuple)) else batch["target"]
        logits = network(batch["data"])
        return StepResult(loss_fn(logits, target), output=logits)

    # ------------------------------------------------------------------ inference
    def predict_logits(self, network: nn.Module, x: torch.Tensor, ctx: MethodContext) -> torch.Tensor:
        return network(x)

    def predict_volume(self, network: nn.Module, data: torch.Tensor, ctx: MethodContext, *,
                       use_mirroring: bool = True, progress: bool = False) -> torch.Tensor:
        """Whole volume, slice by slice from the middle outward (in-plane tiles of ``slice_size``
        when slices are larger); mirroring averages with the left-right flipped volume. Never
        reads a label."""
        return predict_volume_middle_out(network, data, self.slice_size(ctx), ctx.num_classes, ctx.device,
                                         tile_batch=ctx.options.tile_batch, use_mirroring=use_mirroring,
                                         progress=progress, step_size=ctx.step_size)

    # ------------------------------------------------------------------ prompts
    def encode_image(self, network: nn.Module, data: torch.Tensor, ctx: MethodContext):
        """Encoder features of every slice of every in-plane tile (the interactive cache)."""
        from .prompts import encode_tiles

        network.eval()
        return encode_tiles(network, data, self.slice_size(ctx), ctx.step_size, ctx.device)

    def predict_with_prompts(self, network: nn.Module, data: torch.Tensor, prompts, ctx: MethodContext, *,
                             cache=None, use_mirroring: bool = False) -> torch.Tensor:
        """User boxes steer the Box Prompt Generator (:mod:`.prompts`); never reads a label."""
        from autosam.prompts import check_prompt_kinds

        from .prompts import predict_with_boxes

        check_prompt_kinds(self.name, self.prompt_kinds, prompts)
        data = torch.as_tensor(data)
        for label, p in prompts.items():
            p.validate(data.shape[1:], label)
        if network.box_generator is None:
            raise ValueError("sautomed was trained without its Box Prompt Generator (--use-box-generator false): "
                             "it takes no box prompts")
        if cache is None or tuple(cache["shape"]) != tuple(data.shape[1:]):
            cache = self.encode_image(network, data, ctx)
        return predict_with_boxes(network, data, prompts, cache, ctx.num_classes, ctx.device,
                                  tile_batch=ctx.options.tile_batch, step_size=ctx.step_size)
