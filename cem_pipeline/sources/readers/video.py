"""AVI / MP4 / MOV / MKV video through PyAV: frames are z slices (xy only, no spacing).

Frames are decoded sequentially — containers cannot seek to an exact frame reliably — so each
dask chunk of `FRAMES_PER_CHUNK` frames decodes from the start and keeps its own range
(decode cost grows with the number of chunks; memory stays at one chunk). Gray pixel formats are
read as gray; anything else as RGB, reduced to gray by the standardiser like any RGB image.
"""
from __future__ import annotations

import av
import dask
import dask.array as da
import numpy as np

from cem_pipeline.sources.readers.base import ReaderError, Volume

FRAMES_PER_CHUNK = 64
_GRAY = {"gray", "gray8", "gray16le", "gray16be", "y8"}


def _format(stream) -> str:
    name = stream.codec_context.pix_fmt or ""
    return "gray" if name in _GRAY else "rgb24"


def frames(path: str, start: int, stop: int) -> np.ndarray:
    out = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        fmt = _format(stream)
        for index, frame in enumerate(container.decode(stream)):
            if index >= stop:
                break
            if index >= start:
                out.append(frame.to_ndarray(format=fmt))
    if len(out) != stop - start:
        raise ReaderError(path, f"video ended after {start + len(out)} frames, expected {stop}")
    return np.stack(out)


def read(path: str) -> Volume:
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ReaderError(path, "no video stream")
            stream = container.streams.video[0]
            height, width, fmt = stream.codec_context.height, stream.codec_context.width, _format(stream)
            n_frames = sum(1 for _ in container.demux(stream) if _.size)
    except ReaderError:
        raise
    except Exception as exc:
        raise ReaderError(path, f"not a readable video ({type(exc).__name__}: {exc})") from None
    if n_frames == 0:
        raise ReaderError(path, "video has no frames")
    channels = () if fmt == "gray" else (3,)
    chunks = [
        da.from_delayed(dask.delayed(frames, pure=True)(path, s, min(s + FRAMES_PER_CHUNK, n_frames)),
                        shape=(min(s + FRAMES_PER_CHUNK, n_frames) - s, height, width) + channels, dtype=np.uint8)
        for s in range(0, n_frames, FRAMES_PER_CHUNK)
    ]
    return Volume(da.concatenate(chunks), None, "video", path, channels=bool(channels), meta={"codec": stream.codec_context.name})
