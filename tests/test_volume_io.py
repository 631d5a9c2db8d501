"""Volumes with their geometry, on the shared real scans: DICOM series and NIfTI in, label maps out.

The DICOM series' reference labels are stored in another orientation (LAS against the series'
LPS rows), so these tests only pass when alignment goes through the affines.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medsam_core.errors import InvalidImageError
from medsam_core.imageio import read_image
from medsam_core.volume import Volume, labels_onto, read_dicom_series, read_volume, write_label_nifti
from tests.conftest import require

LIVER = 5


@pytest.fixture(scope="session")
def volumes(sample_data: Path) -> Path:
    root = sample_data / "volumes"
    require((root / "ct_dicom_series" / "images").is_dir(), f"volume sample data not found at {root}")
    return root


@pytest.fixture(scope="session")
def series_dir(volumes: Path) -> Path:
    return volumes / "ct_dicom_series" / "images"


@pytest.fixture(scope="session")
def ct_series(series_dir: Path) -> Volume:
    """The 20-slice CT series, decoded once for every test that needs it."""
    return read_volume(series_dir)


def test_series_labels_line_up_through_geometry(ct_series: Volume, volumes: Path) -> None:
    label_image = nib.load(volumes / "ct_dicom_series" / "labels.nii.gz")
    labels = labels_onto(ct_series, label_image)
    assert labels.shape == ct_series.shape and labels.dtype == np.uint8
    liver = labels == LIVER
    # Same grid, flipped rows: every labelled voxel lands somewhere on the series.
    assert liver.sum() == (np.asarray(label_image.dataobj) == LIVER).sum() > 10_000
    liver_hu = float(ct_series.pixels[liver].mean())
    assert 40 <= liver_hu <= 150, liver_hu
    # Array indices alone (voxel axes transposed to (Z, H, W), no affine) put the liver on fat.
    naive = np.asarray(label_image.dataobj).transpose(2, 1, 0) == LIVER
    naive_hu = float(ct_series.pixels[naive].mean())
    assert naive_hu < 0 and liver_hu - naive_hu > 100, (liver_hu, naive_hu)


def test_series_geometry_equals_simpleitk(ct_series: Volume, series_dir: Path) -> None:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series_dir)))
    image = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    np.testing.assert_allclose(ct_series.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, atol=1e-6)
    np.testing.assert_array_equal(ct_series.pixels, sitk.GetArrayFromImage(image).astype(np.float32))
    assert ct_series.orientation == ("L", "P", "S") and ct_series.modality == "CT"
    assert ct_series.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert np.allclose(np.diff(ct_series.slice_positions), 2.0)
    assert len(set(ct_series.sop_instance_uids or ())) == ct_series.num_slices


def test_series_slices_are_the_files_in_position_order(ct_series: Volume, series_dir: Path) -> None:
    by_z = {}
    for path in series_dir.iterdir():
        by_z[float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])] = path
    for z in (0, 7, ct_series.num_slices - 1):
        path = by_z[ct_series.slice_positions[z]]
        np.testing.assert_array_equal(ct_series.slice_image(z).pixels, read_image(path).pixels)


@pytest.mark.parametrize(
    ("image", "labels"),
    [
        ("ct_abdomen_small/ct.nii.gz", "ct_abdomen_small/labels.nii.gz"),
        ("brats/images/brats_2013_pat0005_1.nii.gz", "brats/labels/brats_2013_pat0005_1.nii.gz"),
    ],
)
def test_label_nifti_keeps_input_shape_and_affine(volumes: Path, tmp_path: Path, image: str, labels: str) -> None:
    source = nib.load(volumes / image)
    volume = read_volume(volumes / image)
    reference = nib.load(volumes / labels)
    mapped = labels_onto(volume, reference)
    # Same grid as the image: resampling through the affines is the identity here.
    np.testing.assert_array_equal(mapped, np.asarray(reference.dataobj).transpose(2, 1, 0))
    written = nib.load(write_label_nifti(mapped, volume, tmp_path / "mask.nii.gz"))
    assert written.shape == source.shape and written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(written.affine, source.affine)
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(source.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(reference.dataobj))


def test_nifti_slices_display_as_the_2d_path_shows_them(volumes: Path) -> None:
    """Same pixels and contrast as read_image's slice, so a slice's embedding cache entry is shared."""
    path = volumes / "ct_abdomen_small" / "ct.nii.gz"
    volume, image = read_volume(path), read_image(path)
    assert volume.modality == "CT" and volume.spacing == pytest.approx((3.0, 3.0, 3.0))
    for z in (0, 17):
        np.testing.assert_array_equal(volume.slice_image(z).display(), image.display(z))
        np.testing.assert_array_equal(volume.slice_image(z).display(window="abdomen"), image.display(z, "abdomen"))


def test_series_labels_written_with_the_series_affine(ct_series: Volume, volumes: Path, tmp_path: Path) -> None:
    labels = labels_onto(ct_series, nib.load(volumes / "ct_dicom_series" / "labels.nii.gz"))
    written = nib.load(write_label_nifti(labels, ct_series, tmp_path / "series_mask.nii"))
    np.testing.assert_array_equal(written.affine, ct_series.affine)
    assert written.shape == (512, 512, 20)
    np.testing.assert_array_equal(np.asarray(written.dataobj).transpose(2, 1, 0), labels)


def _subset(series_dir: Path, dest: Path, n: int = 5) -> list[Path]:
    """The first n slices by position: enough for every header check, cheap to decode."""
    files = sorted(
        series_dir.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
    )
    dest.mkdir()
    return [Path(shutil.copy(p, dest / f"slice{i}.dcm")) for i, p in enumerate(files[:n])]


def test_zip_of_a_series_reads_like_its_files(series_dir: Path, tmp_path: Path) -> None:
    files = _subset(series_dir, tmp_path / "s")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in files:
            zf.write(p, f"export/series/{p.name}")
        zf.writestr("__MACOSX/._slice0.dcm", b"junk")
    from_zip, from_files = read_volume(archive), read_dicom_series(files)
    np.testing.assert_array_equal(from_zip.pixels, from_files.pixels)
    np.testing.assert_array_equal(from_zip.affine, from_files.affine)
    assert from_zip.sop_instance_uids == from_files.sop_instance_uids and from_zip.num_slices == 5


def _edit(path: Path, **tags: object) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def _mixed(files: list[Path]) -> None:
    _edit(files[2], SeriesInstanceUID=pydicom.uid.generate_uid())


def _gap(files: list[Path]) -> None:
    files[2].unlink()


def _duplicate(files: list[Path]) -> None:
    shutil.copy(files[1], files[0].parent / "copy_of_slice1.dcm")


def _not_dicom(files: list[Path]) -> None:
    (files[0].parent / "notes.txt").write_text("scan protocol notes")


def _no_position(files: list[Path]) -> None:
    _edit(files[3], ImagePositionPatient=None)


def _tilted(files: list[Path]) -> None:
    _edit(files[1], ImageOrientationPatient=[1, 0, 0, 0, 0.9, 0.43589])


def _resized(files: list[Path]) -> None:
    _edit(files[4], Rows=256, Columns=256)


def _spacing(files: list[Path]) -> None:
    _edit(files[4], PixelSpacing=[0.8, 0.8])


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_mixed, "belong to 2 different series (4 + 1 files"),
        (_gap, "the slice spacing is not constant: 4.000 mm between slice1.dcm and slice3.dcm, 2.000 mm elsewhere"),
        (_duplicate, "are at the same position"),
        (_not_dicom, "notes.txt: not a DICOM file"),
        (_no_position, "slice3.dcm lacks ImagePositionPatient"),
        (_tilted, "slice1.dcm and slice0.dcm differ in orientation"),
        (_resized, "slice4.dcm is 256 x 256 pixels but slice0.dcm is 512 x 512"),
        (_spacing, "slice4.dcm and slice0.dcm differ in pixel spacing"),
    ],
)
def test_bad_series_is_refused_with_a_plain_message(series_dir: Path, tmp_path: Path, spoil, message: str) -> None:
    files = _subset(series_dir, tmp_path / "series")
    spoil(files)
    with pytest.raises(InvalidImageError) as info:
        read_volume(tmp_path / "series")
    assert message in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "series"))  # callers swap this for the upload's name


def test_series_over_the_voxel_limit_is_refused_before_decoding(series_dir: Path) -> None:
    with pytest.raises(
        InvalidImageError, match=r"20 slices and 5,242,880 voxels in total, above the limit of 5,000,000\."
    ):
        read_volume(series_dir, max_voxels=5_000_000)


def test_not_a_volume(tmp_path: Path, sample_data: Path) -> None:
    with pytest.raises(InvalidImageError, match="this is not a volume"):
        read_volume(sample_data / "demo" / "ct_abdomen.png")
    with pytest.raises(InvalidImageError, match="no DICOM files were found"):
        read_volume(tmp_path)
