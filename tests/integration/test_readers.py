"""Every reader round-trips real EM content written at test time to its format, lazily, with voxel size."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from cem_pipeline.core.config import SourceSpec
from cem_pipeline.sources.manifest import expand, load_manifest
from cem_pipeline.sources.readers import ReaderError, open_volume


def _open(path, **spec):
    items = expand(SourceSpec(name="t", path=str(path), **spec))
    assert len(items) == 1
    return open_volume(items[0])


def _read(volume) -> np.ndarray:
    return np.asarray(volume.data.compute(scheduler="synchronous"))


@pytest.fixture(scope="module")
def crop(cdeep3m_volume) -> np.ndarray:
    """A small real SBEM crop: (6, 150, 170) uint8."""
    return np.ascontiguousarray(cdeep3m_volume[:6, 100:250, 200:370])


def test_mrc_signed_int16_with_voxel_size(tmp_path, crop):
    import mrcfile

    data = (crop.astype(np.int16) - 128) * 100  # signed, negative values
    path = tmp_path / "vol.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = (59.0, 59.0, 400.0)  # x, y, z in Å
    volume = _open(path)
    assert volume.data.dtype == np.int16 and volume.kind == "volume"
    assert volume.voxel_size == pytest.approx((40.0, 5.9, 5.9))
    assert np.array_equal(_read(volume), data)
    assert volume.data.numblocks[0] == data.shape[0]  # one lazy chunk per slice
    int8 = (crop.astype(np.int16) - 128).astype(np.int8)
    with mrcfile.new(tmp_path / "vol8.rec") as mrc:
        mrc.set_data(int8)
    assert np.array_equal(_read(_open(tmp_path / "vol8.rec")), int8)


def test_nifti_gz(tmp_path, crop):
    import nibabel as nib

    data = crop.astype(np.float32) / 255 - 0.5
    image = nib.Nifti1Image(data.transpose(2, 1, 0), np.eye(4))  # NIfTI is (x, y, z)
    image.header.set_zooms((0.0059, 0.0059, 0.04))
    image.header.set_xyzt_units("micron")
    nib.save(image, tmp_path / "vol.nii.gz")
    volume = _open(tmp_path / "vol.nii.gz")
    assert volume.shape == crop.shape
    assert volume.voxel_size == pytest.approx((40.0, 5.9, 5.9))
    assert np.allclose(_read(volume), data)


def test_nrrd_raw_and_gzip(tmp_path, crop):
    import nrrd

    header = {"spacings": [6.0, 6.0, 30.0], "space units": ["nm", "nm", "nm"]}
    for encoding in ("raw", "gzip"):
        path = tmp_path / f"vol-{encoding}.nrrd"
        nrrd.write(str(path), crop.astype(np.uint16) * 3, {**header, "encoding": encoding}, index_order="C")
        volume = _open(path)
        assert np.array_equal(_read(volume), crop.astype(np.uint16) * 3)
        assert volume.voxel_size == pytest.approx((30.0, 6.0, 6.0))  # spacings are listed x, y, z
    assert _open(tmp_path / "vol-raw.nrrd").data.numblocks[0] == crop.shape[0]  # raw: memory-mapped per slice


def test_hdf5_dataset_path_and_attrs(tmp_path, crop):
    import h5py

    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("volumes/raw", data=crop, chunks=(2, 64, 64))
        handle["volumes/raw"].attrs["resolution"] = [40.0, 4.0, 4.0]
        handle.create_dataset("volumes/labels", data=crop > 100)
    volume = _open(path, dataset_path="volumes/raw")
    assert np.array_equal(_read(volume), crop)
    assert volume.voxel_size == (40.0, 4.0, 4.0)
    with pytest.raises(ReaderError, match="set dataset_path"):
        _open(path)


def test_zarr_and_ome_zarr(tmp_path, crop):
    import zarr

    plain = zarr.create_array(tmp_path / "plain.zarr", shape=crop.shape, chunks=(2, 64, 64), dtype="uint8")
    plain[:] = crop
    assert np.array_equal(_read(_open(tmp_path / "plain.zarr")), crop)

    group = zarr.open_group(tmp_path / "image.ome.zarr", mode="w", zarr_format=2)
    level = group.create_array("0", shape=(1, 1) + crop.shape, chunks=(1, 1, 2, 64, 64), dtype="uint8")
    level[:] = crop[None, None]
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
                 {"name": "z", "type": "space", "unit": "nanometer"}, {"name": "y", "type": "space", "unit": "nanometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 40.0, 5.0, 0.005]}]}],
    }]
    volume = _open(tmp_path / "image.ome.zarr")
    assert np.array_equal(_read(volume), crop)
    assert volume.voxel_size == pytest.approx((40.0, 5.0, 5.0))


def test_tiff_stacks_16bit_float_imagej_ome(tmp_path, crop):
    twelve = crop.astype(np.uint16) * 16
    tifffile.imwrite(tmp_path / "ij.tif", twelve, imagej=True, resolution=(1 / 0.005, 1 / 0.005),
                     metadata={"spacing": 0.03, "unit": "micron", "axes": "ZYX"})
    volume = _open(tmp_path / "ij.tif")
    assert np.array_equal(_read(volume), twelve) and volume.data.dtype == np.uint16
    assert volume.voxel_size == pytest.approx((30.0, 5.0, 5.0))
    assert volume.data.chunks[0][0] == min(32, crop.shape[0])  # lazy: pages read in chunks

    floats = crop.astype(np.float32) / 255 - 0.3
    tifffile.imwrite(tmp_path / "float.tiff", floats, byteorder=">")  # big-endian float, memory-mapped path
    assert np.array_equal(_read(_open(tmp_path / "float.tiff")), floats)
    tifffile.imwrite(tmp_path / "zlib.tif", twelve, photometric="minisblack", compression="zlib")  # page-by-page path
    assert np.array_equal(_read(_open(tmp_path / "zlib.tif"))[:, 10:100, 20:90], twelve[:, 10:100, 20:90])
    planar = np.stack([crop[0], crop[1], crop[2]])
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    rgb = _open(tmp_path / "planar.tif")
    assert rgb.channels and np.array_equal(_read(rgb)[0], np.moveaxis(planar, 0, -1))

    tifffile.imwrite(tmp_path / "img.ome.tif", crop, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 4.0, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": 4.0, "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.05, "PhysicalSizeZUnit": "µm"})
    volume = _open(tmp_path / "img.ome.tif")
    assert np.array_equal(_read(volume), crop)
    assert volume.voxel_size == pytest.approx((50.0, 4.0, 4.0))


def test_tiff_contiguous_stack_is_memory_mapped(tmp_path, crop, monkeypatch):
    from cem_pipeline.sources.readers import tiff

    tifffile.imwrite(tmp_path / "stack.tif", crop, photometric="minisblack")
    volume = _open(tmp_path / "stack.tif")
    assert volume.data.numblocks[0] == 1  # mapped: a region reads only its own bytes, whatever the chunk
    with monkeypatch.context() as patch:
        patch.setattr(tifffile, "TiffFile", None)  # and reads parse no IFD: the layout was read at open
        block = volume.data[1:5, 10:100, 33:77].compute(scheduler="synchronous")
    assert np.array_equal(block, crop[1:5, 10:100, 33:77])
    block[:] = 0  # a copy, never a view of the file
    assert np.array_equal(_read(_open(tmp_path / "stack.tif")), crop)

    monkeypatch.setattr(tiff, "PAGES_PER_CHUNK", 2)
    monkeypatch.setattr(tiff, "MAPPED_CHUNK_BYTES", 1)
    twice = np.concatenate([crop, crop[::-1]])
    tifffile.imwrite(tmp_path / "stack.tif", twice, photometric="minisblack")
    volume = _open(tmp_path / "stack.tif")  # rewritten in place: parsed again, not served from the cache
    assert volume.shape[0] == 12 and volume.data.numblocks[0] == 6
    assert np.array_equal(volume.data[1:8, :50].compute(scheduler="synchronous"), twice[1:8, :50])  # across chunks
    rgb = np.stack([crop[:3].transpose(1, 2, 0), crop[3:].transpose(1, 2, 0)])
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    volume = _open(tmp_path / "rgb.tif")
    assert volume.channels and np.array_equal(_read(volume), rgb)

    tifffile.imwrite(tmp_path / "image.tif", crop[0])  # IFD first, pixels last: a cut loses only pixels
    (tmp_path / "short_image.tif").write_bytes((tmp_path / "image.tif").read_bytes()[:-100])
    with pytest.raises(ReaderError, match="short_image.tif: truncated: the pixel data ends at byte"):
        _open(tmp_path / "short_image.tif")
    (tmp_path / "short_ifd.tif").write_bytes((tmp_path / "stack.tif").read_bytes()[:-100])  # pixels intact, last IFD cut
    with pytest.raises(ReaderError, match="short_ifd.tif: corrupt TIFF structure"):
        _open(tmp_path / "short_ifd.tif")


def test_fei_vendor_pixel_size(shared_em):
    volume = _open(shared_em / "fei_sem_rbc_imageio" / "fei-sem-rbc.tif")
    assert volume.kind == "image" and volume.shape == (1, 1094, 1536)
    assert volume.voxel_size == pytest.approx((None, 7.70833, 7.70833))


def test_2d_png_modes(tmp_path, shared_em, crop):
    rgb_path = next((shared_em / "snemi3d_kasthuri2015_atum_sem" / "stack_clahe").glob("*.png"))
    volume = _open(rgb_path)
    assert volume.channels and volume.data.shape[-1] == 3
    sixteen = crop[0].astype(np.uint16) * 257
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    assert np.array_equal(_read(_open(tmp_path / "sixteen.png"))[0], sixteen)
    Image.fromarray(crop[0]).save(tmp_path / "gray.jpg", quality=95)
    assert np.abs(_read(_open(tmp_path / "gray.jpg"))[0].astype(int) - crop[0]).mean() < 3


def test_directory_of_slices_natural_order(tmp_path, crop):
    folder = tmp_path / "stack"
    folder.mkdir()
    for i, plane in enumerate(crop):
        Image.fromarray(plane).save(folder / f"slice_{i}.png")  # no zero padding: 10 must follow 9
    volume = _open(folder)
    assert volume.kind == "volume" and np.array_equal(_read(volume), crop)
    Image.fromarray(crop[0, :100]).save(folder / "slice_99.png")
    with pytest.raises(ReaderError, match="slice_99.png"):
        _open(folder)


def test_video_frames_as_slices(tmp_path, crop):
    import av

    even = crop[:, :148, :168]
    for name, codec, fmt in (("lossless.avi", "ffv1", "gray"), ("lossy.mp4", "libx264", "yuv420p")):
        path = tmp_path / name
        with av.open(str(path), "w") as container:
            stream = container.add_stream(codec, rate=10)
            stream.width, stream.height, stream.pix_fmt = even.shape[2], even.shape[1], fmt
            for plane in even:
                frame = av.VideoFrame.from_ndarray(plane, format="gray")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        volume = _open(path)
        frames = _read(volume)
        assert volume.kind == "video" and volume.voxel_size is None
        gray = frames if not volume.channels else frames[..., 0]
        assert gray.shape == even.shape
        if codec == "ffv1":
            assert np.array_equal(gray, even)
        else:
            assert np.abs(gray.astype(int) - even.astype(int)).mean() < 6


def test_cloudvolume_file_url_sampling(tmp_path, cdeep3m_volume):
    from cloudvolume import CloudVolume

    from cem_pipeline.sources.readers.cloudvolume_reader import sample

    data = np.ascontiguousarray(cdeep3m_volume[:4, :400, :500]).copy()
    data[:, :, 300:] = 0  # an unimaged margin: draws that are mostly padding must be skipped
    url = f"file://{tmp_path}/precomputed"
    CloudVolume.from_numpy(data.transpose(2, 1, 0), vol_path=url, resolution=(6, 6, 30), chunk_size=(64, 64, 4),
                           layer_type="image", progress=False)
    samples, coords, info = sample(url, "demo", 12, 224, seed=7)
    again, coords_again, _ = sample(url, "demo", 12, 224, seed=7)
    assert np.array_equal(samples, again) and np.array_equal(coords, coords_again)
    assert samples.shape == (12, 224, 224) and info["draws"] >= 12
    for patch, (x, y, z) in zip(samples, coords):
        assert np.array_equal(patch, data[z, y:y + 224, x:x + 224])
        assert np.mean(patch == 0) <= 0.5
    other, _, _ = sample(url, "demo", 12, 224, seed=8)
    assert not np.array_equal(other, samples)


def test_bad_inputs_name_file_and_reason(tmp_path, crop):
    import h5py

    Image.fromarray(crop[0]).save(tmp_path / "really_png.tif", format="PNG")
    with pytest.raises(ReaderError, match="content is PNG but the extension '.tif'"):
        _open(tmp_path / "really_png.tif")
    tifffile.imwrite(tmp_path / "full.tif", crop)
    raw = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "truncated.tif").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(Exception, match="truncated.tif"):
        _read(_open(tmp_path / "truncated.tif"))
    (tmp_path / "garbage.png").write_bytes(b"this is not an image" * 10)
    with pytest.raises(ReaderError, match="garbage.png: not a readable image"):
        _open(tmp_path / "garbage.png")
    with h5py.File(tmp_path / "four.h5", "w") as handle:
        handle["a"] = crop[None]
        handle["b"] = np.zeros((0, 8, 8), np.uint8)
        handle["c"] = crop[:, :1, :]
        handle["d"] = crop.astype(np.complex64)
    with pytest.raises(ReaderError, match="4D"):
        _open(tmp_path / "four.h5", dataset_path="a")
    with pytest.raises(ReaderError, match="empty image"):
        _open(tmp_path / "four.h5", dataset_path="b")
    with pytest.raises(ReaderError, match="1-pixel dimension"):
        _open(tmp_path / "four.h5", dataset_path="c")
    with pytest.raises(ReaderError, match="unsupported dtype complex64"):
        _open(tmp_path / "four.h5", dataset_path="d")
    with pytest.raises(ReaderError, match="unknown file extension"):
        (tmp_path / "notes.txt").write_text("x")
        _open(tmp_path / "notes.txt")


def test_manifest_yaml_and_csv(tmp_path, shared_em):
    folder = shared_em / "cdeep3m_mito_sbem"
    (tmp_path / "m.yaml").write_text(json.dumps({"sources": [
        {"name": "train", "path": str(folder / "training" / "images"), "voxel_size": [40, 5.9, 5.9], "imaging": "SBEM"},
        {"name": "each", "path": str(folder / "testset" / "*.png")},
        {"name": "glued", "path": str(folder / "testset" / "*.png"), "format": "slices"},
    ]}))
    specs = load_manifest(tmp_path / "m.yaml")
    assert [len(expand(s)) for s in specs] == [1, 5, 1]
    assert [i.key for i in expand(specs[1])] == [f"images.{n:03d}" for n in range(81, 86)]
    assert len(expand(specs[2])[0].files) == 5 and expand(specs[0])[0].metadata == {"imaging": "SBEM"}
    (tmp_path / "m.csv").write_text(
        "name,path,voxel_size,invert,organism\n"
        f"rbc,{shared_em / 'fei_sem_rbc_imageio' / 'fei-sem-rbc.tif'},,true,\n"
        "rel,sub/x.tif,30 6 6,no,mouse\n"
    )
    rbc, rel = load_manifest(tmp_path / "m.csv")
    assert rbc.invert and rbc.voxel_size is None
    assert rel.voxel_size == (30.0, 6.0, 6.0) and rel.organism == "mouse" and rel.path == str(tmp_path / "sub" / "x.tif")
