"""The ``unet`` method: nnU-Net's PlainConvUNet baseline, configured entirely from the plans.

Network: :class:`dynamic_network_architectures.architectures.unet.PlainConvUNet` with the topology
the planner wrote to ``plans.configurations[c].network`` (instance norm, leaky ReLU, He init),
deep supervision; loss: soft Dice + cross-entropy, weighted over the deep-supervision outputs (for
region-based datasets one sigmoid output per region with BCE + Dice; voxels of an ``ignore`` label
masked out of both terms);
optimiser: SGD (Nesterov, momentum 0.99, lr 1e-2, weight decay 3e-5) with the poly schedule
``lr * (1 - epoch / epochs) ** 0.9``; gradient clipping at 12 (done by the core). Runs shorter than
:data:`SGD_MIN_ITERATIONS` iterations use AdamW instead (``optimizer="auto"``, see the README:
SGD with momentum 0.99 sits on the all-background plateau for the first few hundred iterations).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from autosam import hookimpl
from autosam.method import Method, MethodContext
from autosam_plugins.unet.loss import DeepSupervisionLoss, DiceCELoss

logger = logging.getLogger(__name__)

# ``optimizer="auto"``: nnU-Net's SGD for runs of at least this many iterations (10 nnU-Net epochs),
# AdamW below. Measured on the organs example (plugins/unet/README.md): SGD with momentum 0.99 still
# predicted only background after 125 iterations; AdamW at 3e-3 reached liver Dice 0.85 after 40.
SGD_MIN_ITERATIONS = 2500
OPTIMIZERS = ("auto", "sgd", "adamw")


@dataclass
class UNetOptions:
    optimizer: str = "auto"  # "sgd" (nnU-Net), "adamw", or "auto": sgd for runs >= SGD_MIN_ITERATIONS iterations
    lr: float = 1e-2  # SGD's initial learning rate
    adamw_lr: float = 3e-3  # AdamW's initial learning rate
    weight_decay: float = 3e-5
    momentum: float = 0.99
    nesterov: bool = True
    poly_exponent: float = 0.9
    grad_clip: float = 12.0  # the core clips the gradient norm to this (0 or less: no clipping)
    deep_supervision: bool = True
    batch_dice: bool = False  # Dice over the whole batch (one per class) instead of per sample
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    # torch.compile the network: None = on CUDA (nnU-Net compiles by default), never on CPU/MPS;
    # compiler errors fall back to eager execution with a warning
    compile: bool | None = None
    # CPU prediction: "jit" = TorchScript trace + freeze + optimize_for_inference (5-20% less time
    # per patch than eager, measured; falls back to eager if tracing fails), "eager" = the plain module
    cpu_inference: str = "jit"


class UNetMethod(Method):
    name = "unet"
    description = "nnU-Net baseline: PlainConvUNet from the plans, Dice+CE, deep supervision, SGD + poly"
    configurations = ("2d", "3d", "3d_lowres")
    Options = UNetOptions
    supports_regions = True  # one sigmoid output per region, BCE + soft Dice per region
    supports_ignore_label = True  # ignored voxels are masked out of CE/BCE and Dice

    # ------------------------------------------------------------------ network
    def build_network(self, ctx: MethodContext) -> nn.Module:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet

        topo = ctx.configuration.network
        if topo is None:
            raise ValueError(
                f"plans {ctx.plans.plans_name!r}, configuration {ctx.configuration.name!r}: no network topology; "
                "re-plan the dataset with a planner that writes one (autosam_plan_experiment)"
            )
        dim = len(ctx.configuration.patch_size)
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
        net = PlainConvUNet(
            input_channels=ctx.num_input_channels,
            n_stages=topo.n_stages,
            features_per_stage=list(topo.features_per_stage),
            conv_op=conv,
            kernel_sizes=[list(k) for k in topo.kernel_sizes],
            strides=[list(s) for s in topo.strides],
            n_conv_per_stage=list(topo.n_conv_per_stage_encoder),
            num_classes=ctx.num_classes,
            n_conv_per_stage_decoder=list(topo.n_conv_per_stage_decoder),
            conv_bias=True,
            norm_op=norm,
            norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=nn.LeakyReLU,
            nonlin_kwargs={"inplace": True},
            deep_supervision=ctx.options.deep_supervision,
        )
        net.apply(PlainConvUNet.initialize)
        want = ctx.device.type == "cuda" if ctx.options.compile is None else ctx.options.compile
        if want:
            if ctx.device.type == "cuda":
                from autosam.training.run_support import compile_network

                logger.info("unet: compiling the network with torch.compile")
                net = compile_network(net)
            else:
                logger.warning("unet: --compile ignored on %s (torch.compile is used on CUDA only)", ctx.device.type)
        return net

    def predict_volume(self, network: nn.Module, data: torch.Tensor, ctx: MethodContext, *, use_mirroring: bool = True,
                       progress: bool = False) -> torch.Tensor:
        """Sliding window over the whole volume, as nnU-Net: the deep-supervision heads are switched
        off while predicting (only the full-resolution output is used), and on the CPU the network
        runs as a frozen TorchScript graph (``cpu_inference="jit"``) with one mirrored copy per call
        (the graph is traced for batch 1; benchmarks/speed/bench_predict_stages.py), or eagerly under
        the caller's bf16 autocast with ``ctx.cpu_bf16``."""
        from autosam.inference.cpu_inference import frozen_cpu_forward
        from autosam.inference.sliding_window import sliding_window_predict

        if ctx.options.cpu_inference not in ("jit", "eager"):
            raise ValueError(f"unet option cpu_inference must be 'jit' or 'eager', got {ctx.options.cpu_inference!r}")
        patch = self.train_patch_size(ctx)
        decoder = getattr(network, "decoder", None)
        had_ds = getattr(decoder, "deep_supervision", None)
        if had_ds:
            decoder.deep_supervision = False
        try:
            forward = None
            if ctx.device.type == "cpu" and ctx.options.cpu_inference == "jit" and not ctx.cpu_bf16:
                forward = frozen_cpu_forward(network, (1, ctx.num_input_channels, *patch))
            if forward is None:
                forward = lambda x: self.predict_logits(network, x, ctx)  # noqa: E731
            return sliding_window_predict(forward, data, patch_size=patch, num_classes=ctx.num_classes, device=ctx.device,
                                          use_mirroring=use_mirroring, progress=progress, mirror_batch=1,
                                          step_size=ctx.step_size,
                                          activation="sigmoid" if ctx.label_manager.has_regions else "softmax")
        finally:
            if had_ds:
                decoder.deep_supervision = True

    def deep_supervision_scales(self, ctx: MethodContext) -> list[list[float]] | None:
        if not ctx.options.deep_supervision:
            return None
        strides = np.array(ctx.configuration.network.strides, dtype=float)
        scales = 1 / np.cumprod(strides, axis=0)
        return [list(map(float, s)) for s in scales[:-1]]  # one per decoder output, full resolution first

    def build_loss(self, ctx: MethodContext) -> nn.Module:
        opts = ctx.options
        scales = self.deep_supervision_scales(ctx)
        labels = ctx.label_manager
        from autosam.training.distributed import is_initialized

        # under DDP (also a process group of one rank, --ddp) every output stays in the graph
        ddp = ctx.world_size > 1 or is_initialized()
        base = DiceCELoss(opts.dice_weight, opts.ce_weight, opts.batch_dice, regions=labels.foreground_regions,
                          ignore_label=labels.ignore_label, distributed=ddp)
        return DeepSupervisionLoss(base, len(scales) if scales else 1, distributed=ddp)

    @staticmethod
    def resolve_optimizer(ctx: MethodContext) -> str:
        """``sgd`` or ``adamw``: the option, or for ``auto`` by the run's total number of iterations."""
        choice = str(ctx.options.optimizer).lower()
        if choice not in OPTIMIZERS:
            raise ValueError(f"unet: optimizer {ctx.options.optimizer!r}; expected one of {list(OPTIMIZERS)}")
        if choice != "auto":
            return choice
        total = max(1, ctx.num_epochs) * max(1, ctx.iterations_per_epoch)
        return "sgd" if total >= SGD_MIN_ITERATIONS else "adamw"

    def configure_optimizers(self, network: nn.Module, ctx: MethodContext):
        opts = ctx.options
        kind = self.resolve_optimizer(ctx)
        if kind == "sgd":
            optimizer = torch.optim.SGD(network.parameters(), lr=opts.lr, momentum=opts.momentum,
                                        weight_decay=opts.weight_decay, nesterov=opts.nesterov)
        else:
            optimizer = torch.optim.AdamW(network.parameters(), lr=opts.adamw_lr, weight_decay=opts.weight_decay)
        if opts.optimizer == "auto":
            total = ctx.num_epochs * ctx.iterations_per_epoch
            logger.info("unet: optimizer %s (auto: %d iterations %s %d; nnU-Net's SGD needs long runs)", kind, total,
                        ">=" if kind == "sgd" else "<", SGD_MIN_ITERATIONS)
        epochs, exponent = max(1, ctx.num_epochs), opts.poly_exponent
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: max(0.0, 1 - min(e, epochs) / epochs) ** exponent
        )
        return optimizer, scheduler


@hookimpl
def register_methods(register):
    register(UNetMethod())


@hookimpl
def plan_method_section(method_name, configuration_name, configuration, fingerprint, dataset_json):
    if method_name != "unet":
        return None
    # nnU-Net uses batch Dice for 3D configurations, where batches are small and samples alike
    return {"deep_supervision": True, "batch_dice": configuration_name != "2d"}


@hookimpl
def method_suitability(fingerprint, dataset_json):
    return [("unet", 0.5, "baseline: nnU-Net's self-configuring UNet, robust on any dataset")]
