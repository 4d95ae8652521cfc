"""The checks of :func:`autosam.inference.model_sharing.install_model_from_zip`, which all run
before anything is written: the manifest, every member's name and kind, the methods, the dataset
id, the unpacked size; and unpacking that names the member or the file at fault.

A zip is a stranger's file: names are matched in full on a safe character set (a name ending in a
newline does not pass), a dataset id already used under another name is refused (it would make
``-d <id>`` ambiguous), and a corrupt member or a full disk is one error naming it.
"""
from __future__ import annotations

import errno
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from autosam import paths
from autosam.io.dataset import SAFE_DATASET_RE
from autosam.io.limits import check_unpacked_size

MANIFEST = "autosam_model.json"
MANIFEST_FORMAT = "autosam-model-zip"
MANIFEST_VERSION = 1
#: Written into each installed model folder: the zip it came from and its manifest entry.
INSTALLED_FROM = "installed_from.json"
#: Names from a zip are matched in full (``re.fullmatch``: a trailing newline does not pass) on a safe set.
MODEL_FOLDER_RE = re.compile(r"[A-Za-z0-9_.\-]+__[A-Za-z0-9_.\-]+__[A-Za-z0-9_.\-]+")
MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
FOLD_RE = r"fold_(?:\d+|all)"
_FOLD_MEMBER_RE = re.compile(
    rf"(?P<fold>{FOLD_RE})/(?:[A-Za-z0-9][A-Za-z0-9_.\-]*\.pth|progress\.png"
    r"|validation/[A-Za-z0-9][A-Za-z0-9_.\-]*)")


class ModelZipError(ValueError):
    """A model zip that cannot be installed; the message names the zip, the member and the problem."""



