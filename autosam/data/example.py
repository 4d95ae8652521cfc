"""A synthetic but CT-like example dataset in nnU-Net v2 raw format.

Each case is an abdomen-like volume in Hounsfield units (int16): air (-1000) outside an elliptic
body, a subcutaneous fat layer (-100), soft tissue (~40), a spine with a dense cortex (~700), an
aorta, fat and gas pockets, and deformed ellipsoidal organs with distinct contrasts. Gaussian
noise and a slight blur make it look acquired. Spacing is anisotropic and varies between cases
(z 2.5-3.5 mm, in-plane 1.2-1.8 mm); some cases are stored with flipped axes (non-identity
direction, the anatomy stays at the same place in world coordinates).

``kind="organs"``: labels liver (1), spleen (2), kidney (3, both kidneys: they look alike, and
mirroring augmentation would make left/right labels unlearnable), aorta (4).
``kind="lesions"``: label lesion (1) only: 5-14 small hypo- or hyperdense lesions per case
inside an unlabelled liver.

Volumes are small (48-64 x 96-128 x 96-128 voxels) so that the quick start runs on a laptop CPU.
Everything is drawn from ``numpy.random.default_rng([seed, case_index])``: the same seed gives
the same dataset, and case ``i`` does not depend on how many cases are written.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from autosam.io.dataset import DATASET_RE, DatasetError
from autosam.io.image import ImageGeometry, write_image
from autosam.utils.files import write_json

logger = logging.getLogger(__name__)

KINDS = ("organs", "lesions")
ORGAN_LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3, "aorta": 4}
LESION_LABELS = {"background": 0, "lesion": 1}
NUM_TEST_CASES = 2
# Test cases use case indices far from the training ones so they never coincide.
_TEST_INDEX_OFFSET = 10_000


def example_dataset_name(dataset_id: int, kind: str) -> str:
    return f"Dataset{dataset_id:03d}_Example" + ("" if kind == "organs" else "Lesions")


@dataclass
class SyntheticCase:
    image: np.ndarray  # int16, (z, y, x) in HU
    label: np.ndarray  # uint8, (z, y, x)
    geometry: ImageGeometry


def make_example_dataset(
    raw_root: str | Path, dataset_id: int = 999, num_cases: int = 8, kind: str = "organs", seed: int = 0
) -> Path:
    """Write ``<raw_root>/Dataset<id>_Example[Lesions]`` and return its folder.

    The dataset is built in a temporary folder next to the target and moved into place at the
    end, so an interrupted run never leaves a half-written dataset. An existing dataset of the
    same name is replaced; another dataset with the same id is an error.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: choose one of {', '.join(KINDS)}")
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset id {dataset_id}: must be between 1 and 999")
    if num_cases < 1:
        raise ValueError(f"num_cases {num_cases}: need at least one case")
    raw_root = Path(raw_root)
    raw_root.mkdir(parents=True, exist_ok=True)
    name = example_dataset_name(int(dataset_id), kind)
    for p in raw_root.iterdir():
        m = DATASET_RE.match(p.name)
        if p.is_dir() and m and int(m.group(1)) == int(dataset_id) and p.name != name:
            raise DatasetError(f"{p}: dataset id {dataset_id} is already used; choose another id or remove that folder")
    target = raw_root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=raw_root))
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir()
        for i in range(num_cases):
            case = synthesize_case(seed, i, kind)
            write_image(tmp / "imagesTr" / f"case_{i:03d}_0000.nii.gz", case.image, case.geometry)
            write_image(tmp / "labelsTr" / f"case_{i:03d}.nii.gz", case.label, case.geometry)
            logger.debug("wrote case_%03d %s spacing %s", i, case.image.shape, case.geometry.spacing)
        for j in range(NUM_TEST_CASES):
            case = synthesize_case(seed, _TEST_INDEX_OFFSET + j, kind)
            write_image(tmp / "imagesTs" / f"test_{j:03d}_0000.nii.gz", case.image, case.geometry)
            write_image(tmp / "labelsTs" / f"test_{j:03d}.nii.gz", case.label, case.geometry)
        write_json(tmp / "dataset.json", _dataset_json(num_cases, kind, seed))
        os.chmod(tmp, 0o755)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=raw_root))
            os.replace(target, old / name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %s (%d training and %d test cases, kind=%s, seed=%d)", target, num_cases, NUM_TEST_CASES, kind, seed)
    return target


def _dataset_json(num_cases: int, kind: str, seed: int) -> dict:
    return {
        "name": "Example" if kind == "organs" else "ExampleLesions",
        "description": f"autosam synthetic CT-like example dataset (kind={kind}, seed={seed}); "
        "imagesTs/labelsTs hold held-out cases for trying prediction and evaluation",
        "reference": "generated by autosam.data.example.make_example_dataset",
        "licence": "CC0",
        "channel_names": {"0": "CT"},
        "labels": dict(ORGAN_LABELS if kind == "organs" else LESION_LABELS),
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
    }


# ----------------------------------------------------------------------------------------------
# synthesis


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int = 5) -> np.ndarray:
    """Smooth random field of roughly unit amplitude (cubic upsampling of coarse noise)."""
    small = rng.standard_normal((coarse, coarse, coarse)).astype(np.float32)
    zoom = [s / coarse for s in shape]
    field = ndimage.zoom(small, zoom, order=3, mode="nearest", grid_mode=True)
    return field[: shape[0], : shape[1], : shape[2]]


