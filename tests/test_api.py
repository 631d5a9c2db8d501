"""The REST API over real HTTP, against `medsam serve` with its real worker processes.

One server for the module (its own data folder, the session's ONNX export),
and tests in the order a project lives: accounts, project, uploads, prompts,
annotations and review, jobs, models, export/import, deletion. The last test
checks that the server still serves after every bad request before it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from portal.store.label_colours import label_colour, rgb_of
from tests.conftest import DEMO_BOX, DEMO_IMAGE, first_pairs
from tests.test_serve import free_port, processes_with
from tests.workerutil import serve_dies_with_parent, wait_for

PASSWORD = "correct horse battery"
USERS = {"boss": "admin", "anna": "annotator", "rita": "reviewer", "otto": "annotator"}
LIMIT_MB = 8


def medsam(env: dict, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "portal.cli", *args], input=stdin, capture_output=True, text=True, env=env, timeout=120
    )


@contextmanager
def running_portal(folder: Path, users: dict[str, str], extra_env: dict[str, str]):
    """`medsam serve` in ``folder`` with these accounts (made by the CLI a deployment uses, password from
    stdin), logged in: {"client", "as": {name: auth headers}, "folder", "env"}; stopped, children and all."""
    port = free_port()
    env = {**os.environ, "MEDSAM_DATA_DIR": str(folder), "MEDSAM_PORT": str(port), **extra_env}
    for name, role in users.items():
        done = medsam(env, "user", "add", name, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")
        assert done.returncode == 0 and f"created user '{name}'" in done.stdout, done.stderr
    log = open(folder / "serve.log", "wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "portal.cli", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=serve_dies_with_parent,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=180)

    def healthy():
        try:
            return client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, 300, "the web server")
        tokens = {}
        for name in users:
            r = client.post("/api/v1/auth/token", data={"username": name, "password": PASSWORD})
            assert r.status_code == 200, r.text
            tokens[name] = {"Authorization": f"Bearer {r.json()['access_token']}"}
        yield {"client": client, "as": tokens, "folder": folder, "env": env}
    finally:
        client.close()
        if serve.poll() is None:
            os.kill(serve.pid, signal.SIGTERM)
            try:
                serve.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
        for pid in processes_with(folder):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def api(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("api")
    (data_dir / "onnx").mkdir(exist_ok=True)
    (folder / "onnx").symlink_to(data_dir / "onnx", target_is_directory=True)  # export once per run
    with running_portal(
        folder,
        USERS,
        {
            "MEDSAM_MAX_UPLOAD_MB": str(LIMIT_MB),
            "MEDSAM_MIN_TRAINING_IMAGES": "2",
            "MEDSAM_TRAINING_GPU": "false",
            "MEDSAM_METRICS_TOKEN": "scrape-secret",
            "MEDSAM_LOGIN_ADDRESS_MAX_FAILURES": "5",
        },
    ) as portal:
        yield {**portal, "state": {}}


def call(api, method: str, path: str, user: str | None = "boss", **kwargs) -> httpx.Response:
    headers = {**(api["as"][user] if user else {}), **kwargs.pop("headers", {})}
    return api["client"].request(method, "/api/v1" + path, headers=headers, **kwargs)


def ok(response: httpx.Response, code: int = 200):
    assert response.status_code == code, (
        f"{response.request.method} {response.request.url}: {response.status_code} {response.text[:300]}"
    )
    return response.json()


def image_count(api, pid: int) -> int:
    return len(ok(call(api, "GET", f"/projects/{pid}/images")))


def wait_job(api, path: str, timeout: float = 300) -> dict:
    return wait_for(
        lambda: (lambda j: j if j["state"] in ("succeeded", "failed", "cancelled") else None)(
            ok(call(api, "GET", path))
        ),
        timeout,
        path,
        interval=0.5,
    )


def test_login_and_tokens(api):
    anonymous = call(api, "GET", "/projects", user=None)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    bad = api["client"].post("/api/v1/auth/token", data={"username": "boss", "password": "wrong password"})
    assert bad.status_code == 401 and "wrong username or password" in bad.json()["detail"]
    forged = call(api, "GET", "/projects", user=None, headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code == 401
    assert ok(call(api, "GET", "/auth/me", user="rita"))["role"] == "reviewer"


def test_first_start_creates_admin_once(tmp_path, capsys):
    from portal.store.settings import Settings
    from portal.store.store import open_store
    from portal.web.auth import ensure_first_admin

    store = open_store(Settings(data_dir=tmp_path), register_base=False)
    password = ensure_first_admin(store)
    assert password and password in capsys.readouterr().err
    assert ensure_first_admin(store) is None  # a second start says nothing
    store.close()


def test_projects_and_membership(api):
    assert call(api, "POST", "/projects", user="anna", json={"name": "nope"}).status_code == 403
    project = ok(
        call(api, "POST", "/projects", json={"name": "api-ct", "modality": "CT", "labels": ["lesion", "organ"]}), 201
    )
    assert project["labels"] == ["lesion", "organ"]
    assert call(api, "POST", "/projects", json={"name": "api-ct"}).status_code == 409
    pid = project["id"]
    api["state"]["pid"] = pid
    assert pid not in [p["id"] for p in ok(call(api, "GET", "/projects", user="anna"))]
    assert call(api, "GET", f"/projects/{pid}", user="anna").status_code == 404  # not a member: as if missing
    assert call(api, "POST", f"/projects/{pid}/members", json={"username": "anna", "role": "admin"}).status_code == 400
    assert call(api, "POST", f"/projects/{pid}/members", json={"username": "ghost"}).status_code == 404
    for name, role in (("anna", "annotator"), ("rita", "reviewer")):
        ok(call(api, "POST", f"/projects/{pid}/members", json={"username": name, "role": role}))
    assert pid in [p["id"] for p in ok(call(api, "GET", "/projects", user="anna"))]
    assert call(api, "POST", f"/projects/{pid}/members", user="anna", json={"username": "otto"}).status_code == 403


def test_uploads_are_checked_before_anything_is_stored(api):
    pid = api["state"]["pid"]
    # The name lies; the content decides.
    image = ok(
        call(
            api,
            "POST",
            f"/projects/{pid}/images",
            user="anna",
            files={"file": ("scan.dcm", DEMO_IMAGE.read_bytes(), "application/dicom")},
        ),
        201,
    )
    assert (image["width"], image["height"]) == (512, 512) and image["filename"] == "scan.png"
    assert [s["id"] for s in image["slices"]] == [image["id"]]
    api["state"]["iid"] = image["id"]
    before = image_count(api, pid)
    for name, payload in (
        ("notes.png", b"not an image at all " * 50),
        ("cut.png", DEMO_IMAGE.read_bytes()[:3000]),
        ("empty.png", b""),
    ):
        r = call(api, "POST", f"/projects/{pid}/images", files={"file": (name, payload, "image/png")})
        assert r.status_code == 400 and r.json()["detail"], (name, r.text)
    huge = call(
        api,
        "POST",
        f"/projects/{pid}/images",
        files={"file": ("huge.npy", os.urandom((LIMIT_MB + 1) * 1024 * 1024), "application/octet-stream")},
    )
    assert huge.status_code == 413 and "MEDSAM_MAX_UPLOAD_MB" in huge.json()["detail"]
    assert (
        call(
            api,
            "POST",
            f"/projects/{pid}/images",
            content=b"x",
            headers={**api["as"]["boss"], "Content-Type": "application/octet-stream"},
        ).status_code
        == 400
    )
    assert (
        call(
            api,
            "POST",
            f"/projects/{pid}/images",
            user="otto",
            files={"file": ("ct.png", DEMO_IMAGE.read_bytes(), "image/png")},
        ).status_code
        == 404
    )
    assert image_count(api, pid) == before
    again = ok(call(api, "POST", f"/projects/{pid}/images", files={"file": ("ct.png", DEMO_IMAGE.read_bytes())}), 201)
    assert again["id"] == image["id"]  # the same file dedupes


def npy(api, path: str, user: str = "anna") -> np.ndarray:
    r = call(api, "GET", path, user=user)
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content), allow_pickle=False)


def test_segment_with_boxes(api):
    iid = api["state"]["iid"]
    first = ok(call(api, "POST", f"/images/{iid}/segment", user="anna", json={"boxes": [DEMO_BOX]}))
    assert set(first["timing_ms"]) == {"encode_wait", "decode", "total"} and 0 < first["predicted_iou"] <= 1.5
    mask = npy(api, f"/masks/{first['mask_id']}.npy")
    assert mask.shape == (512, 512) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert 2000 < int(mask.sum()) < 9025 and int(mask.sum()) == first["area"]
    png = np.asarray(PILImage.open(io.BytesIO(call(api, "GET", f"/masks/{first['mask_id']}.png", user="anna").content)))
    assert set(np.unique(png)) == {0, 255}
    again = ok(call(api, "POST", f"/images/{iid}/segment", user="anna", json={"boxes": [DEMO_BOX]}))
    assert again["cache_hit"] and again["timing_ms"]["encode_wait"] == 0
    two = ok(
        call(
            api,
            "POST",
            f"/images/{iid}/segment",
            user="anna",
            json={"boxes": [DEMO_BOX, [300, 200, 400, 300]], "points": None},
        )
    )
    assert set(np.unique(npy(api, f"/masks/{two['mask_id']}.npy"))) == {0, 1, 2} and len(two["areas"]) == 2
    for body in ({"boxes": [[600, 600, 700, 700]]}, {"boxes": [[10, 10, 10, 50]]}, {}, {"boxes": [[1, 2, 3]]}):
        r = call(api, "POST", f"/images/{iid}/segment", user="anna", json=body)
        assert r.status_code in (400, 422) and r.json()["detail"], (body, r.text)
    assert call(api, "POST", f"/images/{iid}/segment", user="otto", json={"boxes": [DEMO_BOX]}).status_code == 404
    assert call(api, "GET", f"/masks/{first['mask_id']}.npy", user="otto").status_code == 404
    assert call(api, "POST", "/images/999999/segment", json={"boxes": [DEMO_BOX]}).status_code == 404
    api["state"]["mask_id"] = first["mask_id"]


def test_annotations_conflicts_and_review(api):
    iid, mask_id = api["state"]["iid"], api["state"]["mask_id"]
    saved = ok(
        call(
            api,
            "PUT",
            f"/images/{iid}/annotations/lesion",
            user="anna",
            json={"mask_id": mask_id, "base_revision": 0, "status": "draft"},
        )
    )
    assert saved["revision"] == 1
    stale = call(
        api,
        "PUT",
        f"/images/{iid}/annotations/lesion",
        user="rita",
        json={"mask_id": mask_id, "base_revision": 0, "status": "draft"},
    )
    assert stale.status_code == 409
    assert stale.json()["detail"]["current_revision"] == 1 and stale.json()["detail"]["author"] == "anna"
    corrected = np.zeros((512, 512), np.uint8)
    corrected[260:340, 100:180] = 255
    buf = io.BytesIO()
    PILImage.fromarray(corrected).save(buf, format="PNG")
    body = {"mask_png_base64": base64.b64encode(buf.getvalue()).decode(), "base_revision": 1, "status": "submitted"}
    assert ok(call(api, "PUT", f"/images/{iid}/annotations/lesion", user="anna", json=body))["revision"] == 2
    assert call(api, "PUT", f"/images/{iid}/annotations/bone", user="anna", json=body).status_code == 400
    assert (
        call(api, "PUT", f"/images/{iid}/annotations/lesion", user="anna", json={"base_revision": 2}).status_code == 400
    )
    aid = saved["annotation_id"]
    assert call(api, "POST", f"/annotations/{aid}/review", user="anna", json={"decision": "approve"}).status_code == 403
    assert call(api, "POST", f"/annotations/{aid}/review", user="rita", json={"decision": "reject"}).status_code == 400
    assert (
        ok(
            call(
                api, "POST", f"/annotations/{aid}/review", user="rita", json={"decision": "approve", "comment": "fine"}
            )
        )["status"]
        == "approved"
    )
    history = ok(call(api, "GET", f"/annotations/{aid}/revisions", user="rita"))
    assert [(h["number"], h["author"]) for h in history] == [(1, "anna"), (2, "anna")]
    assert history[0]["base_mask_id"] == mask_id and history[0]["prompt"]["boxes"] == [DEMO_BOX]
    assert int(npy(api, f"/annotations/{aid}/revisions/2.npy").sum()) == 80 * 80
    listed = ok(call(api, "GET", f"/projects/{api['state']['pid']}/images", user="anna"))
    assert listed[0]["annotations"]["lesion"]["status"] == "approved"


def test_export_formats(api):
    pid = api["state"]["pid"]
    for fmt in ("npy", "png", "seed"):
        r = call(api, "GET", f"/projects/{pid}/export", params={"format": fmt, "size": 256})
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip", r.text[:200]
        zf = zipfile.ZipFile(io.BytesIO(r.content))
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["format"] == fmt and manifest["items"]
        names = zf.namelist()
        if fmt == "seed":
            gts = [n for n in names if n.startswith("gts/")]
            assert gts and [n for n in names if n.startswith("imgs/")]
            labels = np.load(io.BytesIO(zf.read(gts[0])), allow_pickle=False)
            assert labels.shape == (256, 256) and set(np.unique(labels)) == {0, 1}
        else:
            (mask_name,) = [n for n in names if n.startswith("masks/lesion/")]
            data = zf.read(mask_name)
            if fmt == "npy":
                arr = np.load(io.BytesIO(data), allow_pickle=False)
            else:  # a palette PNG: values 0/1, drawn in the label's project colour
                png = PILImage.open(io.BytesIO(data))
                assert png.mode == "P"
                arr = np.asarray(png)
                classes = call(api, "GET", f"/projects/{pid}").json()["label_classes"]
                colour = rgb_of(label_colour(classes, "lesion"))
                assert tuple(png.getpalette()[3:6]) == colour != (0, 0, 0)
            assert set(np.unique(arr)) == {0, 1}
            assert [n for n in names if n.startswith("images/") and n.endswith(".png")]
    assert call(api, "GET", f"/projects/{pid}/export", params={"format": "tar"}).status_code == 422
    assert call(api, "GET", f"/projects/{pid}/export", user="otto").status_code == 404


def kvasir_zip(pairs, bad_mask: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, (image, mask) in enumerate(pairs):
            zf.write(image, f"data/images/{image.name}")
            if bad_mask and n == len(pairs) - 1:
                zf.writestr(f"data/masks/{mask.name}", np.zeros((7, 7), np.uint8).tobytes())
            else:
                zf.write(mask, f"data/masks/{mask.name}")
    return buf.getvalue()


def test_import_zip(api, sample_data):
    project = ok(
        call(api, "POST", "/projects", json={"name": "api-polyps", "modality": "endoscopy", "labels": ["polyp"]}), 201
    )
    pid = project["id"]
    api["state"]["polyp_pid"] = pid
    pairs = sorted(first_pairs(sample_data, "kvasir", 12), key=lambda p: p[0].stat().st_size)[:4]
    bad = call(api, "POST", f"/projects/{pid}/import", files={"file": ("bad.zip", kvasir_zip(pairs, True))})
    assert bad.status_code == 400 and "nothing was imported" in bad.json()["detail"]
    assert image_count(api, pid) == 0
    notzip = call(api, "POST", f"/projects/{pid}/import", files={"file": ("x.zip", DEMO_IMAGE.read_bytes())})
    assert notzip.status_code == 400
    report = ok(call(api, "POST", f"/projects/{pid}/import", files={"file": ("kvasir.zip", kvasir_zip(pairs))}), 201)
    assert report["images"] == 4 and report["annotations"] == 4, report
    listed = ok(call(api, "GET", f"/projects/{pid}/images"))
    assert [i["annotations"]["polyp"]["status"] for i in listed] == ["submitted"] * 4
    api["state"]["polyp_annotations"] = [i["annotations"]["polyp"]["annotation_id"] for i in listed]
    api["state"]["polyp_images"] = [i["id"] for i in listed]


def test_prelabel_and_precompute_jobs(api):
    pid, images = api["state"]["polyp_pid"], api["state"]["polyp_images"]
    hostile = {"items": [{"image_id": images[0], "boxes": [[-50, -50, -1, -1]]}]}
    assert call(api, "POST", f"/projects/{pid}/prelabel", json=hostile).status_code == 400
    job = ok(
        call(
            api,
            "POST",
            f"/projects/{pid}/prelabel",
            json={"items": [{"image_id": i, "boxes": [[20, 20, 200, 200]]} for i in images[:2]]},
        ),
        201,
    )
    done = wait_job(api, f"/jobs/{job['id']}", 180)
    assert done["state"] == "succeeded" and done["result"]["masks"] == 2, done
    warm = ok(call(api, "POST", f"/projects/{pid}/precompute"), 201)
    assert wait_job(api, f"/jobs/{warm['id']}", 180)["state"] == "succeeded"
    assert call(api, "GET", f"/jobs/{job['id']}", user="otto").status_code == 404


def test_training_jobs_and_promotion(api):
    pid = api["state"]["polyp_pid"]
    too_few = call(api, "POST", f"/projects/{pid}/training-jobs", json={"epochs": 1})
    assert too_few.status_code == 400 and "approved labels" in too_few.json()["detail"]
    assert call(api, "POST", f"/projects/{pid}/training-jobs", json={"epochs": 0}).status_code == 422
    ok(call(api, "POST", f"/projects/{pid}/members", json={"username": "rita"}))
    for aid in api["state"]["polyp_annotations"]:  # boss imported them: someone else approves
        ok(call(api, "POST", f"/annotations/{aid}/review", user="rita", json={"decision": "approve"}))
    job = ok(
        call(api, "POST", f"/projects/{pid}/training-jobs", json={"epochs": 1, "batch_size": 2, "val_fraction": 0.25}),
        201,
    )
    queued = ok(call(api, "POST", f"/projects/{pid}/training-jobs", json={"epochs": 1}), 201)
    assert ok(call(api, "DELETE", f"/training-jobs/{queued['id']}"))["cancel_requested"] is True
    done = wait_job(api, f"/training-jobs/{job['id']}", 300)
    assert done["state"] == "succeeded" and done["epoch_metrics"], done
    assert wait_job(api, f"/training-jobs/{queued['id']}", 60)["state"] == "cancelled"
    models = ok(call(api, "GET", f"/projects/{pid}/models"))
    base = models["active_model_version_id"]
    assert call(api, "POST", f"/projects/{pid}/models/{base}/activate").status_code == 400  # already active
    assert call(api, "POST", f"/projects/{pid}/models/{base}/activate", user="anna").status_code == 403
    new = done["result"].get("model_version_id")
    if new is None:  # a legitimate outcome: nothing beat the base model, and the job says so
        assert "no version was registered" in done["result"]["note"]
        return
    gate = call(api, "POST", f"/projects/{pid}/models/{new}/activate")
    assert gate.status_code in (200, 409), gate.text
    if gate.status_code == 409:
        assert "Dice" in gate.json()["detail"]
        ok(call(api, "POST", f"/projects/{pid}/models/{new}/activate", json={"force": True}))
    assert ok(call(api, "GET", f"/projects/{pid}/models"))["active_model_version_id"] == new


def test_checkpoint_upload_is_validated_before_it_is_registered(api):
    from medsam_core.models import bundled_lite_checkpoint

    pid = api["state"]["pid"]
    weights = bundled_lite_checkpoint().read_bytes()
    sent = {"file": ("lite_medsam.pth", weights, "application/octet-stream")}
    version = ok(call(api, "POST", f"/projects/{pid}/models", files=sent, data={"family": "lite", "name": "mine"}), 201)
    assert version["family"] == "lite" and version["name"] == "mine" and not version["active"]
    again = ok(call(api, "POST", f"/projects/{pid}/models", files=sent, data={"family": "lite"}), 201)
    assert again["id"] == version["id"]  # the same weights register once
    wrong = call(api, "POST", f"/projects/{pid}/models", files=sent, data={"family": "sam_vit_b"})
    assert wrong.status_code == 400 and "does not fit model family 'sam_vit_b'" in wrong.json()["detail"]
    assert (
        call(api, "POST", f"/projects/{pid}/models", user="anna", files=sent, data={"family": "lite"}).status_code
        == 403
    )
    png = call(
        api,
        "POST",
        f"/projects/{pid}/models",
        files={"file": ("x.pth", DEMO_IMAGE.read_bytes())},
        data={"family": "lite"},
    )
    assert png.status_code == 400
    versions = ok(call(api, "GET", f"/projects/{pid}/models"))["versions"]
    assert [v["id"] for v in versions].count(version["id"]) == 1


def test_metrics(api):
    anonymous = api["client"].get("/metrics")
    assert anonymous.status_code == 401 and "MEDSAM_METRICS_TOKEN" in anonymous.text
    assert api["client"].get("/metrics", headers=api["as"]["anna"]).status_code == 401  # not an admin
    scraper = api["client"].get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert scraper.status_code == 200
    text = api["client"].get("/metrics", headers=api["as"]["boss"]).text
    for name in (
        "medsam_http_request_duration_seconds_bucket",
        "medsam_segment_decode_seconds_count",
        "medsam_segment_encode_wait_seconds_count",
        "medsam_queue_depth",
    ):
        assert name in text, name
    assert 'route="/api/v1/images/{iid}/segment"' in text


def test_deletion_and_still_serving(api):
    pid, iid = api["state"]["pid"], api["state"]["iid"]
    assert call(api, "DELETE", f"/images/{iid}", user="anna").status_code == 403
    ok(call(api, "DELETE", f"/images/{iid}"))
    assert call(api, "GET", f"/images/{iid}").status_code == 404
    assert call(api, "DELETE", f"/projects/{pid}", user="rita").status_code == 403
    ok(call(api, "DELETE", f"/projects/{pid}"))
    assert call(api, "GET", f"/projects/{pid}").status_code == 404
    assert api["client"].get("/healthz").json() == {"status": "ok"}
    log = Path(api["folder"], "serve.log").read_text()
    assert "Traceback" not in log, log[-3000:]
