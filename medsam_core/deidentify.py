"""Strip patient identity from uploaded DICOM before the portal stores it.

Follows the spirit of DICOM PS3.15 Annex E (Basic Application Level
Confidentiality Profile) without claiming conformance to it:

* Names, IDs, addresses, phone numbers, institution/device/staff details,
  accession and study IDs, free-text comments and study/series descriptions are
  deleted (``IDENTIFYING_TAGS``). The few of them that the image IODs require to
  be present (Type 2) are kept but emptied, Annex E action "Z", so stored files
  still import into a PACS.
* Patient sex, age, size and weight are dropped, as in the Basic Profile: the
  segmentation engine never uses them, and together with the rest they narrow
  down who the patient is.
* As a catch-all, every person name (VR PN) and every date or time (DA, DT, TM)
  at any depth is emptied. Dates are blanked rather than shifted: nothing in the
  engine needs them, and a shift key would be one more secret to keep.
* All private elements, curves (50xx) and overlays (60xx, which can carry text
  burned into a bitmap) are removed, and so is the 128-byte preamble, which may
  hold another format's header.
* Instance UIDs are replaced by name-based UUIDs (``2.25.<uuid5>``) computed
  from the original, so slices of one series, and references between objects,
  stay consistent across separate uploads while the original UIDs are gone.
  Without ``uid_salt`` anyone holding an original UID can recompute its
  replacement; pass a secret salt when that linkage must not be possible.

Pixel data and every geometry, rescale and display attribute are left as they
are, byte for byte, and the transfer syntax is kept. Text burned into the
pixels themselves (``BurnedInAnnotation``) is not detected or removed.
"""

from __future__ import annotations

import io
import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from medsam_core.errors import InvalidImageError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset, FileDataset

IDENTIFYING_TAGS: tuple[str, ...] = (
    # Patient
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "CountryOfResidence",
    "RegionOfResidence",
    "MilitaryRank",
    "BranchOfService",
    "EthnicGroup",
    "Occupation",
    "PatientReligiousPreference",
    "MedicalRecordLocator",
    "PatientInsurancePlanCodeSequence",
    "ResponsiblePerson",
    "ResponsibleOrganization",
    "PatientComments",
    "AdditionalPatientHistory",
    "MedicalAlerts",
    "Allergies",
    "ReferencedPatientSequence",
    # Visit, request and study
    "AccessionNumber",
    "StudyID",
    "AdmissionID",
    "AdmittingDiagnosesDescription",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "StudyComments",
    "ImageComments",
    "RequestAttributesSequence",
    "RequestedProcedureDescription",
    "PerformedProcedureStepID",
    "PerformedProcedureStepDescription",
    "ReferencedStudySequence",
    "ReferencedPerformedProcedureStepSequence",
    # People
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "RequestingPhysician",
    "PerformingPhysicianName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "ContentCreatorName",
    # Institution and equipment
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "InstitutionCodeSequence",
    "StationName",
    "DeviceSerialNumber",
    "DetectorID",
    "PlateID",
    "CassetteID",
    "GantryID",
    # File meta: the sending system's AE title names a site
    "SourceApplicationEntityTitle",
    "SendingApplicationEntityTitle",
    "ReceivingApplicationEntityTitle",
    "PrivateInformation",
)

# Type 2 in the patient/study modules: an image without them is not valid, so
# they stay present with an empty value instead of being deleted.
_KEEP_EMPTY = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    }
)
_REMOVE = frozenset(IDENTIFYING_TAGS) - _KEEP_EMPTY
_BLANK_VRS = frozenset({"PN", "DA", "DT", "TM"})
_DICOM_ROOT = "1.2.840.10008."  # standard UIDs (SOP classes, transfer syntaxes) identify nothing
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "medsam_core.deidentify")
METHOD = "PS3.15 Annex E basic profile subset; dates blanked; UIDs hashed"


