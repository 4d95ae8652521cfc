"""Check: LiteMedSAM box-prompted segmentation, on the TotalSegmentator example CT or on the shared
hippocampus MR cases (``--hippocampus``).

CT (default): boxes are the tight 3D boxes of the reference labels (liver 5, spleen 1, right kidney
2, left kidney 3); every axial slice inside each box is segmented through ``autosam_segment_box``
(the CLI, so its reading/writing path is covered too), and 3D Dice against the label map is
printed. Pass criterion (issue 4): liver Dice >= 0.75.

Hippocampus (``--hippocampus``): on the validation cases of fold 0 (autosam's 5-fold split of the
200 shared cases, seed 12345; ``--cases N`` for the first N of them), each label (1 anterior,
2 posterior) is prompted with its own tight 3D box, with both box modes of
:func:`autosam.sam.box_segment.segment_volume_with_boxes`: ``propagate`` (the LiteMedSAM way: middle
slice with the box, then each slice with the previous slice's mask box + margin) and ``fixed``
(the box on every slice). Both modes share each case's slice embeddings (one encoder pass per
slice). Prints Dice per label and mode (mean over the cases) and writes ``--out-json``.

    python benchmarks/real_data/check_segment_box.py [--image ...] [--labels ...] [--backbone litemedsam]
    OMP_NUM_THREADS=1 python benchmarks/real_data/check_segment_box.py --hippocampus [--cases 40] [--out-json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from autosam.cli.segment_box import main as segment_box_main
from autosam.io.image import read_image
from autosam.sam.box_segment import boxes_from_label_map

DATA = Path("/work/shared/data/totalsegmentator")
HIPPO = Path("/work/shared/data/msd_hippocampus/Task04_Hippocampus")
NAMES = {5: "liver", 1: "spleen", 2: "kidney_right", 3: "kidney_left"}


def dice(a: np.ndarray, r: np.ndarray) -> float:
    return float(2 * (a & r).sum() / max(int(a.sum() + r.sum()), 1))


def hippocampus(args) -> int:
    from autosam.experiment_planning.splits import make_splits
    from autosam.sam.backbones import build_backbone
    from autosam.sam.box_segment import segment_volume_with_boxes

    ids = sorted(p.name[: -len(".nii.gz")] for p in (HIPPO / "imagesTr").glob("*.nii.gz"))
    cases = make_splits(ids, seed=12345)[0]["val"][: args.cases]
    backbone = build_backbone(args.backbone, device="cpu")
    modes = ("propagate", "fixed")
    rows = []
    if args.resume and args.out_json and Path(args.out_json).exists():  # the cases a stopped run finished
        rows = [r for r in json.loads(Path(args.out_json).read_text())["cases"] if r["case"] in cases]
    done = {r["case"] for r in rows}
    t0 = time.perf_counter()
    for n, case in enumerate(cases, 1):
        if case in done:
            continue
        img, geom = read_image(HIPPO / "imagesTr" / f"{case}.nii.gz")
        seg, _ = read_image(HIPPO / "labelsTr" / f"{case}.nii.gz")
        seg = np.rint(seg).astype(np.int16)
        labels = [lab for lab in (1, 2) if (seg == lab).any()]
        boxes = boxes_from_label_map(seg, labels)
        embeddings: dict = {}
        row = {"case": case}
        for mode in modes:
            stats: dict = {}
            pred, _ = segment_volume_with_boxes(img.astype(np.float32), geom.spacing, boxes, backbone, mode=mode,
                                                keep_probabilities=False, embeddings=embeddings, stats=stats)
            row[mode] = {str(lab): dice(pred == lab, seg == lab) for lab in labels}
            row[f"{mode}_encoded_slices"] = stats["encoded_slices"]
        rows.append(row)
        print(f"[{n}/{len(cases)}] {case}: " + "  ".join(f"{m} " + " ".join(f"{v:.3f}" for v in row[m].values())
                                                          for m in modes) + f"  ({time.perf_counter() - t0:.0f} s)",
              flush=True)
        if args.out_json:  # after every case: a stopped run keeps the cases done
            Path(args.out_json).write_text(json.dumps({"cases": rows}, indent=1))
    summary = {}
    for mode in modes:
        per_label = {lab: float(np.mean([r[mode][lab] for r in rows if lab in r[mode]])) for lab in ("1", "2")}
        summary[mode] = {"per_label": per_label, "mean": float(np.mean(list(per_label.values())))}
    print(f"\n{len(rows)} fold-0 validation cases, backbone {args.backbone}, {time.perf_counter() - t0:.0f} s")
    print(f"{'mode':<10} {'anterior':>9} {'posterior':>9} {'mean':>6}")
    for mode in modes:
        s = summary[mode]
        print(f"{mode:<10} {s['per_label']['1']:>9.3f} {s['per_label']['2']:>9.3f} {s['mean']:>6.3f}")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({"cases": rows, "summary": summary}, indent=1))
    ok = summary["propagate"]["mean"] > summary["fixed"]["mean"]
    print("PASS" if ok else "FAIL", "(propagation beats the fixed box)")
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, default=DATA / "example_ct.nii.gz")
    p.add_argument("--labels", type=Path, default=DATA / "example_seg_fast_force_split.nii.gz",
                   help="reference label map of --image (see the data folder's README)")
    p.add_argument("--backbone", default="litemedsam")
    p.add_argument("--classes", type=int, nargs="+", default=[5, 1, 2, 3])
    p.add_argument("--box-mode", choices=("propagate", "fixed"), default="propagate")
    p.add_argument("--hippocampus", action="store_true", help="both box modes on the shared hippocampus cases")
    p.add_argument("--cases", type=int, default=40, help="--hippocampus: the first N fold-0 validation cases")
    p.add_argument("--out-json", type=Path, default=None)
    p.add_argument("--resume", action="store_true", help="--hippocampus: keep the cases --out-json already holds")
    args = p.parse_args(argv)
    if args.hippocampus:
        return hippocampus(args)
    seg, _ = read_image(args.labels)
    boxes = boxes_from_label_map(seg, args.classes)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "boxes.json").write_text(json.dumps({str(k): v for k, v in boxes.items()}))
        out = Path(tmp) / "pred.nii.gz"
        t0 = time.perf_counter()
        segment_box_main(["-i", str(args.image), "-o", str(out), "--boxes-json", str(Path(tmp) / "boxes.json"),
                          "--backbone", args.backbone, "--device", "cpu", "--box-mode", args.box_mode])
        seconds = time.perf_counter() - t0
        pred, _ = read_image(out)
    print(f"\n{args.image.name}, backbone {args.backbone}, box mode {args.box_mode}, {seconds:.0f} s on CPU")
    print(f"{'label':<14} {'id':>3} {'slices':>6} {'Dice':>6}")
    scores = {}
    for lab in args.classes:
        scores[lab] = dice(pred == lab, seg == lab)
        print(f"{NAMES.get(lab, str(lab)):<14} {lab:>3} {boxes[lab][3] - boxes[lab][0] + 1:>6} {scores[lab]:>6.3f}")
    ok = scores.get(5, 1.0) >= 0.75
    print("PASS" if ok else "FAIL", "(liver Dice >= 0.75)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
