"""The real large-organ dataset of the equal-time benchmark (benchmarks/real_data/organ_slabs.py): its
slabs are disjoint pieces of the scan at the scan's own physical positions, with the four organs only."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from shared_data import TOTALSEG

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_data" / "organ_slabs.py"


@pytest.mark.skipif(not TOTALSEG.is_dir(), reason="real example volumes not available")
def test_slabs_are_the_scans_organ_region_in_place(tmp_path):
    spec = importlib.util.spec_from_file_location("organ_slabs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    folder, ids, with_organs = mod.build_raw(tmp_path, 5, 8, 64, data=TOTALSEG)
    assert ids == [f"slab_{k}" for k in range(6)]  # z 64-111 in 8-slice slabs
    assert with_organs == ids  # every slab of the organ region holds one
    scan = sitk.ReadImage(str(TOTALSEG / "example_ct.nii.gz"))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(TOTALSEG / "example_seg_fast_force_split.nii.gz")))
    pieces, labels = [], []
    for k, case in enumerate(ids):
        img = sitk.ReadImage(str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        lab = sitk.ReadImage(str(folder / "labelsTr" / f"{case}.nii.gz"))
        # each slab sits where it was cut from: its first voxel is the scan's voxel (0, 0, 64 + 8k)
        assert np.allclose(img.GetOrigin(), scan.TransformIndexToPhysicalPoint((0, 0, 64 + 8 * k)))
        assert img.GetOrigin() == lab.GetOrigin() and img.GetSpacing() == scan.GetSpacing()
        pieces.append(sitk.GetArrayFromImage(img))
        labels.append(sitk.GetArrayFromImage(lab))
    assert np.array_equal(np.concatenate(pieces), sitk.GetArrayFromImage(scan)[64:112])
    seg = np.concatenate(labels)
    assert set(np.unique(seg)) == {0, 1, 2, 3, 4}
    for old, (_name, new) in mod.ORGANS.items():  # liver, spleen, kidneys keep every voxel, nothing else stays
        assert np.array_equal(seg == new, ref[64:112] == old)
