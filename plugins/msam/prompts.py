"""M-SAM's prompt path: clicks and a previous mask, the paper's interactive refinement.

The volume is covered by the method's sliding windows (the encoder cube, ``step_size`` apart).
:func:`encode_windows` encodes every window once (the interactive cache). :func:`predict_windows`
then costs decoder passes only: in each window,

- the previous mask of each label (if given) becomes the low-resolution mask prompt of its class
  channel (logit ``+MASK_PROMPT_LOGIT`` inside, ``-MASK_PROMPT_LOGIT`` outside; M-SAM refines from
  its own previous logits, a binary mask is the nearest a viewer has);
- the clicks inside the window are point prompts, class-agnostic as M-SAM trains them (positive =
  label 1 on any foreground, negative = 0); clicks accumulate, as in SAM-Med3D;
- with a previous mask: one refinement step from it with every click; without: the training
  protocol, one step per click from an all-zero mask, step ``i`` with the first ``i`` clicks;
- a window with neither clicks nor previous-mask foreground gets the automatic mode
  (``auto_iterations`` mask-feedback steps, no clicks).

Window logits are blended with nnU-Net's Gaussian weights; the background logit is 0 (as in
automatic prediction). Mirroring is not used on this path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from autosam.inference.sliding_window import _pad_to_patch, compute_steps, gaussian_importance_map

from .network import with_background

#: Logit magnitude of a binary previous mask given as M-SAM's mask prompt.
MASK_PROMPT_LOGIT = 4.0


def window_starts(shape, patch, step_size: float) -> list[tuple[int, int, int]]:
    steps = compute_steps(shape, patch, step_size)
    return [(z, y, x) for z in steps[0] for y in steps[1] for x in steps[2]]


@torch.no_grad()
def encode_windows(net, data: torch.Tensor, patch: list[int], step_size: float, device) -> dict:
    """Embeddings of every sliding window of ``data`` (C x Z x Y x X, channel 0 used)."""
    padded, crop = _pad_to_patch(torch.as_tensor(data)[:1].float(), patch)
    starts = window_starts(padded.shape[1:], patch, step_size)
    emb = {}
    for s in starts:
        window = padded[:, s[0]:s[0] + patch[0], s[1]:s[1] + patch[1], s[2]:s[2] + patch[2]]
        emb[s] = net.encode(window[None].to(device))
    return {"padded_shape": tuple(padded.shape[1:]), "crop": crop, "patch": list(patch), "embeddings": emb,
            "shape": tuple(data.shape[1:])}


@torch.no_grad()
def predict_windows(net, cache: dict, prompts, num_classes: int, auto_iterations: int, device) -> torch.Tensor:
    """Class probabilities (K x Z x Y x X, CPU) from the cached window embeddings and ``prompts``
    (label -> :class:`autosam.prompts.LabelPrompts` on the data's grid)."""
    patch, crop = cache["patch"], cache["crop"]
    offset = [c.start for c in crop]
    clicks = [(p.z + offset[0], p.y + offset[1], p.x + offset[2], 1 if p.positive else 0)
              for lp in prompts.values() for p in lp.points]
    masks = torch.zeros((num_classes - 1, *cache["padded_shape"]))
    has_mask = False
    for label, lp in prompts.items():
        if lp.previous_mask is not None:
            masks[int(label) - 1][crop] = torch.from_numpy(lp.previous_mask.astype("float32"))
            has_mask = True
    logits = torch.zeros((num_classes, *cache["padded_shape"]))
    weights = torch.zeros(cache["padded_shape"])
    gauss = gaussian_importance_map(patch)
    scale = net.backbone.input_size / torch.tensor(patch, dtype=torch.float32)
    for s, emb in cache["embeddings"].items():
        box = tuple(slice(a, a + p) for a, p in zip(s, patch))
        inside = [c for c in clicks if all(a <= v < a + p for v, a, p in zip(c[:3], s, patch))]
        window_mask = masks[(slice(None), *box)]
        prompted = bool(inside) or (has_mask and bool(window_mask.any()))
        if not prompted:
            low = net.initial_mask(1, device)
            for _ in range(auto_iterations):
                low = net.step(emb, low)
        else:
            coords = torch.tensor([[c[0] - s[0], c[1] - s[1], c[2] - s[2]] for c in inside], dtype=torch.float32)
            coords = (coords * scale)[:, [1, 0, 2]].to(device)  # SAM-Med3D's dense PE order (refinement.py)
            labels = torch.tensor([c[3] for c in inside], dtype=torch.long, device=device)
            if has_mask:
                prior = (window_mask * 2 - 1) * MASK_PROMPT_LOGIT
                low = F.interpolate(prior[None], size=tuple(net.mask_size), mode="trilinear", align_corners=False).to(device)
                points = (coords[None], labels[None]) if inside else None
                low = net.step(emb, low, points)
            else:
                low = net.initial_mask(1, device)
                for i in range(1, len(inside) + 1):
                    low = net.step(emb, low, (coords[None, :i], labels[None, :i]))
        full = with_background(net.upsample(low, patch))[0].float().cpu()
        logits[(slice(None), *box)] += full * gauss
        weights[box] += gauss
    logits /= weights
    return logits.softmax(0)[(slice(None), *crop)].contiguous()
