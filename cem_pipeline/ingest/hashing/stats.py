"""Per-patch mean and standard deviation, the catalog's cheap content statistics.

Exact integer sums of x and x^2 per uint8 patch (population std), in one compiled pass that
reads each pixel once; numpy needed a uint16 copy and an einsum per chunk for the squares.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def tile_sums(tile):  # pragma: no cover - compiled
    """Exact sum and sum of squares of one uint8 patch (any strides; rows up to 33,000 px, whose
    squares fit the int32 row sums that let the loop vectorise)."""
    total = np.int64(0)
    square = np.int64(0)
    for r in range(tile.shape[0]):
        row_total = np.int32(0)
        row_square = np.int32(0)
        for c in range(tile.shape[1]):
            v = np.int32(tile[r, c])
            row_total = np.int32(row_total + v)
            row_square = np.int32(row_square + v * v)
        total += row_total
        square += row_square
    return total, square


@njit(cache=True, nogil=True, boundscheck=False)
def _sums(stack):  # pragma: no cover - compiled
    n = stack.shape[0]
    totals = np.zeros(n, np.int64)
    squares = np.zeros(n, np.int64)
    for b in range(n):
        totals[b], squares[b] = tile_sums(stack[b])
    return totals, squares


def patch_moments(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of every patch of a (N, H, W) uint8 stack, as float64."""
    totals, squares = _sums(stack)
    return moments_from_sums(totals, squares, stack.shape[1] * stack.shape[2])


def moments_from_sums(totals: np.ndarray, squares: np.ndarray, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) from exact per-patch sums of x and x^2 (the dHash tile kernel returns them too)."""
    mean = totals / pixels
    return mean, np.sqrt(np.maximum(squares / pixels - mean * mean, 0.0))
