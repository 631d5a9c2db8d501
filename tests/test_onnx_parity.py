"""The ONNX Runtime fast path must give the PyTorch reference's masks."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core.cache import EmbeddingCache
from medsam_core.imageio import read_image
from medsam_core.metrics import dice
from medsam_core.predictor import Predictor
from tests.conftest import DEMO_BOX, DEMO_IMAGE, first_pairs, tight_box


@pytest.fixture(scope="module")
def both(lite_model, data_dir):
    # Separate memory-only caches: the two backends share cache keys on purpose,
    # so a shared cache would hand one backend the other's embedding.
    torch_p = Predictor(lite_model, EmbeddingCache(None, memory_items=0), backend="torch")
    onnx_p = Predictor(lite_model, EmbeddingCache(None, memory_items=0), backend="onnx", onnx_dir=data_dir / "onnx")
    return torch_p, onnx_p


def test_onnx_masks_match_pytorch_on_shared_images(both, sample_data):
    torch_p, onnx_p = both
    cases = [(DEMO_IMAGE, [DEMO_BOX, [300, 240, 420, 360]])]
    for name in ("kvasir", "busi"):
        for image, mask in first_pairs(sample_data, name, 6):
            cases.append((image, [tight_box(read_image(mask).display()[..., 0] > 127)]))
    scores = []
    for image, boxes in cases:
        rgb = read_image(image).display()
        ref = torch_p.decode(torch_p.encode(rgb), boxes=boxes)
        fast = onnx_p.decode(onnx_p.encode(rgb), boxes=boxes)
        for r, f in zip(ref.masks, fast.masks, strict=True):
            scores.append(dice(r, f))
        np.testing.assert_allclose(ref.iou, fast.iou, atol=2e-3)
    assert len(scores) == 14
    assert min(scores) >= 0.99, scores
