"""The ``masksam`` Method: builds :class:`MaskSAMNet`, its set loss, AdamW + poly, and semantic
inference inside the core's sliding window."""
from __future__ import annotations

import logging

import torch
from torch import nn

from autosam.sam.lora import count_parameters
from autosam.method import Method, MethodContext, StepResult

from .losses import MaskSAMLoss
from .model import MaskSAMNet, scores_to_log_probs, semantic_scores
from .options import MaskSAMOptions, default_input_size, default_patch

logger = logging.getLogger(__name__)


class MaskSAMMethod(Method):
    name = "masksam"
    description = ("MaskSAM (Xie et al. 2024): prompt-free SAM with a prompt generator, mask classification "
                   "(Hungarian matching) and 3D depth adapters")
    configurations = ("3d",)
    Options = MaskSAMOptions

    def patch(self, ctx: MethodContext) -> list[int]:
        o = ctx.options
        return list(o.patch_size) if o.patch_size else default_patch(ctx.configuration)

    def train_patch_size(self, ctx: MethodContext) -> list[int]:
        return self.patch(ctx)

    def input_size(self, ctx: MethodContext) -> int:
        if ctx.options.input_size:
            return int(ctx.options.input_size)
        from autosam.plugins import get_backbone

        return default_input_size(self.patch(ctx), get_backbone(ctx.options.backbone))

    def build_network(self, ctx: MethodContext) -> nn.Module:
        from autosam.sam.backbones import build_backbone

        o = ctx.options
        k = ctx.num_classes - 1
        if o.num_queries <= k:
            logger.warning("masksam: num_queries=%d does not exceed the %d foreground classes; a slice with all "
                           "classes cannot be matched completely", o.num_queries, k)
        size = self.input_size(ctx)
        backbone = build_backbone(o.backbone, input_size=size, checkpoint=o.sam_checkpoint,
                                  allow_random_init=o.allow_random_init)
        t = self.patch(ctx)[0]
        net = MaskSAMNet(backbone, ctx.num_input_channels, k, depth=t, num_queries=o.num_queries, input_size=size,
                         prompt_mode=o.prompt_mode, adapter=o.adapter, dconv=o.dconv, depth_pe=o.depth_pe,
                         pg_width=o.generator_width, zero_init=o.zero_init_adapters,
                         stem_residual=o.stem_residual)
        from autosam.sam.intensity import method_window

        net.encoder.intensity_window = method_window(ctx, o.window)  # CT: soft tissue, as MedSAM saw it
        trainable, total = count_parameters(net)
        logger.info("masksam: backbone %s at %dx%d, patch %s, %d queries; parameters: %.2fM trainable of %.2fM total",
                    o.backbone, size, size, self.patch(ctx), o.num_queries, trainable / 1e6, total / 1e6)
        ctx.extra["parameters"] = {"trainable": trainable, "total": total}
        return net.to(ctx.device)

    def build_loss(self, ctx: MethodContext):
        return MaskSAMLoss(ctx.num_classes - 1, no_object_weight=ctx.options.no_object_weight,
                           cost_size=ctx.options.cost_size).to(ctx.device)

    def configure_optimizers(self, network: nn.Module, ctx: MethodContext):
        o = ctx.options
        params = [p for p in network.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        epochs = max(1, int(ctx.num_epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda e: max(0.0, 1 - min(e, epochs) / epochs) ** o.poly_exponent)
        return opt, sched

    def train_step(self, network: nn.Module, batch: dict, loss_fn, ctx: MethodContext) -> StepResult:
        target = batch["target"]
        if isinstance(target, (list, tuple)):
            target = target[0]
        out = network(batch["data"])
        loss, logs = loss_fn(out, target)
        return StepResult(loss, logs)

    def validation_step(self, network: nn.Module, batch: dict, loss_fn, ctx: MethodContext) -> StepResult:
        target = batch["target"]
        if isinstance(target, (list, tuple)):
            target = target[0]
        x = batch["data"]
        out = network(x)
        loss, logs = loss_fn(out, target)
        return StepResult(loss, logs, output=scores_to_log_probs(semantic_scores(out, tuple(x.shape[-2:]))))

    def predict_logits(self, network: nn.Module, x: torch.Tensor, ctx: MethodContext) -> torch.Tensor:
        """Log-probabilities (B x (K+1) x T x H x W) of background + K classes from the semantic
        scores ``sum_q softmax(class_q)[:K] sigmoid(mask_q)`` (see :func:`scores_to_log_probs`);
        the sliding window's softmax of their weighted average is a normalised geometric mean."""
        out = network(x)
        return scores_to_log_probs(semantic_scores(out, tuple(x.shape[-2:])))
