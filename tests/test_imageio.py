"""Reader and display tests; every input is made synthetically in tmp_path."""

from __future__ import annotations

import gzip
import struct
import time
import zlib

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from medsam_core.errors import InvalidImageError, MedsamError
from medsam_core.imageio import DEFAULT_MAX_PIXELS, SUPPORTED_SUFFIXES, read_image
from medsam_core.medical_image import MedicalImage
from medsam_core.windows import WINDOW_PRESETS, percentile_bounds, percentile_to_uint8, window_to_uint8


def _ramp(h: int = 6, w: int = 8, dtype=np.uint8) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 250).astype(dtype)


def _dicom(
    path,
    pixels: np.ndarray,
    *,
    slope=None,
    intercept=None,
    photometric="MONOCHROME2",
    syntax=ExplicitVRLittleEndian,
    pixel_bytes=None,
):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixel_bytes if pixel_bytes is not None else pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(path, width: int, height: int) -> None:
    """A tiny PNG whose header claims a huge image: the decompression-bomb shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "mode, shape",
    [("L", (1, 6, 8)), ("RGB", (1, 6, 8, 3)), ("RGBA", (1, 6, 8, 3)), ("P", (1, 6, 8, 3)), ("1", (1, 6, 8))],
)
def test_png_8bit_modes(tmp_path, mode, shape):
    Image.fromarray(_ramp()).convert(mode).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.pixels.shape == shape and img.pixels.dtype == np.uint8
    assert not img.raw and not img.window_applies and img.source_format == "png"
    assert (img.num_slices, img.height, img.width) == (1, 6, 8)


def test_png_rgba_alpha_dropped(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert (read_image(tmp_path / "a.png").pixels[0, ..., 0] == 200).all()


def test_png_16bit_is_raw(tmp_path):
    data = (np.arange(48).reshape(6, 8) * 1000).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.raw and img.window_applies and img.pixels.shape == (1, 6, 8)
    np.testing.assert_array_equal(img.pixels[0], data)


@pytest.mark.parametrize("suffix, fmt", [(".jpg", "jpeg"), (".jpeg", "jpeg"), (".bmp", "bmp")])
def test_jpeg_and_bmp(tmp_path, suffix, fmt):
    Image.fromarray(np.stack([_ramp()] * 3, -1)).save(tmp_path / f"a{suffix}")
    img = read_image(tmp_path / f"a{suffix}")
    assert img.pixels.shape == (1, 6, 8, 3) and not img.raw and img.source_format == fmt


@pytest.mark.parametrize("dtype, raw", [(np.uint8, False), (np.uint16, True)])
def test_tiff_gray_and_rgb(tmp_path, dtype, raw):
    tifffile.imwrite(tmp_path / "g.tif", _ramp(dtype=dtype))
    tifffile.imwrite(tmp_path / "c.tiff", np.stack([_ramp(dtype=dtype)] * 3, -1), photometric="rgb")
    gray, rgb = read_image(tmp_path / "g.tif"), read_image(tmp_path / "c.tiff")
    assert gray.pixels.shape == (1, 6, 8) and gray.pixels.dtype == dtype and gray.raw is raw
    assert rgb.pixels.shape == (1, 6, 8, 3) and rgb.raw is raw and rgb.source_format == "tiff"


def test_tiff_multipage_stack(tmp_path):
    stack = np.stack([_ramp(dtype=np.uint16) + i for i in range(4)])
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    img = read_image(tmp_path / "s.tif")
    assert img.pixels.shape == (4, 6, 8)
    np.testing.assert_array_equal(img.pixels[3], stack[3])


@pytest.mark.parametrize(
    "arr, shape, raw",
    [
        (_ramp(), (1, 6, 8), False),
        (_ramp()[..., None], (1, 6, 8), False),
        (np.stack([_ramp()] * 3, -1), (1, 6, 8, 3), False),
        (_ramp(dtype=np.int16) - 100, (1, 6, 8), True),
        (_ramp(dtype=np.float32) / 3, (1, 6, 8), True),
        (np.stack([_ramp(dtype=np.float64)] * 3, -1), (1, 6, 8, 3), True),
    ],
)
def test_npy_shapes_and_dtypes(tmp_path, arr, shape, raw):
    np.save(tmp_path / "a.npy", arr)
    img = read_image(tmp_path / "a.npy")
    assert img.pixels.shape == shape and img.raw is raw and img.pixels.dtype == arr.dtype


def test_dicom_rescale(tmp_path):
    stored = np.array([[0, 10], [100, 1000]], dtype=np.int16)
    img = read_image(_dicom(tmp_path / "ct.dcm", stored, slope=2, intercept=-1024))
    assert img.raw and img.source_format == "dicom" and img.pixels.dtype.kind == "f"
    np.testing.assert_array_equal(img.pixels[0], [[-1024, -1004], [-824, 976]])


def test_dicom_multiframe(tmp_path):
    frames = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    img = read_image(_dicom(tmp_path / "mf.dcm", frames))
    assert img.pixels.shape == (3, 4, 5)
    np.testing.assert_array_equal(img.pixels[2], frames[2])


def test_dicom_monochrome1_inverted(tmp_path):
    stored = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    img = read_image(_dicom(tmp_path / "cr.dcm", stored, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(img.pixels[0], [[30, 20], [10, 0]])


def test_dicom_without_suffix_is_sniffed(tmp_path):
    img = read_image(_dicom(tmp_path / "IM000001", _ramp(dtype=np.int16)))
    assert img.source_format == "dicom" and img.pixels.shape == (1, 6, 8)


def test_nifti_2d_orientation(tmp_path):
    data = np.arange(12, dtype=np.int16).reshape(3, 4)  # (X=3, Y=4)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "a.nii")
    img = read_image(tmp_path / "a.nii")
    assert img.pixels.shape == (1, 4, 3) and img.raw and img.source_format == "nifti"
    assert img.pixels[0, 1, 2] == data[2, 1]


def test_nifti_3d_orientation_gz_and_sniffed(tmp_path):
    data = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)  # (X, Y, Z)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii.gz")
    img = read_image(tmp_path / "v.nii.gz")
    assert img.pixels.shape == (5, 3, 2)  # (Z, Y, X) like SimpleITK
    np.testing.assert_array_equal(img.pixels[4], data[:, :, 4].T)
    (tmp_path / "v.nii.gz").rename(tmp_path / "volume")
    np.testing.assert_array_equal(read_image(tmp_path / "volume").pixels, img.pixels)


def test_nifti_4d_trailing_singleton_ok_other_4d_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((3, 4, 2, 1), np.int16), np.eye(4)), tmp_path / "ok.nii")
    assert read_image(tmp_path / "ok.nii").pixels.shape == (2, 4, 3)
    nib.save(nib.Nifti1Image(np.ones((3, 4, 2, 2), np.int16), np.eye(4)), tmp_path / "bad.nii")
    with pytest.raises(InvalidImageError, match="4-D"):
        read_image(tmp_path / "bad.nii")


def test_sniffed_npy_and_png(tmp_path):
    np.save(tmp_path / "a.npy", _ramp())
    (tmp_path / "a.npy").rename(tmp_path / "arr")
    Image.fromarray(_ramp()).save(tmp_path / "p.png")
    (tmp_path / "p.png").rename(tmp_path / "pic")
    assert read_image(tmp_path / "arr").source_format == "npy"
    assert read_image(str(tmp_path / "pic")).source_format == "png"


# ---------------------------------------------------------------- windows and display


def test_window_presets_edges_and_centre():
    assert WINDOW_PRESETS == {"abdomen": (40, 400), "lung": (-600, 1500), "brain": (40, 80), "bone": (400, 1800)}
    for name, (level, width) in WINDOW_PRESETS.items():
        values = np.array([level - width / 2 - 1, level - width / 2, level, level + width / 2, 1e6])
        np.testing.assert_array_equal(window_to_uint8(values, name), [0, 0, 127, 255, 255])
        assert window_to_uint8(values, name).dtype == np.uint8


def test_unknown_window_lists_valid_names():
    with pytest.raises(MedsamError, match="abdomen, bone, brain, lung"):
        window_to_uint8(np.zeros((2, 2)), "liver")


def test_percentile_bounds_and_constant_image():
    values = np.concatenate([np.linspace(0, 100, 1001), [np.nan, np.inf]])
    low, high = percentile_bounds(values)
    assert low == pytest.approx(0.5) and high == pytest.approx(99.5)
    out = percentile_to_uint8(np.array([-5.0, 0.5, 50.0, 99.5, 500.0]), low, high)
    np.testing.assert_array_equal(out, [0, 0, 127, 255, 255])
    flat = np.full((3, 3), 7.0)
    assert (percentile_to_uint8(flat, *percentile_bounds(flat)) == 0).all()


def test_display_percentile_shared_across_volume():
    vol = np.stack([np.full((4, 4), 0.0), np.linspace(0, 1000, 16).reshape(4, 4), np.full((4, 4), 1000.0)])
    img = MedicalImage(pixels=vol.astype(np.float32), raw=True, source_format="nifti")
    first, last = img.display(0), img.display(2)
    assert first.shape == (4, 4, 3) and first.dtype == np.uint8 and first.flags.c_contiguous
    assert (first == 0).all() and (last == 255).all()  # not each stretched on its own
    np.testing.assert_array_equal(img.display(), img.display(1))  # middle slice by default


def test_display_window_on_raw_and_ignored_on_8bit(tmp_path):
    img = MedicalImage(pixels=np.array([[[-160.0, 40.0], [240.0, 3000.0]]]), raw=True, source_format="dicom")
    np.testing.assert_array_equal(img.display(window="abdomen")[..., 0], [[0, 127], [255, 255]])
    np.save(tmp_path / "a.npy", _ramp())
    eight = read_image(tmp_path / "a.npy")
    np.testing.assert_array_equal(eight.display(window="lung")[..., 1], _ramp())


def test_display_float_unit_range_is_scaled_not_stretched():
    img = MedicalImage(pixels=np.array([[[0.2, 0.4], [0.5, 1.0]]], np.float32), raw=True, source_format="npy")
    np.testing.assert_array_equal(img.display()[..., 2], [[51, 102], [127, 255]])


def test_display_rgb_passthrough(tmp_path):
    rgb = np.stack([_ramp(), _ramp() // 2, _ramp() // 3], -1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_array_equal(read_image(tmp_path / "c.png").display(), rgb)


@pytest.mark.parametrize("index", [3, -1])
def test_display_out_of_range_slice(index):
    img = MedicalImage(pixels=np.zeros((3, 4, 4), np.uint8), raw=False, source_format="tiff")
    with pytest.raises(InvalidImageError, match="valid indices are 0 to 2"):
        img.display(index)


# ---------------------------------------------------------------- rejections


def test_missing_file(tmp_path):
    with pytest.raises(InvalidImageError, match="not found.*nope.png"):
        read_image(tmp_path / "nope.png")


def test_directory(tmp_path):
    with pytest.raises(InvalidImageError, match="folder, not an image"):
        read_image(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(InvalidImageError, match=r"e\.png.*empty \(0 bytes\)"):
        read_image(tmp_path / "e.png")


def test_truncated_png(tmp_path):
    Image.fromarray(_ramp()).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:20])
    with pytest.raises(InvalidImageError, match=r"cut\.png.*truncated or corrupt"):
        read_image(tmp_path / "cut.png")


def test_corrupt_png_body(tmp_path):
    Image.fromarray(_ramp(64, 64)).save(tmp_path / "full.png")
    raw = (tmp_path / "full.png").read_bytes()
    (tmp_path / "bad.png").write_bytes(raw[:60])
    with pytest.raises(InvalidImageError, match="truncated or corrupt"):
        read_image(tmp_path / "bad.png")


def test_unknown_format_lists_supported(tmp_path):
    (tmp_path / "notes.txt").write_text("hello, this is not an image")
    with pytest.raises(InvalidImageError, match=r"notes\.txt.*not recognised.*\.nii\.gz"):
        read_image(tmp_path / "notes.txt")
    assert ".dcm" in SUPPORTED_SUFFIXES


def test_gzip_that_is_not_nifti(tmp_path):
    (tmp_path / "blob").write_bytes(gzip.compress(b"just text" * 100))
    with pytest.raises(InvalidImageError, match="gzip-compressed file but not a NIfTI"):
        read_image(tmp_path / "blob")


def test_object_npy_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidImageError, match=r"o\.npy.*pickled"):
        read_image(tmp_path / "o.npy")


def test_pickle_named_npy_refused(tmp_path):
    import pickle

    (tmp_path / "p.npy").write_bytes(pickle.dumps({"evil": 1}))
    with pytest.raises(InvalidImageError, match="not a valid NumPy .npy file"):
        read_image(tmp_path / "p.npy")


def test_truncated_npy(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((50, 50), np.float32))
    (tmp_path / "t.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:500])
    with pytest.raises(InvalidImageError, match="truncated"):
        read_image(tmp_path / "t.npy")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_refused(tmp_path, bad):
    arr = np.ones((4, 4), np.float32)
    arr[1, 2] = bad
    np.save(tmp_path / "n.npy", arr)
    with pytest.raises(InvalidImageError, match="NaN or infinite"):
        read_image(tmp_path / "n.npy")


def test_non_finite_refused_in_nifti_and_tiff(tmp_path):
    vol = np.ones((3, 3, 2), np.float32)
    vol[0, 0, 1] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "n.nii.gz")
    tifffile.imwrite(tmp_path / "n.tif", vol[..., 1])
    for name in ("n.nii.gz", "n.tif"):
        with pytest.raises(InvalidImageError, match="NaN or infinite"):
            read_image(tmp_path / name)


@pytest.mark.parametrize(
    "shape, fragment",
    [
        ((2, 3, 4, 5), "4 dimension"),
        ((10,), "1 dimension"),
        ((6, 8, 2), "expected H x W, H x W x 1 or H x W x 3"),
        ((3, 20, 30), "channels-first"),
        ((1, 30), "at least 2 x 2"),
        ((30, 1, 3), "at least 2 x 2"),
    ],
)
def test_bad_npy_shapes(tmp_path, shape, fragment):
    np.save(tmp_path / "s.npy", np.zeros(shape, np.float32))
    with pytest.raises(InvalidImageError, match=fragment):
        read_image(tmp_path / "s.npy")


def test_decompression_bomb_png_refused_fast(tmp_path):
    _png_header_only(tmp_path / "bomb.png", 60000, 60000)
    assert (tmp_path / "bomb.png").stat().st_size < 200
    start = time.perf_counter()
    with pytest.raises(InvalidImageError, match=r"bomb\.png.*pixels"):
        read_image(tmp_path / "bomb.png")
    assert time.perf_counter() - start < 1.0


def test_header_size_checked_before_decoding(tmp_path):
    _png_header_only(tmp_path / "big.png", 4000, 3000)  # header lies; data would not decode
    with pytest.raises(InvalidImageError, match="4000 x 3000 = 12,000,000 pixels per slice"):
        read_image(tmp_path / "big.png", max_pixels=1_000_000)
    np.save(tmp_path / "a.npy", np.zeros((100, 100), np.uint8))
    with pytest.raises(InvalidImageError, match="above the limit of 5,000"):
        read_image(tmp_path / "a.npy", max_pixels=5_000)
    assert DEFAULT_MAX_PIXELS == 100_000_000


def test_volume_voxel_limit(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 50), np.int16), np.eye(4)), tmp_path / "v.nii")
    with pytest.raises(InvalidImageError, match="50 slices.*Crop or downsample"):
        read_image(tmp_path / "v.nii", max_pixels=1_000)
    _dicom(tmp_path / "mf.dcm", np.zeros((9, 10, 10), np.uint16))
    with pytest.raises(InvalidImageError, match="9 slices"):
        read_image(tmp_path / "mf.dcm", max_pixels=200)


def test_text_saved_as_dcm(tmp_path):
    (tmp_path / "x.dcm").write_text("not a dicom")
    with pytest.raises(InvalidImageError, match=r"x\.dcm.*not a DICOM file"):
        read_image(tmp_path / "x.dcm")


def test_dicom_compressed_without_decoder(tmp_path):
    pixels = np.zeros((4, 4), np.uint16)
    path = _dicom(
        tmp_path / "ls.dcm",
        pixels,
        syntax=JPEGLSLossless,
        pixel_bytes=encapsulate([b"\xff\xd8\xff\xf7garbage\xff\xd9"]),
    )
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEGLSLossless
    with pytest.raises(InvalidImageError, match="compressed as 'JPEG-LS Lossless"):
        read_image(path)


def test_dicom_without_pixels(tmp_path):
    path = _dicom(tmp_path / "sr.dcm", np.zeros((2, 2), np.uint16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(InvalidImageError, match="holds no image"):
        read_image(path)


def test_corrupt_nifti(tmp_path):
    (tmp_path / "c.nii").write_bytes(b"\x00" * 400)
    with pytest.raises(InvalidImageError, match=r"c\.nii.*NIfTI file could not be read"):
        read_image(tmp_path / "c.nii")


def test_medical_image_rejects_bad_layout():
    with pytest.raises(InvalidImageError, match="must be"):
        MedicalImage(pixels=np.zeros((4, 4)), raw=True, source_format="npy")


def test_bool_npy_is_8bit_mask(tmp_path):
    np.save(tmp_path / "m.npy", np.eye(4, dtype=bool))
    img = read_image(tmp_path / "m.npy")
    assert not img.raw and img.pixels.dtype == np.uint8 and img.pixels.max() == 255


def test_uncompressed_nifti_without_suffix(tmp_path):
    nib.save(nib.Nifti1Image(np.arange(12, dtype=np.int16).reshape(3, 4), np.eye(4)), tmp_path / "a.nii")
    (tmp_path / "a.nii").rename(tmp_path / "scan")
    assert read_image(tmp_path / "scan").pixels.shape == (1, 4, 3)


def test_tiff_without_pages(tmp_path):
    (tmp_path / "e.tif").write_bytes(b"II*\x00" + b"\x00" * 30)
    with pytest.raises(InvalidImageError, match="TIFF"):
        read_image(tmp_path / "e.tif")
