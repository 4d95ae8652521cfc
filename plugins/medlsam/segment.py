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
                  window=None, mask_decoder=None, batch_size: int = 8, progress: bool = False) -> torch.Tensor:
    """Probabilities K x Z x Y x X from box-prompted 2D SAM on the slices of each box
    (:func:`autosam.sam.box_segment.segment_volume_with_boxes` on channel 0; every slice is
    encoded once for all boxes).

    ``boxes``: label -> list of boxes (the components of the label, e.g. both kidneys); each box is
    one prompt, and a label's probability is the maximum over its boxes.
    Foreground class k gets SAM's probability inside its boxes' slices (0 elsewhere); background is
    ``1 - max_k p_k``; the stack is normalised to sum to one, so an overlap goes to the class
    with the higher probability. ``mask_decoder`` replaces the backbone's (fine-tuned decoder).
    """
    from autosam.sam.box_segment import segment_volume_with_boxes

    c, z, y, x = data.shape
    fg = torch.zeros(num_classes, z, y, x)
    if boxes:
        original = backbone.mask_decoder
        if mask_decoder is not None:
            backbone.mask_decoder = mask_decoder
        bar = tqdm(desc="box-prompted SAM", disable=not progress, leave=False)
        targets = [(int(k), tuple(int(v) for v in b)) for k, bl in sorted(boxes.items()) for b in bl]
        try:
            _, probs = segment_volume_with_boxes(
                data[0].float().numpy(), spacing, {i + 1: b for i, (_, b) in enumerate(targets)}, backbone,
                window=tuple(window) if window is not None else "auto", batch_size=batch_size,
                progress=lambda done, total: (setattr(bar, "total", total), bar.update(done - bar.n)))
        finally:
            backbone.mask_decoder = original
            bar.close()
        for i, p in probs.items():
            k = targets[i - 1][0]
            fg[k] = torch.maximum(fg[k], torch.from_numpy(p))
    fg[0] = (1 - fg[1:].amax(0)).clamp_min(0) if num_classes > 1 else 1
    return fg / fg.sum(0, keepdim=True).clamp_min(1e-6)


def finetune_decoder(backbone, decoder, dataset, keys: list[str], ctx) -> None:
    """MedSAM-style decoder fine-tuning: boxes from the label with 0-``box_jitter_px`` px random
    perturbation, BCE + Dice on the slice's mask; the image encoder and prompt encoder stay frozen."""
    opts = ctx.options
    rng = np.random.default_rng(opts.seed)
    decoder.train()
    opt = torch.optim.AdamW(decoder.parameters(), lr=opts.finetune_lr)
    device = backbone.device
    size = backbone.input_size
    for step in range(opts.finetune_steps):
        data, seg, _ = dataset.load(keys[int(rng.integers(len(keys)))])
        labels = [v for v in np.unique(np.asarray(seg)) if v > 0]
        if not labels:
            continue
        label = int(rng.choice(labels))
        zs = np.unique(np.argwhere(np.asarray(seg[0]) == label)[:, 0])
        s = int(rng.choice(zs))
        mask = np.asarray(seg[0, s]) == label
        ys, xs = np.nonzero(mask)
        h, w = mask.shape
        jit = rng.integers(0, opts.box_jitter_px + 1, size=4) * np.array([-1, -1, 1, 1])
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) * np.array([size / w, size / h, size / w, size / h]) + jit
        box = torch.tensor(np.clip(box, 0, size), dtype=torch.float32, device=device)[None]
        img = torch.from_numpy(np.array(data[:, s])).float()[None].to(device)
        with torch.no_grad():
            emb = backbone.encode(backbone.prepare_slices(img, window=opts.window, channel=0 if img.shape[1] > 1 else None))
            sparse, dense = backbone.prompt_encoder(points=None, boxes=box, masks=None)
        logits, _ = decoder(image_embeddings=emb, image_pe=backbone.prompt_encoder.get_dense_pe(),
                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
        logits = F.interpolate(logits[:, :1], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        target = torch.from_numpy(mask.astype(np.float32)).to(device)
        p = torch.sigmoid(logits)
        loss = F.binary_cross_entropy_with_logits(logits, target) + 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            logger.info("medlsam decoder fine-tuning step %d: loss %.4f", step, float(loss))
    decoder.eval()
