"""Write tiny raw datasets (nnU-Net v2 format) for tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from autosam.io.image import ImageGeometry, write_image
from autosam.utils.files import write_json

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def geometry(shape, spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=IDENTITY) -> ImageGeometry:
    return ImageGeometry(tuple(float(s) for s in spacing), tuple(origin), tuple(direction), tuple(shape))


def write_raw_dataset(
    root: Path,
    name: str,
    cases: dict,
    labels: dict | None = None,
    channel_names: dict | None = None,
    spacing=(2.0, 1.0, 1.0),
    ending: str = ".nii.gz",
    num_training: int | None = None,
) -> Path:
    """``cases``: id -> (list of channel arrays, label array or None). Returns the dataset folder."""
    folder = Path(root) / name
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    n_channels = 1
    for ident, (channels, label) in cases.items():
        n_channels = len(channels)
        for c, arr in enumerate(channels):
            write_image(folder / "imagesTr" / f"{ident}_{c:04d}{ending}", arr, geometry(arr.shape, spacing))
        if label is not None:
            write_image(folder / "labelsTr" / f"{ident}{ending}", label, geometry(label.shape, spacing))
    write_json(
        folder / "dataset.json",
        {
            "channel_names": channel_names or {str(c): ("CT" if n_channels == 1 else f"MR{c}") for c in range(n_channels)},
            "labels": labels or {"background": 0, "a": 1},
            "numTraining": len(cases) if num_training is None else num_training,
            "file_ending": ending,
        },
    )
    return folder


def simple_case(seed: int, shape=(6, 10, 12), n_channels: int = 1, label_value: int = 1):
    rng = np.random.default_rng(seed)
    channels = [rng.normal(100 * (c + 1), 10, size=shape).astype(np.float32) for c in range(n_channels)]
    label = np.zeros(shape, dtype=np.uint8)
    label[2:4, 3:6, 4:8] = label_value
    return channels, label
