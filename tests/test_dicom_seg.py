"""DICOM-SEG export of a real CT series' labels, referencing its de-identified copies, read back with highdicom."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from medsam_core.dicom_seg import read_dicom_seg_onto, source_datasets, write_dicom_seg
from medsam_core.dicom_series import deidentified_copies, folder_files, read_series_files
from medsam_core.errors import InvalidImageError
from medsam_core.volume import Volume, labels_onto
from tests.test_volume_io import ct_series, series_dir, volumes  # noqa: F401 - shared session fixtures

LIVER, SPLEEN = 5, 1


@pytest.fixture(scope="session")
def stored_series(series_dir: Path, tmp_path_factory) -> tuple[list[Path], Volume]:
    """The series as the portal stores it: de-identified copies, read back as a volume."""
    files = deidentified_copies(folder_files(series_dir), tmp_path_factory.mktemp("stored"))
    return [p for p, _ in files], read_series_files(files)


@pytest.fixture(scope="session")
def organ_labels(stored_series, volumes: Path) -> np.ndarray:
    """Liver on slices 3-14 only and the spleen wherever it is: frames must land on the right slices."""
    labels = labels_onto(stored_series[1], nib.load(volumes / "ct_dicom_series" / "labels.nii.gz"))
    out = np.where(np.isin(labels, [LIVER, SPLEEN]), labels, 0).astype(np.uint8)
    out[:3][out[:3] == LIVER] = 0
    out[15:][out[15:] == LIVER] = 0
    assert (out == SPLEEN).any() and (out == LIVER).sum() > 10_000
    return out


def test_stored_series_is_deidentified_with_its_geometry(stored_series, ct_series: Volume) -> None:  # noqa: F811
    paths, volume = stored_series
    np.testing.assert_array_equal(volume.pixels, ct_series.pixels)
    np.testing.assert_array_equal(volume.affine, ct_series.affine)
    assert volume.slice_positions == ct_series.slice_positions
    assert not set(volume.sop_instance_uids or ()) & set(ct_series.sop_instance_uids or ())
    head = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert head.PatientIdentityRemoved == "YES" and "InstitutionAddress" not in head
    # The export left these empty; a SEG must reference them, so the stored copies carry them.
    assert head.SOPInstanceUID == head.file_meta.MediaStorageSOPInstanceUID
    assert head.StudyInstanceUID and head.SeriesInstanceUID == volume.series_instance_uid


def test_dicom_seg_reads_back_onto_the_same_slices(stored_series, organ_labels, ct_series, tmp_path) -> None:  # noqa: F811
    paths, volume = stored_series
    source = source_datasets(paths, volume)
    path = write_dicom_seg(organ_labels, {SPLEEN: "spleen", LIVER: "liver"}, source, tmp_path / "seg.dcm")

    seg = hd.seg.segread(path)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["spleen", "liver"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.series_instance_uid
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID and seg.PatientIdentityRemoved == "YES"
    # highdicom's own reading, by referenced source instance, in the volume's slice order.
    by_instance = seg.get_pixels_by_source_instance(
        list(volume.sop_instance_uids or ()), combine_segments=True, assert_missing_frames_are_empty=True
    )
    lut = np.zeros(256, dtype=np.uint8)
    lut[[SPLEEN, LIVER]] = [1, 2]
    np.testing.assert_array_equal(by_instance, lut[organ_labels])

    np.testing.assert_array_equal(read_dicom_seg_onto(path, volume), organ_labels)
    # The identified original has other instance UIDs: frames are placed by their positions.
    np.testing.assert_array_equal(read_dicom_seg_onto(path, ct_series), organ_labels)


def test_dicom_seg_refuses_what_it_cannot_describe(
    stored_series,
    organ_labels,
    ct_series,  # noqa: F811
    series_dir,  # noqa: F811
    tmp_path,
) -> None:
    paths, volume = stored_series
    source = source_datasets(paths, volume)
    # The shared export leaves its Study and Series UIDs empty; only the stored copies carry them.
    with pytest.raises(InvalidImageError, match="no Study or Series Instance UID"):
        source_datasets(sorted(series_dir.iterdir()), ct_series)
    with pytest.raises(InvalidImageError, match=r"Label value\(s\) \[1\] have no name"):
        write_dicom_seg(organ_labels, {LIVER: "liver"}, source, tmp_path / "a.dcm")
    with pytest.raises(InvalidImageError, match="the series has 19 slice"):
        write_dicom_seg(organ_labels, {SPLEEN: "spleen", LIVER: "liver"}, source[1:], tmp_path / "b.dcm")
    assert not list(tmp_path.iterdir())