class _Grid:
    """Normalised coordinates in [-1, 1] along each axis (broadcastable z, y, x)."""

    def __init__(self, shape: tuple[int, int, int]):
        self.shape = shape
        self.z, self.y, self.x = (
            np.linspace(-1, 1, n, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)])
            for i, n in enumerate(shape)
        )

    def ellipsoid(self, center, radii, angle: float = 0.0, warp: np.ndarray | float = 0.0) -> np.ndarray:
        """Boolean mask of a (rotated in the axial plane, warped) ellipsoid."""
        cz, cy, cx = center
        rz, ry, rx = radii
        c, s = np.cos(angle), np.sin(angle)
        dy, dx = self.y - cy, self.x - cx
        u = (c * dx + s * dy) / rx
        v = (-s * dx + c * dy) / ry
        r2 = ((self.z - cz) / rz) ** 2 + u**2 + v**2
        return r2 <= 1.0 + warp

    def cylinder(self, cy, cx, ry, rx, warp: np.ndarray | float = 0.0) -> np.ndarray:
        r2 = ((self.y - cy) / ry) ** 2 + ((self.x - cx) / rx) ** 2
        return np.broadcast_to(r2 <= 1.0 + warp, self.shape)


#: per kind: slices, in-plane voxels, z spacing (mm), in-plane spacing (mm). ``organs`` (the quick
#: start's dataset) is coarse so that a nnU-Net-sized 3D UNet trains 10 epochs in minutes on a CPU;
#: ``lesions`` is finer so that 4-10 mm lesions span several voxels. Both cover ~150-200 mm.
SIZES = {
    "organs": ((32, 40), (72, 88), (4.0, 5.0), (2.0, 2.5)),
    "lesions": ((48, 64), (96, 128), (2.5, 3.5), (1.2, 1.8)),
}


