"""Hostile and careless inputs: every one must be refused cleanly by the real command, with memory capped.

    python benchmarks/reliability/hostile_inputs.py                 # the full matrix (about 5 minutes on 2 cores)
    python benchmarks/reliability/hostile_inputs.py --quick         # the subset tests/test_hostile_matrix.py runs
    python benchmarks/reliability/hostile_inputs.py --only zip_slip,huge_volume --keep

A sibling of ``benchmarks/reliability/fault_injection.py``. On a tiny synthetic dataset (``autosam.data.example``,
2 cases, CPU plans) with untrained ``unet`` and ``medlsam`` (tiny backbone) models, each input of the
matrix (model zips, images, output folders, labels, checkpoints, box prompts, names; the items of
documentation/reliability.md) runs the real console script in a subprocess, its address space capped
with ``setrlimit(RLIMIT_AS)`` (``--memory-gb``, default 4) and, where a case asks for it, its file
size (``RLIMIT_FSIZE``). Each run is classified:

- **refused cleanly**: non-zero exit, exactly one ``<command>: error: ...`` line that names the
  problem (the case's words), no traceback, and nothing corrupted or left behind (the case's
  protected files unchanged, no lock or partial file, nothing where nothing may be written);
- **silent**: exit 0 (the input was accepted), or a refusal that changed or left files behind;
- **crash**: a traceback, a signal, the memory cap (``MemoryError``, SIGKILL), a timeout;
- **unclear**: refused without a traceback, but not in one line naming the problem.

The last line printed is ``N inputs tried, N refused cleanly, 0 silent, 0 crashes`` (and the
unclear ones when there are any); the exit status is 1 unless every input was refused cleanly.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pickle
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATASET_ID = 997
NAME = f"Dataset{DATASET_ID}_Example"
MODEL = "unet__autosamPlans__3d"
MEDLSAM = "medlsam__autosamPlans__3d"
MARKER = "PWNED"  # a file a hostile input tries to create; it must never exist
COMMANDS = {  # short name -> (prog, module, function)
    "predict": ("autosam_predict", "autosam.cli.predict", "main"),
    "modelfolder": ("autosam_predict_from_modelfolder", "autosam.cli.predict_modelfolder", "main"),
    "install": ("autosam_install_pretrained_model_from_zip", "autosam.cli.model_sharing", "main_install"),
    "train": ("autosam_train", "autosam.cli.train", "main"),
    "evaluate": ("autosam_evaluate_folder", "autosam.cli.evaluate", "main"),
    "plan": ("autosam_plan_and_preprocess", "autosam.cli.plan_and_preprocess", "main"),
    "segment_box": ("autosam_segment_box", "autosam.cli.segment_box", "main"),
}


# ------------------------------------------------------------------------------ the workspace
class Workspace:
    """The shared dataset and models, and one fresh folder per case."""

    def __init__(self, root: Path):
        self.root = root
        self.raw, self.pre, self.results = root / "raw", root / "preprocessed", root / "results"
        self.env = {**os.environ, "AUTOSAM_RAW": str(self.raw), "AUTOSAM_PREPROCESSED": str(self.pre),
                    "AUTOSAM_RESULTS": str(self.results), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                    "PYTHONWARNINGS": "ignore"}
        for key in ("AUTOSAM_TRUST_CHECKPOINT_PICKLE", "AUTOSAM_MAX_VOXELS", "AUTOSAM_MAX_UNPACKED_GB"):
            self.env.pop(key, None)

    def build(self) -> None:
        os.environ.update({k: self.env[k] for k in ("AUTOSAM_RAW", "AUTOSAM_PREPROCESSED", "AUTOSAM_RESULTS")})
        from autosam.data.example import make_example_dataset
        from autosam.experiment_planning.plans import Plans
        from autosam.pipeline import plan_and_preprocess

        sys.path.insert(0, str(REPO / "tests"))
        from training_data import untrained_model  # the tests' helper: a model with its initial weights

        make_example_dataset(self.raw, DATASET_ID, num_cases=2, kind="organs", seed=1)
        plan_and_preprocess(DATASET_ID, num_processes=1, configurations=("3d",), target="cpu")
        plans = Plans.load(self.pre / NAME / "autosamPlans.json")
        untrained_model(plans, self.results / NAME / MODEL, "unet")
        untrained_model(plans, self.results / NAME / MEDLSAM, "medlsam", {"backbone": "tiny"})
        for m in (MODEL, MEDLSAM):
            plans.save(self.results / NAME / m / "plans.json")
            shutil.copy(self.raw / NAME / "dataset.json", self.results / NAME / m / "dataset.json")

    @property
    def image(self) -> Path:
        return self.raw / NAME / "imagesTr" / "case_000_0000.nii.gz"

    @property
    def checkpoint(self) -> Path:
        return self.results / NAME / MODEL / "fold_all" / "checkpoint_final.pth"

    def case_dir(self, name: str) -> Path:
        d = self.root / "cases" / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d


@dataclass
class Case:
    name: str
    item: str  # the issue item or reliability.md row
    command: str  # key of COMMANDS
    setup: Callable[[Workspace, Path], list[str]]  # files for the case -> the command's arguments
    words: tuple[str, ...]  # the error line must contain one of these (case-insensitive)
    own_results: bool = False  # a fresh, empty AUTOSAM_RESULTS (installs, training)
    own_raw: bool = False  # AUTOSAM_RAW and AUTOSAM_PREPROCESSED in the case's folder (a dataset of its own)
    env: dict = field(default_factory=dict)
    fsize: int | None = None  # RLIMIT_FSIZE in bytes
    protect: Callable[[Workspace, Path], list[Path]] | None = None  # files that must stay unchanged
    empty: Callable[[Workspace, Path], list[Path]] | None = None  # folders that must hold no (visible) file
    quick: bool = False
    listing: bool = False  # the error lists files on the lines below it (one "  - <file>: ..." each)


# ------------------------------------------------------------------------------ hostile files
def _nifti(shape_zyx=(6, 8, 8), value=1.0, dtype=np.float32) -> bytearray:
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.nii"
        sitk.WriteImage(sitk.GetImageFromArray(np.full(shape_zyx, value, dtype)), str(path))
        return bytearray(path.read_bytes())


def _with_dim(size: int) -> bytes:
    data = _nifti()
    data[46:48] = np.int16(size).tobytes()  # dim[3]
    return gzip.compress(bytes(data))


def _huge() -> bytes:
    header = _nifti()[:352]
    header[40:56] = np.array([3, 1024, 1024, 512, 1, 1, 1, 1], "<i2").tobytes()
    header[70:74] = np.array([2, 8], "<i2").tobytes()
    return gzip.compress(bytes(header) + b"\0" * 4096)


def _nonfinite(value) -> bytes:
    data = np.ones((6, 8, 8), np.float32)
    data[2, 3, 3] = value
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(data), str(path))
        return path.read_bytes()


def _inputs(d: Path, name: str = "case_0000.nii.gz", data: bytes | None = None, folder: str = "in") -> Path:
    images = d / folder
    images.mkdir(parents=True, exist_ok=True)
    (images / os.fsdecode(name) if isinstance(name, bytes) else images / name).write_bytes(data)
    return images


def _predict(ws: Workspace, d: Path, images: Path, *extra: str, out: Path | None = None) -> list[str]:
    return ["-i", str(images), "-o", str(out or d / "pred"), "-d", str(DATASET_ID), "-c", "3d", "-m", "unet",
            "-f", "all", "-device", "cpu", "--quiet", "-npp", "1", "--disable_tta", *extra]


def _image_case(data_fn, name="case_0000.nii.gz", folder="in"):
    def setup(ws, d):
        return _predict(ws, d, _inputs(d, name, data_fn(ws), folder))
    return setup


def _zip(ws: Workspace, d: Path, members: dict, manifest: dict | None = None, links=(), compression=zipfile.ZIP_STORED,
         dataset: str = NAME, folders=(MODEL,), base: bool = True, again=()) -> Path:
    """A model zip: the unet model's files (``base``), ``members`` and ``links`` over them, then the
    ``(name, data)`` of ``again`` (a second member of a name already written)."""
    manifest = manifest or {"format": "autosam-model-zip", "format_version": 1, "dataset": dataset,
                            "models": [{"folder": f, "method": f.split("__")[0], "plugin": "unet",
                                        "distribution": "autosam", "version": "0.1.0"} for f in folders]}
    base = {f"{dataset}/{MODEL}/plans.json": (ws.results / NAME / MODEL / "plans.json").read_bytes(),
            f"{dataset}/{MODEL}/dataset.json": (ws.results / NAME / MODEL / "dataset.json").read_bytes(),
            f"{dataset}/{MODEL}/fold_all/checkpoint_final.pth": ws.checkpoint.read_bytes()} if base else {}
    path = d / "model.zip"
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("autosam_model.json", json.dumps(manifest))
        for name, data in {**base, **members}.items():
            zf.writestr(name, data)
        for name, target in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
        for name, data in again:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it writes
                zf.writestr(name, data)
    return path


class _Planted:
    """Unpickling this creates the marker file: what a forged model would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _forged(d: Path) -> bytes:
    import torch

    path = d / "forged.pth"
    torch.save({"format_version": 2, "method": "unet", "network": {}, "options": _Planted(str(d / MARKER))}, path)
    return path.read_bytes()


