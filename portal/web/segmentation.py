"""Interactive segmentation for the REST API and the UI: decode here, encode on a worker.

Why the split: the encoder takes seconds on a CPU and belongs to the
``inference`` workers, while a box or point decodes in tens of milliseconds
against the cached embedding. A queue round trip per click would cost more than
the decode itself, so the web process keeps its own predictors (an LRU of model
versions, ``portal.store.runtime.ModelPool``, as the workers do) and the shared
embedding cache (memory in front of the blob store). Only a cache miss goes to
the queue port, and concurrent prompts on the same new image share a single encode.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsam_core.cache import pixel_sha256
from medsam_core.outputs import label_map
from medsam_core.prompts import Prompts, check_prompt_size, validate_prompts
from portal.store.errors import NotFoundError
from portal.store.models import Image, User
from portal.store.runtime import ModelPool
from portal.store.services.images import display_pixels, get_image
from portal.store.services.masks import record_mask
from portal.store.services.model_versions import active_version, base_version, usable_version
from portal.store.store import Store
from portal.web import metrics
from portal.web.memory import release_after
from portal.web.schemas.images import SegmentPublic, SegmentTiming
from workers.queue import EncodeUnavailableError, JobQueue, encode_timeout_message

__all__ = ["EncodeUnavailableError", "SegmentationService"]
DEFAULT_ENCODE_TIMEOUT_S = 120.0
PIXEL_CACHE_BYTES = 512 * 1024 * 1024  # decoded display images, so a re-prompt never re-reads the file


@dataclass
class _Embedded:
    """What a decode needs, looked up and checked once."""

    image: Image
    prompts: Prompts | None
    version_id: int
    predictor: Any
    embedding: Any
    wait_ms: float
    hit: bool


class SegmentationService:
    """One per web process; thread-safe. The UI and the REST API both call ``segment``.

    ``segment(actor, image_id, boxes=None, points=None, model_version_id=None) -> dict``

    * ``actor``: the logged-in ``User`` (project membership is checked), or ``None`` for a
      trusted caller that did its own checks (the public demo).
    * ``boxes``: ``[[x0, y0, x1, y1], ...]`` and ``points``: ``[[x, y, 1|0], ...]`` in the
      original image's pixels. Boxes are clipped to the image; degenerate ones raise
      ``PromptError``. K boxes give one mask row whose array is a label map 1..K (a later box
      wins on overlap); one box or points only give 0/1.
    * ``model_version_id``: default the project's active version.

    Returns a ``SegmentPublic``: ``mask_id``, ``area``, ``predicted_iou``, ``model_version_id``,
    ``timing_ms`` (``encode_wait``, ``decode``, ``total``), ``image_id``, ``cache_hit``, ``areas`` and
    ``predicted_ious`` (one per box). ``predicted_iou`` is their mean. Raises the store's
    errors (``NotFoundError``, ``PermissionDeniedError``, ``StoreError``), ``PromptError``, and
    ``EncodeUnavailableError`` when no worker encoded a new image within ``encode_timeout_s``.
    The mask array is then ``portal.store.services.masks.load_mask(store.blobs, mask.blob_sha)``.
    """

    def __init__(self, store: Store, queue: JobQueue, *, encode_timeout_s: float = DEFAULT_ENCODE_TIMEOUT_S):
        self.store = store
        self.queue = queue
        self.encode_timeout_s = float(encode_timeout_s)
        self.pool = ModelPool(store, store.settings.model_pool_size)
        self._lock = threading.Lock()
        self._decode_slots = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))
        self._load_lock = threading.Lock()
        self._inflight: dict[Any, Future] = {}
        self._pixels: OrderedDict[tuple, tuple[np.ndarray, str]] = OrderedDict()

    def _embedded(
        self, actor: User | None, image_id: int, model_version_id: int | None, boxes, points, prompted: bool = True
    ) -> _Embedded:
        """Everything up to the decode: access, prompt checks, the version and its cached embedding."""
        settings = self.store.settings
        # Counted before anything else: an oversized prompt costs neither a lookup nor a decode.
        check_prompt_size(boxes, points, settings.max_boxes_per_prompt, settings.max_points_per_prompt)
        image = self._image(actor, image_id)
        # Prompts are checked here, once, before any waiting: a bad box must not cost an encode.
        prompts = validate_prompts(boxes, points, (image.height, image.width)) if prompted else None
        version_id = self._version(image.project_id, model_version_id, actor)
        predictor = self.predictor(version_id)
        rgb, digest = self._display(image)
        wait_ms, hit = self._ensure_embedding(predictor, rgb, digest, image.id, version_id)
        embedding = predictor.encode(rgb, digest)  # served from the cache now
        return _Embedded(image, prompts, version_id, predictor, embedding, wait_ms, hit)

    def prepare(self, actor: User | None, image_id: int) -> tuple[float, bool]:
        """(ms waited, was it cached): the image's embedding made ready before the first prompt."""
        ready = self._embedded(actor, image_id, None, None, None, prompted=False)
        return ready.wait_ms, ready.hit

    def preview(self, actor: User | None, image_id: int, boxes=None, points=None) -> tuple[np.ndarray, float, int]:
        """(mask, predicted IoU, version) without recording it: a drag must not add a mask row per mouse move."""
        ready = self._embedded(actor, image_id, None, boxes, points)
        assert ready.prompts is not None
        with self._decode_slots:
            prediction = ready.predictor.decode_prompts(ready.embedding, ready.prompts)
        return label_map(prediction.masks) > 0, float(np.mean(prediction.iou)), ready.version_id

    def segment(
        self, actor: User | None, image_id: int, boxes=None, points=None, model_version_id: int | None = None
    ) -> SegmentPublic:
        started = time.perf_counter()
        ready = self._embedded(actor, image_id, model_version_id, boxes, points)
        assert ready.prompts is not None
        image, version_id, wait_ms, hit = ready.image, ready.version_id, ready.wait_ms, ready.hit
        with self._decode_slots:  # more decodes at once than cores only add memory and latency
            decode_start = time.perf_counter()
            prediction = ready.predictor.decode_prompts(ready.embedding, ready.prompts)
            labels = label_map(prediction.masks)
            decode_ms = (time.perf_counter() - decode_start) * 1000
        ious = [round(float(v), 4) for v in prediction.iou]
        areas = [int(m.sum()) for m in prediction.masks]
        n_masks = len(prediction.masks)
        del prediction
        prompt = {"boxes": _plain(boxes), "points": _plain(points)}
        with self.store.transaction() as db:  # only now: none is held while the encode is awaited
            mask = record_mask(
                db, self.store.blobs, actor, image.id, labels, version_id, prompt, float(np.mean(ious)), label_map=True
            )
        metrics.DECODE_SECONDS.observe(decode_ms / 1000)
        metrics.SEGMENTS.labels("hit" if hit else "miss").inc()
        release_after(n_masks)
        return SegmentPublic(
            mask_id=mask.id,
            image_id=image.id,
            area=int(np.count_nonzero(labels)),
            predicted_iou=round(float(np.mean(ious)), 4),
            model_version_id=version_id,
            cache_hit=hit,
            areas=areas,
            predicted_ious=ious,
            timing_ms=SegmentTiming(
                encode_wait=round(wait_ms, 1),
                decode=round(decode_ms, 1),
                total=round((time.perf_counter() - started) * 1000, 1),
            ),
        )

    def predictor(self, version_id: int):
        """The loaded model for a version; the first call per version loads it (and exports ONNX)."""
        with self._load_lock:  # two first prompts must not load the same weights twice
            return self.pool.predictor(version_id)

    def warm(self, version_id: int | None = None) -> None:
        """Load the base model ahead of the first prompt, so nobody waits for it."""
        if version_id is None:
            with self.store.transaction() as db:
                version_id = base_version(db).id
        self.predictor(version_id)

    def _image(self, actor: User | None, image_id: int) -> Image:
        with self.store.transaction() as session:
            if actor is not None:
                return get_image(session, actor, image_id)
            image = session.get(Image, image_id)
            if image is None:
                raise NotFoundError(f"image {image_id} does not exist")
            return image

    def _version(self, project_id: int, version_id: int | None, actor: User | None) -> int:
        with self.store.transaction() as db:
            if version_id is None:
                return active_version(db, project_id).id
            usable_version(db, actor, int(version_id), project_id)  # another project's: "not found"
        return int(version_id)

    def _display(self, image: Image) -> tuple[np.ndarray, str]:
        """The encoder's pixels and their SHA-256, both kept so a re-prompt neither re-reads nor re-hashes."""
        key = (image.id, image.blob_sha, image.slice_index, image.window)
        with self._lock:
            found = self._pixels.get(key)
            if found is not None:
                self._pixels.move_to_end(key)
                return found
        rgb = display_pixels(self.store.blobs, image, self.store.settings)
        found = (rgb, pixel_sha256(rgb))
        with self._lock:
            self._pixels[key] = found
            while sum(a.nbytes for a, _ in self._pixels.values()) > PIXEL_CACHE_BYTES and len(self._pixels) > 1:
                self._pixels.popitem(last=False)
        return found

    def _ensure_embedding(
        self, predictor, rgb: np.ndarray, digest: str, image_id: int, version_id: int
    ) -> tuple[float, bool]:
        """(ms waited, was it cached). A miss is encoded by a worker, never here."""
        key = predictor.cache_key(rgb, digest)
        if self.pool.cache.get(key) is not None:
            return 0.0, True
        with self._lock:
            future = self._inflight.get(key)
            owner = future is None
            if owner:
                future = self._inflight[key] = Future()
        start = time.perf_counter()
        metrics.ENCODES_IN_FLIGHT.inc()
        try:
            if owner:
                try:
                    self._remote_encode(image_id, version_id)
                    future.set_result(None)
                except BaseException as exc:
                    future.set_exception(exc)
                    raise
                finally:
                    with self._lock:
                        self._inflight.pop(key, None)
            else:
                try:
                    future.result(timeout=self.encode_timeout_s + 5)
                except FutureTimeout:
                    raise EncodeUnavailableError(self._timeout_message(image_id)) from None
        finally:
            metrics.ENCODES_IN_FLIGHT.dec()
        waited = (time.perf_counter() - start) * 1000
        metrics.ENCODE_WAIT_SECONDS.observe(waited / 1000)
        if self.pool.cache.get(key) is None:
            raise EncodeUnavailableError(
                f"a worker encoded image {image_id}, but its embedding is not in the shared cache; the web "
                "process and the workers must use the same database and blob store (MEDSAM_DATABASE_URL, "
                "MEDSAM_STORAGE_URL)"
            )
        return waited, False

    def _remote_encode(self, image_id: int, version_id: int) -> None:
        self.queue.encode(image_id, version_id, self.encode_timeout_s)

    def _timeout_message(self, image_id: int) -> str:
        return encode_timeout_message(image_id, self.encode_timeout_s)


def _plain(value):
    """Prompts as plain JSON lists, whatever array type the caller used."""
    return None if value is None else np.asarray(value).tolist()
