"""The dHash tile kernel in exact integer arithmetic, on x86 CPUs with AVX-512 VNNI and VBMI.

Pillow's LANCZOS passes are integer dot products (uint8 pixels x 22-bit fixed-point weights,
summed in int32). Each weight is split into three signed bytes, w = l0 + 256 l1 + 65536 l2, so
one VPDPBUSD multiplies 64 pixels by 64 limb bytes and accumulates in int32: three instructions
per 64 taps give Pillow's own sums, bit for bit, with no rounding to settle, no float copy of
the tile, and well under half the float kernel's vector loads (what bounds that kernel). int32
wraparound is harmless: the true sum fits int32 (checked when the weights are planned), so the
wrapped partial sums add up to it exactly. Edge patches are enlarged with VPERMI2B (VBMI) byte
permutes. The vector code is LLVM IR emitted through numba intrinsics.

`available()` says whether this CPU and numba's target allow it; the package falls back to
`float_kernel` otherwise, and both are tested against imagehash.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from cem_pipeline.ingest.hashing.pillow import (
    _HALF,
    PRECISION_BITS,
    check_hash_resize,
    enlarge_columns,
    lanczos_taps,
)
from cem_pipeline.ingest.hashing.stats import tile_sums

ROWS = 7  # rows per sweep: 21 accumulators + 3 weight vectors fit the 32 vector registers
BLOCK = 64  # bytes per VPDPBUSD

_V16 = ir.VectorType(ir.IntType(32), 16)


@lru_cache(maxsize=1)
def available() -> bool:
    """True when numba compiles for this host and the host has AVX-512 VNNI and VBMI (Ice Lake and
    Zen 4 onwards; Cascade Lake, with VNNI but no VBMI, takes the float kernel)."""
    import llvmlite.binding as llvm
    from numba import config

    if config.CPU_NAME not in (None, "host") or config.CPU_FEATURES is not None:
        return False
    features = llvm.get_host_cpu_features()
    return all(features.get(name) for name in ("avx512f", "avx512bw", "avx512vnni", "avx512vbmi"))


def _halves(builder, a, b, width: int):
    """Lane-wise partial sums of two vectors' runs of `width` lanes, packed into one vector."""
    low = [base + i for base in range(0, 16, 2 * width) for i in range(width)]
    high = [i + width for i in low]
    index = ir.VectorType(ir.IntType(32), 16)
    pick_low = ir.Constant(index, low[:8] + [16 + i for i in low[:8]])
    pick_high = ir.Constant(index, high[:8] + [16 + i for i in high[:8]])
    return builder.add(builder.shuffle_vector(a, b, pick_low), builder.shuffle_vector(a, b, pick_high))


def _transpose_reduce(builder, vectors):
    """Eight <16 x i32> vectors -> one <8 x i32> of their sums: a shuffle-and-add tree shared by
    all eight instead of eight reduction trees and eight scalar extracts."""
    width = 8
    while len(vectors) > 1:
        vectors = [_halves(builder, vectors[i], vectors[i + 1], width) for i in range(0, len(vectors), 2)]
        width //= 2
    last = vectors[0]
    index = ir.VectorType(ir.IntType(32), 8)
    return builder.add(builder.shuffle_vector(last, last, ir.Constant(index, list(range(0, 16, 2)))),
                       builder.shuffle_vector(last, last, ir.Constant(index, list(range(1, 16, 2)))))


