"""Hostile input through a real `medsam serve`: every case is refused with the right status and a
message a person can act on, leaks no server path, writes no row and no blob, and leaves the server up.

One server for the module (test_api's fixture: its own data folder, 8 MB upload limit). The hostile
files are built in tests/hostileutil.py. A few names are hostile but legitimate: those uploads must
succeed, with the stored name made safe.
"""

from __future__ import annotations

import base64
import io
import os
import pickletools
import re
import sqlite3
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from tests import hostileutil as h
from tests.conftest import DEMO_BOX, DEMO_IMAGE, REPO
from tests.test_api import LIMIT_MB, api, call, ok  # noqa: F401 - api is the module's server fixture

COUNTED = ("images", "masks", "annotations", "annotation_revisions", "jobs", "model_versions")  # jobs: every kind
OVER_LIMIT = (LIMIT_MB + 1) * 1024 * 1024
BIG_JSON = 1024 * 1024 + 4096  # just over the 1 MB default of MEDSAM_MAX_JSON_KB


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str  # "{pid}", "{iid}" filled from the world fixture
    status: int | tuple[int, ...]
    says: tuple[str, ...]  # the message holds at least one of these (case-insensitive)
    request: Callable[[dict], dict]  # world -> httpx request keywords


def upload(name: str, build: Callable[[], bytes]) -> Callable[[dict], dict]:
    return lambda w: {"files": {"file": (name, build(), "application/octet-stream")}}


def streamed(body: bytes, content_type: str) -> dict:
    return {"content": h.chunked(body), "headers": {"Content-Type": content_type}}


def as_json(payload) -> Callable[[dict], dict]:
    return lambda w: {"json": payload}


def raw_json(text: bytes) -> Callable[[dict], dict]:
    return lambda w: {"content": text, "headers": {"Content-Type": "application/json"}}


def mask_b64(data: bytes) -> Callable[[dict], dict]:
    return as_json({"mask_png_base64": base64.b64encode(data).decode(), "base_revision": 0})


