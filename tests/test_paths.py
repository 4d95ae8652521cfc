"""AUTOSAM_RAW / AUTOSAM_PREPROCESSED / AUTOSAM_RESULTS and the documented default location."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autosam import paths

VARS = ("AUTOSAM_RAW", "AUTOSAM_PREPROCESSED", "AUTOSAM_RESULTS", "AUTOSAM_HOME",
        "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
GETTERS = {"raw": paths.raw_dir, "preprocessed": paths.preprocessed_dir, "results": paths.results_dir}


@pytest.fixture
def clean_env(monkeypatch):
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(paths, "_announced", set())  # as in a fresh process
    return monkeypatch


def test_environment_variables_choose_the_folders(autosam_dirs):
    for kind, get in GETTERS.items():
        assert get() == autosam_dirs[kind]


def test_env_vars_are_independent_and_expand_home(clean_env, tmp_path, capsys):
    clean_env.setenv("HOME", str(tmp_path))
    clean_env.setenv("AUTOSAM_RAW", "~/my_raw")
    clean_env.setenv("AUTOSAM_RESULTS", str(tmp_path / "res"))
    assert paths.raw_dir() == tmp_path / "my_raw"
    assert paths.results_dir() == tmp_path / "res"
    assert paths.preprocessed_dir() == tmp_path / "autosam_data" / "preprocessed"  # only this one falls back
    err = capsys.readouterr().err
    assert "AUTOSAM_PREPROCESSED is not set" in err and "AUTOSAM_RAW" not in err and "AUTOSAM_RESULTS" not in err


def test_default_location_is_home_autosam_data_and_printed_once(clean_env, tmp_path, capsys):
    clean_env.setenv("HOME", str(tmp_path))
    for _ in range(3):
        assert paths.raw_dir() == tmp_path / "autosam_data" / "raw"
        assert paths.results_dir() == tmp_path / "autosam_data" / "results"
    err = capsys.readouterr().err
    assert err.count(f"[autosam] AUTOSAM_RAW is not set; using {tmp_path / 'autosam_data' / 'raw'}") == 1
    assert err.count("AUTOSAM_RESULTS is not set") == 1
    paths.raw_dir()
    assert capsys.readouterr().err == ""  # nothing more, ever, in this process


def test_autosam_home_moves_the_default(clean_env, tmp_path, capsys):
    clean_env.setenv("AUTOSAM_HOME", str(tmp_path / "elsewhere"))
    assert paths.preprocessed_dir() == tmp_path / "elsewhere" / "preprocessed"
    assert str(tmp_path / "elsewhere" / "preprocessed") in capsys.readouterr().err


def test_empty_variable_counts_as_unset(clean_env, tmp_path):
    clean_env.setenv("AUTOSAM_HOME", str(tmp_path))
    clean_env.setenv("AUTOSAM_RAW", "")
    assert paths.raw_dir() == tmp_path / "raw"


def test_message_goes_to_stderr_once_per_process(tmp_path):
    # a real fresh process: stdout stays clean for machine-readable output, stderr says it once
    env = {k: v for k, v in os.environ.items() if k not in VARS}
    env["AUTOSAM_HOME"] = str(tmp_path)
    code = "from autosam import paths\nfor _ in range(3): print(paths.raw_dir())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.splitlines() == [str(tmp_path / "raw")] * 3
    assert out.stderr.count("AUTOSAM_RAW is not set") == 1


def test_nnunet_variables_are_the_fallback_and_announced_once(clean_env, tmp_path, capsys):
    clean_env.setenv("AUTOSAM_HOME", str(tmp_path / "home"))
    clean_env.setenv("nnUNet_raw", str(tmp_path / "nnunet_raw"))
    clean_env.setenv("nnUNet_results", "~/nnunet_results")
    clean_env.setenv("HOME", str(tmp_path))
    clean_env.setenv("AUTOSAM_RESULTS", str(tmp_path / "mine"))  # an AUTOSAM_* variable wins
    for _ in range(2):
        assert paths.raw_dir() == tmp_path / "nnunet_raw"
        assert paths.results_dir() == tmp_path / "mine"
        assert paths.preprocessed_dir() == tmp_path / "home" / "preprocessed"  # neither set: the default
    err = capsys.readouterr().err.splitlines()
    assert err.count(f"[autosam] AUTOSAM_RAW is not set; using nnUNet_raw={tmp_path / 'nnunet_raw'}") == 1
    assert not any("AUTOSAM_RESULTS" in line or "nnUNet_results" in line for line in err)
    assert sum("AUTOSAM_PREPROCESSED is not set" in line for line in err) == 1
    clean_env.delenv("AUTOSAM_RESULTS")
    assert paths.results_dir() == tmp_path / "nnunet_results"  # ~ expanded
