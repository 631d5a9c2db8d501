"""PHI-free and bounded image names, exports that survive any name, and zips that are refused cleanly.

Services on a real database (SQLite always, PostgreSQL when configured) with a
real blob store; DICOM is a real CT slice from the sample data, given a
patient's name and MRN as a hospital export would carry them.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import stat
import struct
import tempfile
import uuid
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image as PILImage
from sqlalchemy import func, select

from portal.store.db import make_engine
from portal.store.errors import PermissionDeniedError, StoreError
from portal.store.migrate import upgrade
from portal.store.models import Annotation, AuditEvent, Image, Role
from portal.store.services import annotations as ann
from portal.store.services import images, projects
from portal.web.transfer import build_export, import_zip, scratch_dir
from portal.web.zip_reading import MAX_ZIP_ENTRIES
from tests.conftest import require
from tests.dbutil import temporary_database
from tests.storeutil import new_user, png_file, square_mask, store_per_database, tx
from tests.test_api import api, call, ok  # noqa: F401 - api: the real `medsam serve` fixture

PATIENT = "Doe_Johnathan_MRN-424242.dcm"
SECRETS = ("Doe", "Johnathan", "424242")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request, tmp_path_factory):
    yield from store_per_database(request, tmp_path_factory, "names")


@pytest.fixture()
def admin(store):
    return new_user(store, Role.admin, "admin")


def _project(store, admin, **switches):
    with store.transaction() as session:
        return projects.create_project(session, admin, f"p-{uuid.uuid4().hex[:6]}", "ct", ["liver"], **switches)


@pytest.fixture()
def project(store, admin):
    return _project(store, admin)


def count(store, model):
    with store.transaction() as session:
        return session.scalar(select(func.count()).select_from(model))


def blob_count(store):
    return len(list(store.blobs.iter_blobs()))


def patient_dicom(folder: Path, sample_data) -> Path:
    """A real CT slice carrying a patient's name and MRN, under a file name that carries them too."""
    import pydicom

    series = sample_data / "volumes" / "ct_dicom_series" / "images"
    require(series.is_dir(), f"DICOM sample series not found at {series}")
    ds = pydicom.dcmread(sorted(series.iterdir())[0])
    ds.PatientName, ds.PatientID = "Doe^Johnathan", "MRN-424242"
    path = folder / PATIENT
    ds.save_as(path)
    return path


# -- DICOM names and hashes ---------------------------------------------------------------------------------


def test_dicom_is_named_from_deidentified_fields_and_hashed_as_stored(store, admin, project, tmp_path, sample_data):
    path = patient_dicom(tmp_path, sample_data)
    (row,) = tx(store, images.add_image, store.blobs, store.settings, admin, project.id, path, filename=PATIENT)
    assert row.filename == "CT_instance267.dcm"  # Modality + InstanceNumber of the stored, de-identified copy
    stored = store.blobs.get_bytes(row.blob_sha)
    assert row.sha256 == hashlib.sha256(stored).hexdigest() == row.blob_sha
    assert b"424242" not in stored
    assert [
        r.id
        for r in tx(store, images.add_image, store.blobs, store.settings, admin, project.id, path, filename=PATIENT)
    ] == [row.id]
    with store.transaction() as session:
        (event,) = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "image.upload", AuditEvent.target_id == row.id)
        )
        details = json.dumps(event.details)
    assert event.details["sha256"] == row.sha256 and not any(s in details for s in SECRETS)
    tx(store, ann.save_revision, store.blobs, admin, row.id, "liver", square_mask((512, 512), 200, 200, 60), 0)
    folder = Path(tempfile.mkdtemp(dir=scratch_dir(store.settings)))
    try:
        with zipfile.ZipFile(build_export(store, admin, project.id, "npy", False, 64, folder)) as zf:
            for name in zf.namelist():  # names, manifest and the image itself
                assert not any(s in name for s in SECRETS), name
                assert b"424242" not in zf.read(name) and b"Johnathan" not in zf.read(name), name
    finally:
        shutil.rmtree(folder)