UPLOAD, IMPORT, SEGMENT = "/projects/{pid}/images", "/projects/{pid}/import", "/images/{iid}/segment"
CORRUPT = ("corrupt", "damaged", "crc", "not a readable zip")
CASES = [
    Case("upload-empty", "POST", UPLOAD, 400, ("empty",), upload("scan.png", lambda: b"")),
    Case(
        "upload-truncated-png",
        "POST",
        UPLOAD,
        400,
        ("truncated",),
        upload("cut.png", lambda: DEMO_IMAGE.read_bytes()[:3000]),
    ),
    Case("upload-png-bomb", "POST", UPLOAD, 400, ("downsample", "too large"), upload("bomb.png", h.png_bomb)),
    Case("upload-npy-pickled", "POST", UPLOAD, 400, ("pickled",), upload("obj.npy", h.npy_pickled)),
    Case("upload-npy-nan", "POST", UPLOAD, 400, ("nan",), upload("nan.npy", h.npy_nan)),
    Case(
        "upload-npy-rank4",
        "POST",
        UPLOAD,
        400,
        ("dimension",),
        upload("r4.npy", lambda: h.npy(np.zeros((2, 3, 4, 5), np.uint8))),
    ),
    Case("upload-npy-lying-shape", "POST", UPLOAD, 400, ("truncated",), upload("lie.npy", h.npy_lying_shape)),
    Case("upload-dicom-garbage", "POST", UPLOAD, 400, ("corrupt", "no image"), upload("junk.dcm", h.dicom_garbage)),
    Case(
        "upload-dicom-lying-rows",
        "POST",
        UPLOAD,
        400,
        ("truncated", "corrupt"),
        upload("lie.dcm", lambda: h.dicom(512, 512, b"\0" * 64)),
    ),
    Case(
        "upload-dicom-huge-dims",
        "POST",
        UPLOAD,
        400,
        ("downsample",),
        upload("huge.dcm", lambda: h.dicom(60000, 60000, b"\0" * 64)),
    ),
    Case("upload-nifti-lying-dims", "POST", UPLOAD, 400, ("truncated", "corrupt"), upload("lie.nii", h.nifti_lying)),
    Case(
        "upload-nii-gz-truncated",
        "POST",
        UPLOAD,
        400,
        ("truncated", "corrupt"),
        upload("cut.nii.gz", h.nifti_gz_truncated),
    ),
    Case("upload-random-bytes", "POST", UPLOAD, 400, ("not a supported file",), upload("noise.png", h.random_bytes)),
    Case("upload-zip", "POST", UPLOAD, 400, ("import",), upload("batch.zip", lambda: h.zip_of(h.pair(0)))),
    Case(
        "upload-oversize-content-length",
        "POST",
        UPLOAD,
        413,
        ("MEDSAM_MAX_UPLOAD_MB",),
        upload("huge.npy", lambda: b"\x93NUMPY" + bytes(OVER_LIMIT)),
    ),
    Case(
        "upload-oversize-chunked",
        "POST",
        UPLOAD,
        413,
        ("MEDSAM_MAX_UPLOAD_MB",),
        lambda w: streamed(*h.multipart(b"huge.npy", b"\x93NUMPY" + bytes(OVER_LIMIT))),
    ),
    Case("import-bad-crc", "POST", IMPORT, 400, CORRUPT, upload("crc.zip", h.zip_bad_crc)),
    Case("import-lying-sizes", "POST", IMPORT, 400, CORRUPT, upload("lie.zip", h.zip_lying_sizes)),
    Case("import-zip-bomb", "POST", IMPORT, 400, ("split",), upload("bomb.zip", lambda: h.zip_bomb(4 * LIMIT_MB + 8))),
    Case(
        "import-zip-bomb-understated",
        "POST",
        IMPORT,
        400,
        ("split",) + CORRUPT,
        upload("bomb.zip", lambda: h.zip_bomb(4 * LIMIT_MB + 8, declared=1000)),
    ),
    Case(
        "import-png-bomb-mask",
        "POST",
        IMPORT,
        400,
        ("downsample", "too large", "far more pixels"),
        upload("bomb.zip", h.zip_png_bomb_mask),
    ),
    Case("import-symlink", "POST", IMPORT, 400, ("symbolic link",), upload("link.zip", h.zip_symlink)),
    Case(
        "import-zip-slip",
        "POST",
        IMPORT,
        400,
        ("evil.png",),
        upload("slip.zip", lambda: h.zip_slip("../../images/evil.png")),
    ),
    Case(
        "import-absolute-name",
        "POST",
        IMPORT,
        400,
        ("abs.png",),
        upload("abs.zip", lambda: h.zip_slip("/images/abs.png")),
    ),
    Case("import-too-many-entries", "POST", IMPORT, 400, ("at most",), upload("many.zip", lambda: h.zip_many(20_001))),
    Case("import-not-a-zip", "POST", IMPORT, 400, ("zip",), upload("fake.zip", lambda: DEMO_IMAGE.read_bytes())),
    Case("import-masks-only", "POST", IMPORT, 400, ("no images/",), upload("masks.zip", h.zip_masks_only)),
    Case(
        "segment-33-boxes", "POST", SEGMENT, 400, ("MEDSAM_MAX_BOXES_PER_PROMPT",), as_json({"boxes": [DEMO_BOX] * 33})
    ),
    Case(
        "segment-65-points",
        "POST",
        SEGMENT,
        400,
        ("MEDSAM_MAX_POINTS_PER_PROMPT",),
        as_json({"points": [[140, 300, 1]] * 65}),
    ),
    Case(
        "segment-nan-box",
        "POST",
        SEGMENT,
        (400, 422),
        ("finite", "nan"),
        raw_json(b'{"boxes": [[NaN, 255, 190, 350]]}'),
    ),
    Case("segment-string-box", "POST", SEGMENT, 422, ("boxes",), as_json({"boxes": [["a", "b", "c", "d"]]})),
    Case(
        "segment-short-box", "POST", SEGMENT, (400, 422), ("x0, y0, x1, y1", "4 "), as_json({"boxes": [[95, 255, 190]]})
    ),
    Case(
        "segment-body-over-1mb",
        "POST",
        SEGMENT,
        413,
        ("MEDSAM_MAX_JSON_KB",),
        as_json({"boxes": [DEMO_BOX], "pad": "x" * BIG_JSON}),
    ),
    # Not even JSON, and chunked: a 413 (not 422) proves the size is checked before any parsing.
    Case(
        "segment-body-over-1mb-chunked",
        "POST",
        SEGMENT,
        413,
        ("MEDSAM_MAX_JSON_KB",),
        lambda w: streamed(b'{"boxes": ' + b"[" * BIG_JSON, "application/json"),
    ),
    Case(
        "prelabel-string-image-id",
        "POST",
        "/projects/{pid}/prelabel",
        422,
        ("image_id",),
        as_json({"items": [{"image_id": "abc", "boxes": [[1, 2, 3, 4]]}]}),
    ),
    Case("training-lr-string", "POST", "/projects/{pid}/training-jobs", 422, ("lr",), as_json({"lr": "abc"})),
    Case("training-lr-list", "POST", "/projects/{pid}/training-jobs", 422, ("lr",), as_json({"lr": [1]})),
    Case(
        "training-malformed-json", "POST", "/projects/{pid}/training-jobs", 422, ("json",), raw_json(b'{"epochs": 1,')
    ),
    Case(
        "annotation-bad-base64",
        "PUT",
        "/images/{iid}/annotations/lesion",
        400,
        ("base64",),
        as_json({"mask_png_base64": "%%% not base64 %%%", "base_revision": 0}),
    ),
    Case(
        "annotation-not-png", "PUT", "/images/{iid}/annotations/lesion", 400, ("png",), mask_b64(b"GIF89a" + bytes(64))
    ),
    Case(
        "annotation-wrong-size", "PUT", "/images/{iid}/annotations/lesion", 400, ("512x512",), mask_b64(h.png(64, 64))
    ),
    Case(
        "annotation-png-bomb",
        "PUT",
        "/images/{iid}/annotations/lesion",
        400,
        ("512x512", "too large", "pixels"),
        lambda w: mask_b64(h.png_bomb())(w),
    ),
    Case(
        "checkpoint-reduce-payload",
        "POST",
        "/projects/{pid}/models",
        400,
        ("weights", "refused"),
        lambda w: {"files": {"file": ("evil.pth", h.evil_checkpoint(w["marker"]))}, "data": {"family": "lite"}},
    ),
    Case(
        "checkpoint-random-bytes",
        "POST",
        "/projects/{pid}/models",
        400,
        ("not a supported file",),
        lambda w: {"files": {"file": ("noise.pth", h.random_bytes())}, "data": {"family": "lite"}},
    ),
]


