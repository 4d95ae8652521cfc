"""``autosam_segment_box``: zero-shot box-prompted segmentation of a 3D image with a 2D SAM.

Examples::

    autosam_segment_box -i ct.nii.gz -o liver.nii.gz --box 0 25 41 29 86 105 --label 5
    autosam_segment_box -i ct.nii.gz -o organs.nii.gz --boxes-json boxes.json
    autosam_segment_box -i ct.nii.gz -o liver.nii.gz --box 0 25 41 29 86 105 \\
        --backbone sam_vit_b --sam-checkpoint ~/weights/sam_vit_b_01ec64.pth

``boxes.json`` maps labels to boxes: ``{"5": [z0, y0, x0, z1, y1, x1], "1": [...]}``.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from autosam.cli.common import Parser, add_device, command


def _parser() -> Parser:
    p = Parser(
        prog="autosam_segment_box",
        description=__doc__.split("\n\n")[0] + " Every axial slice inside each box is segmented with the box "
        "as prompt (MedSAM-style); several boxes give several labels, merged by probability. The output "
        "label map has the input image's geometry.",
        epilog="Boxes are voxel indices z0 y0 x0 z1 y1 x1 (inclusive) in the image's array order (z, y, x) as "
        "read by SimpleITK. CT windowing: --window auto uses W400/L40 for HU data.",
    )
    p.add_argument("-i", "--input", required=True, type=Path, help="3D image (.nii.gz, .mha, .nrrd, ...)")
    p.add_argument("-o", "--output", required=True, type=Path, help="output label map (same format rules)")
    p.add_argument("--box", nargs=6, type=float, metavar=("Z0", "Y0", "X0", "Z1", "Y1", "X1"),
                   help="one box, inclusive voxel indices")
    p.add_argument("--label", type=int, default=1, help="label value written for --box (default 1)")
    p.add_argument("--boxes-json", type=Path, help='JSON file {"label": [z0, y0, x0, z1, y1, x1], ...}')
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


def read_boxes(args) -> dict[int, list[float]]:
    boxes: dict[int, list[float]] = {}
    if args.boxes_json is not None:
        try:
            raw = json.loads(args.boxes_json.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"{args.boxes_json}: cannot read boxes ({exc})")
        if not isinstance(raw, dict) or not raw:
            raise SystemExit(f'{args.boxes_json}: expected a non-empty object {{"label": [z0, y0, x0, z1, y1, x1]}}')
        for key, box in raw.items():
            try:
                boxes[int(key)] = [float(v) for v in box]
            except (TypeError, ValueError):
                raise SystemExit(f"{args.boxes_json}: entry {key!r}: expected an integer label and 6 numbers")
    if args.box is not None:
        boxes[int(args.label)] = list(args.box)
    if not boxes:
        raise SystemExit("give a box with --box Z0 Y0 X0 Z1 Y1 X1 or several with --boxes-json FILE")
    return boxes


def _window(values: list[str]):
    if len(values) == 1 and values[0].lower() in ("auto", "none"):
        return None if values[0].lower() == "none" else "auto"
    if len(values) == 2:
        return float(values[0]), float(values[1])
    raise SystemExit(f"--window takes LOW HIGH, 'auto' or 'none'; got {' '.join(values)}")


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
    try:
        backbone = build_backbone(args.backbone, input_size=args.input_size, checkpoint=args.sam_checkpoint,
                                  device=args.device or default_device())
        bar = tqdm(total=0, unit="slice", desc="segmenting", disable=args.quiet)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        label_map, probs = segment_volume_with_boxes(volume.astype(np.float32), geometry.spacing, boxes, backbone,
                                                     window=window, threshold=args.threshold,
                                                     batch_size=args.batch_size, progress=progress)
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
                 **{f"label_{lab}": p.astype(np.float16) for lab, p in probs.items()})
    for lab in sorted(boxes):
        print(f"label {lab}: {int((label_map == lab).sum())} voxels")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
