"""``autosam_segment_box``: zero-shot box-prompted segmentation of a 3D image with a 2D SAM.

Examples::

    autosam_segment_box -i ct.nii.gz -o liver.nii.gz --box 0 25 41 29 86 105 --label 5
    autosam_segment_box -i ct.nii.gz -o organs.nii.gz --boxes-json boxes.json
    autosam_segment_box -i ct.nii.gz -o liver.nii.gz --box 0 25 41 29 86 105 \\
        --backbone sam_vit_b --sam-checkpoint ~/weights/sam_vit_b_01ec64.pth

``boxes.json`` maps labels to boxes: ``{"5": [z0, y0, x0, z1, y1, x1], "1": [[...], [...]]}`` (a list of
boxes gives one prompt per box, merged per label).

Each 3D box is followed through its slices the LiteMedSAM way (``--box-mode propagate``, the default):
the middle slice is segmented with the box, then each slice above and below with the bounding box
of the previous slice's mask plus 5 pixels of a 256-pixel input (scaled to the backbone's input), clipped
to the box, until the mask vanishes; ``--box-mode fixed`` prompts every slice with the box itself.
"""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import numpy as np

from autosam.cli.common import Parser, add_device, command
from autosam.sam.box_propagation import BOX_MODES, DEFAULT_MAX_BOXES, MAX_LABEL


