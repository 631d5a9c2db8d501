"""Model access for the UI.

Project images are segmented through ``app.state.segmentation`` (the same
``SegmentationService`` the REST API uses). The public demo segments files
that are never stored, so it holds one predictor of the bundled model with an
in-memory embedding cache of its own: demo pixels never reach the blob store.
"""

import threading
from typing import Any

import numpy as np

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
                                            backend=settings.inference_backend, onnx_dir=settings.onnx_dir)
            return self._predictor

    def segment(self, rgb: np.ndarray, boxes=None, points=None) -> dict[str, Any]:
        predictor = self.predictor()
        with self._lock:  # one decode at a time per process: ONNX sessions share threads
            embedding = predictor.encode(rgb)
            prediction = predictor.decode(embedding, boxes=boxes, points=points)
        return {"masks": prediction.masks, "iou": [float(v) for v in prediction.iou],
                "encode_ms": round(embedding.encode_ms, 1), "decode_ms": round(prediction.decode_ms, 1),
                "cache_hit": embedding.cache_hit}


class FallbackSegmentation:
    """Used only when the app carries no ``segmentation`` service (an app built without the REST API).

    Same signature and answer as ``portal.web.segmentation.SegmentationService.segment``; the mask is
    stored through the masks service like the real one does.
    """

    def __init__(self, store: Store, engine: DemoEngine):
        self.store = store
        self.engine = engine

    def segment(self, actor, image_id: int, boxes=None, points=None, model_version_id=None) -> dict:
        import time

        from portal.store.services.images import display_pixels, get_image
        from portal.store.services.masks import record_mask
        from portal.store.services.model_versions import active_version

        start = time.perf_counter()
        image = get_image(self.store, actor, image_id)
        version = model_version_id or active_version(self.store, image.project_id).id
        result = self.engine.segment(display_pixels(self.store, image), boxes=boxes, points=points)
        from medsam_core.outputs import label_map

        mask = label_map(result["masks"])
        row = record_mask(self.store, actor, image_id, mask, version, {"boxes": boxes, "points": points},
                          result["iou"][0])
        return {"mask_id": row.id, "area": int((mask > 0).sum()), "predicted_iou": result["iou"][0],
                "model_version_id": version,
                "timing_ms": {"encode_wait": result["encode_ms"], "decode": result["decode_ms"],
                              "total": round((time.perf_counter() - start) * 1000, 1)}}
