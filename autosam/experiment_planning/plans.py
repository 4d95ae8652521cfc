"""Typed plans (``<plans_name>.json``) with a schema version and an explicit JSON round trip."""
from __future__ import annotations

from dataclasses import dataclass, field

from autosam.utils.files import read_json, write_json
from autosam.utils.typed_json import from_jsonable, to_jsonable

PLANS_SCHEMA_VERSION = 1
DEFAULT_PLANS_NAME = "autosamPlans"
#: nnU-Net's configuration names that autosam spells differently (``3d_lowres`` and ``2d`` are the same).
CONFIGURATION_ALIASES = {"3d_fullres": "3d"}


def normalize_configuration(name: str) -> str:
    """autosam's name of a configuration: nnU-Net's ``3d_fullres`` is ``3d``; other names unchanged.

    Every function that takes a configuration name from a user (planning, preprocessing, training,
    prediction, model folders, find_best) passes it through here, so ``3d_fullres`` works everywhere."""
    return CONFIGURATION_ALIASES.get(name, name) if isinstance(name, str) else name


@dataclass
class ResamplingPlan:
    image_order: int = 3
    label_order: int = 1  # applied to a one-hot encoding
    # When the spacing is anisotropic (max/min > 3), the coarse axis is resampled separately
    # with these orders; None means "not anisotropic" (decided per case at preprocessing).
    separate_z_anisotropy_threshold: float = 3.0
    image_order_z: int = 0
    label_order_z: int = 0


@dataclass
class NetworkTopology:
    """UNet topology (nnU-Net's rules); used by the ``unet`` method and any method that wants it."""

    n_stages: int
    features_per_stage: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    n_conv_per_stage_encoder: list[int]
    n_conv_per_stage_decoder: list[int]


@dataclass
class ConfigurationPlan:
    name: str  # "2d", "3d" or "3d_lowres"
    data_identifier: str  # preprocessed folder name; configurations with equal spacing share it
    spacing: list[float]  # (z, y, x) target spacing in mm
    patch_size: list[int]  # (z, y, x) or (y, x) for 2d
    batch_size: int
    median_image_size_in_voxels: list[int]
    normalization_schemes: list[str]  # per channel: "CTNormalization" | "ZScoreNormalization" | "NoNormalization"
    use_mask_for_norm: list[bool]
    resampling: ResamplingPlan = field(default_factory=ResamplingPlan)
    network: NetworkTopology | None = None
    # Sections contributed by method plugins through the ``plan_method_section`` hook.
    methods: dict[str, dict] = field(default_factory=dict)


@dataclass
class Plans:
    schema_version: int
    dataset_name: str
    plans_name: str
    planner: str
    gpu_memory_target_gb: float
    original_median_spacing: list[float]
    original_median_shape: list[int]
    num_channels: int
    channel_names: dict[str, str]
    labels: dict[str, int | list[int]]  # dataset.json's labels (lists are regions)
    foreground_intensity_properties_per_channel: dict[str, dict]
    configurations: dict[str, ConfigurationPlan]
    default_method: str
    default_method_rationale: str
    method_votes: list[list] = field(default_factory=list)  # [name, score, rationale]
    # "gpu" (nnU-Net's GPU-memory rules) or "cpu" (a CPU-sized network, see topology.py)
    compute_target: str = "gpu"
    # region-based datasets: the label value each region is exported with (dataset.json's key)
    regions_class_order: list[int] | None = None

    def configuration(self, name: str) -> ConfigurationPlan:
        try:
            return self.configurations[normalize_configuration(name)]
        except KeyError:
            raise KeyError(f"plans {self.plans_name!r} have no configuration {name!r}; available: {sorted(self.configurations)}") from None

    def save(self, path) -> None:
        write_json(path, to_jsonable(self))

    @classmethod
    def load(cls, path) -> "Plans":
        data = read_json(path)
        if data.get("schema_version") != PLANS_SCHEMA_VERSION:
            raise ValueError(f"{path}: plans schema version {data.get('schema_version')} != {PLANS_SCHEMA_VERSION}; re-plan the dataset")
        return from_jsonable(cls, data, str(path))

    @property
    def label_manager(self):
        """The :class:`~autosam.io.labels.LabelManager` of these plans' labels."""
        from autosam.io.labels import LabelManager

        return LabelManager(self.labels, self.regions_class_order, f"plans {self.plans_name!r}")

    @property
    def num_classes(self) -> int:
        """Number of network outputs: classes 0..max including background (``ignore`` excluded),
        or one per foreground region for a region-based dataset."""
        return self.label_manager.num_segmentation_heads