def read_manifest(zf: zipfile.ZipFile, zip_path: Path) -> dict:
    import json

    try:
        manifest = json.loads(zf.read(MANIFEST))
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ModelZipError(f"{zip_path}: member {MANIFEST!r} is corrupt ({exc}); the zip is damaged") from None
    except KeyError:
        raise ModelZipError(f"{zip_path}: no {MANIFEST}; not a model zip written by autosam_export_model_to_zip") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelZipError(f"{zip_path}: {MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelZipError(f"{zip_path}: {MANIFEST} is not an autosam model manifest")
    if manifest.get("format_version", 0) > MANIFEST_VERSION:
        raise ModelZipError(f"{zip_path}: model zip format {manifest['format_version']} is newer than this autosam "
                            "understands; upgrade autosam")
    dataset = manifest.get("dataset")
    if not isinstance(dataset, str) or not SAFE_DATASET_RE.fullmatch(dataset):
        raise ModelZipError(f"{zip_path}: {MANIFEST}: 'dataset' must be a name DatasetXXX_Name (letters, digits, "
                            f"'_', '.', '-'), got {dataset!r}")
    models = manifest.get("models")
    if not isinstance(models, list) or not models:
        raise ModelZipError(f"{zip_path}: {MANIFEST} lists no model")
    listed: set[str] = set()
    for m in models:
        folder = m.get("folder") if isinstance(m, dict) else None
        if not isinstance(folder, str) or not MODEL_FOLDER_RE.fullmatch(folder) or folder.split("__")[0] != m.get("method"):
            raise ModelZipError(f"{zip_path}: {MANIFEST}: bad model entry {m!r} (a folder <method>__<plans>__<config> "
                                "of the method named in it)")
        if folder in listed:
            raise ModelZipError(f"{zip_path}: {MANIFEST}: model folder {folder!r} is listed twice")
        listed.add(folder)
    return manifest


def check_members(zf: zipfile.ZipFile, zip_path: Path, manifest: dict) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every member of the zip, checked against the expected layout; returns the files to extract
    with their path relative to the results folder. Raises :class:`ModelZipError` at the first
    member at fault."""
    dataset = manifest["dataset"]
    folders = {m["folder"] for m in manifest["models"]}
    seen: set[str] = set()
    files = []
    for info in zf.infolist():
        member = info.filename
        problem = _member_problem(info, member, seen)
        if problem is None:
            seen.add(member)
            if member == MANIFEST:
                continue
            parts = member.split("/")
            inside = len(parts) >= 2 and parts[0] == dataset and parts[1] in folders
            relative = "/".join(parts[2:])
            if info.is_dir():
                if inside or member.rstrip("/") == dataset:
                    continue  # folders are created as their files need them
                problem = "a folder outside the model folders of the manifest"
            elif not inside:
                problem = f"outside the model folders {sorted(folders)} of {dataset} named in {MANIFEST}"
            elif relative not in MODEL_FILES and not _FOLD_MEMBER_RE.fullmatch(relative):
                problem = ("not part of a model's layout (plans.json, dataset.json, dataset_fingerprint.json, "
                           "fold_N/<checkpoint>.pth, fold_N/progress.png, fold_N/validation/<file>)")
        if problem is not None:
            raise ModelZipError(f"{zip_path}: member {member!r}: {problem}; nothing was installed")
        files.append((info, PurePosixPath(member)))
    for m in manifest["models"]:
        prefix = PurePosixPath(dataset, m["folder"])
        names = {str(p.relative_to(prefix)) for _, p in files if p.parts[:2] == prefix.parts}
        missing = [f for f in ("plans.json", "dataset.json") if f not in names]
        if not any(n.endswith(".pth") for n in names):
            missing.append("fold_N/checkpoint_*.pth")
        if missing:
            raise ModelZipError(f"{zip_path}: model {m['folder']} lacks {', '.join(missing)}; nothing was installed")
    return files


def _member_problem(info: zipfile.ZipInfo, member: str, seen: set[str]) -> str | None:
    if member.startswith("/") or re.match(r"^[A-Za-z]:", member):
        return "an absolute path"
    if "\\" in member:
        return "a backslash in the path"
    if any(part == ".." for part in member.split("/")):
        return "a '..' component (it would write outside the results folder)"
    if any(part in ("", ".") for part in member.rstrip("/").split("/")):
        return "an empty or '.' path component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    if member in seen:
        return "a duplicate member name"
    return None


def check_methods_installed(manifest: dict, zip_path: Path) -> None:
    """Every model's method must be registered; the error names the package and version to install."""
    from autosam.training.checkpoint import method_entry_for_checkpoint

    for m in manifest["models"]:
        method_entry_for_checkpoint(m, f"{zip_path} ({m['folder']})")



def check_dataset_id_free(dataset: str, zip_path: Path) -> None:
    """Refuse a dataset whose id is used under another name in the raw, preprocessed or results
    folder: after installing it every ``-d <id>`` would be ambiguous."""
    prefix = dataset[:len("Dataset000_")]
    for root in (paths.raw_dir(), paths.preprocessed_dir(), paths.results_dir()):
        root = Path(root)
        others = sorted(p.name for p in root.iterdir() if p.name.startswith(prefix) and p.name != dataset) \
            if root.is_dir() else []
        if others:
            raise ModelZipError(
                f"{zip_path}: dataset {dataset} has the id {int(dataset[7:10])} of {others[0]} in {root}; installing it "
                f"would make -d {int(dataset[7:10])} ambiguous. Rename one of them; nothing was installed")


def check_size(files, zip_path: Path, target_ds: Path) -> None:
    """The sizes the zip declares bound what unpacking writes (zipfile stops there): they must
    fit :func:`autosam.io.limits.max_unpacked_bytes` and the free disk space."""
    needed = sum(info.file_size for info, _ in files)
    check_unpacked_size(str(zip_path), needed)
    volume = next(p for p in (target_ds, *target_ds.parents) if p.exists())
    free = shutil.disk_usage(volume).free
    if needed > free:
        raise OSError(f"{zip_path}: unpacking needs {needed / 1e9:.2f} GB, {volume} has {free / 1e9:.2f} GB free; "
                      "nothing was installed")


def unpack(zf: zipfile.ZipFile, zip_path: Path, files, staging: Path, target_ds: Path) -> None:
    """Unpack ``files`` (from :func:`check_members`) into ``staging``. A corrupt member is a
    :class:`ModelZipError` naming it; a write error (disk full, file size limit) an ``OSError``
    naming the file being installed."""
    for info, member in files:
        destination = staging.joinpath(*member.parts[1:])
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zf.open(info) as src, open(destination, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise ModelZipError(f"{zip_path}: member {str(member)!r} is corrupt ({exc}); the zip is damaged, "
                                "nothing was installed") from None
        except OSError as exc:
            if exc.errno is None:
                raise
            final = target_ds.joinpath(*member.parts[1:])
            raise OSError(exc.errno, exc.strerror or errno.errorcode.get(exc.errno, ""), str(final)) from None
