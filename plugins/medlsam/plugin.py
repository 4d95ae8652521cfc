"""``medlsam``: MedLSAM (MedLAM few-shot localiser + box-prompted SAM), as an autosam method plugin."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from autosam import hookimpl
from autosam.sam.intensity import method_window
from autosam.utils.files import write_json
from autosam.sam.lora import count_parameters
from autosam.method import Method, MethodContext, StepResult

from .localize import box_iou_3d, build_prototypes, extend_box, localize_boxes, union_box
from .localizer import mss_loss, rdr_pairs_loss
from .network import MedLSAMNetwork
from .options import MedLSAMOptions, box_margin_voxels, margin_voxels
from .sampling import canonical_flips, flip_volume, make_batch, to_coarse, unflip_box
from .segment import finetune_decoder, segment_boxes

logger = logging.getLogger(__name__)


class MedLSAM(Method):
    name = "medlsam"
    description = "MedLSAM: self-supervised MedLAM localiser + few-shot extreme points + box-prompted 2D SAM (Lei et al.)"
    configurations = ("3d",)
    Options = MedLSAMOptions
    # no patch segmentation during training, and the support prototypes exist only after it
    per_epoch_metric = False
    # the paper's "manual box" mode: autosam_predict --boxes-json skips the localiser
    accepts_boxes = True
    # user boxes replace the localiser: 3D boxes and the challenge's 2D box + z range (README, "Prompts")
    prompt_kinds = frozenset({"box3d", "box2d"})
    # training steps train the localiser only; with --finetune-sam the network also holds the SAM
    # decoder copy (fine-tuned after training), whose parameters get no gradient in a step
    ddp_find_unused_parameters = True

    # ------------------------------------------------------------------ build
    def build_network(self, ctx: MethodContext) -> MedLSAMNetwork:
        net = MedLSAMNetwork(ctx.options, ctx.num_input_channels, ctx.num_classes)
        backbone = self._backbone(ctx)
        if ctx.options.finetune_sam:
            import copy

            net.sam_mask_decoder = copy.deepcopy(backbone.mask_decoder)
        localiser, _ = count_parameters(net.localizer)
        decoder = count_parameters(net.sam_mask_decoder)[1] if net.sam_mask_decoder is not None else 0
        sam_total = count_parameters(backbone)[1]
        logger.info("medlsam: parameters: MedLAM localiser %s (trained, self-supervised)%s; SAM backbone %s: %s, frozen "
                    "%s; trainable %s of %s in total", f"{localiser:,}",
                    f", SAM mask decoder copy {decoder:,} (fine-tuned after training)" if decoder else "",
                    ctx.options.backbone, f"{sam_total:,}", "except the decoder copy" if decoder else "(zero-shot)",
                    f"{localiser + decoder:,}", f"{localiser + sam_total:,}")
        return net

    def build_loss(self, ctx: MethodContext):
        opts = ctx.options

        def loss_fn(net: MedLSAMNetwork, batch: dict) -> tuple[torch.Tensor, dict]:
            crops, idx = batch["crops"], batch["mss_index"]
            rest = torch.ones(len(crops), dtype=torch.bool, device=crops.device)
            rest[idx] = False
            rest = torch.nonzero(rest).flatten()
            # crops with an augmented twin go through the decoder too; the others only need p
            p_m, f_m = net.localizer(crops[idx])
            _, f_aug = net.localizer(batch["crops_aug"])
            parts = [p_m] + ([net.localizer(crops[rest], with_features=False)[0]] if len(rest) else [])
            p = torch.cat(parts)[torch.argsort(torch.cat([idx, rest]))]
            l_rdr = rdr_pairs_loss(p, batch["centre_mm"], batch["scan"], net.r_mm)
            l_mss = mss_loss(f_m, f_aug, batch["points"], opts.patch, points_b=batch["points_aug"])
            return l_rdr + opts.mss_weight * l_mss, {"rdr_rmse_mm": l_rdr.detach().sqrt(), "mss": l_mss.detach()}

        return loss_fn

    def configure_optimizers(self, network, ctx: MethodContext):
        params = [p for n, p in network.named_parameters() if n.startswith("localizer.")]
        opt = torch.optim.Adam(params, lr=ctx.options.lr, weight_decay=ctx.options.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: (1 - e / max(ctx.num_epochs, 1)) ** 0.9)
        return opt, sched

    # ------------------------------------------------------------------ self-supervised data
    def _coarse_volumes(self, ctx: MethodContext, dataset, keys: list[str], with_labels: bool = False):
        out = []
        spacing = ctx.configuration.spacing
        for key in keys:
            data, seg, props = dataset.load(key)
            flips = canonical_flips(props)
            vol = flip_volume(to_coarse(torch.from_numpy(np.array(data[:1])), spacing, ctx.options.coarse_spacing), flips)
            if with_labels:
                lab = to_coarse(torch.from_numpy(np.asarray(seg[:1]).astype(np.float32)), spacing, ctx.options.coarse_spacing, "nearest")
                out.append((vol, flip_volume(lab, flips)[0].numpy().astype(np.int16)))
            else:
                out.append(vol)
        return out

    def make_train_loader(self, ctx: MethodContext, dataset, train_keys: list[str]):
        """Endless pairs of crops of the fold's training images (labels unused)."""
        volumes = self._coarse_volumes(ctx, dataset, train_keys)
        seed = ctx.options.seed + 1000 * int(ctx.fold if str(ctx.fold).isdigit() else 0)
        # under DDP each rank draws its share of the batch from its own generator
        rng = np.random.default_rng([seed, ctx.rank] if ctx.world_size > 1 else seed)
        batch_size = ctx.split_batch(ctx.options.batch_size)

        def batches():
            while True:
                yield make_batch(volumes, batch_size, ctx.options.patch, ctx.options.coarse_spacing, rng,
                                 crops_per_scan=ctx.options.crops_per_scan, mss_crops=ctx.options.mss_crops)

        return batches()

    def train_step(self, network, batch: dict, loss_fn, ctx: MethodContext) -> StepResult:
        batch = {k: v.to(ctx.device) for k, v in batch.items() if torch.is_tensor(v)}
        loss, logs = loss_fn(network, batch)
        return StepResult(loss, logs)

    def validation_step(self, network, batch: dict, loss_fn, ctx: MethodContext) -> StepResult:
        """Localiser loss on pairs cropped from the validation patches (resampled to the coarse grid);
        no segmentation output (the pseudo Dice of a patch means nothing for a box-prompted method)."""
        data = batch["data"]
        rng = np.random.default_rng(ctx.options.seed)
        vols = [to_coarse(d[:1].float().cpu(), ctx.configuration.spacing, ctx.options.coarse_spacing) for d in data]
        pairs = make_batch(vols, 2 * len(vols), ctx.options.patch, ctx.options.coarse_spacing, rng)
        pairs = {k: v.to(ctx.device) for k, v in pairs.items()}
        loss, logs = loss_fn(network, pairs)
        return StepResult(loss, logs)

    # ------------------------------------------------------------------ support + fine-tuning
    def after_training(self, network: MedLSAMNetwork, ctx: MethodContext, dataset, train_keys: list[str]) -> None:
        """Pick the support cases among the fold's labelled training cases and store the averaged
        latent coordinates / MSS features of each class's six extreme points in the network."""
        opts = ctx.options
        rng = np.random.default_rng(opts.seed)
        keys = sorted(train_keys)
        support = [keys[i] for i in sorted(rng.choice(len(keys), size=min(opts.num_support, len(keys)), replace=False))]
        network.eval()
        with torch.no_grad():
            pairs = self._coarse_volumes(ctx, dataset, support, with_labels=True)
            pairs = [(v.to(ctx.device), s) for v, s in pairs]
            labels = ctx.label_manager.foreground_labels
            protos = build_prototypes(network.localizer, pairs, labels, opts.patch, template=opts.mss_template,
                                      split=opts.split_components, max_components=opts.max_components)
        network.set_prototypes(protos)
        missing = [lab for lab in labels if lab not in protos]
        logger.info("medlsam: support cases %s; prototypes for labels %s%s", support,
                    {k: len(v) for k, v in sorted(protos.items())},
                    f" (absent from all supports: {missing})" if missing else "")
        if opts.finetune_sam and network.sam_mask_decoder is not None:
            report = finetune_decoder(self._backbone(ctx), network.sam_mask_decoder, dataset, keys, ctx)
            ctx.extra["medlsam_finetune"] = report
            if ctx.output_folder is not None:
                write_json(Path(ctx.output_folder) / "medlsam_decoder_finetuning.json", report)

    # ------------------------------------------------------------------ inference
    def _backbone(self, ctx: MethodContext):
        cache = ctx.extra.setdefault("_medlsam_backbone", {})
        key = (ctx.options.backbone, ctx.options.sam_input_size, ctx.options.sam_checkpoint, str(ctx.device))
        if key not in cache:
            from autosam.sam.backbones import build_backbone

            bb = build_backbone(ctx.options.backbone, input_size=ctx.options.sam_input_size, checkpoint=ctx.options.sam_checkpoint,
                                allow_random_init=ctx.options.allow_random_init)
            cache[key] = bb.to(ctx.device).eval()
        return cache[key]

    @torch.no_grad()
    def localize_components(self, network: MedLSAMNetwork, data: torch.Tensor, ctx: MethodContext,
                            properties: dict | None = None, margin_mm=None) -> dict[int, list[np.ndarray]]:
        """Per label, the inclusive box [z0, y0, x0, z1, y1, x1] of each of its components (one
        unless the supports split the label into parts) on the configuration's voxel grid, extended
        by ``margin_mm`` (z, y, x in mm; default: the options' box extension, :func:`box_margin_voxels`).
        Reads only the image (and its geometry: ``properties``, default ``ctx.extra["case_properties"]``,
        to flip it to the common orientation)."""
        opts = ctx.options
        spacing = np.asarray(ctx.configuration.spacing, float)
        coarse = np.asarray(opts.coarse_spacing, float)
        flips = canonical_flips(properties if properties is not None else ctx.extra.get("case_properties"))
        margin = box_margin_voxels(opts, spacing, data.shape) if margin_mm is None else margin_voxels(margin_mm, spacing)
        vol = flip_volume(to_coarse(data[:1].float().cpu(), spacing, coarse), flips).to(ctx.device)
        coarse_shape = np.array(vol.shape[1:])
        scale = np.array(data.shape[1:]) / coarse_shape  # fine voxels per coarse voxel
        network.eval()
        protos = {label: network.prototypes(label) for label in range(1, ctx.num_classes)}
        protos = {k: v for k, v in protos.items() if v is not None}
        cboxes = localize_boxes(network.localizer, vol, protos, opts.patch, coarse, network.r_mm.cpu(),
                                moves=opts.agent_moves, starts=opts.agent_starts, refine=opts.mss_refine,
                                radius=opts.mss_radius, seed=opts.seed)
        boxes: dict[int, list[np.ndarray]] = {}
        for label, comps in cboxes.items():
            for cbox in comps:
                cbox = unflip_box(cbox, flips, coarse_shape)
                # coarse voxel index -> nearest fine voxel index (voxel centres aligned, as in to_coarse)
                fine = np.round(np.concatenate([(cbox[:3] + 0.5) * scale - 0.5, (cbox[3:] + 0.5) * scale - 0.5]))
                boxes.setdefault(label, []).append(extend_box(fine, margin, data.shape[1:]))
        return boxes

    def localize(self, network: MedLSAMNetwork, data: torch.Tensor, ctx: MethodContext,
                 properties: dict | None = None, margin_mm=None) -> dict[int, np.ndarray]:
        """Per label, one box: the union of its components' boxes (:meth:`localize_components`)."""
        comps = self.localize_components(network, data, ctx, properties, margin_mm=margin_mm)
        return {k: union_box(v).astype(int) for k, v in comps.items()}

    def predict_volume(self, network, data: torch.Tensor, ctx: MethodContext, *, use_mirroring: bool = True,
                       progress: bool = False, boxes: dict[int, np.ndarray] | None = None) -> torch.Tensor:
        """Localise each class (unless ``boxes`` are given: the paper's manual-box mode; a label may
        map to one box or a list of boxes), then segment every slice of each box with the box prompt;
        the components of a label are merged by maximum, classes by probability."""
        data = torch.as_tensor(data)
        if boxes is None:
            boxes = self.localize_components(network, data, ctx)
        boxes = {int(k): [np.asarray(b)] if np.asarray(b).ndim == 1 else [np.asarray(x) for x in b] for k, b in boxes.items()}
        ctx.extra["medlsam_last_boxes"] = {k: [[int(v) for v in b] for b in bl] for k, bl in boxes.items()}
        return segment_boxes(self._backbone(ctx), data, boxes, ctx.num_classes, spacing=ctx.configuration.spacing,
                             window=method_window(ctx, ctx.options.window), mask_decoder=self._decoder(network), progress=progress,
                             mode=ctx.options.box_mode, max_boxes=ctx.options.max_boxes)

    @staticmethod
    def _decoder(network):
        return network.sam_mask_decoder if getattr(network, "sam_mask_decoder", None) is not None else None

    # ------------------------------------------------------------------ prompts
    def encode_image(self, network, data: torch.Tensor, ctx: MethodContext):
        """The slice frame of ``data`` and a dict of slice embeddings, filled lazily by the prompts
        (a slice is encoded the first time a box reaches it, then kept for every later prompt)."""
        from autosam.sam.box_segment import SliceFrame, resolve_window

        vol = torch.as_tensor(data)[0].float().numpy()
        window = resolve_window(method_window(ctx, ctx.options.window) or "auto", vol)
        return {"frame": SliceFrame(self._backbone(ctx), vol.shape[1:], ctx.configuration.spacing[1:], window),
                "embeddings": {}}

    def predict_with_prompts(self, network, data: torch.Tensor, prompts, ctx: MethodContext, *, cache=None,
                             use_mirroring: bool = False) -> torch.Tensor:
        """User boxes instead of the localiser: each label's 3D boxes and its challenge 2D box (with
        its z range) are followed through their slices (``box_mode``); labels without a box stay
        background. ``use_mirroring`` is unused (SAM is not mirrored)."""
        from autosam.prompts import check_prompt_kinds
        from autosam.sam.box_propagation import BoxPrompt

        check_prompt_kinds(self.name, self.prompt_kinds, prompts)
        data = torch.as_tensor(data)
        for label, p in prompts.items():
            p.validate(data.shape[1:], label)
        cache = cache if cache is not None else self.encode_image(network, data, ctx)
        boxes = {int(k): [np.asarray(b) for b in p.boxes3d] for k, p in prompts.items() if p.boxes3d}
        extra = [BoxPrompt.from_box2d(int(k), p.box2d) for k, p in prompts.items() if p.box2d is not None]
        return segment_boxes(self._backbone(ctx), data, boxes, ctx.num_classes, spacing=ctx.configuration.spacing,
                             mask_decoder=self._decoder(network), mode=ctx.options.box_mode,
                             max_boxes=ctx.options.max_boxes, prompts=extra, frame=cache["frame"],
                             embeddings=cache["embeddings"])

    def validation_report(self, network, ctx: MethodContext, dataset, val_keys: list[str]) -> dict:
        """Localisation quality (3D IoU of localised vs true boxes, before extension) per class."""
        from .localize import extreme_points, box_from_extremes

        per_class: dict[int, list[float]] = {}
        for key in val_keys:
            data, seg, props = dataset.load(key)
            boxes = self.localize(network, torch.from_numpy(np.array(data)), ctx, properties=props, margin_mm=[0, 0, 0])
            logger.info("medlsam: localised boxes of %s (without margin): %s", key, {k: b.tolist() for k, b in boxes.items()})
            for label, box in boxes.items():
                pts = extreme_points(np.asarray(seg[0]) == label)
                if pts is not None:
                    per_class.setdefault(label, []).append(box_iou_3d(box, box_from_extremes(pts)))
        return {"localization_iou": {str(k): float(np.mean(v)) for k, v in sorted(per_class.items())},
                "localization_iou_mean": float(np.mean([np.mean(v) for v in per_class.values()])) if per_class else float("nan")}


