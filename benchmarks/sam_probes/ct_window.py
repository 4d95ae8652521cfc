"""Does the CT intensity window reach the 2D SAM encoder after preprocessing?

MedSAM / LiteMedSAM were trained on CT windowed to soft tissue (W400 L40 -> [-160, 240] HU) and
min-max scaled. autosam's methods see *preprocessed* CT: clipped to the dataset's foreground 0.5-99.5
percentiles and z-scored with the foreground mean/std (nnU-Net's CTNormalization). This check
segments the TotalSegmentator example CT (real scan; labels are TotalSegmentator's outputs) with
LiteMedSAM and the reference labels' tight 3D boxes (every slice prompted with the box, no
propagation), with three intensity mappings of the same slices:

- ``hu_soft_tissue``: raw HU, window [-160, 240] (MedSAM's recipe: the upper bound);
- ``zscore_percentile``: CTNormalization, then the 0.5-99.5 percentiles of the volume (what a
  method gets from the ``auto`` window on preprocessed data);
- ``zscore_soft_tissue``: CTNormalization, then [-160, 240] HU mapped into z-score units with the
  normalisation's own mean/std (:func:`autosam.sam.intensity.ct_window_in_normalised_units`).

usage: OMP_NUM_THREADS=1 python benchmarks/sam_probes/ct_window.py [--image ...] [--labels ...] [--out FILE.json]
       [--variants zscore_soft_tissue ...] [--random-init]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data/totalsegmentator")
NAMES = {5: "liver", 1: "spleen", 2: "kidney_right", 3: "kidney_left"}


def main(argv=None) -> int:
    import torch

    from autosam.io.image import read_image
    from autosam.preprocessing.normalization import normalize_channel
    from autosam.sam.backbones import build_backbone
    from autosam.sam.box_segment import boxes_from_label_map, segment_volume_with_boxes
    from autosam.sam.intensity import CT_WINDOWS, ct_window_in_normalised_units

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", default=str(DATA / "example_ct_sm.nii.gz"))
    p.add_argument("--labels", default=str(DATA / "example_seg.nii.gz"))
    p.add_argument("--out", default=None)
    p.add_argument("--variants", nargs="+", default=["hu_soft_tissue", "zscore_percentile", "zscore_soft_tissue"])
    p.add_argument("--random-init", action="store_true", help="LiteMedSAM from random weights (the ablation of its weights)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    img, geom = read_image(a.image)
    seg, _ = read_image(a.labels)
    vol = np.asarray(img, dtype=np.float32)
    ref = np.rint(seg).astype(np.int32)
    spacing = geom.spacing
    fg = vol[ref > 0]
    ip = {"mean": float(fg.mean()), "std": float(fg.std()), "percentile_00_5": float(np.percentile(fg, 0.5)),
          "percentile_99_5": float(np.percentile(fg, 99.5))}
    z = normalize_channel(vol.copy(), "CTNormalization", ip)
    lo, hi = CT_WINDOWS["abdomen"]
    zwin = ct_window_in_normalised_units("CTNormalization", ip)
    variants = {
        "hu_soft_tissue": (vol, (lo, hi)),
        "zscore_percentile": (z, tuple(float(v) for v in np.percentile(z, [0.5, 99.5]))),
        "zscore_soft_tissue": (z, zwin),
    }
    labels = [k for k in NAMES if (ref == k).any()]
    boxes = boxes_from_label_map(ref, labels)
    if a.random_init:
        from autosam.plugins import get_backbone
        from autosam.sam.litemedsam import build_litemedsam

        bb = build_litemedsam(get_backbone("litemedsam"), pretrained=False, allow_random_init=True)
    else:
        bb = build_backbone("litemedsam")
    results = {"image": a.image, "intensity_properties": ip, "random_init": a.random_init, "variants": {}}
    for name in a.variants:
        v, window = variants[name]
        t = time.time()
        label_map, _ = segment_volume_with_boxes(v, spacing, boxes, bb, window=window, mode="fixed",
                                                 keep_probabilities=False)
        row = {"window": [round(float(w), 3) for w in window]}
        for k in labels:
            pred = label_map == k
            r = ref == k
            row[NAMES[k]] = round(float(2 * (pred & r).sum() / (pred.sum() + r.sum())), 4)
        row["mean"] = round(float(np.mean([row[NAMES[k]] for k in labels])), 4)
        row["seconds"] = round(time.time() - t, 1)
        results["variants"][name] = row
        print(name, row, flush=True)
    if a.out:
        write_json(a.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