def test_dicom_without_series_fields_is_named_by_its_content(store, admin, project, tmp_path):
    import pydicom

    from tests.test_imageio import _dicom  # the I/O tests' DICOM builder: no series or instance number

    path = _dicom(tmp_path / "Smith_Anna_1960.dcm", np.full((32, 32), 100, np.int16))
    ds = pydicom.dcmread(path)
    ds.PatientName = "Smith^Anna"
    ds.save_as(path)
    (row,) = tx(store, images.add_image, store.blobs, store.settings, admin, project.id, path)
    assert row.filename == f"dicom_{row.blob_sha[:12]}.dcm" and row.sha256 == row.blob_sha


def test_a_project_may_keep_original_names_and_admins_change_it(store, admin, tmp_path, sample_data):
    keeping = _project(store, admin, keep_original_names=True)
    assert keeping.keep_original_names is True and keeping.allow_self_review is False
    (row,) = tx(
        store,
        images.add_image,
        store.blobs,
        store.settings,
        admin,
        keeping.id,
        patient_dicom(tmp_path, sample_data),
        filename=PATIENT,
    )
    assert row.filename == PATIENT and b"424242" not in store.blobs.get_bytes(row.blob_sha)
    reviewer = new_user(store, Role.reviewer)
    with store.transaction() as session:
        projects.add_member(session, admin, keeping.id, reviewer)
    with pytest.raises(PermissionDeniedError), store.transaction() as session:
        projects.update_project(session, reviewer, keeping.id, keep_original_names=False)
    with pytest.raises(StoreError, match="unknown project setting"), store.transaction() as session:
        projects.update_project(session, admin, keeping.id, name="renamed")
    with pytest.raises(StoreError, match="true or false"), store.transaction() as session:
        projects.update_project(session, admin, keeping.id, allow_self_review="yes")
    with store.transaction() as session:
        changed = projects.update_project(session, admin, keeping.id, keep_original_names=False, allow_self_review=True)
        assert (changed.keep_original_names, changed.allow_self_review) == (False, True)
    with store.transaction() as session:
        (event,) = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "project.update", AuditEvent.project_id == keeping.id)
        )
        assert event.details == {
            "keep_original_names": {"from": True, "to": False},
            "allow_self_review": {"from": False, "to": True},
        }


# -- long and odd names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent, kept",
    [
        ("a" * 300 + ".png", "a" * images.MAX_STEM_CHARS + ".png"),
        ("../../etc/evil\x00na\u202eme\n.png", "evilname.png"),
        ("C:\\Users\\jdoe\\Desktop\\scan.png", "scan.png"),
        ("..", "upload"),
        ("  .hidden.png ", "hidden.png"),
    ],
)
def test_stored_names_are_cleaned_and_capped(store, admin, project, tmp_path, sent, kept):
    (row,) = tx(
        store,
        images.add_image,
        store.blobs,
        store.settings,
        admin,
        project.id,
        png_file(tmp_path, len(sent) + ord(sent[0])),
        filename=sent,
    )
    assert row.filename == kept and len(row.filename) <= 255


@pytest.mark.parametrize("fmt", ["npy", "png", "seed"])
def test_exports_work_and_name_entries_by_id_and_a_short_stem(store, admin, project, tmp_path, fmt):
    (row,) = tx(
        store,
        images.add_image,
        store.blobs,
        store.settings,
        admin,
        project.id,
        png_file(tmp_path, 7),
        filename="x" * 300 + ".png",
    )
    legacy = "dir/" + "a" * 240 + " é.png"  # a row stored before names were capped: too long for a file name
    with store.transaction() as session:
        session.get(Image, row.id).filename = legacy
    tx(store, ann.save_revision, store.blobs, admin, row.id, "liver", square_mask(), 0)
    folder = Path(tempfile.mkdtemp(dir=scratch_dir(store.settings)))
    try:
        with zipfile.ZipFile(build_export(store, admin, project.id, fmt, False, 64, folder)) as zf:
            names = [n for n in zf.namelist() if n != "manifest.json"]
            manifest = json.loads(zf.read("manifest.json"))
    finally:
        shutil.rmtree(folder)
    assert names and all(
        re.fullmatch(rf"{row.id}_[A-Za-z0-9_.-]{{1,40}}\.(npy|png)", n.split("/")[-1]) for n in names
    ), names
    assert manifest["items"][0]["filename"] == legacy


# -- bad zips ----------------------------------------------------------------------------------------------


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _mask_png() -> bytes:
    out = io.BytesIO()
    PILImage.fromarray(square_mask() * 255).save(out, format="PNG")
    return out.getvalue()


