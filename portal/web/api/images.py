"""Images: upload (streamed, size-limited, sniffed), list with annotation states, delete, and segment."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from portal.store.models import Image, User
from portal.store.services import annotations, images
from portal.web.api import PREFIX, store_of
from portal.web.api.uploads import received_file
from portal.web.auth import current_user

router = APIRouter(prefix=PREFIX, tags=["images"])


class SegmentIn(BaseModel):
    boxes: list[list[float]] | None = Field(None, description="[[x0, y0, x1, y1], ...] in image pixels")
    points: list[list[float]] | None = Field(None, description="[[x, y, 1|0], ...]: include or exclude")
    model_version_id: int | None = Field(None, description="default: the project's active version")


def image_json(image: Image, states: dict | None = None) -> dict:
    return {"id": image.id, "project_id": image.project_id, "filename": image.filename, "width": image.width,
            "height": image.height, "slice_index": image.slice_index, "num_slices": image.num_slices,
            "window": image.window, "created_at": image.created_at.isoformat(),
            "annotations": states or {}}


def annotation_states(store, user: User, project_id: int) -> dict[int, dict]:
    """{image id: {label: {annotation_id, status, revision, author}}}."""
    out: dict[int, dict] = {}
    for row in annotations.current_annotations(store, user, project_id):
        a = row["annotation"]
        out.setdefault(a.image_id, {})[a.label] = {"annotation_id": a.id, "status": a.status.value,
                                                   "revision": a.current_revision, "author": row["author"],
                                                   "updated_at": a.updated_at.isoformat()}
    return out


@router.post("/projects/{pid}/images", status_code=201)
async def upload_image(pid: int, request: Request, user: User = Depends(current_user)) -> dict:
    """Multipart field ``file``; optional field ``window`` (abdomen, lung, brain, bone) for CT.
    A volume becomes one row per slice: the answer is the first, with all of them in ``slices``."""
    store = store_of(request)
    async with received_file(request) as upload:
        rows = await run_in_threadpool(images.add_image, store, user, pid, upload.path, upload.filename,
                                       upload.fields.get("window") or None)
    first = image_json(rows[0])
    first["slices"] = [{"id": r.id, "slice_index": r.slice_index} for r in rows]
    return first


@router.get("/projects/{pid}/images")
def list_images(pid: int, request: Request, user: User = Depends(current_user)) -> list[dict]:
    store = store_of(request)
    rows = images.list_images(store, user, pid)
    states = annotation_states(store, user, pid)
    return [image_json(r, states.get(r.id)) for r in rows]


@router.get("/images/{iid}")
def get_image(iid: int, request: Request, user: User = Depends(current_user)) -> dict:
    store = store_of(request)
    image = images.get_image(store, user, iid)
    return image_json(image, annotation_states(store, user, image.project_id).get(image.id))


@router.delete("/images/{iid}")
def delete_image(iid: int, request: Request, user: User = Depends(current_user)) -> dict:
    images.delete_image(store_of(request), user, iid)
    return {"deleted": "image", "id": iid}


@router.post("/images/{iid}/segment")
def segment(iid: int, body: SegmentIn, request: Request, user: User = Depends(current_user)) -> dict:
    """Decodes here against the cached embedding; a new image waits for a worker's encode
    (``timing_ms.encode_wait``), or 503 when none answers in time."""
    return request.app.state.segmentation.segment(user, iid, boxes=body.boxes, points=body.points,
                                                  model_version_id=body.model_version_id)
