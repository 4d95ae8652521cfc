"""``example_tiny``: a tiny fully convolutional network that fulfils the Method contract.

It is deliberately small (two 3x3(x3) convolutions and a 1x1(x1) classifier) so that it trains in
seconds on a CPU; it shows every part a method plugin provides, not a good segmentation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from autosam.training.method import Method, MethodContext


@dataclass
class ExampleTinyOptions:
    """Hyperparameters: defaults <- the plans section (``plan_method_section``) <- command-line flags."""

    features: int = 8
    learning_rate: float = 1e-2
    weight_decay: float = 3e-5


class ExampleTinyMethod(Method):
    name = "example_tiny"
    description = "tiny two-layer conv net (example plugin; for demonstrations and tests)"
    configurations = ("2d", "3d")
    Options = ExampleTinyOptions

    def build_network(self, ctx: MethodContext) -> nn.Module:
        conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if len(ctx.patch_size) == 3 else (nn.Conv2d, nn.InstanceNorm2d)
        f = ctx.options.features
        return nn.Sequential(
            conv(ctx.num_input_channels, f, 3, padding=1),
            norm(f, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            conv(f, f, 3, padding=1),
            norm(f, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            conv(f, ctx.num_classes, 1),
        )

    def build_loss(self, ctx: MethodContext):
        def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            # target: B x 1 x *patch label map; negative values (padding) count as background
            return F.cross_entropy(logits, target[:, 0].long().clamp_min(0))

        return loss

    def configure_optimizers(self, network: nn.Module, ctx: MethodContext):
        opt = torch.optim.AdamW(network.parameters(), lr=ctx.options.learning_rate, weight_decay=ctx.options.weight_decay)
        epochs = max(1, ctx.num_epochs)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: (1 - min(epoch, epochs - 1) / epochs) ** 0.9)
        return opt, schedule