@intrinsic
def _dot_rows(typingctx, first, row_stride, weights, limb_stride, blocks, target):
    """Pillow's rounded, clipped bytes of ROWS exact int32 dot products: the byte rows at
    first + k * row_stride (k < ROWS) with the three weight limbs at weights + l * limb_stride,
    over BLOCK * blocks bytes, written to target[0:ROWS] (addresses; target[ROWS] gets a 0)."""
    sig = types.void(types.intp, types.intp, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        first, stride, wbase, lstride, nblocks, target = args
        dpbusd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V16, [_V16, _V16, _V16]), "llvm.x86.avx512.vpdpbusd.512")
        zero = ir.Constant(_V16, [0] * 16)
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(3)] for _ in range(ROWS)]
        intp = nblocks.type

        def load(address):
            return builder.load(builder.inttoptr(address, _V16.as_pointer()), align=1)

        with cgutils.for_range(builder, nblocks) as loop:
            offset = builder.mul(loop.index, ir.Constant(intp, BLOCK))
            limbs = [load(builder.add(builder.add(wbase, builder.mul(lstride, ir.Constant(intp, limb))), offset))
                     for limb in range(3)]
            for k in range(ROWS):
                pixels = load(builder.add(builder.add(first, builder.mul(stride, ir.Constant(intp, k))), offset))
                for limb in range(3):
                    acc = accs[k][limb]
                    builder.store(builder.call(dpbusd, [builder.load(acc), pixels, limbs[limb]]), acc)
        rows = []
        for k in range(ROWS):
            low, mid, high = (builder.load(a) for a in accs[k])
            rows.append(builder.add(low, builder.add(builder.shl(mid, ir.Constant(_V16, [8] * 16)),
                                                     builder.shl(high, ir.Constant(_V16, [16] * 16)))))
        sums = _transpose_reduce(builder, rows + [zero])
        v8 = ir.VectorType(ir.IntType(32), 8)
        value = builder.ashr(builder.add(sums, ir.Constant(v8, [_HALF] * 8)), ir.Constant(v8, [PRECISION_BITS] * 8))
        value = builder.select(builder.icmp_signed("<", value, ir.Constant(v8, [0] * 8)), ir.Constant(v8, [0] * 8), value)
        value = builder.select(builder.icmp_signed(">", value, ir.Constant(v8, [255] * 8)), ir.Constant(v8, [255] * 8), value)
        out = builder.inttoptr(target, ir.VectorType(ir.IntType(8), 8).as_pointer())
        builder.store(builder.trunc(value, ir.VectorType(ir.IntType(8), 8)), out, align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _row_moments(typingctx, first, row_stride, rows, width):
    """(sum, sum of squares) of `rows` byte rows of `width` >= BLOCK bytes at first + r * row_stride.

    VPDPBUSD against ones gives the sum; against x XOR 0x80 (= x - 128 as a signed byte) it gives
    sum(x^2) - 128 sum(x). A row's last, partial block is loaded overlapping the previous one, with
    the overlap's multipliers zeroed. Lanes stay far below 2^31 for rows of a 224-px tile."""
    sig = types.UniTuple(types.int64, 2)(types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        first, stride, nrows, nwidth = args
        intp = nwidth.type
        bytes64 = ir.VectorType(ir.IntType(8), BLOCK)
        dpbusd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V16, [_V16, _V16, _V16]), "llvm.x86.avx512.vpdpbusd.512")
        reduce_add = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), [_V16]), "llvm.vector.reduce.add.v16i32")
        zero = ir.Constant(_V16, [0] * 16)
        sums = cgutils.alloca_once_value(builder, zero)
        centred = cgutils.alloca_once_value(builder, zero)
        ones = ir.Constant(bytes64, [1] * BLOCK)
        flip = ir.Constant(bytes64, [0x80] * BLOCK)
        full = builder.udiv(nwidth, ir.Constant(intp, BLOCK))
        rest = builder.urem(nwidth, ir.Constant(intp, BLOCK))
        skip = builder.trunc(builder.sub(ir.Constant(intp, BLOCK), rest), ir.IntType(8))
        keep = builder.icmp_unsigned(">=", ir.Constant(bytes64, list(range(BLOCK))),
                                     builder.shuffle_vector(
                                         builder.insert_element(ir.Constant(bytes64, None), skip, ir.Constant(ir.IntType(32), 0)),
                                         ir.Constant(bytes64, None), ir.Constant(ir.VectorType(ir.IntType(32), BLOCK), [0] * BLOCK)))
        tail_ones = builder.select(keep, ones, ir.Constant(bytes64, [0] * BLOCK))

        def accumulate(address, multipliers_for):
            pixels = builder.load(builder.inttoptr(address, bytes64.as_pointer()), align=1)
            plain, signed = multipliers_for(pixels)
            as16 = [builder.bitcast(v, _V16) for v in (pixels, plain, signed)]
            builder.store(builder.call(dpbusd, [builder.load(sums), as16[0], as16[1]]), sums)
            builder.store(builder.call(dpbusd, [builder.load(centred), as16[0], as16[2]]), centred)

        with cgutils.for_range(builder, nrows) as rows_loop:
            row = builder.add(first, builder.mul(rows_loop.index, stride))
            with cgutils.for_range(builder, full) as blocks_loop:
                accumulate(builder.add(row, builder.mul(blocks_loop.index, ir.Constant(intp, BLOCK))),
                           lambda x: (ones, builder.xor(x, flip)))
            with builder.if_then(builder.icmp_unsigned("!=", rest, ir.Constant(intp, 0))):
                accumulate(builder.add(row, builder.sub(nwidth, ir.Constant(intp, BLOCK))),
                           lambda x: (tail_ones, builder.select(keep, builder.xor(x, flip), ir.Constant(bytes64, [0] * BLOCK))))
        total = builder.sext(builder.call(reduce_add, [builder.load(sums)]), ir.IntType(64))
        centred_total = builder.sext(builder.call(reduce_add, [builder.load(centred)]), ir.IntType(64))
        square = builder.add(centred_total, builder.mul(total, ir.Constant(ir.IntType(64), 128)))
        return context.make_tuple(builder, signature.return_type, [total, square])

    return sig, codegen


