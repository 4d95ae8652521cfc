"""MedLSAM's segmentation stage: a 2D box prompt for every slice inside each class's 3D box."""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

logger = logging.getLogger(__name__)


@torch.no_grad()
def segment_boxes(backbone, data: torch.Tensor, boxes: dict[int, list[np.ndarray]], num_classes: int, *, spacing,
                  window=None, mask_decoder=None, batch_size: int = 8, progress: bool = False, mode: str = "propagate",
                  prompts=(), frame=None, embeddings: dict | None = None, max_boxes: int | None = None) -> torch.Tensor:
    """Probabilities K x Z x Y x X from box-prompted 2D SAM on channel 0, each box followed through
    its slices (:func:`autosam.sam.box_propagation.propagate_boxes`: ``mode`` ``"propagate"``, the
    LiteMedSAM way, or ``"fixed"``); every slice is encoded at most once for all boxes.

    ``boxes``: label -> list of boxes (the components of the label, e.g. both kidneys); each box is
    one prompt; ``prompts``: further :class:`~autosam.sam.box_propagation.BoxPrompt` s (challenge
    2D boxes). A label's probability is the running maximum over its boxes' slices (no array per box).
    Foreground class k gets SAM's probability where its boxes predicted (0 elsewhere); background is
    ``1 - max_k p_k``; the stack is normalised to sum to one, so an overlap goes to the class
    with the higher probability. ``mask_decoder`` replaces the backbone's (fine-tuned decoder).
    ``frame``/``embeddings``: a :class:`~autosam.sam.box_segment.SliceFrame` of ``data`` and the
    slice embeddings kept across calls (interactive sessions; see ``MedLSAM.encode_image``).
    """
    from autosam.sam.box_propagation import check_box_count, propagate_boxes
    from autosam.sam.box_segment import SliceFrame, box_prompts, count_boxes, resolve_window

    c, z, y, x = data.shape
    fg = torch.zeros(num_classes, z, y, x)
    vol = data[0].float().numpy()
    check_box_count(count_boxes(boxes) + len(prompts), max_boxes)
    targets = sorted(box_prompts(boxes, vol.shape) + list(prompts), key=lambda p: p.label)
    for p in targets:
        if p.label >= num_classes:
            raise ValueError(f"box prompt for label {p.label}: the model has labels 1..{num_classes - 1}")
    if targets:
        if frame is None:
            frame = SliceFrame(backbone, vol.shape[1:], spacing[1:],
                               resolve_window(tuple(window) if window is not None else "auto", vol))
        bar = tqdm(desc="box-prompted SAM", disable=not progress, leave=False)

        def on_slice(prompt, zi: int, prob: np.ndarray) -> None:
            torch.maximum(fg[prompt.label, zi], torch.from_numpy(prob), out=fg[prompt.label, zi])

        try:
            propagate_boxes(frame, vol, targets, on_slice, mode=mode, batch_size=batch_size, mask_decoder=mask_decoder,
                            embeddings=embeddings,
                            progress=lambda done, total: (setattr(bar, "total", total), bar.update(done - bar.n)))
        finally:
            bar.close()
    fg[0] = (1 - fg[1:].amax(0)).clamp_min(0) if num_classes > 1 else 1
    return fg / fg.sum(0, keepdim=True).clamp_min(1e-6)


def _slice_targets(seg_slice: np.ndarray, split: bool, min_pixels: int = 4) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """(box, mask) training targets of one label slice: per label, its tight in-plane box
    ``(y0, x0, y1, x1)`` (inclusive) and mask; with ``split`` one target per connected part of the
    label on the slice (as prediction prompts each 3D part of a split label, e.g. each kidney,
    with its own box). Parts under ``min_pixels`` are skipped."""
    from scipy import ndimage

    out = []
    for label in (int(v) for v in np.unique(seg_slice) if v > 0):
        mask = seg_slice == label
        parts = [mask]
        if split:
            comp, n = ndimage.label(mask, structure=np.ones((3, 3)))
            parts = [comp == i for i in range(1, n + 1)] if n > 1 else [mask]
        for m in parts:
            if m.sum() < min_pixels:
                continue
            ys, xs = np.nonzero(m)
            out.append(((int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())), m))
    return out


