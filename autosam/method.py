"""The trainer contract a method plugin fulfils.

A method plugin registers an instance of a :class:`Method` subclass through the
``register_methods`` hook. The *core* owns the training loop, data loading, checkpoints, logging,
validation and export; the method provides:

- ``name``, ``configurations`` (which plans configurations it supports), ``description``;
- ``Options``: a dataclass of its hyperparameters. Values come, in increasing priority, from the
  dataclass defaults, the method's section in the plans (``plan_method_section`` hook), and
  command-line flags (``autosam_train ... --backbone litemedsam --lr 3e-4``). Never subclass to
  change a number;
- :meth:`build_network`, :meth:`build_loss`, :meth:`configure_optimizers`, :meth:`train_step`;
- :meth:`predict_volume` (default: sliding window with Gaussian weighting and mirroring around
  :meth:`predict_logits`).

Everything a method needs from the core arrives in a :class:`MethodContext`, including where the
process stands in a distributed (DDP) run: ``rank``, ``world_size``, ``is_main_process``, the
share of the plans' batch this rank draws (``rank_batch_size``) and its own ``loader_seed``.

This module sits below training and inference (both import it); ``autosam.training.method``
re-exports it for code written against the former location.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from autosam.experiment_planning.plans import ConfigurationPlan, Plans


#: Distance between the data-loader seeds of consecutive ranks (a prime far above 7919 x epochs).
RANK_SEED_STRIDE = 1_000_003


def rank_batch_sizes(global_batch_size: int, world_size: int) -> list[int]:
    """The per-rank batch sizes of a global batch, as nnU-Net splits it: ``global // world`` each,
    the remainder to the first ranks, at least 1 each (a global batch smaller than the number of
    ranks grows to one sample per rank)."""
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    base, extra = divmod(int(global_batch_size), world_size)
    return [max(1, base + (1 if r < extra else 0)) for r in range(world_size)]


def rank_foreground_fraction(global_batch_size: int, world_size: int, rank: int, fraction: float) -> float:
    """Oversampling fraction of ``rank``'s loader. A single process forces foreground in the last
    ``B - round(B * (1 - fraction))`` samples of a batch of ``B``; split across ranks, the samples
    of the global batch with those indices fall to the last ranks, and each rank forces exactly
    its share (nnU-Net's DDP does the same)."""
    sizes = rank_batch_sizes(global_batch_size, world_size)
    total = sum(sizes)
    first_forced = round(total * (1 - fraction))
    start = sum(sizes[:rank])
    forced = max(0, min(sizes[rank], start + sizes[rank] - max(first_forced, start)))
    return forced / sizes[rank]


@dataclass
class MethodContext:
    """What the core hands to a method."""

    plans: Plans
    configuration: ConfigurationPlan
    dataset_json: dict
    options: Any  # an instance of the method's Options dataclass
    device: torch.device
    num_input_channels: int
    num_classes: int  # network outputs: classes incl. background (not ignore), or one per foreground region
    num_epochs: int = 1
    iterations_per_epoch: int = 1
    fold: int | str = 0
    output_folder: Any = None  # pathlib.Path of fold_N (None outside training)
    extra: dict = field(default_factory=dict)
    epoch: int = 0  # the epoch being trained (0-based); the core updates it before each epoch
    seed: int = 0  # the run's seed (``--seed``)
    # Sliding-window step as a fraction of the patch (``-step_size``; 0.5 = nnU-Net's default). Methods
    # that predict with overlapping windows or tiles use it; smaller is slower and smoother.
    step_size: float = 0.5
    # Prediction on the CPU under bfloat16 autocast (``--bf16``; ``--fast`` on a CPU with native bf16).
    # Methods with a float32 CPU path of their own (unet's frozen TorchScript graph) use the eager
    # network then.
    cpu_bf16: bool = False
    # Distributed training (torch.distributed, one process per GPU): this process's rank among
    # ``world_size`` processes. A single-process run is rank 0 of 1.
    rank: int = 0
    world_size: int = 1

    @property
    def is_main_process(self) -> bool:
        """True on rank 0, the only process that writes files (logs, checkpoints, reports)."""
        return self.rank == 0

    @property
    def rank_batch_size(self) -> int:
        """This rank's share of the plans' batch size: the plans' batch is the *global* batch,
        split across the ranks as nnU-Net does (:func:`rank_batch_sizes`)."""
        return self.split_batch(self.configuration.batch_size)

    def split_batch(self, global_batch_size: int) -> int:
        """This rank's share of a global batch size (for a method's own batch-size option)."""
        return rank_batch_sizes(global_batch_size, self.world_size)[self.rank]

    def foreground_fraction(self, global_batch_size: int, fraction: float) -> float:
        """The foreground-oversampling fraction for this rank's loader such that the global batch
        has as many foreground-centred samples as a single process would draw (:func:`rank_foreground_fraction`)."""
        return rank_foreground_fraction(global_batch_size, self.world_size, self.rank, fraction)

    @property
    def loader_seed(self) -> int:
        """Seed of this rank's training data loader: ``seed`` on rank 0 (a single-process run is
        unchanged), another per rank, so that the ranks draw different samples."""
        return self.seed + RANK_SEED_STRIDE * self.rank

    @property
    def patch_size(self) -> list[int]:
        return list(self.configuration.patch_size)

    @property
    def label_manager(self):
        """The plans' :class:`~autosam.io.labels.LabelManager` (classes or regions, ignore label)."""
        return self.plans.label_manager


@dataclass
class StepResult:
    """What one training step returns: the loss to back-propagate and scalars to log."""

    loss: torch.Tensor
    #: Scalars of the step: floats or 0-dim tensors; detached tensors (``loss.detach()``) cost no
    #: host synchronisation per step on a GPU, ``float(...)`` does.
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)
    #: Logits (B x K x *patch) of the batch; set by :meth:`Method.validation_step` so that the
    #: core can compute the pseudo Dice. ``None`` in training steps is fine.
    output: torch.Tensor | None = None


