"""Shared fixtures: every test gets its own raw/preprocessed/results folders."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def autosam_dirs(tmp_path, monkeypatch):
    """Point AUTOSAM_RAW/PREPROCESSED/RESULTS at fresh temporary folders and return them."""
    dirs = {k: tmp_path / k for k in ("raw", "preprocessed", "results")}
    for k, v in dirs.items():
        v.mkdir()
    monkeypatch.setenv("AUTOSAM_RAW", str(dirs["raw"]))
    monkeypatch.setenv("AUTOSAM_PREPROCESSED", str(dirs["preprocessed"]))
    monkeypatch.setenv("AUTOSAM_RESULTS", str(dirs["results"]))
    return dirs
