"""``autosam_export_model_to_zip`` and ``autosam_install_pretrained_model_from_zip``: share trained
models as zip files (nnU-Net's commands of the same names, with its flags)."""
from __future__ import annotations

import logging
from pathlib import Path

from autosam.cli.common import Parser, command, fold_value, normalize_configuration


@command("autosam_export_model_to_zip", errors=(ValueError, RuntimeError))
def main_export(argv: list[str] | None = None) -> int:
    p = Parser(
        prog="autosam_export_model_to_zip",
        description="Write trained models of a dataset to one zip file: for each model folder "
                    "<method>__<plans>__<configuration>, its plans.json, dataset.json, dataset_fingerprint.json, the "
                    "chosen checkpoints of each fold (and progress.png), optionally the cross-validation predictions, "
                    "and a manifest (autosam_model.json) with the method's name and the plugin package and version "
                    "that provide it. autosam_install_pretrained_model_from_zip installs it elsewhere.",
        epilog="example: autosam_export_model_to_zip -d 4 -c 3d -m unet -o hippocampus_unet.zip")
    p.add_argument("-d", required=True, help="dataset id (4) or name (Dataset004_Hippocampus)")
    p.add_argument("-o", required=True, type=Path, help="output zip file (written atomically)")
    p.add_argument("-c", nargs="+", default=None, type=normalize_configuration,
                   help="configurations (default: every trained one; nnU-Net's 3d_fullres is 3d)")
    p.add_argument("-m", "-tr", nargs="+", default=None, dest="m",
                   help="methods (default: every trained one); -tr is nnU-Net's spelling")
    p.add_argument("-p", "--plans", default="autosamPlans", help="plans name (default: autosamPlans)")
    p.add_argument("-f", nargs="+", default=None,
                   help="folds (default: every fold that has the checkpoints); 'all' for fold_all")
    p.add_argument("-chk", nargs="+", default=["checkpoint_final.pth"],
                   help="checkpoint file names to export (default: checkpoint_final.pth)")
    p.add_argument("--not_strict", action="store_true",
                   help="leave out a fold of -f (or a model) that lacks a checkpoint instead of stopping")
    p.add_argument("--exp_cv_preds", action="store_true",
                   help="also export each fold's cross-validation predictions (fold_N/validation)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from autosam.inference.model_sharing import export_model_to_zip

    folds = [fold_value(f) for f in a.f] if a.f else None
    exported = export_model_to_zip(a.d, a.o, a.c, a.m, a.plans, folds, a.chk, not a.not_strict, a.exp_cv_preds)
    for e in exported:
        print(f"  {e.folder.name}: folds {' '.join(map(str, e.folds))}, {', '.join(e.checkpoints)}")
    print(f"{len(exported)} model(s) written to {a.o}")
    return 0


@command("autosam_install_pretrained_model_from_zip", errors=(ValueError, RuntimeError))
def main_install(argv: list[str] | None = None) -> int:
    p = Parser(
        prog="autosam_install_pretrained_model_from_zip",
        description="Install the models of a zip written by autosam_export_model_to_zip into "
                    "AUTOSAM_RESULTS/<dataset>/. Every member is checked before anything is written: absolute "
                    "paths, '..', links and files outside the expected layout are refused. A model whose method is "
                    "not installed is refused with the plugin package and version to install. An installed model "
                    "is never replaced without --force.",
        epilog="example: autosam_install_pretrained_model_from_zip hippocampus_unet.zip")
    p.add_argument("zip", type=Path, help="the model zip file")
    p.add_argument("--force", action="store_true", help="replace models that are installed already")
    p.add_argument("--max_unpacked_gb", type=float, default=None, metavar="GB",
                   help="refuse a zip that unpacks to more than this (default 50, or AUTOSAM_MAX_UNPACKED_GB): a small "
                        "zip may expand to fill the disk")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from autosam.inference.model_sharing import install_model_from_zip
    from autosam.io.limits import set_limits

    set_limits(max_unpacked_gb=a.max_unpacked_gb)

    installed = install_model_from_zip(a.zip, force=a.force)
    for folder in installed:
        print(f"installed {folder}")
    return 0