_B64 = ir.VectorType(ir.IntType(8), BLOCK)
ENLARGED = 4 * BLOCK  # bytes per enlarged row buffer: the 224 outputs in whole BLOCKs


@intrinsic
def _enlarge_row(typingctx, source, width, index, weights0, weights1, target):
    """Pillow's horizontal BILINEAR enlargement of one byte row of `width` <= 256 px to ENLARGED
    outputs (addresses; index: ENLARGED bytes, each output's first input; weights: ENLARGED int32
    per tap). VPERMI2B picks 64 outputs' taps at a time from the row held in four registers
    (read with masked loads, never past its end), where a scalar loop pays one load per tap."""
    sig = types.void(types.intp, types.intp, types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        source, width, index, weights0, weights1, target = args
        intp = width.type
        i1x64 = ir.VectorType(ir.IntType(1), BLOCK)
        i32x16 = _V16
        masked_load = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_B64, [ir.PointerType(), ir.IntType(32), i1x64, _B64]), "llvm.masked.load.v64i8.p0")
        permute = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_B64, [_B64, _B64, _B64]), "llvm.x86.avx512.vpermi2var.qi.512")
        lanes = ir.Constant(ir.VectorType(intp, BLOCK), list(range(BLOCK)))
        splat_width = builder.shuffle_vector(
            builder.insert_element(ir.Constant(ir.VectorType(intp, BLOCK), None), width, ir.Constant(ir.IntType(32), 0)),
            ir.Constant(ir.VectorType(intp, BLOCK), None), ir.Constant(ir.VectorType(ir.IntType(32), BLOCK), [0] * BLOCK))
        table = []
        for part in range(4):
            start = ir.Constant(ir.VectorType(intp, BLOCK), [part * BLOCK] * BLOCK)
            valid = builder.icmp_unsigned("<", builder.add(lanes, start), splat_width)
            address = builder.inttoptr(builder.add(source, ir.Constant(intp, part * BLOCK)), ir.PointerType())
            table.append(builder.call(masked_load, [address, ir.Constant(ir.IntType(32), 1), valid,
                                                    ir.Constant(_B64, [0] * BLOCK)]))
        high_half = ir.Constant(_B64, [128] * BLOCK)
        one = ir.Constant(_B64, [1] * BLOCK)

        def pick(idx):
            low = builder.call(permute, [table[0], idx, table[1]])
            high = builder.call(permute, [table[2], idx, table[3]])
            return builder.select(builder.icmp_unsigned(">=", idx, high_half), high, low)

        def load32(base, offset):
            address = builder.inttoptr(builder.add(base, ir.Constant(intp, offset)), ir.PointerType())
            return builder.load(address, typ=i32x16, align=1)

        index32 = ir.IntType(32)
        for group in range(ENLARGED // BLOCK):
            address = builder.inttoptr(builder.add(index, ir.Constant(intp, group * BLOCK)), ir.PointerType())
            idx = builder.load(address, typ=_B64, align=1)
            taps = (pick(idx), pick(builder.add(idx, one)))
            quarters = []
            for quarter in range(4):
                lane_ids = ir.Constant(ir.VectorType(index32, 16), list(range(16 * quarter, 16 * quarter + 16)))
                total = ir.Constant(i32x16, [_HALF] * 16)
                for tap, weights in zip(taps, (weights0, weights1)):
                    pixels = builder.zext(builder.shuffle_vector(tap, tap, lane_ids), i32x16)
                    total = builder.add(total, builder.mul(pixels, load32(weights, 4 * (group * BLOCK + 16 * quarter))))
                value = builder.ashr(total, ir.Constant(i32x16, [PRECISION_BITS] * 16))
                value = builder.select(builder.icmp_signed("<", value, ir.Constant(i32x16, [0] * 16)),
                                       ir.Constant(i32x16, [0] * 16), value)
                value = builder.select(builder.icmp_signed(">", value, ir.Constant(i32x16, [255] * 16)),
                                       ir.Constant(i32x16, [255] * 16), value)
                quarters.append(builder.trunc(value, ir.VectorType(ir.IntType(8), 16)))
            halves = [builder.shuffle_vector(quarters[2 * h], quarters[2 * h + 1],
                                             ir.Constant(ir.VectorType(index32, 32), list(range(32)))) for h in range(2)]
            row = builder.shuffle_vector(halves[0], halves[1], ir.Constant(ir.VectorType(index32, BLOCK), list(range(BLOCK))))
            out = builder.inttoptr(builder.add(target, ir.Constant(intp, group * BLOCK)), ir.PointerType())
            builder.store(row, out, align=1)
        return context.get_dummy_value()

    return sig, codegen


def _limbs(weights: np.ndarray) -> np.ndarray:
    """(3, n) int8 balanced base-256 digits of int weights: w = l0 + 256 l1 + 65536 l2."""
    w = weights.astype(np.int64)
    low = (w + 128) % 256 - 128
    rest = (w - low) // 256
    mid = (rest + 128) % 256 - 128
    high = (rest - mid) // 256
    if (np.abs(high) > 127).any():
        raise ValueError("a weight needs more than 24 bits")
    return np.stack([low, mid, high]).astype(np.int8)


def _window_bytes(first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Each output's tap window rounded up to whole BLOCKs."""
    return -(-(last - first) // BLOCK) * BLOCK


@lru_cache(maxsize=16)
def _pass_plan(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One LANCZOS pass: each output's window start and BLOCK count (windows moved left so they
    end inside the input; the extra taps weigh 0) and its limbs as (out, 3, width) int8."""
    weights, first, last = lanczos_taps(in_size, out_size)
    count = _window_bytes(first, last)
    if (count > in_size).any():
        raise ValueError(f"a {in_size}-px pass needs windows of at most {in_size} px")
    start = np.minimum(first, in_size - count)
    table = np.zeros((out_size, 3, int(count.max())), np.int8)
    for j in range(out_size):
        taps = np.zeros(count[j], np.int64)
        taps[first[j] - start[j]:last[j] - start[j]] = weights[first[j]:last[j], j]
        table[j, :, :count[j]] = _limbs(taps)
    return start.astype(np.intp), (count // BLOCK).astype(np.intp), table


@lru_cache(maxsize=16)
def fits(size: int, hash_size: int) -> bool:
    """Whether every LANCZOS window, in whole BLOCKs, fits inside a row: true for hash sizes 7 and 8
    at 224 px (smaller hashes average wider windows; they take the float kernel)."""
    for out_size in (hash_size + 1, hash_size):
        _, first, last = lanczos_taps(size, out_size)
        if (_window_bytes(first, last) > size).any():
            return False
    return True


@lru_cache(maxsize=16)
def plan(size: int, hash_size: int) -> tuple[np.ndarray, ...]:
    """Both LANCZOS passes (size -> hash_size + 1 wide, then hash_size high) for the tile kernel."""
    check_hash_resize(size, hash_size)
    if size % ROWS:
        raise ValueError(f"the tile kernel needs a size divisible by {ROWS}, got {size}")
    return _pass_plan(size, hash_size + 1) + _pass_plan(size, hash_size)


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _lanczos_bits(tile, hstart, hblocks, htable, vstart, vblocks, vtable, mid, small):  # pragma: no cover - compiled
    """(dHash bits, pixel sum, sum of squares) of one square uint8 tile whose rows are contiguous.

    `mid` holds the horizontal pass as (columns, rows) bytes, padded to 2 * ROWS columns so the
    vertical pass can sweep ROWS columns at a time like the horizontal pass sweeps rows, and by
    8 bytes per row for the eighth byte each sweep writes; `small` (out_h, 2 * ROWS + 1) bytes.
    """
    h = tile.shape[0]
    out_w = hstart.shape[0]
    out_h = vstart.shape[0]
    base = tile.ctypes.data
    stride = tile.strides[0]
    htable_base = htable.ctypes.data
    total, square = _row_moments(base, stride, h, tile.shape[1])
    mid_base = mid.ctypes.data
    mid_row = mid.strides[0]
    for r in range(0, h, ROWS):
        for j in range(out_w):
            _dot_rows(base + r * stride + hstart[j], stride, htable_base + j * htable.strides[0], htable.strides[1],
                      hblocks[j], mid_base + j * mid_row + r)
    vtable_base = vtable.ctypes.data
    small_base = small.ctypes.data
    for o in range(out_h):
        for j0 in range(0, out_w, ROWS):
            _dot_rows(mid_base + j0 * mid_row + vstart[o], mid_row, vtable_base + o * vtable.strides[0],
                      vtable.strides[1], vblocks[o], small_base + o * small.strides[0] + j0)
    bits = np.uint64(0)
    for o in range(out_h):
        for j in range(out_w - 1):
            bits = (bits << np.uint64(1)) | np.uint64(small[o, j + 1] > small[o, j])
    return bits, total, square


@njit(cache=True, nogil=True, boundscheck=False)
def hash_tiles_kernel(tiles, hstart, hblocks, htable, vstart, vblocks, vtable,
                      hashes, totals, squares):  # pragma: no cover - compiled
    """Every 224 x 224 tile of a (planes, rows, h, cols, w) view with contiguous rows, hashed where it lies."""
    n_planes, n_rows, h, n_cols, _ = tiles.shape
    mid = np.zeros((2 * ROWS, h + 8), np.uint8)
    small = np.zeros((vstart.shape[0], 2 * ROWS + 1), np.uint8)
    index = 0
    for p in range(n_planes):
        for i in range(n_rows):
            for k in range(n_cols):
                hashes[index], totals[index], squares[index] = _lanczos_bits(
                    tiles[p, i, :, k, :], hstart, hblocks, htable, vstart, vblocks, vtable, mid, small)
                index += 1


@njit(cache=True, nogil=True, boundscheck=False)
def hash_small_tiles_kernel(tiles, h_first, h_weights, v_first, v_weights, hstart, hblocks, htable,
                            vstart, vblocks, vtable, hashes, totals, squares):  # pragma: no cover - compiled
    """Tiles no larger than 224 on either side: BILINEAR-enlarged to 224 exactly (BILINEAR
    enlargement has at most two taps per output), then hashed; the sums are of the tile itself."""
    n_planes, n_rows, h, n_cols, w = tiles.shape
    size = v_first.shape[0]
    if h_weights.shape[0] > 2:
        raise ValueError("a BILINEAR enlargement with more than two taps per output")
    first = np.zeros(ENLARGED, np.uint8)
    weights = np.zeros((2, ENLARGED), np.int32)
    for c in range(size):
        first[c] = h_first[c]
        for t in range(min(2, h_weights.shape[0])):
            weights[t, c] = h_weights[t, c]
    wide = np.zeros((h, ENLARGED), np.uint8)
    acc = np.empty(size, np.int32)
    square = np.zeros((size, size), np.uint8)
    mid = np.zeros((2 * ROWS, size + 8), np.uint8)
    small = np.zeros((vstart.shape[0], 2 * ROWS + 1), np.uint8)
    index = 0
    for p in range(n_planes):
        for i in range(n_rows):
            for k in range(n_cols):
                tile = tiles[p, i, :, k, :]
                totals[index], squares[index] = tile_sums(tile)
                for r in range(h):
                    if w == size:
                        for c in range(size):
                            wide[r, c] = tile[r, c]
                    else:
                        _enlarge_row(tile[r].ctypes.data, w, first.ctypes.data, weights[0].ctypes.data,
                                     weights[1].ctypes.data, wide[r].ctypes.data)
                enlarge_columns(wide, h, v_first, v_weights, acc, square)
                hashes[index] = _lanczos_bits(square, hstart, hblocks, htable, vstart, vblocks, vtable, mid, small)[0]
                index += 1

