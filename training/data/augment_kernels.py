"""Fused CPU kernel for one MoCo view of a batch (numba, parallel over images).

One pass per image does what the paper's torchvision chain does to a PIL image: an affine
resample (rotation + random resized crop + flips, bilinear, zero outside the valid region),
brightness, contrast (around the warped image's mean), a separable Gaussian blur with the image's
own sigma (reflect borders), Gaussian noise with the image's own std (clamped to [0, 1]) and
normalisation. Noise comes from a per-image counter-based generator (splitmix64 seeded with the
image's seed) mapped through a 65,536-entry inverse-normal table, so results do not depend on
thread scheduling; the table truncates |z| at about 4.3.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from statistics import NormalDist

_QUANTILE = NormalDist().inv_cdf
NORMAL_TABLE = np.array([_QUANTILE((k + 0.5) / 65536) for k in range(65536)], dtype=np.float32)


@numba.njit(inline="always")
def _splitmix64(state: np.uint64) -> tuple[np.uint64, np.uint64]:
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))


@numba.njit(fastmath=True, cache=True, inline="always")
def _sample_border(image, height, width, sx, sy, gain):
    """Bilinear sample near or outside the valid region: missing neighbours read as zero."""
    x0 = math.floor(sx)
    y0 = math.floor(sy)
    fx = sx - x0
    fy = sy - y0
    xi = int(x0)
    yi = int(y0)
    if xi < -1 or yi < -1 or xi >= width or yi >= height:
        return np.float32(0.0)
    a = image[yi, xi] if (xi >= 0 and yi >= 0) else 0
    b = image[yi, xi + 1] if (xi + 1 < width and yi >= 0) else 0
    c = image[yi + 1, xi] if (xi >= 0 and yi + 1 < height) else 0
    d = image[yi + 1, xi + 1] if (xi + 1 < width and yi + 1 < height) else 0
    v = ((a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy) * gain
    return np.float32(min(v, 1.0))


@numba.njit(fastmath=True, cache=True, inline="always")
def _interior(start, step, limit, size):
    """[lo, hi) of ox in [0, size) with 0 <= start + step * ox < limit (limit = last valid + 1 - 1e-3)."""
    if abs(step) < 1e-12:
        if 0.0 <= start < limit:
            return 0, size
        return 0, 0
    a = (0.0 - start) / step
    b = (limit - start) / step
    lo_f, hi_f = (a, b) if step > 0 else (b, a)
    lo = min(size, max(0, int(math.ceil(lo_f)) + 1))
    hi = min(size, int(math.floor(hi_f)))
    return lo, max(lo, hi)


@numba.njit(fastmath=True, cache=True)
def _blur_columns(src, kernel, radius):
    """1D convolution along axis 0 with reflect-101 borders; the inner loop runs over whole rows."""
    size = src.shape[0]
    dst = np.zeros_like(src)
    for oy in range(size):
        acc = dst[oy]
        for k in range(2 * radius + 1):
            i = oy + k - radius
            i = -i if i < 0 else (2 * size - 2 - i if i >= size else i)
            weight = kernel[k]
            row = src[i]
            for ox in range(src.shape[1]):
                acc[ox] += weight * row[ox]
    return dst


@numba.njit(fastmath=True, cache=True)
def _view_one(image, height, width, matrix, bright, contrast, sigma, noise_std, noise_seed,
              mean, std, table, out):
    size = out.shape[0]
    m00, m01, m02 = matrix[0, 0], matrix[0, 1], matrix[0, 2]
    m10, m11, m12 = matrix[1, 0], matrix[1, 1], matrix[1, 2]
    total = 0.0
    gain = np.float32(bright / 255.0)
    for oy in range(size):
        py = oy + 0.5
        # source coordinates along this output row: s(ox) = base + step * ox
        bx = m00 * 0.5 + m01 * py + m02 - 0.5
        by = m10 * 0.5 + m11 * py + m12 - 0.5
        lo_x, hi_x = _interior(bx, m00, width - 1 - 1e-3, size)
        lo_y, hi_y = _interior(by, m10, height - 1 - 1e-3, size)
        lo, hi = max(lo_x, lo_y), min(hi_x, hi_y)
        if hi < lo:
            hi = lo
        row = out[oy]
        acc = np.float32(0.0)
        for ox in range(0, lo):
            v = _sample_border(image, height, width, bx + m00 * ox, by + m10 * ox, gain)
            row[ox] = v
            acc += v
        bxf, byf, sxf, syf = np.float32(bx), np.float32(by), np.float32(m00), np.float32(m10)
        for ox in range(lo, hi):
            sx = bxf + sxf * np.float32(ox)
            sy = byf + syf * np.float32(ox)
            xi = int(sx)
            yi = int(sy)
            fx = np.float32(sx - xi)
            fy = np.float32(sy - yi)
            a = np.float32(image[yi, xi])
            b = np.float32(image[yi, xi + 1])
            c = np.float32(image[yi + 1, xi])
            d = np.float32(image[yi + 1, xi + 1])
            top = a + (b - a) * fx
            bottom = c + (d - c) * fx
            v = min((top + (bottom - top) * fy) * gain, np.float32(1.0))
            row[ox] = v
            acc += v
        for ox in range(hi, size):
            v = _sample_border(image, height, width, bx + m00 * ox, by + m10 * ox, gain)
            row[ox] = v
            acc += v
        total += acc
    grey_mean = total / (size * size)
    offset = (1.0 - contrast) * grey_mean
    for oy in range(size):
        for ox in range(size):
            v = out[oy, ox] * contrast + offset
            out[oy, ox] = min(max(v, 0.0), 1.0)
    if sigma > 0:
        radius = max(1, int(math.ceil(3.0 * sigma)))
        kernel = np.empty(2 * radius + 1, np.float32)
        ksum = 0.0
        for k in range(-radius, radius + 1):
            kernel[k + radius] = math.exp(-(k * k) / (2.0 * sigma * sigma))
            ksum += kernel[k + radius]
        kernel /= ksum
        # both passes run along columns (contiguous rows of weights), the second on the transpose
        tmp = _blur_columns(out, kernel, radius)
        out[:, :] = _blur_columns(np.ascontiguousarray(tmp.T), kernel, radius).T
    scale = 1.0 / std
    if noise_std > 0:
        state = np.uint64(noise_seed)
        bits = np.uint64(0)
        left = 0
        for oy in range(size):
            for ox in range(size):
                if left == 0:
                    state, bits = _splitmix64(state)
                    left = 4
                z = table[int(bits & np.uint64(0xFFFF))]
                bits = bits >> np.uint64(16)
                left -= 1
                v = min(max(out[oy, ox] + noise_std * z, 0.0), 1.0)
                out[oy, ox] = (v - mean) * scale
    else:
        for oy in range(size):
            for ox in range(size):
                out[oy, ox] = (out[oy, ox] - mean) * scale


@numba.njit(parallel=True, cache=True)
def augment_view_batch(images, source, heights, widths, matrices, bright, contrast, sigma, noise_std,
                       noise_seed, mean, std, table, out):
    """out[i] (float32 S x S) = one view of images[source[i]] (uint8); sigma 0 = no blur,
    noise_std 0 = no noise. Several views of one batch go through one call (one parallel region)."""
    for i in numba.prange(out.shape[0]):
        j = source[i]
        _view_one(images[j], heights[i], widths[i], matrices[i], bright[i], contrast[i], sigma[i],
                  noise_std[i], noise_seed[i], mean, std, table, out[i])
