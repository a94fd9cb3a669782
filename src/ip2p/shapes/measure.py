"""Pixel measurements the generator and the benchmark share: colour masks, blobs, PSNR, structure.

Pure numpy. Blobs are 4-connected components, labelled run by run with a union-find over the runs
of consecutive rows, which is fast enough in Python for images up to 512 x 512.
"""

from __future__ import annotations

import math

import numpy as np

from .color import COLORS, delta_e

#: Colour-match tolerance (CIE76 ΔE) used throughout: half the palette's smallest separation.
MATCH_DELTA_E = 20.0


def color_mask(image: np.ndarray, color: str | tuple[int, int, int], tol: float = MATCH_DELTA_E) -> np.ndarray:
    """Pixels within ΔE ``tol`` of a named or RGB colour."""
    rgb = COLORS[color] if isinstance(color, str) else color
    return delta_e(image, np.asarray(rgb, dtype=np.float64)) < tol


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 4-connected components of a boolean mask: (labels with 0 = background, count)."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rows, starts = np.nonzero(d == 1)
    ends = np.nonzero(d == -1)[1]
    rows, starts, ends = rows.tolist(), starts.tolist(), ends.tolist()
    parent = list(range(len(rows)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    # runs come sorted by row then column; join each run to the overlapping runs of the row above
    first_of_row: dict[int, int] = {}
    for i, y in enumerate(rows):
        first_of_row.setdefault(y, i)
    for i, y in enumerate(rows):
        j = first_of_row.get(y - 1)
        if j is None:
            continue
        while j < len(rows) and rows[j] == y - 1:
            if starts[j] < ends[i] and ends[j] > starts[i]:
                ra, rb = find(i), find(j)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
            j += 1
    labels = np.zeros((h, w), dtype=np.int32)
    roots: dict[int, int] = {}
    for i, y in enumerate(rows):
        labels[y, starts[i] : ends[i]] = roots.setdefault(find(i), len(roots) + 1)
    return labels, len(roots)


def blobs(mask: np.ndarray, min_area: int) -> list[np.ndarray]:
    """The components of ``mask`` with at least ``min_area`` pixels, as boolean masks."""
    labels, n = label_components(mask)
    if n == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    return [labels == k for k in range(1, n + 1) if areas[k] >= min_area]


def min_blob_area(size: int) -> int:
    """Smallest blob that counts as an object: 12 % of the smallest shape's disc (a small star covers ~40 %)."""
    return max(4, int(0.12 * math.pi * (0.13 * size) ** 2))


def count_blobs(image: np.ndarray, color: str, size: int | None = None) -> int:
    return len(blobs(color_mask(image, color), min_blob_area(size or image.shape[0])))


def centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def psnr(a: np.ndarray, b: np.ndarray, cap: float = 100.0) -> float:
    """Peak signal-to-noise ratio in dB for 8-bit images, capped (identical images give ``cap``)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return cap if mse == 0 else min(cap, 10 * math.log10(255.0**2 / mse))


def edge_map(image: np.ndarray) -> np.ndarray:
    """Gradient magnitude of the luminance (central differences)."""
    lum = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    gx = np.zeros_like(lum)
    gy = np.zeros_like(lum)
    gx[:, 1:-1] = lum[:, 2:] - lum[:, :-2]
    gy[1:-1] = lum[2:] - lum[:-2]
    return np.hypot(gx, gy)


def structure_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images' edge maps: 1 when shapes and outlines sit in the same places."""
    ea, eb = edge_map(a).ravel(), edge_map(b).ravel()
    ea, eb = ea - ea.mean(), eb - eb.mean()
    denom = math.sqrt(float(ea @ ea) * float(eb @ eb))
    return float(ea @ eb / denom) if denom > 0 else 0.0