@pytest.fixture(scope="module")
def world(api):
    """A one-class project anna annotates (with the demo image), and a project she is not in."""
    pid = ok(call(api, "POST", "/projects", json={"name": "hostile", "labels": ["lesion"]}), 201)["id"]
    ok(call(api, "POST", f"/projects/{pid}/members", json={"username": "anna", "role": "annotator"}))
    demo = {"file": ("ct.png", DEMO_IMAGE.read_bytes())}
    iid = ok(call(api, "POST", f"/projects/{pid}/images", files=demo), 201)["id"]
    other = ok(call(api, "POST", "/projects", json={"name": "secret-oncology-trial", "labels": ["x"]}), 201)["id"]
    other_iid = ok(call(api, "POST", f"/projects/{other}/images", files={"file": ("o.png", h.png(seed=77))}), 201)["id"]
    return {
        "pid": pid,
        "iid": iid,
        "other": other,
        "other_iid": other_iid,
        "marker": str(Path(api["folder"]).parent / "reduce-ran-marker"),
    }


def written(folder: Path) -> dict[str, int]:
    """Rows that only a successful request adds, and every file under blobs/ and the scratch folders."""
    db = sqlite3.connect(f"file:{folder / 'medsam.db'}?mode=ro", uri=True)
    try:
        counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COUNTED}
    finally:
        db.close()
    for sub in ("blobs", "uploads", "exports"):
        counts[sub] = sum(1 for p in (folder / sub).rglob("*") if p.is_file())
    return counts


def message(response) -> str:
    detail = response.json()["detail"]
    if isinstance(detail, list):  # FastAPI's validation shape: say which field
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return str(detail.get("message", detail) if isinstance(detail, dict) else detail)


TEMP_NAME = re.compile(r"\btmp[a-z0-9_]{8}\b")  # tempfile's names: the server's, not the one the user sent
UNSAFE_ADVICE = ("weights_only` set to `False", "weights_only=False", "allow_pickle=True")


def assert_plain(api, response) -> None:
    for secret in (str(api["folder"]), str(REPO), "/tmp/", ".venv", "Traceback") + UNSAFE_ADVICE:
        assert secret not in response.text, f"the answer shows '{secret}': {response.text[:400]}"
    assert not TEMP_NAME.search(response.text), f"the answer names a server temp file: {response.text[:400]}"


def still_serving(api) -> None:
    assert api["client"].get("/healthz").status_code == 200


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused(api, world, case: Case):
    before = written(api["folder"])
    kwargs = case.request(world)
    r = call(api, case.method, case.path.format(**world), **kwargs)
    codes = case.status if isinstance(case.status, tuple) else (case.status,)
    assert r.status_code in codes, f"{case.id}: {r.status_code} {r.text[:400]}"
    text = message(r)
    assert any(s.lower() in text.lower() for s in case.says), f"{case.id}: says {text[:400]!r}, want one of {case.says}"
    assert_plain(api, r)
    still_serving(api)
    assert written(api["folder"]) == before, f"{case.id} wrote something"
    assert not os.path.exists(world["marker"]), "a pickled __reduce__ ran on the server"


def _safe_name(name: str) -> None:
    assert len(name.encode()) <= 255 and name.endswith(".png"), name
    assert not any(unicodedata.category(c)[0] == "C" for c in name), repr(name)
    assert "/" not in name and "\\" not in name and not name.startswith("."), repr(name)


