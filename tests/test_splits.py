"""splits_final.json: seeded 5 folds, nnU-Net format, user edits kept and validated."""
from __future__ import annotations

import json

import pytest

from autosam.experiment_planning.splits import get_or_create_splits, make_splits
from autosam.io.dataset import DatasetError
from autosam.utils.files import write_json

IDS = [f"case_{i:03d}" for i in range(12)]


def test_created_folds_partition_the_cases(tmp_path):
    splits = get_or_create_splits(tmp_path, IDS[::-1])
    assert len(splits) == 5
    assert json.loads((tmp_path / "splits_final.json").read_text()) == splits
    vals = [c for f in splits for c in f["val"]]
    assert sorted(vals) == IDS  # every case validated exactly once
    for f in splits:
        assert set(f["train"]) | set(f["val"]) == set(IDS) and not set(f["train"]) & set(f["val"])
        assert len(f["val"]) in (2, 3)
    # seeded: input order does not matter, another seed gives other folds
    assert make_splits(IDS) == splits
    assert make_splits(IDS, seed=1) != splits


def test_user_edited_file_is_kept(tmp_path):
    edited = [{"train": IDS[:10], "val": IDS[10:]}]
    write_json(tmp_path / "splits_final.json", edited)
    assert get_or_create_splits(tmp_path, IDS) == edited
    assert json.loads((tmp_path / "splits_final.json").read_text()) == edited


def test_unknown_case_ids_are_a_clear_error(tmp_path):
    write_json(tmp_path / "splits_final.json", [{"train": IDS[:10] + ["ghost"], "val": IDS[10:]}])
    with pytest.raises(DatasetError, match=r"splits_final.json: fold 0 names case id\(s\) that are not in the dataset: \['ghost'\]"):
        get_or_create_splits(tmp_path, IDS)


@pytest.mark.parametrize("content", ['{"train": []}', "[]", '[{"train": ["a"]}]', '[{"train": [1], "val": []}]', "[{"])
def test_malformed_file(tmp_path, content):
    (tmp_path / "splits_final.json").write_text(content)
    with pytest.raises(DatasetError, match="splits_final.json"):
        get_or_create_splits(tmp_path, ["a"])


def test_few_cases():
    assert make_splits(["a"]) == [{"train": ["a"], "val": ["a"]}]
    three = make_splits(["a", "b", "c"])
    assert len(three) == 3 and sorted(c for f in three for c in f["val"]) == ["a", "b", "c"]