def _raw_pickle(d: Path) -> bytes:
    return pickle.dumps({"method": "unet", "network": {}, "best": np.float64(0.5)})


def _legacy_torch(d: Path) -> bytes:
    import torch

    path = d / "legacy.pth"
    torch.save({"method": "unet", "network": {}, "best": np.float64(0.5)}, path, _use_new_zipfile_serialization=False)
    return path.read_bytes()


def _corrupt_zip(ws: Workspace, d: Path) -> list[str]:
    member = f"{NAME}/{MODEL}/fold_all/checkpoint_final.pth"
    path = _zip(ws, d, {}, compression=zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 100, start + 400):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return [str(path)]


def _model_copy(ws: Workspace, d: Path, checkpoint: bytes) -> Path:
    model = d / "models" / NAME / MODEL
    shutil.copytree(ws.results / NAME / MODEL, model)
    (model / "fold_all" / "checkpoint_final.pth").write_bytes(checkpoint)
    return model


def _modelfolder(ws, d, checkpoint_fn):
    model = _model_copy(ws, d, checkpoint_fn(d))
    images = _inputs(d, data=ws.image.read_bytes())
    return ["-i", str(images), "-o", str(d / "pred"), "-m", str(model), "-f", "all", "-device", "cpu", "--quiet"]


