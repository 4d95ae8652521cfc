"""extract_fingerprint: hand-computed values, real CT/MR volumes, 2-channel MR, id resolution."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autosam.experiment_planning.fingerprint import extract_fingerprint
from autosam.experiment_planning.fingerprint_stats import weighted_percentiles
from autosam.experiment_planning.fingerprint_types import DatasetFingerprint
from autosam.preprocessing.cropping import crop_to_nonzero, nonzero_mask
from autosam.utils.files import read_json, write_json
from raw_dataset_builder import write_raw_dataset
from shared_data import TOTALSEG, write_consecutive_labels


def _tiny_cases():
    """Two cases with a zero border, known foreground values and known components."""
    a = np.zeros((5, 8, 9), np.float32)
    a[1:4, 1:7, 2:8] = 5.0  # non-zero region: 3 x 6 x 6
    la = np.zeros(a.shape, np.uint8)
    la[1:3, 1:3, 2:4] = 1  # 2x2x2 cube = 8 voxels
    la[3, 5, 6] = 1  # isolated voxel (no 26-neighbour of the cube)
    a[la == 1] = np.arange(1, 10, dtype=np.float32)  # foreground values 1..9
    b = np.full((4, 6, 6), -3.0, np.float32)  # no zero border: crop keeps everything
    lb = np.zeros(b.shape, np.uint8)
    lb[0, 0:5, 0:5] = 1  # 25 voxels in one slice
    lb[1, 5, 5] = 2
    lb[2, 4, 4] = 2  # diagonal neighbour: one 26-connected component of 2 voxels over 2 slices
    b[lb > 0] = np.linspace(20, 46, 27, dtype=np.float32)
    return a, la, b, lb


def test_fingerprint_matches_hand_computed_values(autosam_dirs):
    a, la, b, lb = _tiny_cases()
    write_raw_dataset(autosam_dirs["raw"], "Dataset017_Hand", {"ca": ([a], la)}, spacing=(2.0, 1.0, 1.0),
                      labels={"background": 0, "x": 1, "y": 2})
    # case b gets another spacing: write it separately
    write_raw_dataset(autosam_dirs["raw"], "Dataset017_Hand", {"cb": ([b], lb)}, spacing=(3.0, 0.5, 0.5),
                      labels={"background": 0, "x": 1, "y": 2}, num_training=2)
    fp = extract_fingerprint(17, num_processes=1)
    out = autosam_dirs["preprocessed"] / "Dataset017_Hand"
    assert (out / "dataset_fingerprint.json").is_file() and read_json(out / "dataset.json")["numTraining"] == 2
    assert fp.case_identifiers == ["ca", "cb"]
    assert fp.spacings == [[2.0, 1.0, 1.0], [3.0, 0.5, 0.5]]
    assert fp.shapes_before_crop == [[5, 8, 9], [4, 6, 6]]
    assert fp.shapes_after_crop == [[3, 6, 6], [4, 6, 6]]
    assert fp.median_relative_size_after_crop == pytest.approx(np.median([108 / 360, 1.0]))
    # intensities: every case weighs the same (a: 9 foreground voxels, b: 27) -> a's values count 3x
    va, vb = np.arange(1, 10, dtype=np.float64), np.linspace(20, 46, 27)
    st = fp.foreground_intensity_properties_per_channel["0"]
    assert st.mean == pytest.approx((va.mean() + vb.mean()) / 2)
    var = (np.mean((va - st.mean) ** 2) + np.mean((vb - st.mean) ** 2)) / 2
    assert st.std == pytest.approx(np.sqrt(var))
    assert (st.min, st.max) == (1.0, 46.0)
    expanded = np.concatenate([np.repeat(va, 3), vb])
    assert st.mean == pytest.approx(expanded.mean()) and st.std == pytest.approx(expanded.std())
    for q, got in [(50, st.median), (0.5, st.percentile_00_5), (99.5, st.percentile_99_5)]:
        assert got == pytest.approx(np.percentile(expanded, q))
    # class statistics
    x, y = fp.class_statistics["1"], fp.class_statistics["2"]
    assert (x.name, x.cases_present, x.per_case_components) == ("x", 2, [2, 1])
    assert x.volume_fraction == pytest.approx(np.median([9 / 108, 25 / 144]))
    assert x.components_per_case == 1.5
    assert x.component_volume_mm3 == pytest.approx(np.median([8 * 2.0, 1 * 2.0, 25 * 0.75]))
    # bbox of x in a: z 1..3, y 1..5, x 2..6 -> (3, 5, 5) vox * (2, 1, 1); in b: 1x5x5 * (3, .5, .5)
    assert x.bbox_extent_mm == pytest.approx([4.5, 3.75, 3.75])
    assert x.slices_spanned == 2.0  # median of 3 and 1
    assert (y.cases_present, y.per_case_components, y.components_per_case) == (1, [0, 1], 1.0)
    assert y.component_volume_mm3 == pytest.approx(2 * 0.75)
    assert y.bbox_extent_mm == pytest.approx([6.0, 1.0, 1.0]) and y.slices_spanned == 2
    # JSON round trip
    assert DatasetFingerprint.load(out / "dataset_fingerprint.json") == fp


def test_weighted_percentiles_equal_repetition():
    rng = np.random.default_rng(0)
    v = rng.normal(size=40)
    w = rng.integers(1, 5, size=40).astype(float)
    w[0] = 1
    q = [0, 0.5, 25, 50, 99.5, 100]
    assert np.allclose(weighted_percentiles(v, w, q), np.percentile(np.repeat(v, w.astype(int)), q))
    assert np.allclose(weighted_percentiles(v, np.full(40, 7.0), q), np.percentile(v, q))


def test_crop_to_nonzero_any_channel():
    d = np.zeros((2, 6, 7, 8), np.float32)
    d[0, 1:3, 2:4, 3:5] = 1
    d[1, 4, 6, 1] = -2  # another channel extends the box
    seg = np.zeros((1, 6, 7, 8), np.int16)
    cd, cs, box = crop_to_nonzero(d, seg)
    assert box == [[1, 5], [2, 7], [1, 5]]
    assert cd.shape == (2, 4, 5, 4) and cs.shape == (1, 4, 5, 4)
    empty = np.zeros((1, 3, 4, 5))
    assert crop_to_nonzero(empty)[2] == [[0, 3], [0, 4], [0, 5]]
    ring = np.ones((1, 5, 5, 5))
    ring[0, 2, 2, 2] = 0
    assert nonzero_mask(ring).all()  # holes are filled


def test_existing_fingerprint_reused_unless_cases_change(autosam_dirs):
    a, la, b, lb = _tiny_cases()
    labels = {"background": 0, "x": 1, "y": 2}
    folder = write_raw_dataset(autosam_dirs["raw"], "Dataset018_Reuse", {"ca": ([a], la)}, labels=labels)
    fp_file = autosam_dirs["preprocessed"] / "Dataset018_Reuse" / "dataset_fingerprint.json"
    extract_fingerprint("Dataset018_Reuse", num_processes=1)
    stamp = fp_file.stat().st_mtime_ns
    extract_fingerprint(18, num_processes=1)
    assert fp_file.stat().st_mtime_ns == stamp
    write_raw_dataset(autosam_dirs["raw"], "Dataset018_Reuse", {"cb": ([b], lb)}, labels=labels, num_training=2)
    fp = extract_fingerprint(18, num_processes=1)
    assert fp.case_identifiers == ["ca", "cb"]
    assert folder.is_dir()


def test_two_channel_mr_parallel(autosam_dirs):
    """2-channel MR with zero background: crop shrinks the image, per-channel statistics differ."""
    rng = np.random.default_rng(3)
    cases = {}
    expected = {0: [], 1: []}
    for i in range(3):
        shape = (10, 20 + i, 18)
        z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
        head = ((z - 5) / 4.0) ** 2 + ((y - 10) / 7.0) ** 2 + ((x - 9) / 6.0) ** 2 <= 1
        t1 = np.where(head, rng.normal(300, 20, shape), 0).astype(np.float32)
        t2 = np.where(head, rng.normal(900, 50, shape), 0).astype(np.float32)
        lab = (((z - 5) / 2.0) ** 2 + ((y - 10) / 3.0) ** 2 + ((x - 9) / 3.0) ** 2 <= 1).astype(np.uint8)
        cases[f"mr{i}"] = ([t1, t2], lab)
        expected[0].append(t1[lab == 1].mean())
        expected[1].append(t2[lab == 1].mean())
    write_raw_dataset(autosam_dirs["raw"], "Dataset019_MR", cases, channel_names={"0": "T1", "1": "T2"},
                      labels={"background": 0, "tumour": 1})
    fp = extract_fingerprint(19, num_processes=2, verify=True)
    assert set(fp.foreground_intensity_properties_per_channel) == {"0", "1"}
    for c in (0, 1):
        assert fp.foreground_intensity_properties_per_channel[str(c)].mean == pytest.approx(np.mean(expected[c]), rel=1e-5)
    assert all(after == [9, 15, 13] for after in fp.shapes_after_crop)
    assert fp.median_relative_size_after_crop < 0.6
    assert fp.class_statistics["1"].per_case_components == [1, 1, 1]


def _arrange_totalseg(raw: Path, name: str, pairs, labels_from) -> dict[int, int]:
    folder = raw / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    values = set()
    for ident, (img, lab) in pairs.items():
        img_i, lab_i = sitk.ReadImage(str(TOTALSEG / img)), sitk.ReadImage(str(TOTALSEG / lab))
        # the README's pairs share geometry; check before trusting it
        assert img_i.GetSize() == lab_i.GetSize() and img_i.GetSpacing() == lab_i.GetSpacing()
        assert np.allclose(img_i.GetOrigin(), lab_i.GetOrigin()) and np.allclose(img_i.GetDirection(), lab_i.GetDirection())
        shutil.copy(TOTALSEG / img, folder / "imagesTr" / f"{ident}_0000.nii.gz")
        values |= set(np.unique(sitk.GetArrayFromImage(lab_i)).tolist())
    new_value = write_consecutive_labels({TOTALSEG / lab: folder / "labelsTr" / f"{ident}.nii.gz"
                                          for ident, (_img, lab) in pairs.items()}, values)
    labels = {"background": 0, **{labels_from.get(v, f"class_{v}"): new_value[v] for v in sorted(values) if v}}
    write_json(folder / "dataset.json", {"channel_names": {"0": "CT" if "CT" in name else "MR"}, "labels": labels,
                                         "numTraining": len(pairs), "file_ending": ".nii.gz"})
    return new_value


@pytest.mark.skipif(not TOTALSEG.is_dir(), reason="real example volumes not available")
def test_real_ct_and_mr_volumes(autosam_dirs):
    new_value = _arrange_totalseg(autosam_dirs["raw"], "Dataset031_TotalSegCT",
                      {"ct_sm": ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
                       "ct": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz")},
                      {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver"})
    fp = extract_fingerprint(31, num_processes=1, verify=True)
    assert fp.spacings == [[3.0, 3.0, 3.0], [3.0, 3.0, 3.0]]
    assert fp.shapes_before_crop == [[112, 101, 122], [30, 101, 122]]  # sorted ids: ct, ct_sm
    ct = fp.foreground_intensity_properties_per_channel["0"]
    # foreground includes the lungs (air) and bones
    assert -1100 < ct.percentile_00_5 < -500 and -100 < ct.median < 150 and 300 < ct.percentile_99_5 < 2000
    assert -1300 < ct.min and ct.max < 3500
    liver = fp.class_statistics[str(new_value[5])]
    assert liver.name == "liver" and liver.cases_present == 2
    assert liver.slices_spanned >= 20 and liver.bbox_extent_mm[1] > 80  # liver: big, many slices
    spleen = fp.class_statistics[str(new_value[1])]
    assert spleen.component_volume_mm3 < liver.component_volume_mm3

    _arrange_totalseg(autosam_dirs["raw"], "Dataset032_TotalSegMR",
                      {"mr_sm": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz")}, {})
    fp = extract_fingerprint("Dataset032_TotalSegMR", num_processes=1, verify=True)
    assert fp.shapes_before_crop == [[20, 91, 117]]
    assert fp.shapes_after_crop[0][0] <= 20 and len(fp.class_statistics) == 23
    mr = fp.foreground_intensity_properties_per_channel["0"]
    assert -47 <= mr.min < mr.median < mr.max <= 833  # the volume's range