def _new_uid(value: str, salt: str) -> str:
    """Name-based, so the same original always maps to the same replacement."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, salt + '|' + value.strip().rstrip(chr(0))).int}"


def _keeps_uid(keyword: str, value: str) -> bool:
    # Class UIDs say what kind of object this is, not whose; private SOP
    # classes must survive too or viewers cannot recognise the object.
    return keyword.endswith("ClassUID") or value.startswith(_DICOM_ROOT)


def _clean(ds: Dataset, salt: str) -> None:
    for tag in list(ds.keys()):
        elem = ds[tag]
        group = tag.group
        if tag.is_private or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            del ds[tag]
            continue
        keyword, vr = elem.keyword, elem.VR
        if keyword in _REMOVE:
            del ds[tag]
        elif keyword in _KEEP_EMPTY or vr in _BLANK_VRS:
            elem.value = [] if vr == "SQ" else None
        elif vr == "UI" and not elem.is_empty:
            values = list(elem.value) if elem.VM > 1 else [elem.value]
            new = [v if _keeps_uid(keyword, str(v)) else _new_uid(str(v), salt) for v in values]
            elem.value = new if elem.VM > 1 else new[0]
        elif vr == "SQ":
            for item in elem.value:
                _clean(item, salt)


def _parse(data: bytes) -> FileDataset:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"DICOM data must be bytes, not {type(data).__name__}.")
    if len(data) == 0:
        raise InvalidImageError("The DICOM upload is empty (0 bytes); the upload probably failed.")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        for _ in ds.iterall():  # values decode lazily: surface corruption now, on every path
            pass
    except InvalidDicomError:
        raise InvalidImageError(
            "Not a DICOM file (the 'DICM' marker is missing). Export it again from "
            "the PACS or viewer as a standard DICOM file."
        ) from None
    except Exception as exc:
        raise InvalidImageError(
            f"The DICOM file could not be parsed ({exc}); it is probably truncated or corrupt."
        ) from None
    if len(ds) == 0:
        raise InvalidImageError(
            "The DICOM file holds no data elements after its header; it is truncated or corrupt. Export it again."
        )
    return ds


def deidentify_dicom_bytes(data: bytes, *, keep_identifiers: bool = False, uid_salt: str = "") -> bytes:
    """Stored uploads must not identify the patient yet must segment exactly as the original.

    ``keep_identifiers=True`` is the portal's opt-out for sites that store
    identified data: the input comes back unchanged, but it is still parsed so
    an invalid upload fails the same way whichever setting is active.
    """
    ds = _parse(data)
    if keep_identifiers:
        return data
    try:
        ds.preamble = b"\0" * 128
        ds.remove_private_tags()  # pydicom walks every nested sequence
        _clean(ds, uid_salt)
        meta = ds.file_meta
        _clean(meta, uid_salt)
        if ds.get("SOPInstanceUID"):  # present but empty in some real exports: keep the meta copy
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        # Dates are gone, so say so: readers must not trust temporal order.
        ds.LongitudinalTemporalInformationModified = "REMOVED"
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    except InvalidImageError:
        raise
    except Exception as exc:  # values are decoded lazily, so corrupt elements surface here
        raise InvalidImageError(
            f"The DICOM file could not be de-identified ({type(exc).__name__}: "
            f"{exc}); it is probably corrupt. Export it again."
        ) from None
    return out.getvalue()


def deidentify_dicom_file(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, keep_identifiers: bool = False, uid_salt: str = ""
) -> None:
    """Write the de-identified copy atomically, so a crash never leaves a half
    written file, or the identified original under the destination name."""
    try:
        data = Path(src).read_bytes()
    except FileNotFoundError:
        raise InvalidImageError(f"DICOM file not found: {os.fspath(src)}.") from None
    out = deidentify_dicom_bytes(data, keep_identifiers=keep_identifiers, uid_salt=uid_salt)
    target = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(out)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