def synthesize_case(seed: int, index: int, kind: str = "organs") -> SyntheticCase:
    """One synthetic case, fully determined by ``(seed, index, kind)``."""
    rng = np.random.default_rng([int(seed), int(index), KINDS.index(kind)])
    (z_lo, z_hi), (xy_lo, xy_hi), (sz_lo, sz_hi), (sxy_lo, sxy_hi) = SIZES[kind]
    shape = (int(rng.integers(z_lo, z_hi + 1)), int(rng.integers(xy_lo, xy_hi + 1)), int(rng.integers(xy_lo, xy_hi + 1)))
    spacing = (float(np.round(rng.uniform(sz_lo, sz_hi), 3)), *(2 * [float(np.round(rng.uniform(sxy_lo, sxy_hi), 3))]))
    g = _Grid(shape)
    warp1 = 0.18 * _smooth_field(rng, shape)
    warp2 = 0.18 * _smooth_field(rng, shape)

    hu = np.full(shape, -1000.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    jit = lambda scale=0.05: float(rng.uniform(-scale, scale))  # noqa: E731

    # body: elliptic cylinder (slightly varying with z), fat layer, soft tissue
    bry, brx = 0.72 + jit(), 0.9 + jit(0.04)
    body_warp = 0.05 * warp1 + 0.04 * g.z
    body = g.cylinder(0.05, 0.0, bry, brx, body_warp)
    inner = g.cylinder(0.05, 0.0, bry - 0.08, brx - 0.08, body_warp)
    hu[body] = -100.0
    hu[inner] = 40.0 + 8.0 * warp2[inner]
    # intra-abdominal fat and bowel gas (unlabelled distractors)
    for _ in range(int(rng.integers(3, 7))):
        blob = g.ellipsoid((jit(0.8), -0.3 + jit(0.25), jit(0.5)), (0.2, 0.1, 0.12), rng.uniform(0, np.pi), 0.5 * warp1)
        hu[blob & inner] = -90.0
    for _ in range(int(rng.integers(2, 5))):
        blob = g.ellipsoid((jit(0.8), -0.4 + jit(0.15), jit(0.4)), (0.1, 0.05, 0.06), rng.uniform(0, np.pi), 0.3 * warp2)
        hu[blob & inner] = -750.0
    # paraspinal muscles, spine (cancellous core, cortex), spinal canal, discs
    for side in (-1, 1):
        hu[g.cylinder(0.6, side * 0.22, 0.12, 0.12, 0.2 * warp1) & inner] = 55.0
    spine_y = 0.42 + jit(0.03)
    vert = g.cylinder(spine_y, 0.0, 0.13, 0.14)
    hu[vert] = 700.0
    hu[g.cylinder(spine_y, 0.0, 0.1, 0.11)] = 250.0
    disc_period = rng.uniform(0.45, 0.6)
    disc = (np.abs(((g.z + jit(1.0)) % disc_period) - disc_period / 2) < 0.05) & vert
    hu[disc] = 90.0
    hu[g.cylinder(spine_y + 0.2, 0.0, 0.05, 0.05)] = 15.0

    liver_c = (0.25 + jit(), -0.05 + jit(), -0.38 + jit())
    liver_r = tuple(r * rng.uniform(0.88, 1.12) for r in (0.6, 0.36, 0.34))
    liver = g.ellipsoid(liver_c, liver_r, rng.uniform(-0.3, 0.3), warp1) & inner
    organs = [
        (1, liver, 65.0),
        (2, g.ellipsoid((0.35 + jit(), 0.15 + jit(), 0.5 + jit()), (0.36, 0.26, 0.17), rng.uniform(-0.4, 0.4), warp2) & inner, 110.0),
    ]
    kidney = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        kidney |= g.ellipsoid(
            (-0.2 + jit(0.1), spine_y - 0.05 + jit(0.03), side * (0.33 + jit(0.03))),
            (0.32, 0.15, 0.115), side * rng.uniform(0.2, 0.5), 0.6 * (warp1 if side < 0 else warp2),
        )
    organs.append((3, kidney & inner & ~vert, 175.0))
    organs.append((4, g.cylinder(spine_y - 0.2, -0.06 + jit(0.02), 0.055, 0.055, 0.1 * warp2) & inner, 240.0))
    for value, mask, mean_hu in organs:
        hu[mask] = mean_hu + rng.uniform(-6, 6) + 5.0 * warp1[mask]
        if kind == "organs":
            label[mask] = value
    # kidney hilum (darker, inside the kidney label as in real annotations)
    hu[organs[2][1] & (g.ellipsoid((-0.2, spine_y - 0.05, 0.0), (0.25, 0.08, 0.36)))] = 30.0

    if kind == "lesions":
        visible_liver = liver & ~organs[1][1] & ~organs[2][1] & ~organs[3][1]
        _add_lesions(rng, g, hu, label, visible_liver, spacing)

    hu = ndimage.gaussian_filter(hu, sigma=(0.3, 0.6, 0.6))
    hu += rng.normal(0.0, 12.0, size=shape).astype(np.float32)
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)

    flips = _orientation(index)
    geometry = _geometry(rng, shape, spacing, flips)
    for axis in flips:  # store flipped, with the direction saying so: anatomy is unchanged in world space
        image, label = np.flip(image, axis), np.flip(label, axis)
    return SyntheticCase(np.ascontiguousarray(image), np.ascontiguousarray(label), geometry)