def finetune_samples(backbone, dataset, keys: list[str], ctx, rng: np.random.Generator) -> list[dict]:
    """The fine-tuning set: up to ``finetune_slices`` labelled slices, spread evenly over the
    training cases, each encoded once (the image encoder is frozen) in exactly the frame used at
    prediction (:class:`autosam.sam.box_segment.SliceFrame`: the volume's window, aspect ratio
    kept, padding), with its (box, mask) targets (:func:`_slice_targets`)."""
    from autosam.sam.box_segment import SliceFrame, resolve_window
    from autosam.sam.intensity import method_window

    opts = ctx.options
    spacing = ctx.configuration.spacing
    per_case = max(1, -(-int(opts.finetune_slices) // max(1, len(keys))))
    samples = []
    for key in keys:
        data, seg, _ = dataset.load(key)
        vol = np.asarray(data[0], dtype=np.float32)
        seg = np.asarray(seg[0])
        zs = np.flatnonzero((seg > 0).reshape(len(seg), -1).any(1))
        if len(zs) == 0:
            continue
        zs = np.sort(rng.choice(zs, size=min(per_case, len(zs)), replace=False))
        # the window prediction uses: the option's, else CT soft tissue, else "auto" on the whole volume
        window = resolve_window(method_window(ctx, opts.window) or "auto", vol)
        frame = SliceFrame(backbone, vol.shape[1:], spacing[1:], window)
        with torch.no_grad():
            emb = frame.encode(vol[zs])
        for i, z in enumerate(zs):
            targets = _slice_targets(seg[z], opts.split_components)
            if targets:
                samples.append({"frame": frame, "embedding": emb[i:i + 1], "boxes": [b for b, _ in targets],
                                "masks": torch.from_numpy(np.stack([m for _, m in targets]).astype(np.float32)),
                                "case": key, "z": int(z)})
    return samples[: int(opts.finetune_slices)]


def box_prompt_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """MedSAM's loss: binary cross-entropy + soft Dice, averaged over the ``K`` prompts (``K x Y x X``)."""
    p = torch.sigmoid(logits)
    inter = (p * masks).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (p.flatten(1).sum(1) + masks.flatten(1).sum(1) + 1)
    return F.binary_cross_entropy_with_logits(logits, masks) + dice.mean()


def jitter_boxes(boxes, frame, max_px: float, rng: np.random.Generator) -> list[tuple[float, ...]]:
    """MedSAM's box perturbation: each side moved outwards by 0-``max_px`` pixels of the
    backbone's input (drawn per side), clipped to the slice."""
    out = []
    for y0, x0, y1, x1 in boxes:
        d = rng.uniform(0, max_px, size=4) if max_px > 0 else np.zeros(4)
        out.append((max(0.0, y0 - d[0] / frame.sy), max(0.0, x0 - d[1] / frame.sx),
                    min(frame.shape_yx[0] - 1.0, y1 + d[2] / frame.sy), min(frame.shape_yx[1] - 1.0, x1 + d[3] / frame.sx)))
    return out


def finetune_decoder(backbone, decoder, dataset, keys: list[str], ctx, samples: list[dict] | None = None) -> dict:
    """MedSAM-style fine-tuning of the mask decoder on the fold's labelled training cases: boxes
    from the label, each side perturbed by 0-``box_jitter_px`` px (pixels of SAM's 1024 input,
    as MedSAM; scaled to the backbone's input size: 0-5 px for LiteMedSAM's 256, as MedSAM-Lite
    trains), BCE + Dice against the label's mask on the slice. The image encoder and the prompt
    encoder stay frozen; slices are encoded once (:func:`finetune_samples`; ``samples`` reuses a set
    made earlier). Returns the mean loss on the tight (unperturbed) boxes of the fine-tuning slices
    before and after, and the counts."""
    opts = ctx.options
    rng = np.random.default_rng(opts.seed)
    if samples is None:
        samples = finetune_samples(backbone, dataset, keys, ctx, rng)
    if not samples:
        logger.warning("medlsam decoder fine-tuning: no labelled slice in the training cases; decoder left as is")
        return {"slices": 0, "steps": 0}
    max_px = float(opts.box_jitter_px) * backbone.input_size / 1024.0
    device = backbone.device
    decoder.to(device)

    def tight_loss() -> float:
        decoder.eval()
        with torch.no_grad():
            losses = [float(box_prompt_loss(s["frame"].decode(s["embedding"], s["frame"].rects(s["boxes"]), decoder),
                                            s["masks"].to(device))) for s in samples]
        return float(np.mean(losses))

    before = tight_loss()
    decoder.train()
    opt = torch.optim.AdamW(decoder.parameters(), lr=opts.finetune_lr, weight_decay=opts.finetune_weight_decay)
    for step in range(opts.finetune_steps):
        s = samples[int(rng.integers(len(samples)))]
        frame = s["frame"]
        logits = frame.decode(s["embedding"], frame.rects(jitter_boxes(s["boxes"], frame, max_px, rng)), decoder)
        loss = box_prompt_loss(logits, s["masks"].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            logger.info("medlsam decoder fine-tuning step %d: loss %.4f", step, float(loss.detach()))
    after = tight_loss()
    decoder.eval()
    report = {"slices": len(samples), "steps": int(opts.finetune_steps), "tight_box_loss_before": before,
              "tight_box_loss_after": after}
    logger.info("medlsam decoder fine-tuning on %d slices of %d cases, %d steps: loss on tight label boxes %.4f -> %.4f",
                len(samples), len(keys), opts.finetune_steps, before, after)
    return report
