"""Slice-context phantoms: lesions and vessels that look the same inside any one slice.

A CT-like body (one channel) holds an organ-like blob (label 1), spherical lesions (label 2) and
straight tubular vessels running along the slice axis Z (label 3). Lesions and vessels share the
same intensity, texture and in-slice size distribution, and the partial-volume blur is in-plane
only, so an axial slice shows the same bright disc for both. Only the extent across slices tells
them apart: a sphere's cross-section shrinks above and below its centre and ends within a few
slices, a vessel continues through the volume. `slice_ambiguity` measures this on a case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medtune.core.errors import MedtuneInputError

CONTEXT_CHANNELS = ["CT"]
CONTEXT_LABELS = {"background": 0, "organ": 1, "lesion": 2, "vessel": 3}
CONTEXT_MEDTUNE = {
    "regions": {"organ": [1], "lesion": [2], "vessel": [3]},
    "source_labels": {"1": 1, "2": 2, "3": 3},
}


def check_range(name: str, value, lo: float, hi: float = math.inf) -> None:
    """Refuse a phantom knob `(min, max)` unless `lo <= min <= max <= hi`."""
    if len(value) != 2 or not lo <= value[0] <= value[1] <= hi:
        raise MedtuneInputError(
            f"phantom knob {name}: expected (min, max) with {lo} <= min <= max <= {hi}, found {tuple(value)}"
        )


@dataclass
class ContextPhantomConfig:
    """Knobs of the slice-context phantoms (lengths in mm, intensities in HU)."""

    lesions: int = 3
    """Spherical lesions per case (label 2)."""
    vessels: int = 3
    """Straight vessels along Z per case (label 3)."""
    radius: tuple[float, float] = (7.0, 14.0)
    """Range of the lesion radius in mm; vessel radii are cross-sections of such spheres."""
    noise: float = 20.0
    """Gaussian noise standard deviation in HU."""
    contrast: float = 110.0
    """How much brighter (HU) lesions and vessels are than the organ."""
    fov: tuple[float, float, float] = (200.0, 200.0, 150.0)
    """Field of view (X, Y, Z) in mm; the voxel spacing is fov / shape."""

    def __post_init__(self) -> None:
        check_range("radius", self.radius, 1.0)
        if self.lesions < 0 or self.vessels < 0 or self.noise < 0:
            raise MedtuneInputError(
                "phantom knobs lesions, vessels, noise: expected >= 0, found "
                f"{self.lesions}, {self.vessels}, {self.noise}"
            )


def _place(rng, placed, radius, box, tube: bool, tries: int = 200):
    """A centre (x, y, z) inside `box` clear of the `placed` (centre, radius, tube) objects."""
    for _ in range(tries):
        c = rng.uniform(-1, 1, 3) * box
        ok = True
        for c2, r2, tube2 in placed:
            d = np.linalg.norm((c - c2)[:2]) if (tube or tube2) else np.linalg.norm(c - c2)
            ok &= bool(d > radius + r2 + 6.0)
        if ok:
            return c
    return None


def context_case(rng: np.random.Generator, shape_dhw, cfg: ContextPhantomConfig, grid_cls, spacing):
    """CT image (1, X, Y, Z) in HU and label (X, Y, Z) uint8 on an RAS grid, and the grid."""
    d, h, w = shape_dhw
    g = grid_cls((h, w, d), spacing)
    size = np.array([n * s for n, s in zip(g.shape, g.spacing)])
    hu = np.full(g.shape, -1000.0, np.float32)
    body = np.broadcast_to(
        np.sqrt((g.x / (0.46 * size[0])) ** 2 + (g.y / (0.42 * size[1])) ** 2), g.shape
    )
    hu[body < 1] = 40  # soft tissue
    label = np.zeros(g.shape, np.uint8)
    oc = np.array([rng.uniform(-0.12, 0.12) * size[0], rng.uniform(-0.1, 0.1) * size[1], 0.0])
    organ_r = np.array([0.22 * size[0], 0.2 * size[1], 0.38 * size[2]]) * rng.uniform(0.85, 1.1, 3)
    organ = g.ellipsoid(oc, organ_r) < 1
    label[organ] = 1
    hu[organ] = 90
    placed: list = []
    box = np.array([0.3 * size[0], 0.28 * size[1], 0.3 * size[2]])
    kinds = [2] * cfg.lesions + [3] * cfg.vessels
    for kind in rng.permutation(kinds):
        big_r = rng.uniform(*cfg.radius)
        if kind == 3:
            # size-biased sphere radius, then a random cross-section of it: the disc sizes of
            # vessels follow those of lesion slices
            big_r = math.sqrt(rng.uniform(cfg.radius[0] ** 2, cfg.radius[1] ** 2))
            r = max(big_r * math.sqrt(1 - rng.uniform(-0.9, 0.9) ** 2), 0.6 * cfg.radius[0])
        else:
            r = big_r
        c = _place(rng, placed, r, box, tube=kind == 3)
        if c is None:
            continue
        placed.append((c, r, kind == 3))
        if kind == 2:
            mask = g.ellipsoid(c, (r, r, r)) < 1
        else:
            drift = rng.uniform(-1, 1, 2) * 0.02  # mm per mm along Z: nearly parallel to Z
            mask = (g.x - c[0] - drift[0] * g.z) ** 2 + (g.y - c[1] - drift[1] * g.z) ** 2 < r**2
            mask = np.broadcast_to(mask, g.shape) & (body < 0.95)
        label[mask] = kind
    bright = label >= 2
    texture = 12 * ndimage.gaussian_filter(rng.standard_normal(g.shape).astype(np.float32), 1.0)
    hu[bright] = 90 + cfg.contrast + texture[bright]
    # partial volume in-plane only: no through-slice blur that would mark a sphere's poles
    sigma = 0.7 * g.spacing.min() / g.spacing
    hu = ndimage.gaussian_filter(hu, (sigma[0], sigma[1], 0))
    hu += rng.standard_normal(g.shape, dtype=np.float32) * cfg.noise
    return np.clip(hu, -1024, 3071)[None], label, g


def _stump_accuracy(feature: np.ndarray, is_b: np.ndarray) -> float:
    """Best balanced accuracy of a threshold on one feature (either direction), in sample."""
    order = np.argsort(feature, kind="stable")
    y = is_b[order].astype(np.float64)
    nb, na = y.sum(), (1 - y).sum()
    if nb == 0 or na == 0:
        return 1.0
    below_b = np.concatenate([[0], np.cumsum(y)])  # b's at or below each cut
    below_a = np.concatenate([[0], np.cumsum(1 - y)])
    acc = 0.5 * (below_a / na + (nb - below_b) / nb)  # a below the cut, b above
    return float(max(acc.max(), (1 - acc).max()))


def _disc_features(image, label, slice_axis: int):
    """(area, mean intensity, slices spanned in 3D, is vessel) of every disc of one case."""
    img = np.moveaxis(np.asarray(image, np.float64), slice_axis, 0)
    lab = np.moveaxis(np.asarray(label), slice_axis, 0)
    comp3d, _ = ndimage.label(lab >= 2)
    spans = {
        i + 1: sl[0].stop - sl[0].start for i, sl in enumerate(ndimage.find_objects(comp3d)) if sl
    }
    rows = []
    for k in range(lab.shape[0]):
        comps, n = ndimage.label(lab[k] >= 2)
        for j in range(1, n + 1):
            m = comps == j
            vessel = np.bincount(lab[k][m]).argmax() == 3
            rows.append((m.sum(), img[k][m].mean(), spans[int(comp3d[k][m][0])], vessel))
    return rows


def slice_ambiguity(cases, slice_axis: int = 2) -> dict[str, float]:
    """How well lesions (2) and vessels (3) separate from one slice, and from the volume.

    cases: (image, label) pairs, each (X, Y, Z) on the RAS grid (image of one channel), pooled
    (use several cases: with few objects an in-sample threshold is optimistic). Every 2D connected component
    of labels 2 | 3 in a slice along `slice_axis` is one disc, with features area (voxels) and
    mean intensity. Returns balanced accuracies: `slice_area`, `slice_intensity` (best threshold
    on each, fitted in sample, so optimistic), `slice` (the better of the two), and `volume`
    (a threshold on the number of slices the disc's 3D component spans).
    """
    rows = [r for image, label in cases for r in _disc_features(image, label, slice_axis)]
    area, inten, span, is_vessel = (np.asarray(c, float) for c in zip(*rows)) if rows else [[]] * 4
    if not len(area):
        raise MedtuneInputError("slice ambiguity: expected lesions or vessels, found none")
    y = np.asarray(is_vessel) > 0
    out = {
        "slice_area": _stump_accuracy(area, y),
        "slice_intensity": _stump_accuracy(inten, y),
        "volume": _stump_accuracy(span, y),
    }
    out["slice"] = max(out["slice_area"], out["slice_intensity"])
    out["discs"] = float(len(area))
    return out