def _raw_dataset(ws: Workspace, d: Path, labels: dict | None = None, dataset_json_text: str | None = None,
                 label_value: int | None = None) -> list[str]:
    """A copy of the example dataset under id 996 with another dataset.json or label value."""
    raw = d / "raw" / "Dataset996_Hostile"
    shutil.copytree(ws.raw / NAME, raw)
    dj = json.loads((raw / "dataset.json").read_text())
    if labels is not None:
        dj["labels"] = labels
    (raw / "dataset.json").write_text(dataset_json_text if dataset_json_text is not None else json.dumps(dj))
    if label_value is not None:
        import SimpleITK as sitk

        label = raw / "labelsTr" / "case_000.nii.gz"
        img = sitk.ReadImage(str(label))
        arr = sitk.GetArrayFromImage(img)
        if isinstance(label_value, float):
            arr = arr.astype(np.float32)
        arr[0, 0, 0] = label_value
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        sitk.WriteImage(out, str(label))
    return ["-d", "996", "-c", "3d", "--target", "cpu", "-np", "1"]


def _boxes_predict(ws: Workspace, d: Path, boxes: str) -> list[str]:
    images = _inputs(d, data=ws.image.read_bytes())
    (d / "boxes.json").write_text(boxes)
    args = _predict(ws, d, images, "--boxes-json", str(d / "boxes.json"))
    args[args.index("unet")] = "medlsam"
    return args


def _segment_box(ws: Workspace, d: Path, boxes: str) -> list[str]:
    (d / "boxes.json").write_text(boxes)
    return ["-i", str(ws.image), "-o", str(d / "out" / "seg.nii.gz"), "--boxes-json", str(d / "boxes.json"),
            "--backbone", "tiny", "-q"]


def _pretrained(ws: Workspace, d: Path) -> list[str]:
    (d / "weights.pth").write_bytes(_forged(d))
    return [str(DATASET_ID), "3d", "unet", "0", "-pretrained_weights", str(d / "weights.pth"), "--epochs", "1",
            "-device", "cpu", "--num-workers", "0"]


def _existing_prediction(ws: Workspace, d: Path) -> list[str]:
    out = d / "pred"
    shutil.copytree(ws.root / "reference_prediction", out)
    return _predict(ws, d, _inputs(d, data=ws.image.read_bytes()), out=out)


def _foreign(target: str):
    def setup(ws, d):
        raw = d / "raw" / NAME
        shutil.copytree(ws.raw / NAME, raw)
        if not (raw / "labelsTs").is_dir():
            shutil.copytree(raw / "labelsTr", raw / "labelsTs")
        images = _inputs(d, "case_000_0000.nii.gz", ws.image.read_bytes())
        return _predict(ws, d, images, out=raw / target)
    return setup


