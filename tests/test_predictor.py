"""The real bundled LiteMedSAM: prompts, batching, refinement and the embedding cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam_core.cache import DirectoryEmbeddingStore, EmbeddingCache
from medsam_core.errors import PromptError
from medsam_core.metrics import dice
from medsam_core.models import from_module
from medsam_core.predictor import Predictor
from tests.conftest import DEMO_BOX


@pytest.fixture(scope="module")
def demo_embedding(predictor, demo_rgb):
    return predictor.encode(demo_rgb)


def test_demo_box_gives_a_mask_inside_the_box(predictor, demo_embedding):
    pred = predictor.decode(demo_embedding, boxes=[DEMO_BOX])
    mask = pred.masks[0]
    assert mask.shape == (512, 512) and mask.dtype == bool
    ys, xs = np.nonzero(mask)
    assert 2000 < mask.sum() < 95 * 95
    assert xs.min() >= 90 and xs.max() <= 195 and ys.min() >= 250 and ys.max() <= 355
    assert 0.5 < pred.iou[0] <= 1.2


def test_several_boxes_decode_in_one_call_like_one_at_a_time(predictor, demo_embedding):
    boxes = [DEMO_BOX, [300, 240, 420, 360], [150, 120, 360, 220]]
    together = predictor.decode(demo_embedding, boxes=boxes)
    assert together.masks.shape == (3, 512, 512)
    for i, box in enumerate(boxes):
        alone = predictor.decode(demo_embedding, boxes=[box])
        assert dice(alone.masks[0], together.masks[i]) > 0.999


def test_box_corners_in_any_order_and_clipping(predictor, demo_embedding):
    x0, y0, x1, y1 = DEMO_BOX
    ref = predictor.decode(demo_embedding, boxes=[DEMO_BOX]).masks[0]
    flipped = predictor.decode(demo_embedding, boxes=[[x1, y1, x0, y0]]).masks[0]
    assert np.array_equal(ref, flipped)
    clipped = predictor.decode(demo_embedding, boxes=[[-50, 400, 100, 600]])
    np.testing.assert_array_equal(clipped.boxes[0], [0, 400, 100, 512])


@pytest.mark.parametrize(
    "box, fragment",
    [
        ([600, 600, 700, 700], "wholly outside the 512x512 image"),
        ([-90, -90, -10, -10], "wholly outside"),
        ([100, 100, 100, 200], "no area"),
        ([1, 2, 3], "exactly 4 numbers"),
        ([0, 0, float("nan"), 5], "finite"),
    ],
)
def test_bad_boxes_are_refused(predictor, demo_embedding, box, fragment):
    with pytest.raises(PromptError, match=fragment):
        predictor.decode(demo_embedding, boxes=[box])


def test_bad_points_and_missing_prompts_are_refused(predictor, demo_embedding):
    with pytest.raises(PromptError, match="label 2"):
        predictor.decode(demo_embedding, points=[[10, 10, 2]])
    with pytest.raises(PromptError, match="outside the 512x512"):
        predictor.decode(demo_embedding, points=[[10, 900, 1]])
    with pytest.raises(PromptError, match="at least one box"):
        predictor.decode(demo_embedding)


def test_points_refine_a_box(predictor, demo_embedding):
    base = predictor.decode(demo_embedding, boxes=[DEMO_BOX])
    ys, xs = np.nonzero(base.masks[0])
    cy, cx = int(np.median(ys)), int(np.median(xs))
    excluded = predictor.decode(demo_embedding, boxes=[DEMO_BOX], points=[[cx, cy, 0]])
    assert excluded.masks[0].sum() < base.masks[0].sum()
    included = predictor.decode(demo_embedding, boxes=[DEMO_BOX], points=[[cx, cy, 1]])
    assert included.masks[0, cy, cx] and dice(included.masks[0], base.masks[0]) > 0.8
    # LiteMedSAM was trained on boxes only, so a lone point gives a weak mask;
    # it must still be a well-formed answer, picked from the multimask outputs.
    alone = predictor.decode(demo_embedding, points=[[cx, cy, 1]])
    assert alone.masks.shape == (1, 512, 512) and alone.iou.shape == (1,)


def test_previous_logits_feed_back_as_mask_input(predictor, demo_embedding):
    first = predictor.decode(demo_embedding, boxes=[DEMO_BOX])
    again = predictor.decode(demo_embedding, boxes=[DEMO_BOX], mask_input=first.low_res_logits)
    assert again.low_res_logits.shape == (1, 1, 256, 256)
    assert dice(first.masks[0], again.masks[0]) > 0.8
    assert not np.array_equal(first.low_res_logits, again.low_res_logits)
    with pytest.raises(PromptError, match="low-res logits"):
        predictor.decode(demo_embedding, boxes=[DEMO_BOX], mask_input=np.zeros((10, 10)))


def test_second_prompt_costs_only_the_decoder(lite_model, demo_rgb, tmp_path):
    cache = EmbeddingCache(DirectoryEmbeddingStore(tmp_path, 10**8))
    p = Predictor(lite_model, cache, backend="onnx", onnx_dir=tmp_path.parent / "onnx-shared")
    first = p.encode(demo_rgb)
    second = p.encode(demo_rgb)
    assert (first.cache_hit, second.cache_hit, p.encoder_runs) == (False, True, 1)
    # A fresh embedding and a cached one give identical masks: both are fp16.
    a = p.decode(first, boxes=[DEMO_BOX]).masks
    b = p.decode(second, boxes=[DEMO_BOX]).masks
    assert np.array_equal(a, b)
    # A restart (new predictor, same folder, empty memory) still hits on disk.
    restarted = Predictor(
        lite_model,
        EmbeddingCache(DirectoryEmbeddingStore(tmp_path, 10**8), memory_items=0),
        backend="onnx",
        onnx_dir=tmp_path.parent / "onnx-shared",
    )
    assert restarted.encode(demo_rgb).cache_hit and restarted.encoder_runs == 0


def test_windows_and_slices_never_share_an_embedding(predictor, demo_rgb):
    darker = (demo_rgb // 2).astype(np.uint8)
    assert predictor.cache_key(demo_rgb) != predictor.cache_key(darker)
    assert predictor.cache_key(demo_rgb) != predictor.cache_key(np.ascontiguousarray(demo_rgb[:256]))


def test_decoder_only_fine_tune_keeps_the_encoder_digest(lite_model):
    import copy

    tuned = copy.deepcopy(lite_model.module)
    with torch.no_grad():
        tuned.mask_decoder.iou_token.weight.add_(0.1)
    decoder_tuned = from_module("lite", tuned, device="cpu")
    assert decoder_tuned.encoder_digest == lite_model.encoder_digest
    assert decoder_tuned.model_digest != lite_model.model_digest
    with torch.no_grad():
        tuned.image_encoder.patch_embed.seq[0].c.weight.add_(0.1)
    assert from_module("lite", tuned, device="cpu").encoder_digest != lite_model.encoder_digest


def test_embedding_from_another_model_is_refused(predictor, demo_embedding, lite_model):
    import dataclasses

    foreign = dataclasses.replace(demo_embedding, encoder_digest="0" * 64)
    with pytest.raises(ValueError, match="another model"):
        predictor.decode(foreign, boxes=[DEMO_BOX])
