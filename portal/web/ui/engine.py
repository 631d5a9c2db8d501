"""Model access for the UI.

Project images are segmented through ``app.state.segmentation`` (the same
``SegmentationService`` the REST API uses). The public demo segments files
that are never stored, so it holds one predictor of the bundled model with an
in-memory embedding cache of its own: demo pixels never reach the blob store.
"""

import threading
from typing import Any

import numpy as np

from medsam_core.prompts import check_prompt_size
from portal.store.store import Store


class DemoEngine:
    def __init__(self, store: Store):
        self.store = store
        self._predictor = None
        self._lock = threading.Lock()

    def predictor(self):
        with self._lock:
            if self._predictor is None:
                from medsam_core.cache import EmbeddingCache
                from medsam_core.models import load_model
                from medsam_core.predictor import Predictor

                settings = self.store.settings
                model = load_model(settings.default_model, None, settings.device)
                self._predictor = Predictor(model, EmbeddingCache(store=None, memory_items=8),
                                            backend=settings.inference_backend, onnx_dir=settings.onnx_dir,
                                            chunk_boxes=settings.decode_chunk_boxes)
            return self._predictor

    def segment(self, rgb: np.ndarray, boxes=None, points=None) -> dict[str, Any]:
        settings = self.store.settings
        check_prompt_size(boxes, points, settings.max_boxes_per_prompt, settings.max_points_per_prompt)
        predictor = self.predictor()
        with self._lock:  # one decode at a time per process: ONNX sessions share threads
            embedding = predictor.encode(rgb)
            prediction = predictor.decode(embedding, boxes=boxes, points=points)
        return {"masks": prediction.masks, "iou": [float(v) for v in prediction.iou],
                "encode_ms": round(embedding.encode_ms, 1), "decode_ms": round(prediction.decode_ms, 1),
                "cache_hit": embedding.cache_hit}