def _png_bomb(side: int = 20_000) -> bytes:
    """About 50 kB that declares side x side pixels: a 1-bit PNG of zeros."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer, row = zlib.compressobj(9), b"\0" * (1 + (side + 7) // 8)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )


def _zip(entries: list[tuple], method=zipfile.ZIP_DEFLATED) -> bytes:
    """entries: (name, data) or (name, data, external_attr); always led by a good image and mask."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as zf:
        for name, data, *attr in [("images/a.png", _png(1)), ("masks/a.png", _mask_png())] + entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            info.external_attr = attr[0] if attr else (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, data)
    return out.getvalue()


def _headers(data: bytes, name: str):
    """(local header offset, central header offset) of an entry, to forge it as an attacker would."""
    raw, found = name.encode(), []
    for sig, name_at, len_at in ((b"PK\x03\x04", 30, 26), (b"PK\x01\x02", 46, 28)):
        pos = data.find(sig)
        while pos >= 0 and not (
            data[pos + name_at : pos + name_at + len(raw)] == raw
            and struct.unpack_from("<H", data, pos + len_at)[0] == len(raw)
        ):
            pos = data.find(sig, pos + 1)
        found.append(pos)
    return found


def _forge(data: bytes, name: str, field: str, value: int) -> bytes:
    out = bytearray(data)
    local, central = _headers(data, name)
    fields = {"flags": (6, 8, "<H"), "method": (8, 10, "<H"), "size": (22, 24, "<I")}
    at_local, at_central, fmt = fields[field]
    struct.pack_into(fmt, out, local + at_local, value)
    struct.pack_into(fmt, out, central + at_central, value)
    return bytes(out)


def _corrupt_data(data: bytes, name: str, at: int, byte: int | None = None) -> bytes:
    """Overwrite one byte of an entry's stored data (None: flip some of its bits)."""
    out = bytearray(data)
    local, _ = _headers(data, name)
    nlen, xlen = struct.unpack_from("<HH", data, local + 26)
    where = local + 30 + nlen + xlen + at
    out[where] = out[where] ^ 0x55 if byte is None else byte
    return bytes(out)


def _many_entries():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("images/a.png", _png(1))
        for i in range(MAX_ZIP_ENTRIES):
            zf.writestr(f"d{i}/", b"")
    return out.getvalue()


BAD_ZIPS = {
    "wrong CRC": (
        lambda: _corrupt_data(_zip([("images/b.png", _png(2))], zipfile.ZIP_STORED), "images/b.png", 200),
        r"damaged.*images/b\.png.*CRC",
    ),
    "a header that lies about the size": (
        lambda: _forge(_zip([("images/b.png", _png(2))]), "images/b.png", "size", 100),
        r"damaged.*images/b\.png",
    ),
    "a zip bomb whose header says 1000 bytes": (
        lambda: _forge(_zip([("images/b.png", b"\0" * (50 << 20))]), "images/b.png", "size", 1000),
        r"damaged",
    ),
    "corrupt deflate data": (
        lambda: _corrupt_data(_zip([("images/b.png", _png(2))]), "images/b.png", 0, 0xFF),
        r"damaged.*compressed data is corrupt",
    ),
    "an unknown compression method": (
        lambda: _forge(_zip([("images/b.png", _png(2))]), "images/b.png", "method", 99),
        r"compression method 99",
    ),
    "an encrypted entry": (
        lambda: _forge(_zip([("images/b.png", _png(2))]), "images/b.png", "flags", 1),
        r"images/b\.png.*encrypted",
    ),
    "a symlink entry": (
        lambda: _zip([("images/b.png", b"../../../etc/passwd", (stat.S_IFLNK | 0o777) << 16)]),
        r"symbolic link",
    ),
    "zip slip with ..": (lambda: _zip([("../../images/evil.png", _png(3))]), r"'\.\./\.\./images/evil\.png'.*outside"),
    "zip slip inside images/": (lambda: _zip([("images/../../evil.png", _png(3))]), r"outside"),
    "an absolute path": (lambda: _zip([("/tmp/images/evil.png", _png(3))]), r"'/tmp/images/evil\.png'.*outside"),
    "too many entries": (_many_entries, rf"at most {MAX_ZIP_ENTRIES}"),
    "a PNG bomb as a mask": (
        lambda: _zip([("images/b.png", _png(2)), ("masks/b.png", _png_bomb())]),
        r"masks/b\.png: .*decompression bomb",
    ),
    "a PNG bomb as an image": (lambda: _zip([("images/b.png", _png_bomb())]), r"images/b\.png: .*decompression bomb"),
}


