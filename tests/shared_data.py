"""Where the project's shared real data lies: ``$AUTOSAM_SHARED_DATA``, else ``shared/`` beside
the checkout (as CI lays it out), else ``/work/shared``. Tests that need it skip when it is absent."""
from __future__ import annotations

import os
from pathlib import Path


def _shared_root() -> Path:
    env = os.environ.get("AUTOSAM_SHARED_DATA")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[2] / "shared"
    return beside if beside.is_dir() else Path("/work/shared")


TOTALSEG = _shared_root() / "data" / "totalsegmentator"
HIPPOCAMPUS = _shared_root() / "data" / "msd_hippocampus" / "Task04_Hippocampus"
