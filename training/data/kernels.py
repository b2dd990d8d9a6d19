"""Fused CPU kernel for the MoCo views of a batch (numba, parallel over images).

Per view it does what the paper's torchvision chain does to a PIL image: an affine resample
(rotation + random resized crop + flips, bilinear, zero outside the valid region), brightness,
contrast (around the warped image's mean), a separable Gaussian blur with the view's own sigma
(reflect borders), Gaussian noise with the view's own std (clamped to [0, 1]) and normalisation.
Noise comes from a per-view counter-based generator (splitmix64 seeded with the view's seed)
mapped through a 65,536-entry inverse-normal table, so results do not depend on thread
scheduling; the table truncates |z| at about 4.3.

Speed comes from keeping every per-pixel loop vectorisable: the resample gathers one packed
32-bit word (the 2x2 source block) per output pixel and does the arithmetic in a separate SIMD
loop; all other steps are fused into two row passes (one without blur); loops over part of a row
run over slices from index 0, because numba's negative-index wrap-around on a runtime start turns
contiguous loads into gathers; scratch is allocated once per call and thread, not per image.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numba
import numpy as np

_QUANTILE = NormalDist().inv_cdf
NORMAL_TABLE = np.array([_QUANTILE((k + 0.5) / 65536) for k in range(65536)], dtype=np.float32)


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
def _pack_quads(image, quads):
    """quads[y * W + x] = image[y:y+2, x:x+2] as four bytes (x < W-1, y < H-1), so that the
    resample gathers one word per output pixel instead of four bytes; shared by an image's views."""
    height, width = image.shape
    for y in range(height - 1):
        top = image[y]
        bottom = image[y + 1]
        row = quads[y * width:(y + 1) * width]
        for x in range(width - 1):
            row[x] = (np.uint32(top[x]) | (np.uint32(top[x + 1]) << np.uint32(8))
                      | (np.uint32(bottom[x]) << np.uint32(16)) | (np.uint32(bottom[x + 1]) << np.uint32(24)))


@numba.njit(fastmath=True, cache=True, inline="always")
def _interior_run(quads, stride, bx, by, sx, sy, gain, lo, index, words, row):
    """row[k] = bilinear sample at output pixel lo + k, all of whose neighbours are valid; returns
    the sum. Gather (scalar) and arithmetic (SIMD) are separate loops so the second vectorises; it
    reads each word as four bytes (a byte view: shifts and masks would run on 64-bit lanes)."""
    n = row.shape[0]
    for k in range(n):
        x = bx + sx * np.float32(lo + k)
        y = by + sy * np.float32(lo + k)
        index[k] = np.int32(y) * np.int32(stride) + np.int32(x)
    for k in range(n):
        words[k] = quads[np.uint32(index[k])]
    acc = np.float32(0.0)
    corners = words.view(np.uint8)
    for k in range(n):
        x = bx + sx * np.float32(lo + k)
        y = by + sy * np.float32(lo + k)
        fx = x - np.float32(np.int32(x))
        fy = y - np.float32(np.int32(y))
        a = np.float32(corners[4 * k])
        b = np.float32(corners[4 * k + 1])
        c = np.float32(corners[4 * k + 2])
        d = np.float32(corners[4 * k + 3])
        top = a + (b - a) * fx
        bottom = c + (d - c) * fx
        v = min((top + (bottom - top) * fy) * gain, np.float32(1.0))
        row[k] = v
        acc += v
    return acc


@numba.njit(fastmath=True, cache=True)
def _resample(image, quads, height, width, matrix, gain, index, words, out):
    """out = min(gain * bilinear warp of image, 1), zero outside the valid (height, width) region;
    returns the mean of out (for contrast)."""
    size = out.shape[0]
    m00, m01, m02 = matrix[0, 0], matrix[0, 1], matrix[0, 2]
    m10, m11, m12 = matrix[1, 0], matrix[1, 1], matrix[1, 2]
    total = 0.0
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
        acc += _interior_run(quads, image.shape[1], np.float32(bx), np.float32(by), np.float32(m00),
                             np.float32(m10), gain, lo, index, words, row[lo:hi])
        for ox in range(hi, size):
            v = _sample_border(image, height, width, bx + m00 * ox, by + m10 * ox, gain)
            row[ox] = v
            acc += v
        total += acc
    return total / (size * size)