def _add_lesions(rng, g: _Grid, hu: np.ndarray, label: np.ndarray, liver: np.ndarray, spacing) -> None:
    """Small spherical lesions (radius 4-10 mm) inside the liver, hypo- (most) or hyperdense."""
    zz, yy, xx = np.nonzero(liver)
    eroded = ndimage.binary_erosion(liver, iterations=2)
    candidates = np.flatnonzero(eroded[zz, yy, xx])
    n = int(rng.integers(6, 15))
    sz, sy, sx = spacing
    placed = 0
    for idx in rng.permutation(candidates):
        if placed == n:
            break
        cz, cy, cx = int(zz[idx]), int(yy[idx]), int(xx[idx])
        if label[max(cz - 3, 0): cz + 4, max(cy - 6, 0): cy + 7, max(cx - 6, 0): cx + 7].any():
            continue  # keep lesions separate so each one is its own component
        r = rng.uniform(4.0, 10.0)
        z0, z1 = max(cz - int(r / sz) - 1, 0), cz + int(r / sz) + 2
        y0, y1 = max(cy - int(r / sy) - 1, 0), cy + int(r / sy) + 2
        x0, x1 = max(cx - int(r / sx) - 1, 0), cx + int(r / sx) + 2
        dz = (np.arange(z0, min(z1, hu.shape[0])) - cz)[:, None, None] * sz
        dy = (np.arange(y0, min(y1, hu.shape[1])) - cy)[None, :, None] * sy
        dx = (np.arange(x0, min(x1, hu.shape[2])) - cx)[None, None, :] * sx
        sphere = (dz**2 + dy**2 + dx**2 <= r**2) & liver[z0:z1, y0:y1, x0:x1]
        hu[z0:z1, y0:y1, x0:x1][sphere] = 20.0 if rng.uniform() < 0.75 else 130.0
        label[z0:z1, y0:y1, x0:x1][sphere] = 1
        placed += 1


def _orientation(index: int) -> tuple[int, ...]:
    """Array axes stored flipped: every third case in-plane (LPS-like), every fourth along z."""
    flips: tuple[int, ...] = ()
    if index % 3 == 1:
        flips += (1, 2)
    if index % 4 == 3:
        flips += (0,)
    return flips


def _geometry(rng, shape, spacing, flips) -> ImageGeometry:
    sz, sy, sx = spacing
    # world origin of array index (0, 0, 0) for an unflipped case, SimpleITK (x, y, z) order
    origin = [-shape[2] * sx / 2 + rng.uniform(-10, 10), -shape[1] * sy / 2 + rng.uniform(-10, 10), rng.uniform(-300, 0)]
    direction = np.eye(3)
    for axis in flips:  # array axis (z, y, x) -> SimpleITK axis (x, y, z)
        itk_axis = 2 - axis
        direction[itk_axis, itk_axis] = -1.0
        origin[itk_axis] += (shape[axis] - 1) * spacing[axis]
    return ImageGeometry(
        spacing=tuple(spacing),
        origin=tuple(float(np.round(o, 4)) for o in origin),
        direction=tuple(float(d) for d in direction.ravel()),
        shape=tuple(shape),
    )