def _files(*names):
    return lambda ws, d: [d / n for n in names]


def _all_files(folder: str):
    return lambda ws, d: sorted(p for p in (d / folder).rglob("*") if p.is_file())


CASES = [
    # model zips (autosam_install_pretrained_model_from_zip)
    Case("zip_slip", "reliability: zip-slip", "install",
         lambda ws, d: [str(_zip(ws, d, {f"{NAME}/{MODEL}/../../../{MARKER}": "x"}))], ("'..'",), own_results=True,
         quick=True),
    Case("zip_absolute_member", "reliability: absolute member", "install",
         lambda ws, d: [str(_zip(ws, d, {f"/tmp/{MARKER}": "x"}))], ("absolute path",), own_results=True),
    Case("zip_symlink_member", "reliability: symlink member", "install",
         lambda ws, d: [str(_zip(ws, d, {}, links=[(f"{NAME}/{MODEL}/fold_all/progress.png", "/etc/passwd")]))],
         ("symbolic link",), own_results=True),
    Case("zip_forged_pickle", "reliability: forged pickle", "install",
         lambda ws, d: [str(_zip(ws, d, {f"{NAME}/{MODEL}/fold_all/checkpoint_final.pth": _forged(d)}))],
         ("holds Python objects",), own_results=True),
    Case("zip_forged_pickle_trust_env", "1: trust variable and a stranger's zip", "install",
         lambda ws, d: [str(_zip(ws, d, {f"{NAME}/{MODEL}/fold_all/checkpoint_final.pth": _forged(d)}))],
         ("holds Python objects",), own_results=True, env={"AUTOSAM_TRUST_CHECKPOINT_PICKLE": "1"}, quick=True),
    Case("zip_bomb", "3: zip expansion", "install",
         lambda ws, d: [str(_zip(ws, d, {f"{NAME}/{MODEL}/fold_all/progress.png": b"\0" * (200 << 20)},
                                 compression=zipfile.ZIP_DEFLATED)), "--max_unpacked_gb", "0.1"],
         ("more than the limit",), own_results=True, quick=True),
    Case("zip_name_newline", "4: dataset name with a newline", "install",
         lambda ws, d: [str(_zip(ws, d, {}, dataset=NAME + "\n"))], ("'dataset' must be a name",), own_results=True),
    Case("zip_id_collision", "4: second name for a dataset id", "install",
         lambda ws, d: [str(_zip(ws, d, {}))], ("ambiguous",), own_results=True),
    Case("zip_folder_twice", "4: manifest lists a folder twice", "install",
         lambda ws, d: [str(_zip(ws, d, {}, folders=(MODEL, MODEL)))], ("listed twice",), own_results=True),
    Case("zip_corrupt_member", "11: corrupt zip member", "install", _corrupt_zip, ("is corrupt",), own_results=True),
    Case("zip_file_size_limit", "11: file-size error during install", "install",
         lambda ws, d: [str(_zip(ws, d, {f"{NAME}/{MODEL}/fold_all/progress.png": os.urandom(1 << 20)}))],
         ("file too large while writing",), own_results=True, fsize=512 << 10),
    Case("zip_not_a_zip", "reliability: not a zip", "install",
         lambda ws, d: [str((d / "m.zip").write_text("hello") and d / "m.zip")], ("not a zip file",), own_results=True),
    Case("zip_method_missing", "reliability: method not installed", "install",
         lambda ws, d: [str(_zip(ws, d, {f"{NAME}/ghost__autosamPlans__3d/{f}": "{}" for f in (
             "plans.json", "dataset.json", "fold_all/checkpoint_final.pth")}, base=False, manifest={
             "format": "autosam-model-zip", "format_version": 1, "dataset": NAME,
             "models": [{"folder": "ghost__autosamPlans__3d", "method": "ghost", "plugin": "ghost",
                         "distribution": "ghost-seg", "version": "2.3.1"}]}))], ("pip install",), own_results=True),
    Case("zip_duplicate_member", "reliability: duplicate member", "install",
         lambda ws, d: [str(_zip(ws, d, {}, again=[(f"{NAME}/{MODEL}/plans.json", "{}")]))], ("duplicate member",),
         own_results=True),
    Case("zip_backslash_member", "reliability: backslash in a member", "install",
         lambda ws, d: [str(_zip(ws, d, {f"{NAME}\\{MODEL}\\..\\..\\{MARKER}": "x"}))], ("backslash",),
         own_results=True),
    Case("zip_no_model", "reliability: manifest without models", "install",
         lambda ws, d: [str(_zip(ws, d, {}, base=False, manifest={"format": "autosam-model-zip", "format_version": 1,
                                                                   "dataset": NAME, "models": []}))],
         ("lists no model",), own_results=True),
    Case("zip_installed_already", "reliability: an installed model is not replaced without --force", "install",
         lambda ws, d: (shutil.copytree(ws.results / NAME / MODEL, d / "results" / NAME / MODEL)
                        and [str(_zip(ws, d, {f"{NAME}/{MODEL}/fold_all/progress.png": b"new"}))]),
         ("--force",), own_results=True, protect=_all_files("results")),
    # images (autosam_predict)
    Case("huge_volume", "3: 2 MB file declaring 1024x1024x512", "predict", _image_case(lambda ws: _huge()),
         ("exceeds the limit",), quick=True),
    Case("zero_size", "7: size 0 in the header", "predict", _image_case(lambda ws: _with_dim(0)),
         ("at least 1",)),
    Case("negative_size", "7: negative size in the header", "predict", _image_case(lambda ws: _with_dim(-4)),
         ("at least 1",)),
    Case("nan_voxels", "6: NaN voxels", "predict", _image_case(lambda ws: _nonfinite(np.nan)), ("NaN or infinite",)),
    Case("inf_voxels", "6: infinite voxels", "predict", _image_case(lambda ws: _nonfinite(np.inf)),
         ("NaN or infinite",)),
    Case("non_utf8_name", "10: file name not UTF-8", "predict",
         _image_case(lambda ws: ws.image.read_bytes(), name=b"case\xff_0000.nii.gz"), ("not valid UTF-8",), quick=True),
    Case("newline_in_path", "14: newline in a file name", "predict",
         _image_case(lambda ws: ws.image.read_bytes()[:300], folder="im\nages"), ("truncated",)),
    Case("truncated_image", "reliability: truncated .nii.gz", "predict",
         _image_case(lambda ws: ws.image.read_bytes()[:-100]), ("truncated",)),
    Case("corrupt_gzip", "reliability: corrupt gzip stream", "predict",
         _image_case(lambda ws: ws.image.read_bytes()[:200] + bytes(b ^ 0x5A for b in ws.image.read_bytes()[200:600])
                     + ws.image.read_bytes()[600:]), ("corrupt gzip", "truncated")),
    Case("image_2d", "reliability: a 2D image", "predict",
         _image_case(lambda ws: gzip.compress(bytes(_nifti((1, 8, 8))[:40]) + np.array([2, 8, 8, 1, 1, 1, 1, 1], "<i2")
                                              .tobytes() + bytes(_nifti((1, 8, 8))[56:]))), ("3D",)),
    Case("truncated_mha", "reliability: truncated .mha", "segment_box",
         lambda ws, d: ["-i", str(_truncated_mha(d)), "-o", str(d / "out" / "seg.nii.gz"), "--box", "0", "0", "0", "1",
                        "1", "1", "--backbone", "tiny", "-q"], ("case_0000.mha",), empty=_files("out")),
    Case("vector_image", "reliability: a multi-component image", "predict",
         _image_case(lambda ws: _vector_image()), ("single-component",)),
    Case("no_inputs", "reliability: no image named <case>_0000", "predict",
         _image_case(lambda ws: ws.image.read_bytes(), name="case.nii.gz"), ("no images named",)),
    Case("shell_metacharacters_name", "reliability: shell metacharacters in a name", "predict",
         _image_case(lambda ws: ws.image.read_bytes()[:300], name=f"$(mkdir {MARKER});`mkdir {MARKER}`_0000.nii.gz"),
         ("truncated",)),
    Case("shell_metacharacters_id", "reliability: shell metacharacters in -d", "predict",
         lambda ws, d: [a if a != str(DATASET_ID) else f"{DATASET_ID}; mkdir {MARKER}"
                        for a in _predict(ws, d, _inputs(d, data=ws.image.read_bytes()))], ("integer id",)),
    # output folders
    Case("output_is_labels_folder", "5: -o a raw dataset's labelsTs", "predict", _foreign("labelsTs"),
         ("not a prediction folder",), protect=_all_files(f"raw/{NAME}"), quick=True),
    Case("output_is_raw_dataset", "5: -o another dataset's raw folder", "predict", _foreign(""),
         ("not a prediction folder",), protect=_all_files(f"raw/{NAME}")),
    Case("output_is_a_file", "reliability: -o an existing file", "predict",
         lambda ws, d: (d / "pred").write_text("keep") and _predict(ws, d, _inputs(d, data=ws.image.read_bytes())),
         ("is a file",), protect=_files("pred")),
    Case("output_under_a_file", "reliability: -o under a file", "predict",
         lambda ws, d: (d / "notes").write_text("keep") and _predict(ws, d, _inputs(d, data=ws.image.read_bytes()),
                                                                       out=d / "notes" / "pred"),
         ("not a folder",), protect=_files("notes")),
    Case("output_read_only", "reliability: read-only output", "predict",
         lambda ws, d: _predict(ws, d, _inputs(d, data=ws.image.read_bytes()), out=Path("/sys/autosam_hostile_pred")),
         ("permission", "read-only")),
    Case("output_disk_full", "reliability: full disk (file size limit) over a previous prediction", "predict",
         _existing_prediction, ("file too large while writing",), fsize=2048, protect=_all_files("pred")),
    # labels and dataset.json
    Case("labels_same_value", "9: two names, one value", "plan",
         lambda ws, d: _raw_dataset(ws, d, {"background": 0, "liver": 1, "hepar": 1, "spleen": 2}),
         ("have the same value",), own_raw=True, empty=_files("preprocessed"), quick=True),
    Case("label_value_huge", "12: label value 100000000", "plan",
         lambda ws, d: _raw_dataset(ws, d, {"background": 0, "liver": 1, "spleen": 100000000}),
         ("consecutive",), own_raw=True, empty=_files("preprocessed")),
    Case("undeclared_label", "reliability: undeclared label value", "plan",
         lambda ws, d: _raw_dataset(ws, d, label_value=9), ("not declare",), own_raw=True, empty=_files("preprocessed"),
         listing=True),
    Case("dataset_json_not_json", "reliability: dataset.json not JSON", "plan",
         lambda ws, d: _raw_dataset(ws, d, dataset_json_text='{"labels": '), ("not valid JSON",),
         own_raw=True, empty=_files("preprocessed")),
    Case("labels_without_background", "reliability: labels without background 0", "plan",
         lambda ws, d: _raw_dataset(ws, d, {"liver": 1, "spleen": 2}), ("to 0",), own_raw=True,
         empty=_files("preprocessed")),
    Case("label_file_nan", "reliability: NaN in a label file", "plan",
         lambda ws, d: _raw_dataset(ws, d, label_value=np.nan), ("whole numbers",), own_raw=True,
         empty=_files("preprocessed")),
    Case("reference_fractional_label", "8: reference label map with 1.5", "evaluate",
         lambda ws, d: _evaluate_fractional(ws, d), ("whole numbers",), empty=_files("summary")),
    # checkpoints
    Case("checkpoint_forged", "reliability: forged checkpoint", "modelfolder",
         lambda ws, d: _modelfolder(ws, d, _forged), ("holds Python objects",)),
    Case("checkpoint_raw_pickle", "14: raw-pickle checkpoint", "modelfolder",
         lambda ws, d: _modelfolder(ws, d, _raw_pickle), ("zip format",), quick=True),
    Case("checkpoint_legacy_torch", "14: legacy torch checkpoint", "modelfolder",
         lambda ws, d: _modelfolder(ws, d, _legacy_torch), ("zip format",)),
    Case("checkpoint_wrong_shapes", "reliability: weights of another network", "modelfolder",
         lambda ws, d: _modelfolder(ws, d, lambda d: _wrong_shapes(ws, d)), ("do not fit",)),
    Case("pretrained_weights_forged", "14: refused -pretrained_weights", "train", _pretrained,
         ("holds Python objects",), own_results=True),
    # box prompts
    Case("boxes_100000_predict", "2: 100,000 boxes in --boxes-json", "predict",
         lambda ws, d: _boxes_predict(ws, d, json.dumps({"case": {"1": [[0, 0, 0, 1, 1, 1]] * 100000}})),
         ("boxes.json", "exceed the limit")),
    Case("boxes_huge_integer", "13: 400-digit integer in --boxes-json", "predict",
         lambda ws, d: _boxes_predict(ws, d, '{"case": {"1": [0, 0, 0, 1, 1, 1' + "0" * 400 + ']}}'),
         ("out of range",)),
    Case("segment_box_100000", "2: 100,000 boxes in autosam_segment_box", "segment_box",
         lambda ws, d: _segment_box(ws, d, json.dumps({"1": [[0, 0, 0, 1, 1, 1]] * 100000})), ("boxes.json",),
         empty=_files("out")),
    Case("segment_box_fraction", "13: non-integer box in autosam_segment_box", "segment_box",
         lambda ws, d: _segment_box(ws, d, '{"1": [0, 0, 0, 1, 1, 2.5]}'), ("boxes.json",), empty=_files("out")),
    Case("segment_box_infinity", "13: Infinity in autosam_segment_box", "segment_box",
         lambda ws, d: _segment_box(ws, d, '{"1": [0, 0, 0, 1, 1, Infinity]}'), ("boxes.json",), empty=_files("out")),
    Case("segment_box_label_40000", "13: label 40000 in autosam_segment_box", "segment_box",
         lambda ws, d: _segment_box(ws, d, '{"40000": [0, 0, 0, 1, 1, 1]}'), ("boxes.json",), empty=_files("out")),
    Case("segment_box_deep_json", "13: deeply nested JSON", "segment_box",
         lambda ws, d: _segment_box(ws, d, "[" * 100000 + "]" * 100000), ("boxes.json",), empty=_files("out")),
]


