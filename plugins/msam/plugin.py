"""``msam``: M-SAM (3D SAM + LoRA + Mask-Enhanced Adapter + iterative refinement) as an autosam method plugin."""
from __future__ import annotations

import logging

import numpy as np
import torch

from autosam import hookimpl
from autosam.sam.lora import count_parameters
from autosam.method import Method, MethodContext, StepResult

from .network import MSamNetwork
from .options import MSamOptions
from .refinement import dice_ce_loss, refine_with_clicks

logger = logging.getLogger(__name__)

#: cube side of the encoder input the planner records per 3D backbone
PLANNED_INPUT_SIZE = {"sam_med3d": 128, "tiny3d": 32}


def is_pretrained(backbone) -> bool:
    """Whether the backbone carries real weights (a checkpoint, or weights shipped with a package)."""
    return bool(getattr(backbone, "checkpoint_path", None)) or bool(getattr(backbone.spec, "pretrained_builtin", False))


class MSam(Method):
    name = "msam"
    description = "M-SAM: 3D SAM (SAM-Med3D) with LoRA, Mask-Enhanced Adapter and iterative mask refinement (Shi et al.)"
    configurations = ("3d",)
    Options = MSamOptions
    # a training step leaves trainable parameters without gradient (SAM's IoU prediction head is not
    # in the loss; the prompt encoder's no-mask embedding is unused once a mask prompt is fed back),
    # and random click steps change the set: DDP must look for unused parameters
    ddp_find_unused_parameters = True
    # the paper's interactive refinement: clicks and the previous mask (README, "Prompts")
    prompt_kinds = frozenset({"points", "mask"})

    def input_size(self, ctx: MethodContext) -> int:
        o = ctx.options
        if o.input_size:
            return int(o.input_size)
        planned = (ctx.configuration.methods.get(self.name) or {}).get("input_size_by_backbone", PLANNED_INPUT_SIZE)
        return int(planned.get(o.backbone, PLANNED_INPUT_SIZE.get(o.backbone, 32)))

    def build_network(self, ctx: MethodContext) -> MSamNetwork:
        from autosam.sam.backbones import build_backbone

        o = ctx.options
        for name in ("train_iterations", "auto_iterations"):  # 0 steps would return the empty initial mask
            if int(getattr(o, name)) < 1:
                raise ValueError(f"msam: --{name.replace('_', '-')} must be at least 1 (one mask-decoder step; "
                                 f"1 = no mask-feedback refinement), got {getattr(o, name)}")
        backbone = build_backbone(o.backbone, input_size=self.input_size(ctx), checkpoint=o.sam_checkpoint,
                                  allow_random_init=o.allow_random_init)
        if backbone.dims != 3:
            raise ValueError(f"msam needs a 3D backbone (sam_med3d, tiny3d), got {o.backbone!r}")
        freeze = o.freeze_encoder if o.freeze_encoder is not None else is_pretrained(backbone)
        net = MSamNetwork(backbone, ctx.num_classes, lora_rank=o.lora_rank, use_mea=o.use_mea, mea_heads=o.mea_heads,
                          freeze_encoder=freeze, mea_zero_init=o.mea_zero_init)
        trainable, total = count_parameters(net)
        logger.info("msam: %s trainable of %s parameters (%.1f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
        return net

    def build_loss(self, ctx: MethodContext):
        o = ctx.options
        return lambda logits, target: dice_ce_loss(logits, target, o.w_dice, o.w_ce)

    def configure_optimizers(self, network: MSamNetwork, ctx: MethodContext):
        o = ctx.options
        dec = [p for n, p in network.named_parameters() if p.requires_grad and
               (n.startswith("backbone.prompt_encoder") or n.startswith("backbone.mask_decoder"))]
        dec_ids = {id(p) for p in dec}
        rest = [p for p in network.parameters() if p.requires_grad and id(p) not in dec_ids]
        opt = torch.optim.AdamW([{"params": rest, "lr": o.lr}, {"params": dec, "lr": self.decoder_lr(network, ctx)}],
                                weight_decay=o.weight_decay)
        miles = sorted({max(1, int(round(f * ctx.num_epochs))) for f in o.milestones})
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=miles, gamma=0.1)

    @staticmethod
    def decoder_lr(network: MSamNetwork, ctx: MethodContext) -> float:
        """The paper's 8e-5 protects *pretrained* prompt encoder / decoder weights; a randomly
        initialised backbone (``tiny3d``, ``--allow-random-init``) has nothing to protect."""
        o = ctx.options
        if o.decoder_lr is not None:
            return float(o.decoder_lr)
        return 8e-5 if is_pretrained(network.backbone) else float(o.lr)

    def make_train_loader(self, ctx: MethodContext, dataset, train_keys: list[str]):
        """The core's nnU-Net loader at the encoder cube, with M-SAM's batch size and a higher share
        of foreground-centred patches (the official code always crops around the label)."""
        from autosam.training.dataloading import default_num_workers, make_loader

        o = ctx.options
        bs = int(o.batch_size or ctx.configuration.batch_size)  # the global batch; under DDP each rank draws its share
        workers = ctx.extra.get("num_workers", default_num_workers())
        return make_loader(dataset, ctx.split_batch(bs), self.train_patch_size(ctx), None, train=True,
                           num_workers=workers, seed=ctx.loader_seed + 7919 * ctx.epoch,
                           oversample_foreground=ctx.foreground_fraction(bs, o.oversample_foreground))

    def train_patch_size(self, ctx: MethodContext) -> list[int]:
        return [self.input_size(ctx)] * 3

    def train_step(self, network: MSamNetwork, batch: dict, loss_fn, ctx: MethodContext) -> StepResult:
        x = batch["data"][:, :1]
        target = batch["target"]
        target = (target[0] if isinstance(target, (list, tuple)) else target)[:, 0]
        use_clicks = bool(np.random.random() < ctx.options.click_training_fraction)
        outs = refine_with_clicks(network, x, target, ctx.options.train_iterations, use_clicks=use_clicks)
        losses = [loss_fn(o, target) for o in outs]
        return StepResult(torch.stack(losses).sum(), {"loss_last_iteration": losses[-1].detach()})

    def validation_step(self, network: MSamNetwork, batch: dict, loss_fn, ctx: MethodContext) -> StepResult:
        target = batch["target"]
        target = (target[0] if isinstance(target, (list, tuple)) else target)[:, 0]
        logits = network(batch["data"][:, :1], iterations=ctx.options.auto_iterations)
        return StepResult(loss_fn(logits, target), output=logits)

    def predict_logits(self, network: MSamNetwork, x: torch.Tensor, ctx: MethodContext) -> torch.Tensor:
        """Automatic mode: no clicks, no label, refinement by mask feedback alone."""
        return network(x[:, :1], iterations=ctx.options.auto_iterations)

    # ------------------------------------------------------------------ prompts
    def encode_image(self, network: MSamNetwork, data: torch.Tensor, ctx: MethodContext):
        """Every sliding window's image embedding (the interactive cache: a click is then decoder passes only)."""
        from .prompts import encode_windows

        network.eval()
        return encode_windows(network, data, self.train_patch_size(ctx), ctx.step_size, ctx.device)

    def predict_with_prompts(self, network: MSamNetwork, data: torch.Tensor, prompts, ctx: MethodContext, *,
                             cache=None, use_mirroring: bool = False) -> torch.Tensor:
        """Clicks (class-agnostic, as trained) and each label's previous mask drive the refinement in
        every window (:mod:`.prompts`); no label is read."""
        from autosam.prompts import check_prompt_kinds

        from .prompts import predict_windows

        check_prompt_kinds(self.name, self.prompt_kinds, prompts)
        data = torch.as_tensor(data)
        for label, p in prompts.items():
            p.validate(data.shape[1:], label)
        if cache is None or tuple(cache["shape"]) != tuple(data.shape[1:]):
            cache = self.encode_image(network, data, ctx)
        network.eval()
        return predict_windows(network, cache, prompts, ctx.num_classes, ctx.options.auto_iterations, ctx.device)

    # ------------------------------------------------------------------ label-reading evaluation mode
    @torch.no_grad()
    def predict_with_simulated_clicks(self, network: MSamNetwork, data: torch.Tensor, label: torch.Tensor, ctx: MethodContext,
                                      iterations: int = 10, use_mirroring: bool = False) -> torch.Tensor:
        """The paper's protocol (``simulated_clicks`` mode): in every window, ``iterations`` refinement
        steps with one click per step drawn from the *label* (first from the foreground, then from the
        error region). Reads the label, so its results must never be reported as automatic ones."""
        from autosam.inference.sliding_window import sliding_window_predict

        stacked = torch.cat([torch.as_tensor(data)[:1].float(), torch.as_tensor(label).float().reshape(1, *data.shape[1:])])

        def logits_fn(x):
            img, lab = x[:, :1], x[:, 1].round().long()
            return refine_with_clicks(network, img, lab, iterations, use_clicks=True)[-1]

        return sliding_window_predict(logits_fn, stacked, patch_size=self.train_patch_size(ctx), num_classes=ctx.num_classes,
                                      device=ctx.device, use_mirroring=use_mirroring)


@hookimpl
def register_methods(register):
    register(MSam())


@hookimpl
def plan_method_section(method_name, configuration_name, configuration):
    if method_name != "msam" or configuration_name != "3d":
        return None
    return {"input_size_by_backbone": dict(PLANNED_INPUT_SIZE)}


@hookimpl
def method_suitability(fingerprint):
    """Lesion-like datasets (many small components per case) -> M-SAM."""
    stats = list(fingerprint.class_statistics.values())
    if not stats:
        return None
    comps = max(s.components_per_case for s in stats)
    frac = max(s.volume_fraction for s in stats)
    if comps >= 3 and frac < 0.01:
        return [("msam", 0.9, f"lesion-like: up to {comps:g} components per case, largest class {100 * frac:.2f}% of the volume")]
    return [("msam", 0.1, "not lesion-like (few or large components)")]
