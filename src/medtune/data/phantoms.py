"""Synthetic BraTS-like MRI heads and KiTS-like CT abdomens, written as nnU-Net raw datasets.

The anatomy is drawn on an RAS grid `(X, Y, Z)` in millimetres and stored on disk with a
non-identity, anisotropic, slightly oblique affine (BraTS-like: LPS axis order as in the real
BraTS files; KiTS-like: slice axis first, as in KiTS). Everything is deterministic in
(seed, case index). Difficulty is set by the knobs of `BratsPhantomConfig` /
`KitsPhantomConfig`; the defaults aim at realistic images, not at easy ones.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medtune.core.configbase import from_dict
from medtune.core.errors import MedtuneInputError
from medtune.data.io import save_json, save_nifti
from medtune.data.phantom_context import (
    CONTEXT_CHANNELS,
    CONTEXT_LABELS,
    CONTEXT_MEDTUNE,
    ContextPhantomConfig,
    check_range,
    context_case,
)

DEFAULT_SHAPE = (64, 96, 96)
"""Default phantom size (D, H, W) = (Z, X, Y) voxels."""

BRATS_CHANNELS = ["FLAIR", "T1", "T1ce", "T2"]
BRATS_LABELS = {"background": 0, "NCR": 1, "ED": 2, "ET": 3}
BRATS_MEDTUNE = {
    "regions": {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]},
    "source_labels": {"1": 1, "2": 2, "3": 4},
    "et_label": 3,
    "netc_label": 1,
}
KITS_LABELS = {"background": 0, "kidney": 1, "tumour": 2}
KITS_MEDTUNE = {"regions": {"kidney": [1, 2], "tumour": [2]}, "source_labels": {"1": 1, "2": 2}}

# Relative intensities per tissue in (FLAIR, T1, T1ce, T2), white matter = 1 in T1.
_MRI = {
    "wm": (0.80, 1.00, 1.00, 0.75),
    "gm": (0.95, 0.75, 0.78, 1.10),
    "csf": (0.25, 0.35, 0.36, 1.90),
    "ed": (1.50, 0.70, 0.72, 1.45),
    "ncr": (1.00, 0.45, 0.50, 1.70),
    "et": (1.25, 0.80, 1.70, 1.15),
    "vessel": (0.30, 0.60, 1.70, 0.30),  # enhancing vessels: as bright as ET in T1ce
}


@dataclass
class BratsPhantomConfig:
    """Difficulty knobs of the BraTS-like phantoms (lengths in mm)."""

    noise: float = 0.06
    """Rician noise standard deviation, as a fraction of the white-matter T1 intensity."""
    bias_field: float = 0.3
    """Peak-to-peak amplitude of the smooth multiplicative bias field (log scale), per channel."""
    tumour_radius: tuple[float, float] = (20.0, 40.0)
    """Range of the whole-tumour (edema) radius in mm."""
    core_fraction: tuple[float, float] = (0.45, 0.8)
    """Range of the tumour-core radius as a fraction of the whole-tumour radius."""
    rim_thickness: float = 4.0
    """Thickness of the enhancing rim around the necrotic core in mm."""
    vessels: int = 8
    """Number of enhancing vessels (half run superior-inferior across many slices)."""
    vessel_radius: tuple[float, float] = (1.0, 2.2)
    """Range of the vessel radius in mm."""
    fov: tuple[float, float, float] = (160.0, 200.0, 150.0)
    """Field of view (X, Y, Z) in mm; the voxel spacing is fov / shape (anisotropic)."""

    def __post_init__(self) -> None:
        check_range("tumour_radius", self.tumour_radius, 1.0)
        check_range("core_fraction", self.core_fraction, 0.05, 1.0)
        check_range("vessel_radius", self.vessel_radius, 0.1)
        for name in ("noise", "bias_field", "rim_thickness"):
            if getattr(self, name) < 0:
                raise MedtuneInputError(
                    f"phantom knob {name}: expected >= 0, found {getattr(self, name)}"
                )
        if self.vessels < 0:
            raise MedtuneInputError(f"phantom knob vessels: expected >= 0, found {self.vessels}")


@dataclass
class KitsPhantomConfig:
    """Difficulty knobs of the KiTS-like CT phantoms (lengths in mm, intensities in HU)."""

    noise: float = 18.0
    """Gaussian noise standard deviation in HU."""
    tumour_radius: tuple[float, float] = (8.0, 30.0)
    """Range of the renal tumour radius in mm."""
    tumour_contrast: float = 60.0
    """How much darker (HU) the tumour is than the enhancing kidney cortex (lower is harder)."""
    bilateral_prob: float = 0.1
    """Probability of a tumour in both kidneys."""
    fov: tuple[float, float, float] = (340.0, 260.0, 200.0)
    """Field of view (X, Y, Z) in mm; the voxel spacing is fov / shape (anisotropic)."""

    def __post_init__(self) -> None:
        check_range("tumour_radius", self.tumour_radius, 1.0)
        if self.noise < 0 or not 0 <= self.bilateral_prob <= 1:
            raise MedtuneInputError(
                f"phantom knobs noise >= 0 and bilateral_prob in [0, 1], found {self.noise}, {self.bilateral_prob}"
            )


class _Grid:
    """World coordinates in mm of an RAS voxel grid `(X, Y, Z)` centred on 0, broadcastable."""

    def __init__(self, shape_xyz, spacing):
        self.shape = tuple(int(s) for s in shape_xyz)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        axes = [
            ((np.arange(n) - (n - 1) / 2) * s).astype(np.float32)
            for n, s in zip(self.shape, spacing)
        ]
        self.x = axes[0][:, None, None]
        self.y = axes[1][None, :, None]
        self.z = axes[2][None, None, :]

    def ellipsoid(self, centre, radii) -> np.ndarray:
        """Normalised ellipsoid distance (1 on the surface)."""
        return np.sqrt(
            ((self.x - centre[0]) / radii[0]) ** 2
            + ((self.y - centre[1]) / radii[1]) ** 2
            + ((self.z - centre[2]) / radii[2]) ** 2
        )


def _smooth(rng: np.random.Generator, shape, cells) -> np.ndarray:
    """Smooth random field (zero mean, unit std) with about `cells` control points per axis.

    Gaussian-kernel interpolation applied separably per axis (smooth, no facets, a few ms).
    """
    cells = tuple(int(c) for c in cells)
    field = rng.standard_normal(tuple(c + 2 for c in cells)).astype(np.float32)
    w = []
    for n, c in zip(shape, cells):
        t = np.linspace(0.5, c + 0.5, n, dtype=np.float32)[:, None]
        k = np.exp(-0.5 * ((t - np.arange(c + 2, dtype=np.float32)[None]) / 0.8) ** 2)
        w.append(k / k.sum(1, keepdims=True))
    # einsum without BLAS: OpenBLAS threads make these small products 3-10x slower on busy CPUs
    field = np.einsum("kc,abc->abk", w[2], field)
    field = np.einsum("jb,abk->ajk", w[1], field)
    field = np.einsum("ia,ajk->ijk", w[0], field)
    sub = field[::2, ::2, ::2]  # statistics from every 8th voxel: the field is smooth
    field -= sub.mean()
    field *= 1.0 / (sub.std() + 1e-6)
    return field


def _spacing(shape_dhw, fov) -> tuple[float, float, float]:
    d, h, w = shape_dhw
    return (fov[0] / h, fov[1] / w, fov[2] / d)


def _affine_and_storage(grid: _Grid, axcodes: tuple[str, str, str], tilt_deg: float):
    """(ornt, affine) to store an RAS-grid array with the given axis codes and a small tilt."""
    t = math.radians(tilt_deg)
    rot = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    ras = np.eye(4)
    ras[:3, :3] = rot @ np.diag(grid.spacing)
    centre = (np.asarray(grid.shape) - 1) / 2 * grid.spacing
    ras[:3, 3] = -rot @ centre
    ornt = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(axcodes)
    )
    affine = ras @ nib.orientations.inv_ornt_aff(ornt, grid.shape)
    return ornt, affine


def _brats_case(rng: np.random.Generator, shape_dhw, cfg: BratsPhantomConfig):
    """Images (4, X, Y, Z) float32 and label (X, Y, Z) uint8 on an RAS grid, and the grid."""
    d, h, w = shape_dhw
    g = _Grid((h, w, d), _spacing(shape_dhw, cfg.fov))
    sx, sy, sz = (n * s for n, s in zip(g.shape, g.spacing))
    radii = np.array([0.40 * sx, 0.42 * sy, 0.42 * sz]) * rng.uniform(0.9, 1.03, 3)
    shape_noise = _smooth(rng, g.shape, (4, 4, 4))
    r = g.ellipsoid((0, rng.uniform(-3, 3), rng.uniform(-4, 2)), radii) + 0.04 * shape_noise
    brain = r < 1.0
    gyri = _smooth(rng, g.shape, (16, 20, 14))
    code = np.zeros(g.shape, np.uint8)  # 0 outside, 1 wm, 2 gm, 3 csf, 4 ed, 5 ncr, 6 et
    code[brain] = 1
    code[brain & (r > 0.86 + 0.05 * gyri)] = 2
    code[brain & (r > 0.93) & (gyri > 0.9)] = 3  # sulcal CSF
    code[brain & (np.abs(g.x) < 1.2 * g.spacing[0]) & (g.z > 0)] = 3  # interhemispheric fissure
    vent_noise = _smooth(rng, g.shape, (5, 5, 5))
    for side in (-1, 1):
        c = (side * rng.uniform(7, 11), rng.uniform(-4, 4), rng.uniform(2, 8))
        v = (
            g.ellipsoid(c, (rng.uniform(5, 8), rng.uniform(20, 28), rng.uniform(7, 11)))
            + 0.15 * vent_noise
        )
        code[brain & (v < 1)] = 3
    # Tumour: edema around an enhancing rim around a necrotic core, in one hemisphere.
    r_wt = rng.uniform(*cfg.tumour_radius)
    r_tc = r_wt * rng.uniform(*cfg.core_fraction)
    side = rng.choice([-1, 1])
    centre = np.array(
        [
            side * rng.uniform(0.25, 0.5) * radii[0],
            rng.uniform(-0.45, 0.45) * radii[1],
            rng.uniform(-0.3, 0.45) * radii[2],
        ]
    )
    t_noise = _smooth(rng, g.shape, (6, 6, 6))
    dist = np.sqrt((g.x - centre[0]) ** 2 + (g.y - centre[1]) ** 2 + (g.z - centre[2]) ** 2)
    edema = brain & (dist < r_wt * (1 + 0.25 * t_noise)) & (r < 0.97)
    core_dist = dist * (1 + 0.12 * _smooth(rng, g.shape, (5, 5, 5)))
    core = brain & (core_dist < r_tc) & (r < 0.95)
    necrosis = core & (core_dist < r_tc - cfg.rim_thickness)
    code[edema] = 4
    code[core] = 6
    code[necrosis] = 5
    label = np.zeros(g.shape, np.uint8)
    label[code == 4], label[code == 5], label[code == 6] = 2, 1, 3
    # Intensities per channel, with tumour heterogeneity.
    table = np.array(
        [(0, 0, 0, 0), _MRI["wm"], _MRI["gm"], _MRI["csf"], _MRI["ed"], _MRI["ncr"], _MRI["et"]],
        np.float32,
    )
    het = np.where(code >= 4, 1 + 0.08 * _smooth(rng, g.shape, (10, 10, 8)), 1).astype(np.float32)
    img = np.stack([np.take(table[:, c], code) * het for c in range(4)])  # (4, X, Y, Z)
    # Vessels: bright in T1ce like ET, flow voids elsewhere; half run along Z over many slices.
    q = np.full(g.shape, np.inf, np.float32)  # min over vessels of d^2 / (2 r^2)
    for i in range(cfg.vessels):
        rad = rng.uniform(*cfg.vessel_radius)
        amp, ph, freq = rng.uniform(4, 12), rng.uniform(0, 2 * np.pi), rng.uniform(0.01, 0.04)
        if i == 0:  # one vessel passes close to the tumour core
            p0 = centre[:2] + rng.choice([-1, 1], 2) * (r_tc + rng.uniform(2, 6)) / math.sqrt(2)
        else:
            p0 = rng.uniform(-0.7, 0.7, 2) * radii[:2]
        if i % 2 == 0:  # along Z: centre line (x(z), y(z))
            cx = p0[0] + amp * np.sin(freq * g.z + ph)
            cy = p0[1] + amp * np.cos(0.7 * freq * g.z + ph)
            d2 = (g.x - cx) ** 2 + (g.y - cy) ** 2
            zc, zl = rng.uniform(-0.2, 0.2) * sz, rng.uniform(0.35, 0.6) * sz
            d2 = d2 + np.where(np.abs(g.z - zc) < zl, 0, 1e6).astype(np.float32)
        else:  # in-plane, along Y (anterior-posterior)
            z0 = rng.uniform(-0.5, 0.6) * radii[2]
            cx = p0[0] + amp * np.sin(freq * g.y + ph)
            cz = z0 + 0.5 * amp * np.cos(freq * g.y + ph)
            d2 = (g.x - cx) ** 2 + (g.z - cz) ** 2
        np.minimum(q, d2 * np.float32(1 / (2 * rad**2)), out=q)
    vessel = np.exp(-q) * (brain & (code != 4) & (code != 6))
    vess = np.asarray(_MRI["vessel"], np.float32)[:, None, None, None]
    img = img * (1 - vessel) + vess * vessel
    # Partial volume, bias field, Rician noise, scanner gain; background stays exactly 0.
    for c in range(4):
        img[c] = ndimage.gaussian_filter(img[c], 0.6 / (g.spacing / g.spacing.min()))
        img[c] *= np.exp(cfg.bias_field * 0.5 * _smooth(rng, g.shape, (3, 3, 3)))
        n1 = rng.standard_normal(g.shape, dtype=np.float32) * cfg.noise
        n2 = rng.standard_normal(g.shape, dtype=np.float32) * cfg.noise
        img[c] = np.sqrt((img[c] + n1) ** 2 + n2**2) * rng.uniform(200, 600)
    img[:, ~brain] = 0
    return img, label, g


def _kits_case(rng: np.random.Generator, shape_dhw, cfg: KitsPhantomConfig):
    """CT image (1, X, Y, Z) in HU and label (X, Y, Z) uint8 on an RAS grid, and the grid."""
    d, h, w = shape_dhw
    g = _Grid((h, w, d), _spacing(shape_dhw, cfg.fov))
    hu = np.full(g.shape, -1000.0, np.float32)
    body_r = np.array([rng.uniform(125, 155), rng.uniform(95, 115)])
    wobble = 1 + 0.04 * _smooth(rng, g.shape, (4, 4, 3))
    body = np.sqrt((g.x / body_r[0]) ** 2 + (g.y / body_r[1]) ** 2) * wobble
    hu[body < 1] = -100  # fat
    hu[body < 0.88] = 45  # muscle / soft tissue
    fat_in = _smooth(rng, g.shape, (8, 8, 6))
    hu[(body < 0.8) & (fat_in > 0.8)] = -90  # intra-abdominal fat
    gas = _smooth(rng, g.shape, (10, 10, 8))
    hu[(body < 0.75) & (g.y > 10) & (gas > 1.6)] = -800  # bowel gas, anterior
    # Liver (patient's right = +X), spine, aorta and IVC.
    liver = g.ellipsoid(
        (rng.uniform(50, 70), rng.uniform(0, 20), rng.uniform(50, 80)), (75, 70, 60)
    )
    hu[(liver < 1) & (body < 0.85)] = 60
    spine_c = (0.0, -0.62 * body_r[1])
    spine = np.broadcast_to(np.sqrt((g.x - spine_c[0]) ** 2 + (g.y - spine_c[1]) ** 2), g.shape)
    disc = np.broadcast_to(np.mod(g.z + rng.uniform(0, 30), 30) < 6, g.shape)
    hu[spine < 18] = 250
    hu[(spine < 18) & (spine > 14)] = 700
    hu[(spine < 18) & disc] = 80
    for x0, y0, r, v in ((-18, -35, 9, 200), (20, -30, 10, 150)):
        ves = np.broadcast_to(np.sqrt((g.x - x0) ** 2 + (g.y - y0) ** 2), g.shape)
        hu[ves < r] = v
    label = np.zeros(g.shape, np.uint8)
    k_noise = _smooth(rng, g.shape, (6, 6, 6))
    sides = [1, -1]
    tumour_sides = [rng.choice(sides)]
    if rng.uniform() < cfg.bilateral_prob:
        tumour_sides = sides
    for side in sides:
        kc = np.array(
            [
                side * rng.uniform(50, 65),
                rng.uniform(-40, -25),
                rng.uniform(-25, 10) + (8 if side < 0 else 0),
            ]
        )
        kr = np.array([rng.uniform(22, 28), rng.uniform(25, 32), rng.uniform(45, 60)])
        kd = g.ellipsoid(kc, kr) + 0.06 * k_noise
        hilum = g.ellipsoid(
            kc - np.array([side * kr[0] * 0.6, 0, 0]), kr * np.array([0.45, 0.4, 0.5])
        )
        kidney = (kd < 1) & (hilum > 1)
        hu[kidney] = 180  # enhancing cortex
        hu[(kd < 0.65) & (hilum > 1)] = 120  # medulla
        hu[(kd < 1) & (hilum <= 1)] = 10  # renal sinus fat / pelvis (not labelled)
        label[kidney] = 1
        if side in tumour_sides:
            rt = rng.uniform(*cfg.tumour_radius)
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            tc = kc + direction * kr * rng.uniform(0.3, 0.9)
            td = np.sqrt((g.x - tc[0]) ** 2 + (g.y - tc[1]) ** 2 + (g.z - tc[2]) ** 2) * (
                1 + 0.1 * k_noise
            )
            tumour = td < rt
            het = 15 * _smooth(rng, g.shape, (10, 10, 8))
            hu[tumour] = 180 - cfg.tumour_contrast + het[tumour]
            hu[tumour & (td < 0.5 * rt) & (rt > 20)] = 35  # necrotic centre of large tumours
            label[tumour] = 2
    hu = ndimage.gaussian_filter(hu, 0.7 / (g.spacing / g.spacing.min()))
    hu += rng.standard_normal(g.shape, dtype=np.float32) * cfg.noise
    hu[body >= 1] = -1000 + rng.standard_normal(int((body >= 1).sum()), dtype=np.float32) * 5
    return np.clip(hu, -1024, 3071)[None], label, g


@dataclass(frozen=True)
class PhantomKind:
    """One pluggable phantom kind: its knobs, its generator and its nnU-Net metadata."""

    config: type
    """Knob dataclass (`BratsPhantomConfig`, ...)."""
    case: Callable
    """(rng, shape_dhw, cfg) -> (images (C, X, Y, Z), label (X, Y, Z), grid) on an RAS grid."""
    axcodes: tuple[str, str, str]
    """Storage axis order on disk."""
    tilt_deg: float
    """Maximum in-plane tilt of the stored affine."""
    stream: int
    """Random stream of the kind (kept fixed so that old seeds give the same phantoms)."""
    name: str
    """dataset.json `name`."""
    channels: list[str]
    labels: dict[str, int]
    medtune: dict


PHANTOM_KINDS: dict[str, PhantomKind] = {}
"""The registry of phantom kinds (`medtune phantoms --kind`)."""


def register_phantom_kind(kind: str, spec: PhantomKind) -> None:
    """Add a phantom kind to `PHANTOM_KINDS`."""
    PHANTOM_KINDS[kind] = spec


def phantom_kind(kind: str) -> PhantomKind:
    """The registered kind, or a one-line error naming the known ones."""
    spec = PHANTOM_KINDS.get(kind)
    if spec is None:
        raise MedtuneInputError(
            f"--kind: expected one of {', '.join(PHANTOM_KINDS)}, found '{kind}'"
        )
    return spec


def make_phantom(kind: str, seed: int, index: int, shape=None, **knobs):
    """One case: (images (C, X, Y, Z) as stored, label (X, Y, Z) uint8, affine (4, 4))."""
    spec = phantom_kind(kind)
    shape = tuple(int(s) for s in (shape or DEFAULT_SHAPE))
    if len(shape) != 3 or min(shape) < 8:
        raise MedtuneInputError(f"phantom shape: expected 3 sizes (D H W) >= 8, found {shape}")
    rng = np.random.default_rng([int(seed), int(index), spec.stream])
    img, lab, g = spec.case(rng, shape, from_dict(spec.config, knobs, "phantom knobs"))
    ornt, affine = _affine_and_storage(
        g, spec.axcodes, tilt_deg=rng.uniform(-spec.tilt_deg, spec.tilt_deg)
    )
    img = np.stack([nib.orientations.apply_orientation(c, ornt) for c in img])
    lab = nib.orientations.apply_orientation(lab, ornt)
    return img, np.ascontiguousarray(lab), affine


def write_phantoms(
    kind: str,
    cases: int,
    out: str | Path,
    seed: int = 0,
    shape=None,
    overwrite: bool = False,
    **knobs,
) -> Path:
    """Write `cases` phantoms of `kind` (a key of `PHANTOM_KINDS`) as an nnU-Net raw dataset in `out`.

    `shape` is (D, H, W) voxels (default `DEFAULT_SHAPE`); `knobs` are fields of the kind's
    config (`BratsPhantomConfig`, `KitsPhantomConfig`, `ContextPhantomConfig`). `out` must be new or empty; a phantom dataset
    written before is replaced only with `overwrite` (a note on stderr says what was replaced),
    any other content is refused. The dataset is written beside `out` under a temporary name
    and moved in when complete, so a failure leaves `out` as it was. Returns `out`.
    """
    out = Path(out)
    if cases < 1:
        raise MedtuneInputError(f"--cases: expected >= 1, found {cases}")
    cfg = from_dict(phantom_kind(kind).config, knobs, "phantom knobs")
    shape = tuple(int(s) for s in (shape or DEFAULT_SHAPE))
    if len(shape) != 3 or min(shape) < 8:
        raise MedtuneInputError(f"--shape: expected 3 sizes (D H W) >= 8, found {shape}")
    previous = previous_phantoms(out)
    if previous and not overwrite:
        raise MedtuneInputError(
            f"--out {out}: expected a new or empty folder, found {previous}; pass --overwrite "
            "to replace it"
        )
    tmp = out.parent / f".tmp-{os.getpid()}-{out.name}"
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        _write_dataset(kind, cases, tmp, seed, shape, cfg, knobs)
        if previous:
            print(f"{out}: replacing {previous} with {cases} {kind} cases", file=sys.stderr)
        _move_in(tmp, out)
    except OSError as exc:
        raise MedtuneInputError(
            f"--out {out}: expected a writable folder, found {exc.strerror or exc}"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_dataset(kind: str, cases: int, out: Path, seed: int, shape, cfg, knobs) -> None:
    for i in range(cases):
        img, lab, affine = make_phantom(kind, seed, i, shape, **knobs)
        case_id = f"{kind}_{i:03d}"
        for c in range(img.shape[0]):
            save_nifti(
                np.round(img[c]),
                affine,
                out / "imagesTr" / f"{case_id}_{c:04d}.nii.gz",
                dtype=np.int16,
            )
        save_nifti(lab, affine, out / "labelsTr" / f"{case_id}.nii.gz", dtype=np.uint8)
    spec = phantom_kind(kind)
    meta = dict(spec.medtune)
    meta["edition"] = "phantom"
    meta["phantom"] = {
        "kind": kind,
        "seed": seed,
        "shape": list(shape),
        "knobs": _plain(asdict(cfg)),
    }
    save_json(
        {
            "name": spec.name,
            "description": f"medtune synthetic {kind} phantoms (seed {seed})",
            "channel_names": {str(i): n for i, n in enumerate(spec.channels)},
            "labels": spec.labels,
            "numTraining": cases,
            "file_ending": ".nii.gz",
            "medtune": meta,
        },
        out / "dataset.json",
    )


PHANTOM_ENTRIES = ("imagesTr", "labelsTr", "dataset.json")
"""What `write_phantoms` writes, and all that `overwrite` replaces."""


def previous_phantoms(out: Path) -> str | None:
    """A description of the phantom dataset in `out` ('a phantom dataset of 4 brats cases
    (seed 0, shape 32x48x48)'), None when `out` is missing or empty; refuses a file and a folder
    holding anything else."""
    if out.exists() and not out.is_dir():
        raise MedtuneInputError(f"--out {out}: expected a folder, found a file")
    if not out.exists() or not any(out.iterdir()):
        return None
    try:
        data = json.loads((out / "dataset.json").read_text())
        previous = data.get("medtune", {}).get("phantom")
    except (OSError, ValueError, AttributeError):
        previous = None
    if not isinstance(previous, dict):
        raise MedtuneInputError(
            f"--out {out}: expected a new, empty or phantom dataset folder, found other files"
        )
    n = data.get("numTraining", "?")
    shape = "x".join(str(v) for v in previous.get("shape") or [])
    return (
        f"a phantom dataset of {n} {previous.get('kind')} cases (seed {previous.get('seed')}, "
        f"shape {shape})"
    )


def _move_in(tmp: Path, out: Path) -> None:
    """Replace the phantom entries of `out` (or `out` itself when missing or empty) by `tmp`'s."""
    if not out.exists() or not any(out.iterdir()):
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        return
    for name in PHANTOM_ENTRIES:
        old = out / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
        os.replace(tmp / name, old)


def _plain(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _context_case(rng, shape_dhw, cfg):
    return context_case(rng, shape_dhw, cfg, _Grid, _spacing(shape_dhw, cfg.fov))


register_phantom_kind(
    "brats",
    PhantomKind(
        BratsPhantomConfig,
        _brats_case,
        ("L", "P", "S"),
        6.0,
        0,
        "BraTSPhantom",
        BRATS_CHANNELS,
        BRATS_LABELS,
        BRATS_MEDTUNE,
    ),
)
register_phantom_kind(
    "kits",
    PhantomKind(
        KitsPhantomConfig,
        _kits_case,
        ("S", "P", "L"),
        4.0,
        1,
        "KiTSPhantom",
        ["CT"],
        KITS_LABELS,
        KITS_MEDTUNE,
    ),
)
register_phantom_kind(
    "context",
    PhantomKind(
        ContextPhantomConfig,
        _context_case,
        ("L", "P", "S"),
        5.0,
        2,
        "ContextPhantom",
        CONTEXT_CHANNELS,
        CONTEXT_LABELS,
        CONTEXT_MEDTUNE,
    ),
)