@pytest.mark.parametrize("kind", list(BAD_ZIPS))
def test_a_bad_zip_is_a_clear_store_error_and_writes_nothing(store, admin, project, tmp_path, kind):
    make, message = BAD_ZIPS[kind]
    zip_path = tmp_path / "upload.zip"
    zip_path.write_bytes(make())
    rows, blobs = count(store, Image), blob_count(store)
    folder = Path(tempfile.mkdtemp(prefix="import-", dir=scratch_dir(store.settings)))
    try:
        with pytest.raises(StoreError) as err:
            import_zip(store, admin, project.id, zip_path, folder, "upload.zip")
    finally:
        shutil.rmtree(folder)
    text = str(err.value)
    assert re.search(message, text), text
    assert str(store.settings.data_dir) not in text and str(tmp_path) not in text  # no server paths
    assert (count(store, Image), blob_count(store)) == (rows, blobs)
    zip_path.write_bytes(_zip([]))  # the good part alone, as the user would send it next
    folder = Path(tempfile.mkdtemp(prefix="import-", dir=scratch_dir(store.settings)))
    try:
        report = import_zip(store, admin, project.id, zip_path, folder, "upload.zip")
    finally:
        shutil.rmtree(folder)
    assert (report["images"], report["annotations"]) == (1, 1)


def _import(store, admin, pid, data: bytes, tmp_path) -> dict:
    zip_path = tmp_path / "upload.zip"
    zip_path.write_bytes(data)
    folder = Path(tempfile.mkdtemp(prefix="import-", dir=scratch_dir(store.settings)))
    try:
        return import_zip(store, admin, pid, zip_path, folder, "upload.zip")
    finally:
        shutil.rmtree(folder)


def test_a_binary_mask_in_a_two_label_project_is_the_first_label_and_the_report_says_so(store, admin, tmp_path):
    with store.transaction() as session:
        pid = projects.create_project(session, admin, f"p-{uuid.uuid4().hex[:6]}", "ct", ["organ", "tumour"]).id
    report = _import(
        store, admin, pid, _zip([("images/b.png", _png(2)), ("masks/tumour/b.png", _mask_png())]), tmp_path
    )
    assert (report["images"], report["annotations"]) == (2, 2)
    (note,) = report["notes"]
    assert "masks/a.png" in note and "'organ', the first label" in note and "masks/tumour/" in note
    with store.transaction() as session:
        got = set(
            session.execute(
                select(Image.filename, Annotation.label)
                .join(Annotation, Annotation.image_id == Image.id)
                .where(Image.project_id == pid)
            ).all()
        )
    assert got == {("a.png", "organ"), ("b.png", "tumour")}


def test_a_mask_of_unknown_values_names_the_real_label_folders(store, admin, tmp_path):
    with store.transaction() as session:
        pid = projects.create_project(session, admin, f"p-{uuid.uuid4().hex[:6]}", "ct", ["organ", "tumour"]).id
    mask = square_mask() * 7
    mask[0, 0] = 9
    out = io.BytesIO()
    PILImage.fromarray(mask).save(out, format="PNG")
    with pytest.raises(StoreError) as err:
        _import(store, admin, pid, _zip([("images/b.png", _png(2)), ("masks/b.png", out.getvalue())]), tmp_path)
    text = str(err.value)
    assert "masks/organ/ or masks/tumour/" in text and "<" not in text, text


