"""Named colours and CIE Lab colour differences, in numpy.

The palette is chosen so that every pair of named colours is far apart in CIE Lab (CIE76 ΔE >= 40),
which keeps a recolour unambiguous: a pixel within ΔE 20 of one named colour can be near no other.

sRGB -> linear RGB -> XYZ (D65) -> Lab follows IEC 61966-2-1 and CIE 15; ΔE is CIE76, the
Euclidean distance in Lab (a ΔE of about 2.3 is a just-noticeable difference).
"""

from __future__ import annotations

import numpy as np

#: Object and background colours by name, as sRGB bytes.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 28),
    "orange": (245, 130, 0),
    "yellow": (250, 225, 30),
    "green": (35, 155, 55),
    "cyan": (40, 200, 215),
    "blue": (20, 80, 230),
    "purple": (125, 20, 135),
    "pink": (250, 130, 200),
    "brown": (115, 65, 25),
    "white": (250, 250, 250),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}

#: The colour names, in palette order.
COLOR_NAMES = tuple(COLORS)

_M_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=np.float64,
)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def _linearize(c: np.ndarray) -> np.ndarray:
    """The sRGB transfer function inverted (IEC 61966-2-1), for values in 0..1."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


#: Linear value of each 8-bit sRGB code, so whole images convert with one table look-up.
_LINEAR_LUT = _linearize(np.arange(256) / 255.0)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Convert sRGB (..., 3) in 0-255 (uint8 or float) to CIE Lab (..., 3), D65 white point."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        linear = _LINEAR_LUT[rgb]
    else:
        linear = _linearize(rgb.astype(np.float64) / 255.0)
    xyz = linear @ (_M_RGB_TO_XYZ.T / _WHITE_D65)
    eps = (6 / 29) ** 3
    f = np.where(xyz > eps, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = np.empty_like(f)
    lab[..., 0] = 116 * f[..., 1] - 16
    lab[..., 1] = 500 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200 * (f[..., 1] - f[..., 2])
    return lab


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIE76 colour difference between two sRGB arrays (or an array and one colour), per pixel."""
    return np.linalg.norm(srgb_to_lab(a) - srgb_to_lab(b), axis=-1)


def palette_separation() -> float:
    """The smallest CIE76 ΔE between two named colours (the test keeps it >= 40)."""
    lab = srgb_to_lab(np.array(list(COLORS.values())))
    d = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    return float(d[~np.eye(len(lab), dtype=bool)].min())
