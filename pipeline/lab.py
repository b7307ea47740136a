"""CIE Lab for colorization (Zhang, Isola & Efros 2016): conversion, ab bins, class rebalancing.

sRGB (D65, IEC 61966-2-1) -> linear RGB -> XYZ -> Lab (CIE 1976):

    c_lin = ((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92
    X, Y, Z = M @ (r_lin, g_lin, b_lin), divided by the white point (0.95047, 1, 1.08883)
    f(t) = t ** (1/3) if t > (6/29) ** 3 else t / (3 (6/29) ** 2) + 4/29
    L = 116 f(Y) - 16,  a = 500 (f(X) - f(Y)),  b = 200 (f(Y) - f(Z))

The ab plane is quantized on a grid of 10 (bin centres at multiples of 10); the in-gamut bins
are those that some sRGB colour falls in: we sample the sRGB cube on a 128^3 lattice, convert,
and collect the occupied bins (deterministic; 262 bins with this conversion, where the paper
reports 313 from its own gamut computation). Every grid cell maps to its nearest in-gamut bin,
so a view's ab always gets a bin. The class-rebalancing prior (paper eq. 4) is counted from the
training views themselves by the colorization method (`methods/colorization.py`) and turned into
weights by `methods.losses.rebalancing_weights`.
"""

from __future__ import annotations

import functools

import numpy as np

RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
              (0.2126729, 0.7151522, 0.0721750),
              (0.0193339, 0.1191920, 0.9503041))
WHITE_D65 = (0.95047, 1.0, 1.08883)
DELTA = 6 / 29
BIN_SIZE = 10
GRID_LIMIT = 110  # bin centres from -110 to 110 on both axes: a 23 x 23 grid
GRID_SIDE = 2 * GRID_LIMIT // BIN_SIZE + 1


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in [0, 1] -> (..., 3) Lab (L in [0, 100])."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ np.array(RGB_TO_XYZ).T / np.array(WHITE_D65)  # (..., 3)
    f = np.where(xyz > DELTA ** 3, np.cbrt(xyz), xyz / (3 * DELTA ** 2) + 4 / 29)
    lightness = 116 * f[..., 1] - 16
    return np.stack([lightness, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """(..., 3) Lab -> (..., 3) sRGB in [0, 1] (clipped): the inverse of `srgb_to_lab`, for display."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f > DELTA, f ** 3, 3 * DELTA ** 2 * (f - 4 / 29)) * np.array(WHITE_D65)
    linear = np.clip(xyz @ np.linalg.inv(np.array(RGB_TO_XYZ)).T, 0.0, 1.0)
    return np.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)


def grid_index(ab: np.ndarray) -> np.ndarray:
    """(..., 2) ab -> (...) index of the nearest grid cell, row-major over (a, b), in [0, 529)."""
    cells = np.clip(np.floor(np.asarray(ab) / BIN_SIZE + 0.5).astype(np.int64) + GRID_LIMIT // BIN_SIZE,
                    0, GRID_SIDE - 1)
    return cells[..., 0] * GRID_SIDE + cells[..., 1]


@functools.lru_cache(maxsize=1)
def _gamut(samples_per_axis: int = 128) -> tuple[np.ndarray, np.ndarray]:
    values = np.linspace(0.0, 1.0, samples_per_axis)
    linear = np.where(values > 0.04045, ((values + 0.055) / 1.055) ** 2.4, values / 12.92)  # (n,)
    occupied = np.zeros(GRID_SIDE * GRID_SIDE, dtype=bool)
    matrix = np.array(RGB_TO_XYZ) / np.array(WHITE_D65)[:, None]  # (3, 3), white point folded in
    xyz = [row[0] * linear[:, None, None] + row[1] * linear[None, :, None] + row[2] * linear[None, None, :]
           for row in matrix]  # 3 x (n, n, n): the whole cube at once
    f = [np.where(t > DELTA ** 3, np.cbrt(t), t / (3 * DELTA ** 2) + 4 / 29) for t in xyz]
    ab = np.stack([500 * (f[0] - f[1]), 200 * (f[1] - f[2])], axis=-1)  # (n, n, n, 2)
    occupied[grid_index(ab)] = True
    cells = np.flatnonzero(occupied)  # (Q,)
    centres = (np.stack([cells // GRID_SIDE, cells % GRID_SIDE], axis=1) - GRID_LIMIT // BIN_SIZE) * BIN_SIZE
    every = (np.stack(np.divmod(np.arange(GRID_SIDE * GRID_SIDE), GRID_SIDE), axis=1)
             - GRID_LIMIT // BIN_SIZE) * BIN_SIZE  # (529, 2)
    nearest = ((every[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)  # (529,)
    centres.setflags(write=False)
    nearest.setflags(write=False)
    return centres.astype(np.float64), nearest


def in_gamut_bins() -> np.ndarray:
    """The in-gamut ab bin centres, (Q, 2) float64, row q = bin q (sorted by a, then b)."""
    return _gamut()[0].copy()


def grid_to_bin() -> np.ndarray:
    """(529,) int64: for every grid cell (see `grid_index`), its nearest in-gamut bin."""
    return _gamut()[1].copy()


def ab_to_bins(ab: np.ndarray) -> np.ndarray:
    """(..., 2) ab -> (...) int64 in-gamut bin index (numpy twin of the graph's quantization)."""
    return grid_to_bin()[grid_index(ab)]


__all__ = [
    "ab_to_bins", "lab_to_srgb", "grid_index", "grid_to_bin", "in_gamut_bins", "srgb_to_lab",
]