@hookimpl
def register_methods(register):
    register(MedLSAM())


@hookimpl
def plan_method_section(method_name, configuration_name, configuration, fingerprint):
    """Coarse patch and tanh range from the dataset's physical extent (paper: 64^3 at 3 mm, r = [1500, 600, 600] mm)."""
    if method_name != "medlsam" or configuration_name != "3d":
        return None
    coarse = [3.0, 3.0, 3.0]
    extent = np.median(np.asarray(fingerprint.shapes_after_crop, float) * np.asarray(fingerprint.spacings, float), axis=0)
    coarse_shape = extent / np.asarray(coarse)
    patch = int(min(64, max(16, 16 * round(0.5 * float(coarse_shape.min()) / 16))))
    r = [float(min(cap, max(1.5 * e, 4 * patch * c))) for cap, e, c in zip((1500.0, 600.0, 600.0), extent, coarse)]
    section = {"coarse_spacing": coarse, "patch": patch, "r_mm": r}
    if patch <= 32:
        # small images: 3 poolings (32^3 -> 4^3 bottleneck) and a narrow encoder; measured on the
        # example dataset: 3.3 s/iteration on one CPU core instead of 8.8 s (24 channels, 4 poolings)
        section.update(num_pool=3, base_width=8, feature_dim=16)
    return section


@hookimpl
def method_suitability(fingerprint):
    n = fingerprint.num_labelled_cases
    if n <= 5:
        return [("medlsam", 0.8, f"only {n} labelled cases: few-shot localisation + pretrained SAM (MedLSAM)")]
    return [("medlsam", 0.2, "few-shot method; enough labelled cases for a trained method")]
