"""Model access for the UI.

Project images are segmented through ``app.state.segmentation`` (the same
``SegmentationService`` the REST API uses). The public demo segments files
that are never stored, so it holds one predictor of the bundled model with an
in-memory embedding cache of its own: demo pixels never reach the blob store.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from medsam_core.errors import InvalidImageError
from medsam_core.prompts import check_prompt_size
from portal.store.store import Store

if TYPE_CHECKING:
    from medsam_core.predictor import Predictor


class DemoEngine:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._predictor: Predictor | None = None
        self._lock = threading.Lock()

    def predictor(self) -> Predictor:
        with self._lock:
            if self._predictor is None:
                from medsam_core.cache import EmbeddingCache
                from medsam_core.models import load_model
                from portal.store.runtime import build_predictor

                settings = self.store.settings
                model = load_model(settings.default_model, None, settings.device)
                self._predictor = build_predictor(settings, model, EmbeddingCache(store=None, memory_items=8))
            return self._predictor

    def segment(self, rgb: np.ndarray, boxes=None, points=None) -> dict[str, Any]:
        """``rgb``: the uint8 (H, W, 3) display image of an upload; anything else means there is none yet."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise InvalidImageError("Upload an image first.")
        settings = self.store.settings
        check_prompt_size(boxes, points, settings.max_boxes_per_prompt, settings.max_points_per_prompt)
        predictor = self.predictor()
        with self._lock:  # one decode at a time per process: ONNX sessions share threads
            embedding = predictor.encode(rgb)
            prediction = predictor.decode(embedding, boxes=boxes, points=points)
        return {
            "masks": prediction.masks,
            "iou": [float(v) for v in prediction.iou],
            "encode_ms": round(embedding.encode_ms, 1),
            "decode_ms": round(prediction.decode_ms, 1),
            "cache_hit": embedding.cache_hit,
        }
