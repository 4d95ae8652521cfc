"""Sharing trained models as zip files (nnU-Net's ``export_model_to_zip`` / ``install_pretrained_model_from_zip``).

A model zip holds, for one dataset, one or more model folders exactly as they lie in
``AUTOSAM_RESULTS``, plus a manifest ``autosam_model.json`` at its root::

    autosam_model.json
    Dataset004_Hippocampus/unet__autosamPlans__3d/plans.json
    Dataset004_Hippocampus/unet__autosamPlans__3d/dataset.json
    Dataset004_Hippocampus/unet__autosamPlans__3d/dataset_fingerprint.json      (when present)
    Dataset004_Hippocampus/unet__autosamPlans__3d/fold_0/checkpoint_final.pth
    Dataset004_Hippocampus/unet__autosamPlans__3d/fold_0/progress.png           (when present)
    Dataset004_Hippocampus/unet__autosamPlans__3d/fold_0/validation/...         (with the cross-validation predictions)

The manifest records, per model folder, the method's name, the plugin and Python distribution
that provided it and that distribution's version (read from the checkpoints), the plans, the
configuration, the folds and the checkpoints. Installing refuses, before anything is written, a
zip whose members are not exactly this layout: an absolute path, a ``..`` component, a backslash,
a link, a duplicate name, a file outside the model folders of the manifest or of an unexpected
kind, a dataset or folder name that is not a full match on a safe character set, a folder listed
twice, a dataset id another dataset name already uses, or a zip whose declared unpacked size
exceeds the limit (``AUTOSAM_MAX_UNPACKED_GB``) or the free disk (the checks:
:mod:`autosam.inference.model_zip`). It refuses a model whose
method is not installed (the error names the package and version to install), and a checkpoint
that does not load with ``torch.load(weights_only=True)`` (a forged pickle never runs, whatever
``AUTOSAM_TRUST_CHECKPOINT_PICKLE`` says) or holds
another method than its manifest entry; and it never replaces an installed model folder unless asked to (``force``); a
replacement is swapped in whole, so an interrupted install leaves the old model or the new one.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from autosam import __version__, paths
from autosam.experiment_planning.plans import DEFAULT_PLANS_NAME
from autosam.inference.model_zip import (  # noqa: F401  (the checks of an install, re-exported)
    FOLD_RE,
    INSTALLED_FROM,
    MANIFEST,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    MODEL_FILES,
    MODEL_FOLDER_RE,
    ModelZipError,
    check_dataset_id_free,
    check_members,
    check_methods_installed,
    check_size,
    read_manifest,
    unpack,
)
from autosam.inference.predictor import checkpoint_file_name
from autosam.io.dataset import dataset_name_from_id
from autosam.utils.files import atomic_path, write_json

logger = logging.getLogger(__name__)


@dataclass
class ExportedModel:
    folder: Path
    folds: list[int | str]
    checkpoints: list[str]


# ------------------------------------------------------------------------------ export
def _trained_model_folders(results_ds: Path, plans_name: str, methods: Sequence[str] | None,
                           configurations: Sequence[str] | None) -> list[Path]:
    found = []
    for d in sorted(p for p in results_ds.iterdir() if p.is_dir() and MODEL_FOLDER_RE.fullmatch(p.name)):
        method, plans, config = d.name.split("__")
        if plans == plans_name and (not methods or method in methods) and (not configurations or config in configurations):
            found.append(d)
    return found


def _fold_name(fold) -> str:
    return f"fold_{fold}"


def _folds_to_export(model: Path, folds: Sequence[int | str] | None, checkpoint_files: Sequence[str],
                     strict: bool) -> list[int | str]:
    def complete(fold) -> bool:
        return all((model / _fold_name(fold) / c).is_file() for c in checkpoint_files)

    if folds is None:
        candidates = [p.name[len("fold_"):] for p in model.iterdir() if re.fullmatch(FOLD_RE, p.name)]
        chosen = sorted((int(f) if f.isdigit() else f for f in candidates if complete(f)),
                        key=lambda f: (isinstance(f, str), f if isinstance(f, int) else 0))
    else:
        chosen = []
        for f in folds:
            if complete(f):
                chosen.append(f)
                continue
            missing = [c for c in checkpoint_files if not (model / _fold_name(f) / c).is_file()]
            message = f"{model / _fold_name(f)}: no {', '.join(missing)}"
            if strict:
                raise FileNotFoundError(message + " (--not_strict exports the folds that have them)")
            logger.warning("%s; fold %s left out", message, f)
    return chosen


def _method_record(model: Path, folds: Sequence, checkpoint_file: str) -> dict:
    """Method, plugin, distribution and version as recorded in the model's checkpoints."""
    from autosam.training.checkpoint import load_checkpoint

    records = []
    for f in folds:
        ckpt = load_checkpoint(model / _fold_name(f) / checkpoint_file)
        records.append({k: ckpt.get(k) for k in ("method", "plugin", "distribution", "version")})
        del ckpt
    first = records[0]
    for f, r in zip(folds, records):
        if r != first:
            raise ValueError(f"{model}: fold {f} was trained with {r}, fold {folds[0]} with {first}; "
                             "export folds of one method and version only")
    return first


