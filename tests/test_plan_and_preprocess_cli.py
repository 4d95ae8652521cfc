"""``autosam_plan_and_preprocess`` end to end: example dataset, real CT volumes, 2-channel MR, broken data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autosam.cli.plan_and_preprocess import main, main_fingerprint, main_plan, main_preprocess
from autosam.data.example import make_example_dataset
from autosam.experiment_planning.plans import Plans
from autosam.preprocessing import storage
from autosam.utils.files import write_json
from raw_dataset_builder import write_raw_dataset
from shared_data import TOTALSEG, write_consecutive_labels

TS = TOTALSEG


def check_nnunet_layout(pre: Path, case_ids: list[str], configurations=("2d", "3d")) -> Plans:
    for name in ("dataset_fingerprint.json", "dataset.json", "autosamPlans.json", "splits_final.json"):
        assert (pre / name).is_file(), name
    plans = Plans.load(pre / "autosamPlans.json")
    assert set(configurations) <= set(plans.configurations)
    for cname in configurations:
        conf = plans.configurations[cname]
        assert conf.spacing and conf.patch_size and conf.batch_size >= 2 and conf.normalization_schemes
        assert storage.list_cases(pre / conf.data_identifier) == sorted(case_ids)
    assert plans.default_method and plans.default_method_rationale
    assert sorted(p.name.split(".")[0] for p in (pre / "gt_segmentations").iterdir()) == sorted(case_ids)
    splits = json.loads((pre / "splits_final.json").read_text())
    assert sorted(sum((f["val"] for f in splits), [])) == sorted(case_ids)
    return plans


def test_example_dataset_end_to_end(autosam_dirs, capsys):
    make_example_dataset(autosam_dirs["raw"], 999, num_cases=4)
    assert main(["-d", "999", "-np", "2"]) == 0
    pre = autosam_dirs["preprocessed"] / "Dataset999_Example"
    plans = check_nnunet_layout(pre, [f"case_{i:03d}" for i in range(4)])
    assert plans.configurations["2d"].data_identifier == plans.configurations["3d"].data_identifier
    assert plans.configurations["3d"].normalization_schemes == ["CTNormalization"]
    assert "unet" in plans.configurations["3d"].methods  # the built-in unet plugin's section
    out = capsys.readouterr().out
    assert "default method:" in out and "3d" in out
    # a second run reuses everything; the separate steps work on their own
    folder = pre / plans.configurations["3d"].data_identifier
    stamp = (folder / "case_000.json").stat().st_mtime_ns
    assert main_fingerprint(["-d", "999"]) == 0
    assert main_plan(["-d", "Dataset999_Example", "--gpu_memory_gb", "4", "-pl", "default"]) == 0
    assert Plans.load(pre / "autosamPlans.json").gpu_memory_target_gb == 4
    assert main_preprocess(["-d", "999", "-c", "3d", "-np", "1"]) == 0
    assert (folder / "case_000.json").stat().st_mtime_ns == stamp


def test_real_totalsegmentator_ct_volumes(autosam_dirs):
    if not TS.is_dir():
        pytest.skip("real volumes not available")
    pairs = {"ct_small": ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
             "ct_full": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"),
             "aorta": ("aorta/ct_cropped.nii.gz", "aorta/T710_renal.nii.gz")}
    folder = autosam_dirs["raw"] / "Dataset501_TotalSeg"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    values = set()
    for case, (img, lab) in pairs.items():
        image = sitk.ReadImage(str(TS / img))
        sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        values |= set(np.unique(sitk.GetArrayViewFromImage(sitk.ReadImage(str(TS / lab)))).tolist())
    new_value = write_consecutive_labels({TS / lab: folder / "labelsTr" / f"{case}.nii.gz"
                                          for case, (_img, lab) in pairs.items()}, values)
    labels = {"background": 0, **{f"class_{v}": new_value[v] for v in sorted(values) if v}}
    write_json(folder / "dataset.json", {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 3,
                                         "file_ending": ".nii.gz"})
    assert main(["-d", "501", "-np", "2", "-c", "3d"]) == 0
    pre = autosam_dirs["preprocessed"] / "Dataset501_TotalSeg"
    plans = check_nnunet_layout(pre, list(pairs), configurations=("3d",))
    conf = plans.configurations["3d"]
    assert conf.spacing == pytest.approx([3.0, 3.0, 3.0])  # median of 3, 3 and 1.5 mm
    data, seg, props = storage.load_case(pre / conf.data_identifier, "aorta")
    assert props["geometry"]["spacing"] == [1.5, 1.5, 1.5]
    crop = props["shape_after_cropping_and_before_resampling"]
    assert list(data.shape[1:]) == [round(s / 2) for s in crop]  # 1.5 mm -> 3 mm
    assert set(np.unique(seg)) == {new_value[v] for v in (0, 1, 2, 4)}  # every label survives downsampling
    _, seg_small, _ = storage.load_case(pre / conf.data_identifier, "ct_small")
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(TS / "example_seg.nii.gz")))
    np.testing.assert_array_equal(np.unique(seg_small), [new_value[v] for v in np.unique(ref)])  # no resampling at 3 mm: labels intact


def mr_case(seed: int):
    """Two MR-like channels inside an ellipsoid 'head', exactly 0 outside (skull-stripped)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:24, :40, :40]
    head = ((z - 12) / 10) ** 2 + ((y - 20) / 17) ** 2 + ((x - 20) / 15) ** 2 < 1
    lesion = ((z - 12) / 4) ** 2 + ((y - 18) / 5) ** 2 + ((x - 22 + seed) / 5) ** 2 < 1
    t1 = np.where(head, rng.normal(600, 40, head.shape) - 200 * lesion, 0).astype(np.float32)
    t2 = np.where(head, rng.normal(300, 30, head.shape) + 400 * lesion, 0).astype(np.float32)
    return [t1, t2], (lesion & head).astype(np.uint8)


