"""Where raw data, preprocessed data and results live.

``AUTOSAM_RAW``, ``AUTOSAM_PREPROCESSED`` and ``AUTOSAM_RESULTS`` choose the three folders. When
one is unset, ``$AUTOSAM_HOME/<raw|preprocessed|results>`` is used (``AUTOSAM_HOME`` defaults to
``~/autosam_data``), and the fallback is printed once per process and variable (to stderr).
A leading ``~`` is expanded. See ``documentation/paths.md``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

_ENV = {"raw": "AUTOSAM_RAW", "preprocessed": "AUTOSAM_PREPROCESSED", "results": "AUTOSAM_RESULTS"}
_announced: set[str] = set()


def default_home() -> Path:
    value = os.environ.get("AUTOSAM_HOME")
    return Path(value).expanduser() if value else Path.home() / "autosam_data"


def _folder(kind: str) -> Path:
    var = _ENV[kind]
    value = os.environ.get(var)
    if value:
        return Path(value).expanduser()
    path = default_home() / kind
    if var not in _announced:
        _announced.add(var)
        print(f"[autosam] {var} is not set; using {path}", file=sys.stderr)
    return path


def raw_dir() -> Path:
    return _folder("raw")


def preprocessed_dir() -> Path:
    return _folder("preprocessed")


def results_dir() -> Path:
    return _folder("results")