def _truncated_mha(d: Path) -> Path:
    import SimpleITK as sitk

    path = d / "case_0000.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(6, 8, 8)).astype(np.float32)),
                    str(path), False)
    path.write_bytes(path.read_bytes()[:-200])
    return path


def _vector_image() -> bytes:
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((6, 8, 8, 3), np.float32), isVector=True), str(path))
        return path.read_bytes()


def _wrong_shapes(ws: Workspace, d: Path) -> bytes:
    import torch

    ckpt = torch.load(ws.checkpoint, weights_only=True)
    for key in list(ckpt["network"])[:3]:
        ckpt["network"][key] = torch.zeros(3, 1)
    path = d / "wrong.pth"
    torch.save(ckpt, path)
    return path.read_bytes()


def _evaluate_fractional(ws: Workspace, d: Path) -> list[str]:
    import SimpleITK as sitk

    ref, pred = d / "ref", d / "pred"
    ref.mkdir(), pred.mkdir()
    seg = np.zeros((4, 6, 6), np.float32)
    seg[1:3, 2:4, 2:4] = 1
    sitk.WriteImage(sitk.GetImageFromArray(seg.astype(np.uint8)), str(pred / "c1.nii.gz"))
    seg[0, 0, 0] = 1.5
    sitk.WriteImage(sitk.GetImageFromArray(seg), str(ref / "c1.nii.gz"))
    (d / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"}))
    return [str(ref), str(pred), "-djfile", str(d / "dataset.json"), "-o", str(d / "summary" / "summary.json")]


# ------------------------------------------------------------------------------ running and classifying
def _limits(memory_bytes: int, fsize: int | None):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return apply


def _digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "missing" for p in paths}