@numba.njit(cache=True)
def _blur_radius(sigma):
    return max(1, int(math.ceil(3.0 * sigma)))


@numba.njit(cache=True)
def _padded_taps(radius):
    """2 * radius + 1 taps rounded up to whole sweeps of four (see _convolve_row)."""
    return (2 * radius + 4) // 4 * 4


@numba.njit(fastmath=True, cache=True)
def _gaussian_weights(sigma, weights):
    """Normalised Gaussian taps in weights[:2 * radius + 1], zeros after them up to
    _padded_taps(radius); returns the radius."""
    radius = _blur_radius(sigma)
    ksum = 0.0
    for k in range(-radius, radius + 1):
        weights[k + radius] = math.exp(-(k * k) / (2.0 * sigma * sigma))
        ksum += weights[k + radius]
    for k in range(2 * radius + 1):
        weights[k] /= ksum
    weights[2 * radius + 1:_padded_taps(radius)] = 0.0
    return radius


@numba.njit(fastmath=True, cache=True)
def _noise_codes(seed, bits):
    """bits[g] = splitmix64 output number g + 1 from `seed`; viewed as uint16, pixel p's table index
    is code p. Written without the generator's carried state so that the loop vectorises."""
    for g in range(bits.shape[0]):
        z = np.uint64(seed) + np.uint64(g + 1) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        bits[g] = z ^ (z >> np.uint64(31))


@numba.njit(fastmath=True, cache=True, inline="always")
def _contrast_row(src, contrast, offset, dst):
    for x in range(src.shape[0]):
        dst[x] = min(max(src[x] * contrast + offset, np.float32(0.0)), np.float32(1.0))


@numba.njit(fastmath=True, cache=True, inline="always")
def _finish_row(values, noise_std, codes, table, mean, scale, out_row):
    """out_row = normalise(clamp(values + noise_std * z)), z from this row's noise codes; no noise
    (and no clamp: values are in [0, 1]) when noise_std is 0. The table lookups (a gather) get a
    loop of their own, staged in out_row, so that the arithmetic vectorises."""
    if noise_std > 0:
        for x in range(out_row.shape[0]):
            out_row[x] = table[codes[x]]
        for x in range(out_row.shape[0]):
            v = min(max(values[x] + noise_std * out_row[x], np.float32(0.0)), np.float32(1.0))
            out_row[x] = (v - mean) * scale
    else:
        for x in range(out_row.shape[0]):
            out_row[x] = (values[x] - mean) * scale


@numba.njit(fastmath=True, cache=True, inline="always")
def _convolve_row(padded, weights, taps, dst):
    """dst[x] = sum_k weights[k] * padded[x + k] for k < taps (a multiple of four). Four taps per
    sweep over the row: the pixel loop vectorises and dst is loaded and stored once per four taps
    instead of once per tap."""
    w0, w1, w2, w3 = weights[0], weights[1], weights[2], weights[3]
    for x in range(dst.shape[0]):
        dst[x] = w0 * padded[x] + w1 * padded[x + 1] + w2 * padded[x + 2] + w3 * padded[x + 3]
    for k in range(4, taps, 4):
        w0, w1, w2, w3 = weights[k], weights[k + 1], weights[k + 2], weights[k + 3]
        src = padded[k:]  # indices from 0: see the module docstring
        for x in range(dst.shape[0]):
            dst[x] += w0 * src[x] + w1 * src[x + 1] + w2 * src[x + 2] + w3 * src[x + 3]


@numba.njit(fastmath=True, cache=True)
def _contrast_blur_rows(image, contrast, offset, weights, radius, padded, plane):
    """plane = contrast(image) blurred along x with reflect-101 borders (contrast fused in while
    each row is copied into its padded buffer; the zero-weight taps past 2 * radius read zeros)."""
    size = image.shape[1]
    taps = _padded_taps(radius)
    padded[size + 2 * radius:size + taps - 1] = 0.0
    for oy in range(image.shape[0]):
        _contrast_row(image[oy], contrast, offset, padded[radius:radius + size])
        for k in range(1, radius + 1):
            padded[radius - k] = padded[radius + k]
            padded[radius + size - 1 + k] = padded[radius + size - 1 - k]
        _convolve_row(padded, weights, taps, plane[oy])


