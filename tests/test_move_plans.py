"""autosam_move_plans_between_datasets: the source's plans on the target, with the target's labels."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autosam.cli.plan_and_preprocess import main_move_plans
from autosam.experiment_planning.plans import Plans
from autosam.preprocessing.preprocessor import preprocess_dataset
from raw_dataset_builder import write_raw_dataset
from training_data import make_tiny_preprocessed


def _target(raw, channels=1):
    rng = np.random.default_rng(0)
    cases = {}
    for i in range(2):
        label = np.zeros((12, 20, 20), np.uint8)
        label[3:8, 4:12, 5:14] = 1 + i  # labels 1 and 2 of the target's 4
        cases[f"t{i}"] = ([rng.normal(size=label.shape).astype(np.float32) for _ in range(channels)], label)
    return write_raw_dataset(raw, "Dataset993_Target", cases, labels={"background": 0, "x": 1, "y": 2, "z": 3},
                             channel_names={str(c): "CT" for c in range(channels)})


def test_plans_move_and_preprocess_the_target(autosam_dirs, capsys):
    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=2)
    source = Plans.load(autosam_dirs["preprocessed"] / "Dataset990_Tiny" / "autosamPlans.json")
    _target(autosam_dirs["raw"])
    assert main_move_plans(["-s", "990", "-t", "993", "-sp", "autosamPlans", "-tp", "autosamPlansFrom990"]) == 0
    assert "autosam_preprocess -d 993 -plans_name autosamPlansFrom990" in capsys.readouterr().out
    moved_file = autosam_dirs["preprocessed"] / "Dataset993_Target" / "autosamPlansFrom990.json"
    moved = Plans.load(moved_file)
    assert moved.dataset_name == "Dataset993_Target" and moved.plans_name == "autosamPlansFrom990"
    assert moved.labels == {"background": 0, "x": 1, "y": 2, "z": 3} and moved.num_classes == 4
    conf, src = moved.configuration("3d"), source.configuration("3d")
    assert conf.data_identifier == "autosamPlansFrom990_3d"
    assert (conf.spacing, conf.patch_size, conf.network) == (src.spacing, src.patch_size, src.network)
    folders = preprocess_dataset(993, plans_name="autosamPlansFrom990", configurations=("3d",), num_processes=1)
    assert folders["3d"].name == "autosamPlansFrom990_3d"
    props = json.loads((folders["3d"] / "t0.json").read_text())
    assert props["spacing"] == src.spacing

    assert main_move_plans(["-s", "990", "-t", "993", "-sp", "autosamPlans", "-tp", "autosamPlansFrom990"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main_move_plans(["-s", "990", "-t", "993", "-sp", "nope"]) == 2
    assert "nope.json: source plans not found" in capsys.readouterr().err


def test_channel_count_must_match(autosam_dirs, capsys):
    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=2)
    _target(autosam_dirs["raw"], channels=2)
    assert main_move_plans(["-s", "990", "-t", "993", "-sp", "autosamPlans"]) == 2
    assert "2 channel(s), the plans" in capsys.readouterr().err
    assert not (autosam_dirs["preprocessed"] / "Dataset993_Target" / "autosamPlans.json").exists()
    with pytest.raises(SystemExit):
        main_move_plans(["-s", "990", "-t", "993"])  # -sp is required