def run_case(ws: Workspace, case: Case, memory_gb: float, timeout: float) -> dict:
    d = ws.case_dir(case.name)
    env = {**ws.env, **case.env}
    if case.own_raw:
        env["AUTOSAM_RAW"], env["AUTOSAM_PREPROCESSED"] = str(d / "raw"), str(d / "preprocessed")
    if case.own_results:
        env["AUTOSAM_RESULTS"] = str(d / "results")
        (d / "results").mkdir()
        if case.name == "zip_id_collision":
            (d / "results" / f"Dataset{DATASET_ID}_Other").mkdir()
    args = case.setup(ws, d)
    results_before = {p for p in (d / "results").rglob("*")} if case.own_results else set()
    protected = case.protect(ws, d) if case.protect else []
    before = _digest(protected)
    prog, module, function = COMMANDS[case.command]
    code = f"import sys; sys.argv[0] = {prog!r}; from {module} import {function} as m; sys.exit(m())"
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=d, capture_output=True,
                              timeout=timeout, preexec_fn=_limits(int(memory_gb * (1 << 30)), case.fsize))
        rc, err = proc.returncode, proc.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired as exc:
        rc, err = None, (exc.stderr or b"").decode("utf-8", "replace")
    seconds = time.monotonic() - start
    left = []
    if _digest(protected) != before:
        left.append("protected files changed")
    for folder in (case.empty(ws, d) if case.empty else []):
        if folder.exists() and any(p.is_file() for p in folder.rglob("*")):
            left.append(f"files written in {folder.name}")
    if case.own_results and set((d / "results").rglob("*")) - results_before:
        left.append("files left in AUTOSAM_RESULTS")
    if case.command in ("predict", "modelfolder") and any((d / "pred").glob("*.nii.gz")) and case.name != "output_disk_full":
        left.append("a prediction was written")
    left += [f"{p.relative_to(d)} left behind" for p in d.rglob(".autosam*.lock")]
    left += [f"{p.relative_to(d)} left behind" for p in d.rglob("*.partial*")]
    if any(p.name == MARKER for p in list(d.rglob("*")) + list(Path("/tmp").glob(MARKER))):
        left.append(f"{MARKER} was created: the input ran code")
    lines = err.strip().splitlines()
    errors = [i for i, ln in enumerate(lines) if ln.startswith(f"{prog}: error")]
    if not errors and rc not in (0, None) and lines:  # SystemExit(message): the message alone, last
        errors = [len(lines) - 1]
    after = lines[errors[0] + 1:] if len(errors) == 1 else []  # one line: nothing may follow it
    if case.listing:
        after = [ln for ln in after if not ln.startswith("  - ")][1:]  # the list, then one closing line
    errors = [lines[i] for i in errors]
    if rc is None:
        verdict, why = "crash", f"no answer within {timeout:.0f} s"
    elif rc < 0 or rc in (134, 137, 139) or "Traceback" in err or "MemoryError" in err:
        verdict, why = "crash", f"exit {rc}" + (": traceback" if "Traceback" in err else "")
    elif rc == 0 or left:
        verdict, why = "silent", "accepted (exit 0)" if rc == 0 else "; ".join(left)
    elif len(errors) == 1 and not after and any(w.lower() in errors[0].lower() for w in case.words):
        verdict, why = "refused cleanly", ""
    else:
        verdict, why = "unclear", (f"{len(errors)} error line(s) and {len(after)} line(s) after it, expected one "
                                   f"naming {' or '.join(case.words)}")
    return {"case": case.name, "item": case.item, "command": prog, "verdict": verdict, "why": why, "rc": rc,
            "seconds": round(seconds, 1), "error": errors[0] if errors else err.strip().splitlines()[-1:] or ""}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the quick subset (tests/test_hostile_matrix.py)")
    p.add_argument("--only", default=None, help="comma-separated case names")
    p.add_argument("--memory-gb", type=float, default=4.0, help="address-space cap of each command (default 4 GiB)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per command (default 300)")
    p.add_argument("--work", type=Path, default=None, help="workspace folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the workspace")
    p.add_argument("--json", type=Path, default=None, help="also write the per-case results here")
    a = p.parse_args(argv)
    cases = [c for c in CASES if (not a.quick or c.quick) and (a.only is None or c.name in a.only.split(","))]
    root = Path(a.work or tempfile.mkdtemp(prefix="autosam_hostile_"))
    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(root)
    try:
        start = time.monotonic()
        ws.build()
        reference = root / "reference_prediction"
        ref = subprocess.run([sys.executable, "-m", "autosam.cli.predict", *_predict(ws, root, ws.image.parent,
                                                                                      out=reference)],
                             env=ws.env, capture_output=True, text=True, timeout=a.timeout)
        if ref.returncode != 0:  # the setup must work, or every refusal below means nothing
            print(ref.stderr[-3000:], file=sys.stderr)
            raise SystemExit("hostile_inputs: the valid prediction of the setup failed")
        print(f"setup: {time.monotonic() - start:.0f} s", flush=True)
        results = []
        for case in cases:
            r = run_case(ws, case, a.memory_gb, a.timeout)
            results.append(r)
            extra = f" ({r['why']})" if r["why"] else ""
            print(f"{r['verdict']:>15}  {case.name:<28} {r['seconds']:>5.1f} s  {r['error']}{extra}", flush=True)
        if a.json:
            a.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"workspace kept: {root}")
    counts = {v: sum(r["verdict"] == v for r in results) for v in ("refused cleanly", "silent", "crash", "unclear")}
    line = (f"{len(results)} inputs tried, {counts['refused cleanly']} refused cleanly, {counts['silent']} silent, "
            f"{counts['crash']} crashes" + (f", {counts['unclear']} unclear" if counts["unclear"] else ""))
    print(line)
    return 0 if counts["refused cleanly"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
