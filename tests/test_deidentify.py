"""De-identification tests; every DICOM file is built in memory with pydicom."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from medsam_core.deidentify import IDENTIFYING_TAGS, deidentify_dicom_bytes, deidentify_dicom_file
from medsam_core.errors import InvalidImageError
from medsam_core.imageio import read_image

STUDY, SERIES, FRAME = "1.2.826.0.1.3680043.99.1", "1.2.826.0.1.3680043.99.2", "1.2.826.0.1.3680043.99.3"
GEOMETRY = (
    "Rows",
    "Columns",
    "PixelSpacing",
    "SliceThickness",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "Modality",
    "SOPClassUID",
    "PixelData",
)
SECRETS = (
    b"DOE^JANE",
    b"MRN-4711",
    b"St Elsewhere",
    b"12 Main Street",
    b"555-0100",
    b"ACC-99",
    b"DR^WHO",
    b"NURSE^RATCHED",
    b"secret-vendor",
    b"CT-ROOM-3",
    b"SN-123",
    b"19700101",
    b"call me",
    b"OVERLAY NOTE",
    STUDY.encode(),
    SERIES.encode(),
    FRAME.encode(),
)


def _pixels(offset: int = 0) -> np.ndarray:
    return (np.arange(48, dtype=np.int16).reshape(6, 8) * 7 - 100 + offset).astype(np.int16)


def _slice(number: int = 1) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.99.10.{number}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = "CT-ROOM-3"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = STUDY, SERIES, FRAME
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "DOE^JANE", "MRN-4711", "19700101", "F"
    ds.OtherPatientIDs, ds.PatientAddress, ds.PatientTelephoneNumbers = "MRN-4711", "12 Main Street", "555-0100"
    ds.AccessionNumber, ds.StudyID, ds.InstitutionName = "ACC-99", "ACC-99", "St Elsewhere"
    ds.ReferringPhysicianName, ds.OperatorsName, ds.StationName = "DR^WHO", "NURSE^RATCHED", "CT-ROOM-3"
    ds.DeviceSerialNumber, ds.PatientComments, ds.ImageComments = "SN-123", "call me", "call me"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20240102"
    ds.StudyTime = "101010"
    ds.Modality, ds.InstanceNumber = "CT", number
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 6, 8, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.8], 2.5
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [-10, 20, 2.5 * number], [1, 0, 0, 0, 1, 0]
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.private_block(0x0009, "ACME", create=True).add_new(0x01, "LO", "secret-vendor")
    ds.add_new(0x60004000, "LT", "OVERLAY NOTE")  # OverlayComments
    ref = Dataset()  # a nested item holding a name, a date, a reference and a private tag
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CTImageStorage, "1.2.826.0.1.3680043.99.10.1"
    ref.PatientName, ref.ContentDate = "DOE^JANE", "19700101"
    ref.private_block(0x0011, "ACME", create=True).add_new(0x01, "LO", "secret-vendor")
    ds.ReferencedImageSequence = [ref]
    ds.PixelData = _pixels(number).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _all_elements(ds: Dataset):
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _all_elements(item)


def test_tag_list_uses_real_keywords():
    assert all(tag_for_keyword(k) is not None for k in IDENTIFYING_TAGS)
    assert len(set(IDENTIFYING_TAGS)) == len(IDENTIFYING_TAGS)


def test_identifying_tags_gone_or_blank_everywhere():
    out = deidentify_dicom_bytes(_slice())
    ds = _read(out)
    for elem in list(_all_elements(ds)) + list(ds.file_meta):
        assert not elem.tag.is_private
        assert not 0x6000 <= elem.tag.group <= 0x60FF
        if elem.keyword in IDENTIFYING_TAGS or elem.VR in ("PN", "DA", "DT", "TM"):
            assert elem.is_empty, elem
    assert ds.PatientName == "" and ds.ReferencedImageSequence[0].PatientName == ""
    assert "PatientAddress" not in ds and "InstitutionName" not in ds and "OperatorsName" not in ds
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
    assert ds.preamble == b"\0" * 128
    for secret in SECRETS:  # nothing identifying survives anywhere in the bytes
        assert secret not in out, secret


def test_pixels_geometry_and_rescale_preserved(tmp_path):
    data = _slice()
    before, after = _read(data), _read(deidentify_dicom_bytes(data))
    for keyword in GEOMETRY:
        assert after[keyword].value == before[keyword].value, keyword
    assert after.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    (tmp_path / "a.dcm").write_bytes(data)
    deidentify_dicom_file(tmp_path / "a.dcm", tmp_path / "b.dcm")
    original, cleaned = read_image(tmp_path / "a.dcm"), read_image(tmp_path / "b.dcm")
    np.testing.assert_array_equal(cleaned.pixels, original.pixels)
    np.testing.assert_array_equal(cleaned.pixels[0], _pixels(1).astype(np.float32) * 2 - 1024)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dcm", "b.dcm"]  # no temp file left


def test_uids_replaced_deterministically():
    one, two = _read(deidentify_dicom_bytes(_slice(1))), _read(deidentify_dicom_bytes(_slice(2)))
    assert one.SeriesInstanceUID == two.SeriesInstanceUID != SERIES
    assert one.StudyInstanceUID == two.StudyInstanceUID != STUDY
    assert one.FrameOfReferenceUID == two.FrameOfReferenceUID != FRAME
    assert one.SOPInstanceUID != two.SOPInstanceUID
    for ds in (one, two):
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == CTImageStorage and ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert all(UID(ds[k].value).is_valid for k in ("SOPInstanceUID", "SeriesInstanceUID"))
        # references between objects still point at the right (renamed) instance
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == one.SOPInstanceUID
        assert ds.ReferencedImageSequence[0].ReferencedSOPClassUID == CTImageStorage
    assert deidentify_dicom_bytes(_slice(1)) == deidentify_dicom_bytes(_slice(1))


def test_uid_salt_changes_the_mapping():
    plain = _read(deidentify_dicom_bytes(_slice()))
    salted = _read(deidentify_dicom_bytes(_slice(), uid_salt="site-secret"))
    assert salted.SeriesInstanceUID != plain.SeriesInstanceUID


def test_keep_identifiers_returns_input_unchanged():
    data = _slice()
    assert deidentify_dicom_bytes(data, keep_identifiers=True) == data


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("data", [b"", b"not a dicom file at all", b"\0" * 128 + b"DICM" + b"\xff" * 7])
def test_invalid_bytes_rejected(data, keep):
    with pytest.raises(InvalidImageError):
        deidentify_dicom_bytes(data, keep_identifiers=keep)


def test_file_failure_leaves_no_output(tmp_path):
    (tmp_path / "bad.dcm").write_bytes(b"garbage")
    with pytest.raises(InvalidImageError):
        deidentify_dicom_file(tmp_path / "bad.dcm", tmp_path / "out.dcm")
    with pytest.raises(InvalidImageError, match="not found"):
        deidentify_dicom_file(tmp_path / "missing.dcm", tmp_path / "out.dcm")
    assert [p.name for p in tmp_path.iterdir()] == ["bad.dcm"]
