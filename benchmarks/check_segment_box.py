"""Check: LiteMedSAM box-prompted segmentation on the TotalSegmentator example CT.

Boxes are the tight 3D boxes of the reference labels (liver 5, spleen 1, right kidney 2, left
kidney 3); every axial slice inside each box is segmented through ``autosam_segment_box`` (the
CLI, so its reading/writing path is covered too), and 3D Dice against the label map is printed.
Pass criterion (issue 4): liver Dice >= 0.75.

    python benchmarks/check_segment_box.py [--image ...] [--labels ...] [--backbone litemedsam]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


from autosam.cli.segment_box import main as segment_box_main
from autosam.io.image import read_image
from autosam.sam.box_segment import boxes_from_label_map

DATA = Path("/work/shared/data/totalsegmentator")
NAMES = {5: "liver", 1: "spleen", 2: "kidney_right", 3: "kidney_left"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, default=DATA / "example_ct.nii.gz")
    p.add_argument("--labels", type=Path, default=DATA / "example_seg_fast_force_split.nii.gz",
                   help="reference label map of --image (see the data folder's README)")
    p.add_argument("--backbone", default="litemedsam")
    p.add_argument("--classes", type=int, nargs="+", default=[5, 1, 2, 3])
    args = p.parse_args(argv)
    seg, _ = read_image(args.labels)
    boxes = boxes_from_label_map(seg, args.classes)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "boxes.json").write_text(json.dumps({str(k): v for k, v in boxes.items()}))
        out = Path(tmp) / "pred.nii.gz"
        t0 = time.perf_counter()
        segment_box_main(["-i", str(args.image), "-o", str(out), "--boxes-json", str(Path(tmp) / "boxes.json"),
                          "--backbone", args.backbone, "--device", "cpu"])
        seconds = time.perf_counter() - t0
        pred, _ = read_image(out)
    print(f"\n{args.image.name}, backbone {args.backbone}, {seconds:.0f} s on CPU")
    print(f"{'label':<14} {'id':>3} {'slices':>6} {'Dice':>6}")
    dice = {}
    for lab in args.classes:
        a, r = pred == lab, seg == lab
        dice[lab] = float(2 * (a & r).sum() / max(a.sum() + r.sum(), 1))
        print(f"{NAMES.get(lab, str(lab)):<14} {lab:>3} {boxes[lab][3] - boxes[lab][0] + 1:>6} {dice[lab]:>6.3f}")
    ok = dice.get(5, 1.0) >= 0.75
    print("PASS" if ok else "FAIL", "(liver Dice >= 0.75)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
