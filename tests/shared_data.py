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


def write_consecutive_labels(sources: dict, values: set[int]) -> dict[int, int]:
    """TotalSegmentator's label maps skip values; nnU-Net's format wants 0, 1, 2, ... Write each
    ``source -> destination`` label file renumbered (in the order of ``values``) and return the map
    ``old value -> new value``, as a user converting such data would."""
    import numpy as np
    import SimpleITK as sitk

    new_value = {int(v): i for i, v in enumerate(sorted(values))}
    lut = np.zeros(max(new_value) + 1, np.uint8)
    for v, i in new_value.items():
        lut[v] = i
    for src, dst in sources.items():
        label = sitk.ReadImage(str(src))
        renumbered = sitk.GetImageFromArray(lut[sitk.GetArrayFromImage(label)])
        renumbered.CopyInformation(label)
        sitk.WriteImage(renumbered, str(dst))
    return new_value
