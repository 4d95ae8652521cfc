"""3D-SAutoMed's prompt path: the Box Prompt Generator's boxes come from the user.

3D-SAutoMed prompts SAM's decoder, per class and slice, with a box its generator refines from an
anchor (the class's box in the previous slice's prediction). With user boxes (``box3d``, the
challenge's ``box2d``) for a class, on the slices they cover:

- a 3D box bounds the class: the anchor is the previous slice's box clipped to the user's rectangle
  (the rectangle itself where the class was absent), and the generator's refined box is clipped to
  it before it goes to SAM's prompt encoder; the class's probability is zero outside the 3D box;
- a 2D box is the prompt on its own slice (anchor and SAM box prompt are exactly the user's box);
  the other slices of its z range follow the network's own previous-slice anchors; the class's
  probability is zero outside the z range;
- classes without a user box are segmented automatically, as without prompts.

:func:`encode_tiles` encodes every slice of every in-plane tile once (the interactive cache); a
prompt then costs the slice sequence's attention and decoder passes, no encoder pass. Mirroring is
not used on this path.
"""
from __future__ import annotations

import torch

from .inference import _predict, padded_tiles


@torch.no_grad()
def encode_tiles(network, data: torch.Tensor, slice_size, step_size: float, device) -> dict:
    """``(sy, sx) -> Z x E x h x w`` encoder features of every tile of ``data`` (C x Z x Y x X)."""
    padded, tiles = padded_tiles(torch.as_tensor(data), slice_size, step_size)
    ty, tx = int(slice_size[0]), int(slice_size[1])
    features = {}
    for sy, sx in tiles:
        tile = padded[:, :, sy:sy + ty, sx:sx + tx].permute(1, 0, 2, 3).to(device)  # Z x C x ty x tx
        features[(sy, sx)] = network.encode(tile)
    return {"features": features, "shape": tuple(data.shape[1:]), "slice_size": list(slice_size)}


def _label_regions(prompts, shape) -> dict[int, list[tuple]]:
    """Per label: its user boxes as ``(z_lo, z_hi, y0, x0, y1, x1, exact_slice or None)``."""
    out: dict[int, list[tuple]] = {}
    for label, p in prompts.items():
        for b in p.boxes3d:
            out.setdefault(int(label), []).append((b[0], b[3], b[1], b[2], b[4], b[5], None))
        if p.box2d is not None:
            b = p.box2d
            out.setdefault(int(label), []).append((b.z_lo, b.z_hi, b.y0, b.x0, b.y1, b.x1, b.z))
    return out


@torch.no_grad()
def predict_with_boxes(network, data: torch.Tensor, prompts, cache: dict, num_classes: int, device, *,
                       tile_batch: int, step_size: float) -> torch.Tensor:
    """Class probabilities (K x Z x Y x X, CPU) of ``data`` with the user boxes of ``prompts``."""
    regions = _label_regions(prompts, data.shape[1:])
    ty, tx = (int(v) for v in cache["slice_size"])
    f = num_classes - 1

    def guide_for_tile(tile, z: int):
        sy, sx = tile
        given = torch.zeros(f, dtype=torch.bool)
        exact = torch.zeros(f, dtype=torch.bool)
        boxes = torch.zeros(f, 4)
        for label, items in regions.items():
            for z_lo, z_hi, y0, x0, y1, x1, z_exact in items:
                if not z_lo <= z <= z_hi or (z_exact is not None and z != z_exact):
                    continue
                # pixel edges in the tile frame, normalised (x along the last axis)
                xyxy = torch.tensor([(x0 - sx) / tx, (y0 - sy) / ty, (x1 + 1 - sx) / tx, (y1 + 1 - sy) / ty]).clamp(0, 1)
                if not bool((xyxy[2:] > xyxy[:2]).all()):
                    continue
                k = label - 1
                if given[k]:  # several boxes on one slice: their union's box
                    xyxy = torch.cat([torch.minimum(boxes[k, :2], xyxy[:2]), torch.maximum(boxes[k, 2:], xyxy[2:])])
                given[k], boxes[k] = True, xyxy
                exact[k] = exact[k] | (z_exact is not None)
        return (given, boxes, exact) if bool(given.any()) else None

    was_training = network.training
    network.eval()
    try:
        probs = _predict(network, data, cache["slice_size"], num_classes, device, tile_batch, False, step_size,
                         features=cache["features"], guide_for_tile=guide_for_tile)
    finally:
        network.train(was_training)
    # a user box bounds its class: zero outside (3D box: its z range and rectangle; 2D box: its z range)
    for label, items in regions.items():
        allowed = torch.zeros(data.shape[1:], dtype=torch.bool)
        for z_lo, z_hi, y0, x0, y1, x1, z_exact in items:
            if z_exact is None:
                allowed[z_lo:z_hi + 1, y0:y1 + 1, x0:x1 + 1] = True
            else:
                allowed[z_lo:z_hi + 1] = True
        probs[label][~allowed] = 0
    return probs / probs.sum(0, keepdim=True).clamp_min(1e-6)
