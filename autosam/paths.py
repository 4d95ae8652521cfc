"""Where raw data, preprocessed data and results live.

``AUTOSAM_RAW``, ``AUTOSAM_PREPROCESSED`` and ``AUTOSAM_RESULTS`` choose the three folders. When
one is unset, nnU-Net v2's variable for the same folder (``nnUNet_raw``, ``nnUNet_preprocessed``,
``nnUNet_results``) is used if it is set, else ``$AUTOSAM_HOME/<raw|preprocessed|results>``
(``AUTOSAM_HOME`` defaults to ``~/autosam_data``). Either fallback is printed once per process and
variable (to stderr). A leading ``~`` is expanded. See ``documentation/paths.md``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

_ENV = {"raw": "AUTOSAM_RAW", "preprocessed": "AUTOSAM_PREPROCESSED", "results": "AUTOSAM_RESULTS"}
#: nnU-Net v2's variables, used when only they are set (an existing nnU-Net installation).
NNUNET_ENV = {"raw": "nnUNet_raw", "preprocessed": "nnUNet_preprocessed", "results": "nnUNet_results"}
_announced: set[str] = set()


def default_home() -> Path:
    value = os.environ.get("AUTOSAM_HOME")
    return Path(value).expanduser() if value else Path.home() / "autosam_data"


def _folder(kind: str) -> Path:
    var = _ENV[kind]
    value = os.environ.get(var)
    if value:
        return Path(value).expanduser()
    nnunet_var = NNUNET_ENV[kind]
    nnunet_value = os.environ.get(nnunet_var)
    if nnunet_value:
        path = Path(nnunet_value).expanduser()
        message = f"{var} is not set; using {nnunet_var}={path}"
    else:
        path = default_home() / kind
        message = f"{var} is not set; using {path}"
    if var not in _announced:
        _announced.add(var)
        print(f"[autosam] {message}", file=sys.stderr)
    return path


def raw_dir() -> Path:
    return _folder("raw")


def preprocessed_dir() -> Path:
    return _folder("preprocessed")


def results_dir() -> Path:
    return _folder("results")