@numba.njit(cache=True, inline="always")
def _tap_row(plane, oy, k, radius):
    """Row oy + k - radius of plane, reflect-101; row oy for the zero-weight taps past 2 * radius."""
    if k > 2 * radius:
        return plane[oy]
    i = oy + k - radius
    size = plane.shape[0]
    return plane[-i if i < 0 else (2 * size - 2 - i if i >= size else i)]


@numba.njit(fastmath=True, cache=True, inline="always")
def _blur_column_row(plane, oy, weights, radius, dst):
    """dst = output row oy of plane blurred along y, over whole rows of plane, four taps per sweep
    (as in _convolve_row)."""
    for x in range(dst.shape[0]):
        dst[x] = 0.0
    for k in range(0, _padded_taps(radius), 4):
        w0, w1, w2, w3 = weights[k], weights[k + 1], weights[k + 2], weights[k + 3]
        r0 = _tap_row(plane, oy, k, radius)
        r1 = _tap_row(plane, oy, k + 1, radius)
        r2 = _tap_row(plane, oy, k + 2, radius)
        r3 = _tap_row(plane, oy, k + 3, radius)
        for x in range(dst.shape[0]):
            dst[x] += w0 * r0[x] + w1 * r1[x] + w2 * r2[x] + w3 * r3[x]


@numba.njit(fastmath=True, cache=True)
def _view_one(image, quads, height, width, matrix, bright, contrast, sigma, noise_std, noise_seed,
              mean, std, table, index, words, values, padded, plane, weights, bits, out):
    """One view into out (S x S); the other arguments after `table` are this thread's scratch."""
    size = out.shape[0]
    grey_mean = _resample(image, quads, height, width, matrix, np.float32(bright / 255.0), index, words, out)
    offset = np.float32((1.0 - contrast) * grey_mean)
    scale = np.float32(1.0 / std)
    if noise_std > 0:
        _noise_codes(noise_seed, bits)
    codes = bits.view(np.uint16)
    if sigma > 0:
        radius = _gaussian_weights(sigma, weights)
        _contrast_blur_rows(out, contrast, offset, weights, radius, padded, plane)
        for oy in range(size):
            _blur_column_row(plane, oy, weights, radius, values)
            _finish_row(values, noise_std, codes[oy * size:(oy + 1) * size], table, mean, scale, out[oy])
    else:
        for oy in range(size):
            _contrast_row(out[oy], contrast, offset, values)
            _finish_row(values, noise_std, codes[oy * size:(oy + 1) * size], table, mean, scale, out[oy])


@numba.njit(parallel=True, cache=True)
def augment_view_batch(images, heights, widths, matrices, bright, contrast, sigma, noise_std, noise_seed,
                       mean, std, table, threads, out):
    """out[v * B + j] (float32 S x S) = view v of images[j] (uint8, B images); sigma 0 = no blur,
    noise_std 0 = no noise. All views of a batch go through one call (one parallel region), and an
    image's views share its packed source. `threads` = numba.get_num_threads() (sizes the
    per-thread scratch; a kernel that asked numba itself could not be cached)."""
    batch, in_h, in_w = images.shape
    size = out.shape[1]
    max_radius = _blur_radius(sigma.max()) if sigma.size else 1
    quads = np.empty((threads, in_h * in_w), np.uint32)
    index = np.empty((threads, size), np.int32)
    words = np.empty((threads, size), np.uint32)
    values = np.empty((threads, size), np.float32)
    padded = np.empty((threads, size - 1 + _padded_taps(max_radius)), np.float32)
    plane = np.empty((threads, size, size), np.float32)
    weights = np.empty((threads, _padded_taps(max_radius)), np.float32)
    bits = np.empty((threads, (size * size + 3) // 4), np.uint64)
    for j in numba.prange(batch):
        t = numba.get_thread_id()
        _pack_quads(images[j], quads[t])
        for i in range(j, out.shape[0], batch):
            _view_one(images[j], quads[t], heights[i], widths[i], matrices[i], bright[i], contrast[i], sigma[i],
                      noise_std[i], noise_seed[i], mean, std, table, index[t], words[t], values[t], padded[t],
                      plane[t], weights[t], bits[t], out[i])