def export_model_to_zip(dataset: str | int, output_file: str | Path, configurations: Sequence[str] | None = None,
                        methods: Sequence[str] | None = None, plans_name: str = DEFAULT_PLANS_NAME,
                        folds: Sequence[int | str] | None = None,
                        checkpoints: Sequence[str] = ("checkpoint_final.pth",), strict: bool = True,
                        export_crossval_predictions: bool = False) -> list[ExportedModel]:
    """Write the trained models of ``dataset`` (every ``<method>__<plans>__<config>`` folder of the
    plans, narrowed by ``methods`` and ``configurations``) to ``output_file`` (written atomically).

    ``folds``: the folds to export (default: every fold that has all ``checkpoints``); a fold given
    without them is an error, unless ``strict`` is False (then it is left out with a warning).
    """
    name = dataset_name_from_id(dataset)
    results_ds = paths.results_dir() / name
    if not results_ds.is_dir():
        raise FileNotFoundError(f"{results_ds}: no trained models of {name}")
    checkpoint_files = [checkpoint_file_name(c) for c in checkpoints]
    models = _trained_model_folders(results_ds, plans_name, methods, configurations)
    if not models:
        present = sorted(p.name for p in results_ds.iterdir() if p.is_dir() and MODEL_FOLDER_RE.fullmatch(p.name))
        raise FileNotFoundError(f"{results_ds}: no model folder of plans {plans_name!r}"
                                + (f", methods {list(methods)}" if methods else "")
                                + (f", configurations {list(configurations)}" if configurations else "")
                                + f"; trained models: {', '.join(present) or 'none'}")
    manifest = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "dataset": name,
                "autosam_version": __version__, "models": []}
    members: list[tuple[Path, str]] = []
    exported = []
    for model in models:
        chosen = _folds_to_export(model, folds, checkpoint_files, strict)
        if not chosen:
            message = f"{model}: no fold has {', '.join(checkpoint_files)}"
            if strict or len(models) == 1:
                raise FileNotFoundError(message)
            logger.warning("%s; model left out", message)
            continue
        if not (model / "plans.json").is_file() or not (model / "dataset.json").is_file():
            raise FileNotFoundError(f"{model}: plans.json and dataset.json are needed to share a model")
        record = _method_record(model, chosen, checkpoint_files[0])
        _, plans, config = model.name.split("__")
        manifest["models"].append({"folder": model.name, **record, "plans": plans, "configuration": config,
                                   "folds": [str(f) for f in chosen], "checkpoints": checkpoint_files,
                                   "crossval_predictions": export_crossval_predictions})
        prefix = f"{name}/{model.name}"
        members += [(model / f, f"{prefix}/{f}") for f in MODEL_FILES if (model / f).is_file()]
        for f in chosen:
            fold_dir = model / _fold_name(f)
            members += [(fold_dir / c, f"{prefix}/{_fold_name(f)}/{c}") for c in checkpoint_files]
            if (fold_dir / "progress.png").is_file():
                members.append((fold_dir / "progress.png", f"{prefix}/{_fold_name(f)}/progress.png"))
            if export_crossval_predictions:
                validation = fold_dir / "validation"
                files = sorted(p for p in validation.iterdir() if p.is_file() and not p.name.startswith(".")) \
                    if validation.is_dir() else []
                if not files:
                    raise FileNotFoundError(f"{validation}: no cross-validation predictions to export")
                members += [(p, f"{prefix}/{_fold_name(f)}/validation/{p.name}") for p in files]
        exported.append(ExportedModel(model, chosen, checkpoint_files))
    output_file = Path(output_file)
    with atomic_path(output_file, ".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, _json_text(manifest))
            for source, arcname in members:
                zf.write(source, arcname)
    return exported


def _json_text(obj) -> str:
    import json

    return json.dumps(obj, indent=2) + "\n"



def install_model_from_zip(zip_file: str | Path, force: bool = False) -> list[Path]:
    """Install the model folders of ``zip_file`` into ``AUTOSAM_RESULTS/<dataset>/``.

    Every member is checked first (:func:`check_members`), then the methods
    (:func:`check_methods_installed`), then that no model folder exists already (unless ``force``);
    the files are unpacked next to their destination and each model folder is renamed into place.
    Returns the installed model folders.
    """
    zip_file = Path(zip_file)
    if not zip_file.is_file():
        raise FileNotFoundError(f"{zip_file}: zip file does not exist")
    try:
        zf = zipfile.ZipFile(zip_file)
    except zipfile.BadZipFile as exc:
        raise ModelZipError(f"{zip_file}: not a zip file ({exc})") from None
    with zf:
        manifest = read_manifest(zf, zip_file)
        files = check_members(zf, zip_file, manifest)
        check_methods_installed(manifest, zip_file)
        target_ds = paths.results_dir() / manifest["dataset"]
        targets = [target_ds / m["folder"] for m in manifest["models"]]
        existing = [t for t in targets if t.exists()]
        if existing and not force:
            raise FileExistsError(f"{existing[0]}: a model is installed here already; --force replaces it")
        check_dataset_id_free(manifest["dataset"], zip_file)
        check_size(files, zip_file, target_ds)
        created = not target_ds.exists()
        target_ds.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".install-", dir=target_ds))
        installed = False
        try:
            unpack(zf, zip_file, files, staging, target_ds)
            _verify_checkpoints(staging, manifest, zip_file)
            for m in manifest["models"]:  # provenance, next to the model's own files
                write_json(staging / m["folder"] / INSTALLED_FROM, {"zip": str(zip_file.resolve()), **m})
            for target in targets:
                _swap_in(staging / target.name, target)
            installed = True
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if created and not installed:  # a refused install leaves no empty dataset folder behind
                try:
                    target_ds.rmdir()
                except OSError:
                    pass
    return targets


