"""The ``promptunet`` method: ``unet``'s network, loss and optimiser, trained WITH simulated prompts.

The input is the image channels followed by four prompt channels per foreground class (box,
positive clicks, negative clicks, previous mask; :mod:`autosam_plugins.promptunet.encoding`).
Training draws prompts from each patch's labels (:mod:`autosam_plugins.promptunet.simulation`,
the nnInteractive recipe), a fifth of the samples without any, so the same network segments
automatically (every prompt channel 0) and refines what a user gives: a 3D box, the challenge's 2D
box with its z range, clicks, a previous mask. The output is ``unet``'s: a softmax over the classes.

Everything else (network from the plans, Dice + CE with deep supervision, AdamW/SGD + poly,
sliding-window prediction with the frozen CPU graph) is ``unet``'s code, reused by inheritance.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from autosam import hookimpl
from autosam.method import MethodContext, StepResult
from autosam.prompts import LabelPrompts, box2d_from_mask, check_prompt_kinds
from autosam_plugins.promptunet.encoding import num_prompt_channels, rasterise_prompts
from autosam_plugins.promptunet.simulation import SimulationConfig, mode_probabilities, simulate_prompts
from autosam_plugins.unet import plugin as unet_plugin
from autosam_plugins.unet.plugin import UNetMethod, UNetOptions

logger = logging.getLogger(__name__)

NAME = "promptunet"
#: validation policies of the pseudo Dice (``val_prompt``)
VAL_PROMPTS = ("box2d", "none")


@dataclass
class PromptUNetOptions(UNetOptions, SimulationConfig):
    # foreground classes with prompt channels (4 each); a dataset with more is refused
    max_prompt_classes: int = 16
    # the pseudo Dice's fixed prompt policy: "box2d" = the challenge's box of every class in the
    # patch, "none" = automatic
    val_prompt: str = "box2d"


class PromptUNetMethod(UNetMethod):
    name = NAME
    description = "unet trained with simulated prompts (boxes, 2D box + z range, clicks, previous mask; nnInteractive-style)"
    configurations = ("3d", "3d_lowres")
    Options = PromptUNetOptions
    supports_regions = False  # prompts name label values; region outputs would need another mapping
    supports_ignore_label = True  # unet's loss masks ignored voxels; no prompt is simulated on them
    prompt_kinds = frozenset({"box3d", "box2d", "points", "mask"})

    def __init__(self):
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple | None = None

    # ------------------------------------------------------------------ channels
    @staticmethod
    def num_foreground(ctx: MethodContext) -> int:
        return int(ctx.num_classes) - 1

    def network_context(self, ctx: MethodContext) -> MethodContext:
        """``ctx`` with the network's input channels (image + prompts), for unet's code."""
        nfg = self.num_foreground(ctx)
        if nfg > ctx.options.max_prompt_classes:
            raise ValueError(f"promptunet: the dataset has {nfg} foreground classes, more than max_prompt_classes="
                             f"{ctx.options.max_prompt_classes} (4 input channels each); raise it with "
                             f"--max_prompt_classes {nfg} or use another method")
        return dataclasses.replace(ctx, num_input_channels=ctx.num_input_channels + num_prompt_channels(nfg))

    def with_prompt_channels(self, data: torch.Tensor, prompts_per_sample, ctx: MethodContext) -> torch.Tensor:
        """``data`` (B x C x *S) with the rasterised prompts of each sample appended."""
        shape = tuple(data.shape[2:])
        chans = np.stack([rasterise_prompts(p, shape, self.num_foreground(ctx)) for p in prompts_per_sample])
        return torch.cat([data, torch.from_numpy(chans).to(device=data.device, dtype=data.dtype)], 1)

    # ------------------------------------------------------------------ training
    def build_network(self, ctx: MethodContext) -> nn.Module:
        if ctx.label_manager.has_regions:
            raise ValueError("promptunet does not train on region-based labels (use unet)")
        mode_probabilities(ctx.options)  # refuse bad weights before training starts
        if ctx.options.val_prompt not in VAL_PROMPTS:
            raise ValueError(f"promptunet: val_prompt {ctx.options.val_prompt!r}; expected one of {list(VAL_PROMPTS)}")
        return super().build_network(self.network_context(ctx))

    def _generator(self, ctx: MethodContext) -> np.random.Generator:
        """The simulation's random generator: one stream per rank, run seed and epoch (a resumed run
        draws new prompts, as the core's loader draws new patches)."""
        key = (ctx.loader_seed, ctx.epoch)
        if self._rng is None or self._rng_key != key:
            self._rng, self._rng_key = np.random.default_rng([abs(ctx.loader_seed), ctx.epoch, 7]), key
        return self._rng

    @staticmethod
    def _labels(batch: dict) -> np.ndarray:
        target = batch["target"][0] if isinstance(batch["target"], (list, tuple)) else batch["target"]
        return target[:, 0].detach().to("cpu").numpy()

    def simulated_prompts(self, batch: dict, ctx: MethodContext) -> list[dict[int, LabelPrompts]]:
        rng = self._generator(ctx)
        ignore = ctx.label_manager.ignore_label
        return [simulate_prompts(t, self.num_foreground(ctx), rng, ctx.options, ignore) for t in self._labels(batch)]

    def validation_prompts(self, batch: dict, ctx: MethodContext) -> list[dict[int, LabelPrompts]]:
        """The pseudo Dice's fixed policy: the challenge's box of every class in the patch, or none."""
        if ctx.options.val_prompt == "none":
            return [{} for _ in range(len(batch["data"]))]
        return [{c: LabelPrompts(box2d=box2d_from_mask(t == c)) for c in range(1, self.num_foreground(ctx) + 1)
                 if (t == c).any()} for t in self._labels(batch)]

    def train_step(self, network: nn.Module, batch: dict, loss_fn, ctx: MethodContext) -> StepResult:
        x = self.with_prompt_channels(batch["data"], self.simulated_prompts(batch, ctx), ctx)
        return StepResult(loss_fn(network(x), batch["target"]))

    def validation_step(self, network: nn.Module, batch: dict, loss_fn, ctx: MethodContext) -> StepResult:
        x = self.with_prompt_channels(batch["data"], self.validation_prompts(batch, ctx), ctx)
        return super().validation_step(network, {**batch, "data": x}, loss_fn, ctx)

    # ------------------------------------------------------------------ prediction
    def predict_volume(self, network: nn.Module, data: torch.Tensor, ctx: MethodContext, *, use_mirroring: bool = True,
                       progress: bool = False) -> torch.Tensor:
        """Automatic segmentation: every prompt channel is 0."""
        return self._predict(network, data, {}, ctx, use_mirroring=use_mirroring, progress=progress)

    def predict_with_prompts(self, network: nn.Module, data: torch.Tensor, prompts, ctx: MethodContext, *,
                             cache=None, use_mirroring: bool = False) -> torch.Tensor:
        """The prompts rasterised on the whole preprocessed volume, appended to the image, and unet's
        sliding window over the result (mirroring flips the prompt channels with the image). No
        image encoding is cached (``cache`` is unused): each call is a full network pass."""
        check_prompt_kinds(self.name, self.prompt_kinds, prompts)
        return self._predict(network, data, prompts, ctx, use_mirroring=use_mirroring, progress=False)

    def _predict(self, network, data, prompts, ctx, *, use_mirroring, progress) -> torch.Tensor:
        image = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(data))
        image = image.detach().to(device="cpu", dtype=torch.float32)
        chans = rasterise_prompts(prompts, tuple(image.shape[1:]), self.num_foreground(ctx))
        x = torch.cat([image, torch.from_numpy(chans)], 0)
        return super().predict_volume(network, x, self.network_context(ctx), use_mirroring=use_mirroring,
                                      progress=progress)


@hookimpl
def register_methods(register):
    register(PromptUNetMethod())


@hookimpl
def plan_method_section(method_name, configuration_name, configuration, fingerprint, dataset_json):
    if method_name != NAME or configuration_name == "2d":
        return None
    # unet's section (batch Dice for 3D): the same network and loss
    return unet_plugin.plan_method_section(method_name="unet", configuration_name=configuration_name,
                                           configuration=configuration, fingerprint=fingerprint,
                                           dataset_json=dataset_json)


@hookimpl
def method_suitability(fingerprint, dataset_json):
    # below unet's 0.5: without prompts it is unet trained on fewer automatic samples, and nothing
    # yet shows it segmenting better automatically (plugins/promptunet/README.md)
    return [(NAME, 0.4, "interactive: a unet trained with simulated boxes and clicks; unet stays the automatic "
                        "default")]
