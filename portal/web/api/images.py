"""Images: upload (streamed, size-limited, sniffed), list with annotation states, delete, and segment."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from portal.store.models import User
from portal.store.services import annotations, images
from portal.store.store import Store
from portal.web.api import PREFIX, Db, store_of
from portal.web.api.uploads import Upload, received_file
from portal.web.auth import current_user
from portal.web.schemas.common import Deleted
from portal.web.schemas.images import (
    AnnotationState,
    ImagePublic,
    SegmentIn,
    SegmentPublic,
    SliceRef,
    UploadedImagePublic,
)

router = APIRouter(prefix=PREFIX, tags=["images"])


def annotation_states(db: Session, user: User, project_id: int) -> dict[int, dict[str, AnnotationState]]:
    """{image id: {label: state}}, for the whole project in one query."""
    out: dict[int, dict[str, AnnotationState]] = {}
    for row in annotations.current_annotations(db, user, project_id):
        a = row["annotation"]
        out.setdefault(a.image_id, {})[a.label] = AnnotationState(
            annotation_id=a.id,
            status=a.status.value,
            revision=a.current_revision,
            author=row["author"],
            updated_at=a.updated_at,
        )
    return out


def _store_upload(store: Store, user: User, pid: int, upload: Upload) -> UploadedImagePublic:
    """The transaction starts only once the file is in: SQLite's write lock is never held while bytes stream."""
    with store.transaction() as db:
        rows = images.add_image(
            db,
            store.blobs,
            store.settings,
            user,
            pid,
            upload.path,
            upload.filename,
            upload.fields.get("window") or None,
        )
        return UploadedImagePublic.of(rows[0], slices=[SliceRef(id=r.id, slice_index=r.slice_index) for r in rows])


@router.post("/projects/{pid}/images", status_code=201, response_model=UploadedImagePublic)
async def upload_image(pid: int, request: Request, user: User = Depends(current_user)) -> UploadedImagePublic:
    """Multipart field ``file``; optional field ``window`` (abdomen, lung, brain, bone) for CT.
    A volume becomes one row per slice: the answer is the first, with all of them in ``slices``."""
    async with received_file(request) as upload:
        return await run_in_threadpool(_store_upload, store_of(request), user, pid, upload)


@router.get("/projects/{pid}/images", response_model=list[ImagePublic])
def list_images(pid: int, db: Db, user: User = Depends(current_user)) -> list[ImagePublic]:
    rows = images.list_images(db, user, pid)
    states = annotation_states(db, user, pid)
    return [ImagePublic.of(r, states.get(r.id)) for r in rows]


@router.get("/images/{iid}", response_model=ImagePublic)
def get_image(iid: int, db: Db, user: User = Depends(current_user)) -> ImagePublic:
    image = images.get_image(db, user, iid)
    return ImagePublic.of(image, annotation_states(db, user, image.project_id).get(image.id))


@router.delete("/images/{iid}", response_model=Deleted)
def delete_image(iid: int, db: Db, user: User = Depends(current_user)) -> Deleted:
    images.delete_image(db, user, iid)
    return Deleted(deleted="image", id=iid)


@router.post("/images/{iid}/segment", response_model=SegmentPublic)
def segment(iid: int, body: SegmentIn, request: Request, user: User = Depends(current_user)) -> SegmentPublic:
    """Decodes here against the cached embedding; a new image waits for a worker's encode
    (``timing_ms.encode_wait``), or 503 when none answers in time. No transaction is held while it waits."""
    return request.app.state.segmentation.segment(
        user, iid, boxes=body.boxes, points=body.points, model_version_id=body.model_version_id
    )