def test_two_channel_mr_uses_masked_zscore(autosam_dirs):
    write_raw_dataset(autosam_dirs["raw"], "Dataset502_MR", {f"mr{i}": mr_case(i) for i in range(3)},
                      channel_names={"0": "T1", "1": "T2"}, labels={"background": 0, "lesion": 1}, spacing=(1.0, 1.0, 1.0))
    assert main(["-d", "502", "-np", "1"]) == 0
    pre = autosam_dirs["preprocessed"] / "Dataset502_MR"
    plans = check_nnunet_layout(pre, ["mr0", "mr1", "mr2"])
    conf = plans.configurations["3d"]
    assert conf.normalization_schemes == ["ZScoreNormalization"] * 2
    data, seg, props = storage.load_case(pre / conf.data_identifier, "mr0")
    assert data.shape[0] == 2 and seg.shape[1:] == data.shape[1:]
    inside = data[0] != 0
    assert abs(float(data[0][inside].mean())) < 0.05 and abs(float(data[0][inside].std()) - 1) < 0.05


def test_broken_dataset_with_verify_writes_nothing(autosam_dirs, capsys):
    channels, label = mr_case(0)
    label[0, 0, 0] = 7  # not declared in dataset.json
    write_raw_dataset(autosam_dirs["raw"], "Dataset503_Broken", {"b0": (channels, label)},
                      labels={"background": 0, "lesion": 1}, spacing=(1.0, 1.0, 1.0))
    assert main(["-d", "503", "--verify_dataset_integrity"]) == 2
    assert "b0" in capsys.readouterr().err
    assert not (autosam_dirs["preprocessed"] / "Dataset503_Broken").exists()
    assert main(["-d", "504"]) == 2  # unknown dataset: clear error, no traceback


def test_cpu_target_plans_3d_lowres_but_preprocesses_it_only_on_request(autosam_dirs, capsys):
    """A CPU patch is small, so 3d_lowres is planned for a 60 x 120 x 120 image; its preprocessing
    costs time a CPU user rarely spends training it: the plans list it, the folder waits for -c 3d_lowres."""
    rng = np.random.default_rng(0)
    cases = {}
    for i in range(2):
        img = rng.normal(size=(60, 120, 120)).astype(np.float32)
        seg = np.zeros((60, 120, 120), np.uint8)
        seg[20:40, 30:90, 30:90] = 1
        cases[f"c{i}"] = ([img], seg)
    write_raw_dataset(autosam_dirs["raw"], "Dataset502_Big", cases, spacing=(1.0, 1.0, 1.0))
    assert main(["-d", "502", "-np", "1", "--target", "cpu"]) == 0
    pre = autosam_dirs["preprocessed"] / "Dataset502_Big"
    plans = Plans.load(pre / "autosamPlans.json")
    assert "3d_lowres" in plans.configurations, list(plans.configurations)
    low = pre / plans.configurations["3d_lowres"].data_identifier
    assert not storage.list_cases(low)
    assert storage.list_cases(pre / plans.configurations["3d"].data_identifier) == ["c0", "c1"]
    assert main_preprocess(["-d", "502", "-c", "3d_lowres", "-np", "1"]) == 0
    assert storage.list_cases(low) == ["c0", "c1"]


def test_labels_are_read_once_when_the_fingerprint_is_fresh(autosam_dirs, monkeypatch):
    """A fingerprint computed in the same run has refused undeclared labels already: preprocessing
    skips its own pass over the label files; with a reused fingerprint the pass runs (a label file
    may have changed since) and still refuses an undeclared value."""
    from autosam.io.dataset import DatasetError
    from autosam.io.image import read_image, write_image
    from autosam.pipeline import plan_and_preprocess
    from autosam.preprocessing import preprocessor

    calls = []
    real = preprocessor.check_label_values
    monkeypatch.setattr(preprocessor, "check_label_values", lambda files, *a, **k: (calls.append(list(files)),
                                                                                       real(files, *a, **k)))
    make_example_dataset(autosam_dirs["raw"], 999, num_cases=3)
    plan_and_preprocess(999, num_processes=1, configurations=["3d"])
    assert calls == []
    label = autosam_dirs["raw"] / "Dataset999_Example" / "labelsTr" / "case_001.nii.gz"
    seg, geometry = read_image(label)
    seg[0, 0, 0] = 7  # not declared
    write_image(label, seg, geometry)
    pre = autosam_dirs["preprocessed"] / "Dataset999_Example"
    for p in pre.rglob("case_001.json"):
        p.unlink()
    with pytest.raises(DatasetError, match="case_001"):
        plan_and_preprocess(999, num_processes=1, configurations=["3d"])
    assert len(calls) == 1
