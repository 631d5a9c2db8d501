"""The volume routes over HTTP (in-process app, a real worker process for the queued work): uploads of a
NIfTI, a DICOM series as files and as a zip, refusals that write nothing, label maps lined up through the
geometry, NIfTI and DICOM-SEG exports, and propagation as a job."""

from __future__ import annotations

import gzip
import io
import uuid
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from medsam_core.dicom_seg import read_dicom_seg_onto
from medsam_core.volume import read_dicom_series
from portal.store.models import Role
from portal.store.services import model_versions, projects, users
from portal.store.settings import Settings
from portal.store.store import open_store
from portal.web import errors
from portal.web.api import training, volumes
from tests.conftest import tight_box
from tests.storeutil import new_user, tx
from tests.volumeutil import dice, dicom_series, tiny_brats, tumour_zhw
from tests.workerutil import WORKER_ENV, WorkerProcess, wait_for
from workers.queue import JobQueue

API = "/api/v1"


@pytest.fixture(scope="module")
def api(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("volumes_api")
    (data_dir / "onnx").mkdir(exist_ok=True)
    (folder / "onnx").symlink_to(data_dir / "onnx", target_is_directory=True)
    values = {"MEDSAM_DATA_DIR": str(folder), "MEDSAM_DATABASE_URL": f"sqlite:///{folder / 'medsam.db'}", **WORKER_ENV}
    settings = Settings(**{k[len("MEDSAM_") :].lower(): v for k, v in values.items()})
    store = open_store(settings)
    worker = WorkerProcess(values, folder / "worker.log").start()
    app = FastAPI()
    app.state.store, app.state.settings, app.state.queue = store, settings, JobQueue(settings)
    errors.install(app)
    app.include_router(volumes.router)
    app.include_router(training.router)  # /jobs/{id}
    admin, reviewer = new_user(store, Role.admin), new_user(store, Role.reviewer)
    with store.transaction() as db:
        project = projects.create_project(db, admin, f"va-{uuid.uuid4().hex[:6]}", "ct", ["liver", "tumour"])
        projects.add_member(db, admin, project.id, reviewer)
        tokens = {who.username: users.issue_token(db, who) for who in (admin, reviewer)}
    tx(store, model_versions.base_version)
    with TestClient(app) as client:
        yield {
            "client": client,
            "store": store,
            "pid": project.id,
            "admin": {"Authorization": f"Bearer {tokens[admin.username]}"},
            "reviewer": {"Authorization": f"Bearer {tokens[reviewer.username]}"},
            "folder": folder,
            "worker": worker,
        }
    worker.stop()
    store.close()


def upload(api, files, **fields):
    parts = [("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in files]
    return api["client"].post(f"{API}/projects/{api['pid']}/volumes", files=parts, data=fields, headers=api["admin"])


def volume_count(api) -> int:
    answer = api["client"].get(f"{API}/projects/{api['pid']}/volumes", headers=api["admin"])
    assert answer.status_code == 200, answer.text
    return len(answer.json())


@pytest.fixture(scope="module")
def series(api, sample_data):
    files = dicom_series(sample_data)
    answer = upload(api, files, window="abdomen")
    assert answer.status_code == 201, answer.text
    return {"files": files, "volume": answer.json()}


def test_a_dicom_series_uploads_as_files_and_again_as_a_zip(api, series):
    body = series["volume"]
    original = read_dicom_series(series["files"])
    assert body["new"] and body["source_format"] == "dicom" and body["shape"] == [20, 512, 512]
    assert np.allclose(body["affine"], original.affine) and body["orientation"] == "".join(original.orientation)
    assert len(body["slice_image_ids"]) == 20 and body["window"] == "abdomen"
    packed = api["folder"] / "series.zip"
    with zipfile.ZipFile(packed, "w") as zf:
        for f in series["files"]:
            zf.write(f, f"export/{f.name}")
    again = upload(api, [packed])
    assert again.status_code == 201 and again.json()["id"] == body["id"] and again.json()["new"] is False
    png = api["client"].get(f"{API}/volumes/{body['id']}/slices/3.png?window=lung", headers=api["reviewer"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG") and len(png.content) > 1000


def test_bad_uploads_are_refused_plainly_and_write_nothing(api, series, tmp_path, sample_data):
    before = volume_count(api)
    files = series["files"]
    odd = tmp_path / "odd.dcm"
    ds = pydicom.dcmread(files[5])
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.1"
    ds.save_as(odd)
    text = tmp_path / "notes.txt"
    text.write_text("hello, not an image")
    cases = [
        ([*files[:4], odd], "series"),
        ([files[0], text], "not a supported file"),
        ([tiny_brats(sample_data, tmp_path)[0], files[0]], "mixture"),
        ([files[0]], "one slice"),
    ]
    for parts, words in cases:
        answer = upload(api, parts)
        assert answer.status_code == 400, answer.text
        detail = answer.json()["detail"]
        assert words in detail and str(tmp_path) not in detail and "/tmp" not in detail
    assert upload(api, files, window="nonsense").status_code == 400
    assert volume_count(api) == before


def test_label_maps_line_up_through_geometry_and_export(api, series, sample_data):
    client, vid = api["client"], series["volume"]["id"]
    labels = sample_data / "volumes" / "ct_dicom_series" / "labels.nii.gz"  # LAS: rows run the other way
    put = lambda base, path, **extra: client.put(  # noqa: E731
        f"{API}/volumes/{vid}/labels/liver",
        files={"file": (path.name, path.read_bytes())},
        data={"base_revision": str(base), **extra},
        headers=api["admin"],
    )
    saved = put(0, labels, value="5", status="submitted")
    assert saved.status_code == 200, saved.text
    assert saved.json()["revision"] == 1 and saved.json()["status"] == "submitted"
    stale = put(0, labels, value="5")
    assert stale.status_code == 409 and stale.json()["detail"]["current_revision"] == 1
    got = client.get(f"{API}/volumes/{vid}/labels/liver.npy", headers=api["reviewer"])
    assert got.status_code == 200 and got.headers["x-revision"] == "1"
    liver = np.load(io.BytesIO(got.content), allow_pickle=False).astype(bool)
    hu = read_dicom_series(series["files"]).pixels
    assert liver.shape == hu.shape and liver.sum() > 1000
    assert 40 < float(hu[liver].mean()) < 140  # soft tissue: lined up through the affines, not by index
    wrong = api["folder"] / "wrong.npy"
    np.save(wrong, np.zeros((20, 512, 500), np.uint8))
    assert put(1, wrong).status_code == 400 and "(Z, H, W)" in put(1, wrong).json()["detail"]
    exported = client.get(f"{API}/volumes/{vid}/export.nii.gz", headers=api["reviewer"])
    assert exported.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(exported.content))
    assert image.shape == (512, 512, 20) and np.allclose(image.affine, series["volume"]["affine"])
    assert np.array_equal(np.asanyarray(image.dataobj).transpose(2, 1, 0) == 1, liver)
    seg = client.get(f"{API}/volumes/{vid}/export.dcm", headers=api["reviewer"])
    assert seg.status_code == 200, seg.text
    seg_path = api["folder"] / "seg.dcm"
    seg_path.write_bytes(seg.content)
    stored = client.get(f"{API}/volumes/{vid}", headers=api["admin"]).json()
    assert stored["labels"][0]["label"] == "liver" and stored["labels"][0]["status"] == "submitted"
    assert np.array_equal(read_dicom_seg_onto(seg_path, read_dicom_series(series["files"])) == 1, liver)


def test_propagation_through_the_api_is_a_job_that_saves_a_revision(api, sample_data, tmp_path):
    client = api["client"]
    image, label = tiny_brats(sample_data, tmp_path)
    made = upload(api, [image])
    assert made.status_code == 201, made.text
    vid = made.json()["id"]
    api["worker"].wait_ready()
    truth = tumour_zhw(label)
    asked = client.post(
        f"{API}/volumes/{vid}/propagate",
        json={"label": "tumour", "key_slice": 1, "box": tight_box(truth[1]), "z_range": [1, 2]},  # two encodes
        headers=api["reviewer"],
    )
    assert asked.status_code == 201, asked.text
    job_id = asked.json()["id"]

    def finished():
        job = client.get(f"{API}/jobs/{job_id}", headers=api["reviewer"]).json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    try:
        job = wait_for(finished, 900, "the propagation job")
    except TimeoutError:
        pytest.fail("the propagation job did not finish; worker log:\n" + api["worker"].log.read_text()[-3000:])
    assert job["state"] == "succeeded" and job["kind"] == "propagate", job["error"]
    got = client.get(f"{API}/volumes/{vid}/labels/tumour.npy", headers=api["admin"])
    assert got.status_code == 200 and got.headers["x-revision"] == str(job["result"]["revision"])
    mask = np.load(io.BytesIO(got.content), allow_pickle=False) > 0
    assert dice(mask[1:3], truth[1:3]) > 0.75 and not mask[[0, 3]].any()  # outside the z range: nothing
    bad = client.post(
        f"{API}/volumes/{vid}/propagate",
        json={"label": "tumour", "key_slice": 1, "box": [3, 3, 3, 9]},
        headers=api["reviewer"],
    )
    assert bad.status_code == 400 and "box" in bad.json()["detail"]
    dicom_only = client.get(f"{API}/volumes/{vid}/export.dcm", headers=api["admin"])
    assert dicom_only.status_code == 400 and "not a DICOM series" in dicom_only.json()["detail"]