def test_over_http_settings_names_and_bad_zips(api, sample_data, tmp_path):  # noqa: F811
    """The same rules through the real server: 201/200 with the switches, 422 for wrong types, 403 for a
    reviewer, a PHI-free name for a DICOM upload, and a 400 with its message for each bad zip."""
    project = ok(
        call(api, "POST", "/projects", json={"name": "names-http", "labels": ["liver"], "allow_self_review": True}), 201
    )
    pid = project["id"]
    assert (project["keep_original_names"], project["allow_self_review"]) == (False, True)
    for body in ({"keep_original_names": "abc"}, {"name": "renamed"}):
        assert call(api, "PATCH", f"/projects/{pid}", json=body).status_code == 422
    ok(call(api, "POST", f"/projects/{pid}/members", json={"username": "rita"}))
    assert call(api, "PATCH", f"/projects/{pid}", user="rita", json={"allow_self_review": False}).status_code == 403
    dicom = patient_dicom(tmp_path, sample_data).read_bytes()
    named = ok(call(api, "POST", f"/projects/{pid}/images", files={"file": (PATIENT, dicom, "application/dicom")}), 201)
    assert named["filename"] == "CT_instance267.dcm"
    changed = ok(call(api, "PATCH", f"/projects/{pid}", json={"keep_original_names": True}))
    assert (changed["keep_original_names"], changed["allow_self_review"]) == (True, True)
    long = ok(call(api, "POST", f"/projects/{pid}/images", files={"file": ("b" * 300 + ".png", _png(5))}), 201)
    assert long["filename"] == "b" * images.MAX_STEM_CHARS + ".png"
    before = len(ok(call(api, "GET", f"/projects/{pid}/images")))
    for kind in ("wrong CRC", "corrupt deflate data", "an encrypted entry", "a symlink entry", "a PNG bomb as a mask"):
        make, message = BAD_ZIPS[kind]
        r = call(api, "POST", f"/projects/{pid}/import", files={"file": ("bad.zip", make(), "application/zip")})
        assert r.status_code == 400 and re.search(message, r.json()["detail"]), (kind, r.status_code, r.text)
    assert len(ok(call(api, "GET", f"/projects/{pid}/images"))) == before


# -- existing rows -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_migration_makes_existing_dicom_rows_phi_free(kind, tmp_path):
    now = datetime.now(timezone.utc)
    tables = {
        name: sa.table(name, *(sa.column(c, sa.JSON if c in ("details", "label_classes") else None) for c in cols))
        for name, cols in {
            "projects": ("id", "name", "modality", "label_classes", "created_at"),
            "images": (
                "id",
                "project_id",
                "filename",
                "sha256",
                "blob_sha",
                "width",
                "height",
                "modality",
                "slice_index",
                "num_slices",
                "created_at",
            ),
            "audit_events": ("id", "at", "action", "target_type", "target_id", "project_id", "details"),
        }.items()
    }
    row = dict(project_id=1, width=8, height=8, modality="ct", num_slices=1, created_at=now, slice_index=0)
    with temporary_database(kind, tmp_path) as url:
        engine = make_engine(url)
        try:
            upgrade(engine, "0003")
            with engine.begin() as conn:
                conn.execute(
                    sa.insert(tables["projects"]).values(
                        id=1, name="old", modality="ct", label_classes=[], created_at=now
                    )
                )
                conn.execute(
                    sa.insert(tables["images"]),
                    [
                        dict(row, id=1, filename="Doe_John_MRN-1.dcm", sha256="a" * 64, blob_sha="b" * 64),
                        dict(row, id=2, filename="Roe_Jane.dcm", sha256="c" * 64, blob_sha="d" * 64),
                        dict(row, id=3, filename="Jane.png", sha256="d" * 64, blob_sha="d" * 64),  # blocks row 2's hash
                    ],
                )
                conn.execute(
                    sa.insert(tables["audit_events"]),
                    [
                        dict(
                            id=1,
                            at=now,
                            action="image.upload",
                            target_type="image",
                            target_id=1,
                            project_id=1,
                            details={"filename": "Doe_John_MRN-1.dcm", "sha256": "a" * 64, "format": "dicom"},
                        ),
                        dict(
                            id=2,
                            at=now,
                            action="image.delete",
                            target_type="image",
                            target_id=9,
                            project_id=1,
                            details={"filename": "Poe_MRN-9.dcm", "sha256": "e" * 64},
                        ),
                    ],
                )
            upgrade(engine)
            with engine.connect() as conn:
                got = {r.id: (r.filename, r.sha256) for r in conn.execute(sa.select(tables["images"]))}
                events = {r.id: r.details for r in conn.execute(sa.select(tables["audit_events"]))}
        finally:
            engine.dispose()
    renamed = {c: f"dicom_{c * 12}.dcm" for c in "bde"}
    assert got == {1: (renamed["b"], "b" * 64), 2: (renamed["d"], "c" * 64), 3: ("Jane.png", "d" * 64)}
    assert (events[1]["filename"], events[2]["filename"]) == (renamed["b"], renamed["e"])
