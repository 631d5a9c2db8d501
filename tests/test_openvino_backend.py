"""The ``openvino`` backend (asked for by name; "auto" stays on ONNX Runtime, see ``backend_choice``):
its masks must stay within issue 12's bar of the fp32 reference."""

from __future__ import annotations

import numpy as np
import pytest

from medsam_core.cache import EmbeddingCache
from medsam_core.imageio import read_image
from medsam_core.metrics import dice
from medsam_core.openvino_backend import OpenVinoBackend, encoder_precision
from medsam_core.predictor import Predictor


def fresh(lite_model, data_dir, backend: str) -> Predictor:
    return Predictor(lite_model, EmbeddingCache(None, memory_items=0), backend, data_dir / "onnx")


@pytest.fixture(scope="module")
def cases(sample_data) -> list[tuple[np.ndarray, list[int]]]:
    """Two Kvasir and two BUSI images with their ground-truth boxes."""
    out = []
    for name in ("kvasir", "busi"):
        for image in sorted((sample_data / name / "images").glob("*.png"))[:2]:
            mask = read_image(sample_data / name / "masks" / image.name).display()[..., 0] > 127
            ys, xs = np.nonzero(mask)
            out.append((read_image(image).display(), [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]))
    assert len(out) == 4, "the Kvasir and BUSI samples are missing"
    return out


def test_openvino_masks_stay_within_dice_0_99_of_onnx_runtime(lite_model, data_dir, cases):
    auto, reference = fresh(lite_model, data_dir, "openvino"), fresh(lite_model, data_dir, "onnx")
    assert isinstance(auto.backend, OpenVinoBackend) and auto.backend.name == "openvino"
    assert fresh(lite_model, data_dir, "auto").backend.name == "onnx"
    scores = []
    for rgb, box in cases:
        ours = auto.decode(auto.encode(rgb), boxes=[box]).masks[0]
        scores.append(dice(reference.decode(reference.encode(rgb), boxes=[box]).masks[0], ours))
    assert np.mean(scores) >= 0.99 and min(scores) >= 0.97, scores


def test_batches_give_exactly_what_one_encode_at_a_time_gives(lite_model, data_dir, cases):
    images = [rgb for rgb, _ in cases]
    batched = fresh(lite_model, data_dir, "openvino").encode_many(images, batch=4)
    single = fresh(lite_model, data_dir, "openvino")
    for rgb, embedding in zip(images, batched, strict=True):
        assert np.array_equal(embedding.features, single.encode(rgb).features)


def test_precision_follows_the_cpu_unless_set(monkeypatch):
    class Core:
        def __init__(self, capabilities):
            self.capabilities = capabilities

        def get_property(self, device, name):
            assert (device, name) == ("CPU", "OPTIMIZATION_CAPABILITIES")
            return self.capabilities

    monkeypatch.delenv("MEDSAM_OPENVINO_PRECISION", raising=False)
    assert encoder_precision(Core(["FP32", "BF16", "INT8"])) == "bf16"
    assert encoder_precision(Core(["FP32", "INT8"])) == "f32"
    monkeypatch.setenv("MEDSAM_OPENVINO_PRECISION", "F32")
    assert encoder_precision(Core(["FP32", "BF16"])) == "f32"


def test_f32_precision_matches_onnx_runtime(lite_model, data_dir, cases, monkeypatch):
    monkeypatch.setenv("MEDSAM_OPENVINO_PRECISION", "f32")
    rgb, _ = cases[0]
    ours = fresh(lite_model, data_dir, "openvino")
    assert ours.backend.precision == "f32"
    a = ours.encode(rgb).features.astype(np.float32)
    b = fresh(lite_model, data_dir, "onnx").encode(rgb).features.astype(np.float32)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-3
