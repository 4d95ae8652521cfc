"""Typed dataset fingerprint (``dataset_fingerprint.json``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from autosam.utils.files import read_json, write_json
from autosam.utils.typed_json import from_jsonable, to_jsonable

FINGERPRINT_SCHEMA_VERSION = 1


@dataclass
class IntensityStats:
    mean: float
    median: float
    std: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass
class ClassStats:
    """Per-class statistics a method choice needs (medians over the cases where the class is present)."""

    label: int
    name: str
    cases_present: int
    volume_fraction: float  # median fraction of the cropped image volume
    components_per_case: float  # median number of 26-connected components
    component_volume_mm3: float  # median component volume over all components
    bbox_extent_mm: list[float]  # median (z, y, x) extent of the class's bounding box
    slices_spanned: float  # median number of axial (z) slices the class spans
    per_case_components: list[int] = field(default_factory=list)


@dataclass
class DatasetFingerprint:
    schema_version: int
    case_identifiers: list[str]
    spacings: list[list[float]]  # (z, y, x) per case
    shapes_before_crop: list[list[int]]
    shapes_after_crop: list[list[int]]
    median_relative_size_after_crop: float
    foreground_intensity_properties_per_channel: dict[str, IntensityStats]
    class_statistics: dict[str, ClassStats]  # keyed by str(label value)
    num_labelled_cases: int

    def save(self, path) -> None:
        write_json(path, to_jsonable(self))

    @classmethod
    def load(cls, path) -> "DatasetFingerprint":
        data = read_json(path)
        if data.get("schema_version") != FINGERPRINT_SCHEMA_VERSION:
            raise ValueError(
                f"{path}: fingerprint schema version {data.get('schema_version')} != {FINGERPRINT_SCHEMA_VERSION}; "
                "re-run autosam_extract_fingerprint"
            )
        return from_jsonable(cls, data, str(path))