def _parser() -> Parser:
    p = Parser(
        prog="autosam_segment_box",
        description=__doc__.split("\n\n")[0] + " Every axial slice of each box's z range is segmented with a box "
        "prompt: the box on its middle slice, then (--box-mode propagate, the LiteMedSAM way) the bounding box of "
        "the previous slice's mask plus a small margin on the slices above and below, stopping where the mask "
        "vanishes, or (--box-mode fixed) the box itself on every slice. Several boxes give several labels, merged "
        "by probability. The output label map has the input image's geometry.",
        epilog="Boxes are voxel indices z0 y0 x0 z1 y1 x1 (inclusive) in the image's array order (z, y, x) as "
        "read by SimpleITK. CT windowing: --window auto uses W400/L40 for HU data.",
    )
    p.add_argument("-i", "--input", required=True, type=Path, help="3D image (.nii.gz, .mha, .nrrd, ...)")
    p.add_argument("-o", "--output", required=True, type=Path, help="output label map (same format rules)")
    p.add_argument("--box", nargs=6, type=int, metavar=("Z0", "Y0", "X0", "Z1", "Y1", "X1"),
                   help="one box, inclusive voxel indices (integers)")
    p.add_argument("--label", type=int, default=1, help=f"label value written for --box, 1..{MAX_LABEL} (default 1)")
    p.add_argument("--boxes-json", type=Path,
                   help='JSON file {"label": [z0, y0, x0, z1, y1, x1] or a list of such boxes, ...}')
    p.add_argument("--box-mode", choices=BOX_MODES, default="propagate",
                   help="propagate (default): each slice prompted with the previous slice's mask box plus a margin, "
                        "from the middle slice outward (LiteMedSAM); fixed: the box itself on every slice")
    p.add_argument("--max-boxes", type=int, default=DEFAULT_MAX_BOXES,
                   help=f"refuse more boxes than this (default {DEFAULT_MAX_BOXES}; each box costs a decoder pass per slice)")
    p.add_argument("--backbone", default="litemedsam",
                   help="2D backbone (default litemedsam, whose weights ship with autosam's dependencies)")
    p.add_argument("--sam-checkpoint", type=Path, help="weights file for sam_vit_* (or $AUTOSAM_SAM_CHECKPOINT)")
    p.add_argument("--input-size", type=int, help="encoder input size (default: the backbone's own)")
    p.add_argument("--window", nargs="+", default=["auto"],
                   help="intensity window LOW HIGH, 'auto' (default) or 'none' (each slice's own range)")
    p.add_argument("--threshold", type=float, default=0.5, help="foreground probability threshold (default 0.5)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write OUTPUT's stem + _probabilities.npz (one float16 map per label)")
    add_device(p, "SAM")
    p.add_argument("--batch-size", type=int, default=8, help="slices per encoder call (default 8)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def read_boxes(args) -> dict[int, list[list[int]]]:
    """Label -> boxes from ``--boxes-json`` and ``--box``, checked as ``autosam_predict --boxes-json`` checks
    its boxes (whole numbers, nothing rounded, finite, in range; labels 1..32767; the number of boxes);
    every problem of the file in one error naming it. Bounds against the image: :func:`check_bounds`."""
    from autosam.inference.box_prompts import box_problem, load_boxes_file

    boxes: dict[int, list[list[int]]] = {}
    if args.boxes_json is not None:
        path = args.boxes_json
        try:
            raw = load_boxes_file(path)
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(str(exc))
        if not isinstance(raw, dict) or not raw:
            raise SystemExit(f'{path}: expected a non-empty object {{"label": [z0, y0, x0, z1, y1, x1]}}')
        problems = []
        for key, value in raw.items():
            label = int(key) if re.fullmatch(r"[0-9]{1,6}", key) else None
            if label is None or not 0 < label <= MAX_LABEL:
                problems.append(f"label {key!r}: label values must be integers in 1..{MAX_LABEL} (the output is int16)")
                continue
            many = isinstance(value, list) and value and all(isinstance(v, list) for v in value)
            for box in (value if many else [value]):
                problem = box_problem(box)
                if problem:
                    problems.append(f"label {key!r}: {problem}")
                else:
                    boxes.setdefault(label, []).append([int(v) for v in box])
        if problems:
            raise SystemExit(f"{path}: " + "; ".join(problems))
    if args.box is not None:
        if not 0 < args.label <= MAX_LABEL:
            raise SystemExit(f"--label {args.label}: label values must be integers in 1..{MAX_LABEL} (the output is int16)")
        problem = box_problem(list(args.box))
        if problem:
            raise SystemExit(f"--box: {problem}")
        boxes.setdefault(int(args.label), []).append(list(args.box))
    if not boxes:
        raise SystemExit("give a box with --box Z0 Y0 X0 Z1 Y1 X1 or several with --boxes-json FILE")
    n = sum(len(v) for v in boxes.values())
    if n > args.max_boxes:
        raise SystemExit(f"{args.boxes_json or '--box'}: {n} boxes exceed the limit of {args.max_boxes} (each box costs "
                         f"a decoder pass per slice); pass --max-boxes {n} to allow them")
    return boxes


def check_bounds(boxes: dict[int, list[list[int]]], shape, where) -> None:
    """Every box lies inside the image of ``shape`` (z, y, x)."""
    from autosam.sam.box_segment import check_box

    problems = []
    for label, blist in boxes.items():
        for b in blist:
            try:
                check_box(b, shape, label)
            except ValueError as exc:
                problems.append(str(exc))
    if problems:
        raise SystemExit(f"{where}: " + "; ".join(problems))


def _window(values: list[str]):
    if len(values) == 1 and values[0].lower() in ("auto", "none"):
        return None if values[0].lower() == "none" else "auto"
    if len(values) == 2:
        return float(values[0]), float(values[1])
    raise SystemExit(f"--window takes LOW HIGH, 'auto' or 'none'; got {' '.join(values)}")


def _volume_of(slices: dict, shape) -> np.ndarray:
    """A label's float16 probability volume from its predicted slices (0 elsewhere)."""
    out = np.zeros(shape, dtype=np.float16)
    for z, p in slices.items():
        out[z] = p
    return out


@command("autosam_segment_box")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from tqdm import tqdm

    from autosam.cli.common import default_device, error_text
    from autosam.io.image import read_image, write_image
    from autosam.sam.backbones import build_backbone
    from autosam.sam.box_segment import segment_volume_with_boxes
    from autosam.sam.checkpoints import CheckpointError
    from autosam.utils.files import save_npz

    boxes = read_boxes(args)
    window = _window(args.window)
    try:
        volume, geometry = read_image(args.input)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(str(exc))
    check_bounds(boxes, volume.shape, args.boxes_json or "--box")
    try:
        backbone = build_backbone(args.backbone, input_size=args.input_size, checkpoint=args.sam_checkpoint,
                                  device=args.device or default_device())
        bar = tqdm(total=0, unit="slice", desc="segmenting", disable=args.quiet)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        label_map, probs = segment_volume_with_boxes(volume.astype(np.float32), geometry.spacing, boxes, backbone,
                                                     window=window, threshold=args.threshold,
                                                     batch_size=args.batch_size, progress=progress,
                                                     mode=args.box_mode, max_boxes=args.max_boxes,
                                                     keep_probabilities=args.save_probabilities)
        bar.close()
    except (CheckpointError, ValueError) as exc:
        raise SystemExit(f"{args.input}: {exc}")
    except RuntimeError as exc:  # CUDA out of memory among them: the message and a hint
        raise SystemExit(f"autosam_segment_box: error: {error_text(exc)}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_image(args.output, label_map, geometry)
    if args.save_probabilities:
        stem = args.output.name.split(".")[0]
        save_npz(args.output.with_name(f"{stem}_probabilities.npz"),
                 **{f"label_{lab}": _volume_of(slices, volume.shape) for lab, slices in probs.items()})
    for lab in sorted(boxes):
        print(f"label {lab}: {int((label_map == lab).sum())} voxels")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