@pytest.mark.parametrize(
    "name",
    [b"a" * 296 + b".png", b"../../etc/pa\x00ss\x01\x07\x1b[2J\x7fwd..%2f.png"],
    ids=["long-name", "nul-control-dotdot-name"],
)
def test_odd_names_are_accepted_safely(api, world, name: bytes):
    body, ctype = h.multipart(name, h.png(seed=len(name)))
    image = ok(call(api, "POST", UPLOAD.format(**world), content=body, headers={"Content-Type": ctype}), 201)
    _safe_name(image["filename"])
    _safe_name(ok(call(api, "GET", f"/images/{image['id']}"))["filename"])
    still_serving(api)
    world.setdefault("odd", []).append(image["id"])


def test_exports_survive_odd_names(api, world):
    """Once anyone saves on an oddly named image, every export format of the project still works."""
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:40] = 255
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    assert world.get("odd"), "run with the odd-name uploads first"
    for iid in world["odd"]:
        ok(
            call(
                api,
                "PUT",
                f"/images/{iid}/annotations/lesion",
                user="anna",
                json={"mask_png_base64": base64.b64encode(buf.getvalue()).decode(), "base_revision": 0},
            )
        )
    for fmt in ("npy", "png", "seed"):
        r = call(api, "GET", f"/projects/{world['pid']}/export", params={"format": fmt, "size": 64})
        assert r.status_code == 200, f"{fmt}: {r.status_code} {r.text[:300]}"
        names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
        assert all(len(part.encode()) <= 255 and part != ".." for n in names for part in n.split("/")), names


def test_clean_versions_of_the_hostile_zips_import(api, world):
    """Control: the pairs the hostile zips are built around import fine, so each refusal is for its one lie."""
    report = ok(call(api, "POST", IMPORT.format(**world), files={"file": ("ok.zip", h.zip_of(h.pair(50)))}), 201)
    assert report["images"] == 1 and report["annotations"] == 1, report


def test_the_checkpoint_payload_is_armed(tmp_path):
    """Control, without running it: the pickle inside really calls os.system (posix.system) on load."""
    with zipfile.ZipFile(io.BytesIO(h.evil_checkpoint(str(tmp_path / "m")))) as zf:
        pickled = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    globals_used = [arg for op, arg, _ in pickletools.genops(pickled) if op.name == "GLOBAL"]
    assert "posix system" in globals_used, globals_used


def test_login_refusals_do_not_tell_who_exists(api):
    client = api["client"]
    unknown = client.post("/api/v1/auth/token", data={"username": "nobody-here", "password": "whatever it is"})
    wrong = client.post("/api/v1/auth/token", data={"username": "rita", "password": "not her password"})
    assert unknown.status_code == wrong.status_code == 401, (unknown.text, wrong.text)
    assert message(unknown) == message(wrong) and "password" in message(wrong)
    still_serving(api)


def test_metrics_need_login(api):
    r = api["client"].get("/metrics")
    assert r.status_code == 401, (r.status_code, r.text[:200])
    assert "medsam_http_request_duration_seconds" not in r.text


@pytest.mark.parametrize("kind", ["projects", "images"])
def test_outside_ones_projects_looks_missing(api, world, kind):
    """Another project's id and an id that was never used get the same 404 and the same words."""
    theirs = world["other"] if kind == "projects" else world["other_iid"]
    before = written(api["folder"])
    answers = [call(api, "GET", f"/{kind}/{n}", user="anna") for n in (theirs, 987654)]
    assert [a.status_code for a in answers] == [404, 404], [a.text for a in answers]
    shapes = [message(a).replace(str(n), "N") for a, n in zip(answers, (theirs, 987654), strict=True)]
    assert shapes[0] == shapes[1], shapes
    assert "secret-oncology-trial" not in answers[0].text
    assert written(api["folder"]) == before


@pytest.mark.parametrize("path", ["/api/v1/projects", "/api/v1/projects/987654", "/", "/api/docs", "/healthz"])
def test_security_headers(api, path):
    r = api["client"].get(path, headers=api["as"]["boss"], follow_redirects=True)
    assert r.status_code in (200, 404), (path, r.status_code)
    assert r.headers.get("x-content-type-options") == "nosniff", dict(r.headers)
    assert r.headers.get("referrer-policy"), dict(r.headers)
    csp = r.headers.get("content-security-policy", "")
    assert r.headers.get("x-frame-options", "").upper() in ("DENY", "SAMEORIGIN") or "frame-ancestors" in csp, dict(
        r.headers
    )


def test_server_log_is_clean(api):
    """Last: not one request above reached the 500 handler."""
    log = Path(api["folder"], "serve.log").read_text(errors="replace")
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
