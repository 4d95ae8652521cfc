"""Shared set-up of the benchmark scripts in ``benchmarks/<folder>/`` (each puts ``benchmarks/`` on
its import path): the work folder, the example dataset, the result output."""
from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path


def bin_of(name: str) -> str:
    """The console script ``name`` next to this interpreter (works without an activated virtual
    environment), else the one on PATH, else the bare name."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def use_work_folder(work: Path) -> Path:
    """Point AUTOSAM_RAW / _PREPROCESSED / _RESULTS at ``work/{raw,pre,res}`` and log INFO with times."""
    work = Path(work).resolve()
    for name, sub in (("AUTOSAM_RAW", "raw"), ("AUTOSAM_PREPROCESSED", "pre"), ("AUTOSAM_RESULTS", "res")):
        os.environ[name] = str(work / sub)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return work


def ensure_example_dataset(cases: int = 8, kind: str = "organs", dataset_id: int = 999) -> Path:
    """The example dataset, planned and preprocessed for ``3d`` in the AUTOSAM_* folders (made once); returns
    its preprocessed folder."""
    from autosam.data.example import example_dataset_name, make_example_dataset
    from autosam.pipeline import plan_and_preprocess

    pre = Path(os.environ["AUTOSAM_PREPROCESSED"]) / example_dataset_name(dataset_id, kind)
    if not (pre / "autosamPlans.json").is_file():
        make_example_dataset(Path(os.environ["AUTOSAM_RAW"]), dataset_id, cases, kind)
        plan_and_preprocess(dataset_id, num_processes=1, configurations=("3d",))
    return pre


def finish(result: dict, out_json: Path | None) -> dict:
    """Print the figures as JSON and also write them to ``out_json`` when given."""
    import json

    text = json.dumps(result, indent=2)
    if out_json is not None:
        Path(out_json).write_text(text + "\n")
    print(text)
    return result
