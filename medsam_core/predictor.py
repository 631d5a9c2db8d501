"""The encode/decode split that makes the cost model obvious.

``encode`` is the expensive step (seconds on a CPU) and is cached; ``decode``
answers each box or point prompt against a cached embedding in tens of
milliseconds. Prompts come and masks go in original pixel coordinates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsam_core.backend_choice import make_backend
from medsam_core.cache import CacheKey, EmbeddingCache, pixel_sha256
from medsam_core.errors import PromptError
from medsam_core.models import LoadedModel
from medsam_core.prompt_decoder import build_prompt_arrays
from medsam_core.prompts import LOW_RES, Prompts, validate_mask_input, validate_prompts

DECODE_CHUNK_BOXES = 8
# Images per encoder call in encode_many. See bench/encoder.py for what batching buys.
ENCODE_BATCH = 4


@dataclass
class Embedding:
    features: np.ndarray  # (256, 64, 64) float16, exactly what the cache holds
    family: str
    encoder_digest: str
    original_size: tuple[int, int]
    input_size: int
    key: CacheKey
    cache_hit: bool = False
    encode_ms: float = 0.0


@dataclass
class Prediction:
    masks: np.ndarray  # (B, H, W) bool, one per box (or one for a points-only prompt)
    low_res_logits: np.ndarray  # (B, 1, 256, 256) float32, feed back as mask_input to refine
    iou: np.ndarray  # (B,) predicted IoU
    decode_ms: float = 0.0
    boxes: np.ndarray | None = field(default=None)  # the boxes after clipping, original pixels


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise TypeError("encode() takes the uint8 (H, W, 3) display image from medsam_core.imageio")
    return np.ascontiguousarray(rgb)


class Predictor:
    def __init__(
        self,
        model: LoadedModel,
        cache: EmbeddingCache | None = None,
        backend: str = "auto",
        onnx_dir: str | Path | None = None,
        chunk_boxes: int = DECODE_CHUNK_BOXES,
    ):
        if chunk_boxes < 1:
            raise ValueError("chunk_boxes must be at least 1")
        self.chunk_boxes = int(chunk_boxes)
        self.model = model
        self.cache = cache if cache is not None else EmbeddingCache(store=None)
        self.backend = make_backend(model, backend, onnx_dir)
        self.preprocessor = model.family.preprocessor
        self.encoder_runs = 0

    @property
    def family(self) -> str:
        return self.model.family.name

    def cache_key(self, rgb: np.ndarray, pixel_digest: str | None = None) -> CacheKey:
        """``pixel_digest``: a caller that keeps the pixels (the web process) hashes them once, not per prompt."""
        digest = pixel_digest or pixel_sha256(_check_rgb(rgb))
        return CacheKey(digest, self.family, self.model.encoder_digest)

    def encode(self, rgb: np.ndarray, pixel_digest: str | None = None) -> Embedding:
        return self.encode_many([rgb], None if pixel_digest is None else [pixel_digest], batch=1)[0]

    def encode_many(
        self, rgbs: Sequence[np.ndarray], pixel_digests: Sequence[str | None] | None = None, batch: int = ENCODE_BATCH
    ) -> list[Embedding]:
        """Embeddings for many images (a volume's slices): cache hits are read, misses are
        encoded ``batch`` at a time, and pixels repeated within the call are encoded once.

        Each embedding is rounded to fp16 straight away, as ``encode`` does, so a fresh
        embedding and a cached one give bit-identical masks.
        """
        if batch < 1:
            raise ValueError("batch must be at least 1")
        if pixel_digests is not None and len(pixel_digests) != len(rgbs):
            raise ValueError(f"{len(rgbs)} images but {len(pixel_digests)} pixel digests")
        start = time.perf_counter()
        images = [_check_rgb(rgb) for rgb in rgbs]
        digests = pixel_digests if pixel_digests is not None else [None] * len(images)
        keys = [self.cache_key(rgb, digest) for rgb, digest in zip(images, digests, strict=True)]
        found: dict[CacheKey, np.ndarray] = {}
        misses: dict[CacheKey, np.ndarray] = {}  # key -> its first image, in order
        for key, rgb in zip(keys, images, strict=True):
            if key in found or key in misses:
                continue
            features = self.cache.get(key)
            if features is None:
                misses[key] = rgb
            else:
                found[key] = features
        lookup_ms = (time.perf_counter() - start) * 1000
        spent_ms = self._encode_misses(misses, batch, found)
        return [
            Embedding(
                features=found[key],
                family=self.family,
                encoder_digest=self.model.encoder_digest,
                original_size=(int(rgb.shape[0]), int(rgb.shape[1])),
                input_size=self.preprocessor.input_size,
                key=key,
                cache_hit=key not in misses,
                encode_ms=lookup_ms / len(images) + spent_ms.get(key, 0.0),
            )
            for key, rgb in zip(keys, images, strict=True)
        ]

    def _encode_misses(
        self, misses: dict[CacheKey, np.ndarray], batch: int, found: dict[CacheKey, np.ndarray]
    ) -> dict[CacheKey, float]:
        """Encode and cache the misses into ``found``; each key's share of its batch's time (ms)."""
        spent: dict[CacheKey, float] = {}
        pending = list(misses.items())
        for lo in range(0, len(pending), batch):
            chunk = pending[lo : lo + batch]
            start = time.perf_counter()
            tensors = torch.cat([self.preprocessor.to_tensor(rgb) for _, rgb in chunk])
            features = self.backend.encode_batch(tensors)
            for (key, _), one in zip(chunk, features, strict=True):
                found[key] = self.cache.put(key, one)
            self.encoder_runs += len(chunk)
            share = (time.perf_counter() - start) * 1000 / len(chunk)
            spent.update((key, share) for key, _ in chunk)
        return spent

    def decode(
        self,
        embedding: Embedding,
        boxes: Any = None,
        points: Any = None,
        mask_input: Any = None,
        multimask: bool | None = None,
    ) -> Prediction:
        """Boxes ``[x0, y0, x1, y1]`` and points ``(x, y, label)`` in original pixels.

        Several boxes decode in batches of ``chunk_boxes``: the decoder copies the
        image embedding once per box, so one batch of 200 boxes would need gigabytes,
        while chunks keep the peak flat whatever the count. The points, if any, refine
        every box. ``multimask`` defaults to SAM's advice: on for a single point with
        no box (ambiguous), off otherwise.
        """
        self._check_model(embedding)
        return self.decode_prompts(
            embedding,
            validate_prompts(boxes, points, embedding.original_size),
            mask_input=mask_input,
            multimask=multimask,
        )

    def decode_prompts(
        self, embedding: Embedding, prompts: Prompts, mask_input: Any = None, multimask: bool | None = None
    ) -> Prediction:
        """``decode`` for prompts a caller already checked (``validate_prompts``), so they are checked once."""
        self._check_model(embedding)
        if prompts.size != embedding.original_size:
            raise PromptError(
                f"the prompts were checked against a {prompts.size[1]}x{prompts.size[0]} image, but "
                f"this embedding is of a {embedding.original_size[1]}x{embedding.original_size[0]} one"
            )
        start = time.perf_counter()
        size = embedding.original_size
        box_arr, pts, pt_labels = prompts.boxes, prompts.points, prompts.point_labels
        n_prompts = 1 if box_arr is None else len(box_arr)
        masks_in, has_mask = validate_mask_input(mask_input, n_prompts)
        if multimask is None:
            multimask = box_arr is None and pts is not None and len(pts) == 1
        features = embedding.features.astype(np.float32)[None]
        masks = np.empty((n_prompts, *size), dtype=bool)
        low_res = np.empty((n_prompts, 1, LOW_RES, LOW_RES), dtype=np.float32)
        iou = np.empty(n_prompts, dtype=np.float32)
        for lo in range(0, n_prompts, self.chunk_boxes):
            hi = min(lo + self.chunk_boxes, n_prompts)
            chunk = None if box_arr is None else box_arr[lo:hi]
            masks[lo:hi], low_res[lo:hi], iou[lo:hi] = self._decode_rows(
                features, chunk, pts, pt_labels, masks_in[lo:hi], has_mask, size, multimask
            )
        return Prediction(
            masks=masks, low_res_logits=low_res, iou=iou, decode_ms=(time.perf_counter() - start) * 1000, boxes=box_arr
        )

    def _check_model(self, embedding: Embedding) -> None:
        if embedding.family != self.family or embedding.encoder_digest != self.model.encoder_digest:
            raise ValueError("this embedding was made by another model; encode the image with this predictor")

    def _decode_rows(
        self,
        features: np.ndarray,
        boxes: np.ndarray | None,
        pts: np.ndarray | None,
        pt_labels: np.ndarray | None,
        masks_in: np.ndarray,
        has_mask: np.ndarray,
        size: tuple[int, int],
        multimask: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One decoder call for a chunk of boxes (or one points-only prompt): masks, low-res logits, IoU."""
        scale = self.preprocessor.scale_coords
        coords, labels = build_prompt_arrays(
            None if boxes is None else scale(boxes.reshape(-1, 2, 2), size).reshape(-1, 4),
            None if pts is None else scale(pts, size),
            pt_labels,
        )
        all_logits, all_iou = self.backend.decode(features, coords, labels, masks_in, has_mask)
        rows = np.arange(len(all_iou))
        best = 1 + np.argmax(all_iou[:, 1:], axis=1) if multimask else np.zeros(len(rows), dtype=np.int64)
        low_res = np.ascontiguousarray(all_logits[rows, best][:, None], dtype=np.float32)
        full = self.preprocessor.logits_to_original(torch.from_numpy(low_res), size)
        return (full[:, 0] > 0).numpy(), low_res, all_iou[rows, best].astype(np.float32)

    def segment(self, rgb: np.ndarray, boxes: Any = None, points: Any = None) -> tuple[Embedding, Prediction]:
        embedding = self.encode(rgb)
        return embedding, self.decode(embedding, boxes=boxes, points=points)