def _verify_checkpoints(staging: Path, manifest: dict, zip_path: Path) -> None:
    """Every unpacked checkpoint must load without running code (``torch.load(weights_only=True)``,
    :func:`autosam.training.checkpoint.load_checkpoint`) and hold the method its manifest entry names."""
    from autosam.training.checkpoint import load_checkpoint
    from autosam.utils.files import UntrustedPickleError

    for m in manifest["models"]:
        for path in sorted((staging / m["folder"]).glob("fold_*/*.pth")):
            member = f"{manifest['dataset']}/{m['folder']}/{path.parent.name}/{path.name}"
            try:  # never trusted: a stranger's file, whatever AUTOSAM_TRUST_CHECKPOINT_PICKLE says
                ckpt = load_checkpoint(path, trust=False)
            except UntrustedPickleError as exc:
                found = re.search(r"\((the global [^)]*)\)", str(exc))
                raise ModelZipError(
                    f"{zip_path}: member {member!r}: holds Python objects besides tensors and plain types"
                    f"{f' ({found.group(1)})' if found else ''}; loading it would unpickle them, which can run any "
                    "code, so a model zip's checkpoints must load without it (AUTOSAM_TRUST_CHECKPOINT_PICKLE does "
                    "not apply to installing); nothing was installed") from None
            except ValueError as exc:
                raise ModelZipError(f"{zip_path}: member {member!r}: {str(exc).replace(str(path), 'checkpoint')}; "
                                    "nothing was installed") from None
            if ckpt.get("method") != m["method"]:
                raise ModelZipError(f"{zip_path}: member {member!r} holds method {ckpt.get('method')!r}, the manifest "
                                    f"says {m['method']!r}; nothing was installed")
            del ckpt


def _swap_in(new: Path, target: Path) -> None:
    """Rename ``new`` onto ``target``; an existing ``target`` is moved aside first and removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