class Method:
    """Base class of method plugins. Subclasses set the class attributes and override hooks."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    configurations: ClassVar[tuple[str, ...]] = ("3d",)
    Options: ClassVar[type] = dataclass(type("EmptyOptions", (), {}))
    # False when validation_step yields no patch segmentation (the pseudo Dice means nothing) or
    # when after_training completes the network (e.g. support prototypes): the core then writes
    # checkpoint_best.pth once, after training, from the final network instead of per epoch.
    per_epoch_metric: ClassVar[bool] = True
    # Validation batches per epoch as a fraction of the training iterations (nnU-Net: 1/5, at least
    # one batch). A method whose validation step costs as much as a training step (it segments
    # whole patches slice by slice) may ask fewer, so that the per-epoch check does not dominate
    # a short run; the pseudo Dice is then noisier.
    per_epoch_validation_fraction: ClassVar[float] = 0.2
    # True when predict_volume takes ``boxes=`` (label -> list of [z0, y0, x0, z1, y1, x1] on the
    # preprocessed grid): box prompts given by the user (``autosam_predict --boxes-json``) replace
    # the method's own localisation.
    accepts_boxes: ClassVar[bool] = False
    # True when the method trains on region-based datasets (dataset.json labels that are lists):
    # one output channel per foreground region (``ctx.num_classes`` of them), sigmoid probabilities
    # from predict_volume, and a loss that builds region targets (``ctx.label_manager``).
    supports_regions: ClassVar[bool] = False
    # True when the method's loss leaves the voxels of the ``ignore`` label out (they carry the value
    # ``ctx.label_manager.ignore_label`` in the targets, one above the last class). A method that
    # does not declare it is refused on such datasets instead of learning ``ignore`` as a class.
    supports_ignore_label: ClassVar[bool] = False
    # Distributed training wraps a module whose forward runs train_step in DistributedDataParallel.
    # True when a training step may leave trainable parameters without gradient (a random branch
    # that skips a submodule, parameters outside the optimiser that still require grad): DDP then
    # searches the graph for unused parameters each step (slower). False lets DDP fail loudly
    # ("Expected to have finished reduction in the prior iteration") on such a method.
    ddp_find_unused_parameters: ClassVar[bool] = False
    # The prompt kinds :meth:`predict_with_prompts` takes, a subset of ``autosam.prompts.PROMPT_KINDS``
    # ("box3d", "box2d", "points", "mask"). Empty: the method segments automatically only, and any
    # prompt is refused with a clear error. A method with ``accepts_boxes`` takes at least "box3d".
    prompt_kinds: ClassVar[frozenset[str]] = frozenset()

    # ------------------------------------------------------------------ options
    def make_options(self, plans_section: dict | None = None, overrides: dict | None = None):
        """Options from defaults <- plans section <- overrides (e.g. command-line flags)."""
        return build_options(self.Options, plans_section or {}, overrides or {}, self.name)

    # ------------------------------------------------------------------ training
    def build_network(self, ctx: MethodContext) -> nn.Module:
        raise NotImplementedError(f"method {self.name!r} must implement build_network")

    def build_loss(self, ctx: MethodContext):
        raise NotImplementedError(f"method {self.name!r} must implement build_loss")

    def configure_optimizers(self, network: nn.Module, ctx: MethodContext):
        """Return ``(optimizer, scheduler)``; the core calls ``scheduler.step()`` once per epoch."""
        raise NotImplementedError(f"method {self.name!r} must implement configure_optimizers")

    def train_patch_size(self, ctx: MethodContext) -> list[int]:
        """Spatial size of the training patches the core's data loader produces."""
        return ctx.patch_size

    def deep_supervision_scales(self, ctx: MethodContext) -> list[list[float]] | None:
        """Downsampling factors of the targets for deep supervision (None: one full-res target)."""
        return None

    def train_step(self, network: nn.Module, batch: dict, loss_fn, ctx: MethodContext) -> StepResult:
        """One forward pass on ``batch`` (``data``: B x C x *patch, ``target``: B x 1 x *patch or a
        list for deep supervision, already on ``ctx.device``). The core does backward, gradient
        clipping (``grad_clip`` option when present) and the optimiser step, under AMP on CUDA."""
        output = network(batch["data"])
        return StepResult(loss_fn(output, batch["target"]))

    def validation_step(self, network: nn.Module, batch: dict, loss_fn, ctx: MethodContext) -> StepResult:
        """One forward pass on a validation batch (same layout as :meth:`train_step`, no
        augmentation), called under ``torch.no_grad()``. Return the loss and ``output``: logits
        B x K x *patch at full resolution, from which the core computes the per-class pseudo Dice."""
        output = network(batch["data"])
        loss = loss_fn(output, batch["target"])
        logits = output[0] if isinstance(output, (list, tuple)) else output
        return StepResult(loss, output=logits)

    def on_epoch_end(self, network: nn.Module, ctx: MethodContext, logs: dict) -> None:
        """Called after each epoch's validation, with that epoch's logged values (read-only)."""

    def make_train_loader(self, ctx: MethodContext, dataset, train_keys: list[str]):
        """Return an iterable of batches, or None to use the core's nnU-Net-style loader."""
        return None

    def after_training(self, network: nn.Module, ctx: MethodContext, dataset, train_keys: list[str]) -> None:
        """Called once after the last epoch (e.g. to compute support embeddings)."""

    def validation_report(self, network: nn.Module, ctx: MethodContext, dataset, val_keys: list[str]) -> dict:
        """Optional method-specific figures about the validation cases (e.g. localisation quality),
        computed after the full-volume evaluation and stored in ``validation/summary.json`` under
        ``"method_report"``. Must be JSON-serialisable. Default: nothing (``{}``)."""
        return {}

    def extra_state(self) -> dict:
        """Extra state saved in checkpoints (restored by :meth:`load_extra_state`)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # ------------------------------------------------------------------ prompts
    def encode_image(self, network: nn.Module, data: torch.Tensor, ctx: MethodContext) -> Any:
        """Everything about one preprocessed image (C x Z x Y x X) that does not depend on the prompts
        (e.g. SAM's image embeddings), computed once per image and handed to every
        :meth:`predict_with_prompts` call of an interactive session, so that a click costs a decoder
        pass. Default: None (nothing to cache)."""
        return None

    def predict_with_prompts(self, network: nn.Module, data: torch.Tensor, prompts, ctx: MethodContext, *,
                             cache: Any = None, use_mirroring: bool = False) -> torch.Tensor:
        """Class probabilities (K x Z x Y x X, float32, CPU) of ``data`` given ``prompts`` (label value ->
        :class:`autosam.prompts.LabelPrompts`, on the preprocessed grid). ``cache``: what
        :meth:`encode_image` returned for this ``data`` (None: compute it). A method refuses the prompt
        kinds it does not declare in ``prompt_kinds``. Default: refuse every prompt, except 3D boxes
        for a method with ``accepts_boxes`` (passed to :meth:`predict_volume` as ``boxes=``)."""
        from autosam.prompts import check_prompt_kinds

        check_prompt_kinds(self.name, self.prompt_kinds | ({"box3d"} if self.accepts_boxes else set()), prompts)
        if self.accepts_boxes and all(p.kinds() <= {"box3d"} for p in prompts.values()):
            boxes = {int(lab): [list(b) for b in p.boxes3d] for lab, p in prompts.items() if p.boxes3d}
            return self.predict_volume(network, data, ctx, use_mirroring=use_mirroring, boxes=boxes)
        raise NotImplementedError(f"method {self.name!r} declares prompt kinds {sorted(self.prompt_kinds)} but does "
                                  f"not implement predict_with_prompts")

    # ------------------------------------------------------------------ inference
    def predict_logits(self, network: nn.Module, x: torch.Tensor, ctx: MethodContext) -> torch.Tensor:
        """Logits (B x K x *patch) for one batch of patches; deep-supervision lists give the first."""
        out = network(x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out

    def predict_volume(self, network: nn.Module, data: torch.Tensor, ctx: MethodContext, *, use_mirroring: bool = True,
                       progress: bool = False) -> torch.Tensor:
        """Class probabilities (K x Z x Y x X, float32, on the CPU) of a whole preprocessed volume
        ``data`` (C x Z x Y x X). Must never read a label."""
        from autosam.inference.sliding_window import sliding_window_predict

        return sliding_window_predict(
            lambda x: self.predict_logits(network, x, ctx),
            data,
            patch_size=self.train_patch_size(ctx),
            num_classes=ctx.num_classes,
            device=ctx.device,
            activation="sigmoid" if ctx.label_manager.has_regions else "softmax",
            use_mirroring=use_mirroring,
            progress=progress,
            step_size=ctx.step_size,
        )


def label_support_problem(method: "Method", label_manager, methods=None) -> str | None:
    """Why ``method`` cannot handle a dataset with these labels (None when it can). ``methods``: the
    plugin system's method registry, to list the methods that can."""
    wanted = []
    if label_manager.has_regions and not method.supports_regions:
        wanted.append(("supports_regions", "region-based labels (lists in dataset.json 'labels')"))
    if label_manager.has_ignore_label and not method.supports_ignore_label:
        wanted.append(("supports_ignore_label", f"an 'ignore' label (value {label_manager.ignore_label})"))
    if not wanted:
        return None
    if methods is None:
        from autosam.plugins import get_plugin_system

        methods = get_plugin_system().methods
    able = sorted(n for n in methods.names() if all(getattr(methods.get(n), attr, False) for attr, _ in wanted))
    return (f"method {method.name!r} does not support {' and '.join(what for _, what in wanted)}; "
            f"methods that do: {', '.join(able) or 'none installed'}")


def check_label_support(method: "Method", label_manager, where: str = "") -> None:
    """Raise ``ValueError`` when ``method`` cannot train or predict these labels."""
    problem = label_support_problem(method, label_manager)
    if problem:
        raise ValueError(f"{where}: {problem}" if where else problem)


def build_options(options_cls: type, plans_section: dict, overrides: dict, method_name: str = ""):
    """Instantiate an options dataclass, converting string overrides to the field types."""
    hints = typing.get_type_hints(options_cls)
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    values: dict[str, Any] = {}
    for source, mapping in (("plans", plans_section), ("command line", overrides)):
        for key, value in mapping.items():
            key = key.replace("-", "_")
            if key not in fields:
                if source == "plans":
                    continue  # plans may hold informational entries
                raise ValueError(
                    f"method {method_name!r} has no option {key!r}; options: "
                    + ", ".join(f"--{n.replace('_', '-')}" for n in fields)
                )
            values[key] = coerce(hints[key], value, key)
    return options_cls(**values)


def coerce(tp: Any, value: Any, key: str = "") -> Any:
    """Convert a string from the command line (or a JSON value) to the annotated type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        non_none = [a for a in args if a is not type(None)]
        return coerce(non_none[0], value, key)
    if not isinstance(value, str):
        if origin in (list, tuple) and isinstance(value, (list, tuple)):
            inner = args[0] if args else str
            return origin(coerce(inner, v, key) for v in value)
        return value
    try:
        if tp is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp in (int, float, str):
            return tp(value)
        if origin in (list, tuple):
            inner = args[0] if args else str
            return origin(coerce(inner, v, key) for v in value.replace(",", " ").split())
    except ValueError:
        raise ValueError(f"option --{key.replace('_', '-')}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None
    return value
